"""CURVE on loopback: key files, config checks, and who gets through a secured broker."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
import zmq
from support import REPO, Stack, wait_until

from bus.config import ConfigError, load_config
from bus.curve import CurveKeys, is_local
from bus.publisher import Publisher
from bus.security import ENV_SECRET_FILE, ENV_SERVER_KEY, broker_curve, client_curve, default_client_curve


def make_keys(directory: Path, *names: str) -> None:
    for name in names:
        done = subprocess.run(
            [sys.executable, "-m", "metricbus", "keys", name, "--dir", str(directory)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr


def curve_keys(directory: Path, name: str, server: str = "broker") -> CurveKeys:
    public, secret = zmq.auth.load_certificate(directory / f"{name}.key_secret")
    server_public, _ = zmq.auth.load_certificate(directory / f"{server}.key")
    assert secret is not None
    return CurveKeys(secret=secret, public=public, server=server_public)


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    """broker, worker (authorised) and stranger (not) key pairs; worker's public key authorised."""
    directory = tmp_path / "keys"
    make_keys(directory, "broker", "worker", "stranger")
    authorized = tmp_path / "authorized"
    authorized.mkdir()
    (authorized / "worker.key").write_bytes((directory / "worker.key").read_bytes())
    return directory


def write_config(tmp_path: Path, broker: dict[str, Any]) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"broker": broker, "sinks": {}}))
    return path


def test_keys_writes_a_pair_with_a_private_secret_and_never_overwrites(tmp_path: Path) -> None:
    """`metricbus keys` writes NAME.key and a 0600 NAME.key_secret, and refuses to replace them."""
    make_keys(tmp_path, "node-1")
    assert (tmp_path / "node-1.key_secret").stat().st_mode & 0o777 == 0o600
    public, secret = zmq.auth.load_certificate(tmp_path / "node-1.key_secret")
    assert secret is not None and zmq.auth.load_certificate(tmp_path / "node-1.key")[0] == public
    again = subprocess.run(
        [sys.executable, "-m", "metricbus", "keys", "node-1", "--dir", str(tmp_path)], capture_output=True, text=True
    )
    assert again.returncode == 1 and "exists" in again.stdout
    assert zmq.auth.load_certificate(tmp_path / "node-1.key_secret") == (public, secret)


@pytest.mark.parametrize(
    ("endpoint", "local"),
    [
        ("tcp://127.0.0.1:5555", True),
        ("tcp://127.3.4.5:1", True),
        ("tcp://localhost:5555", True),
        ("tcp://[::1]:5555", True),
        ("ipc:///tmp/bus", True),
        ("tcp://*:5555", False),
        ("tcp://0.0.0.0:5555", False),
        ("tcp://10.1.2.3:5555", False),
        ("tcp://eth0:5555", False),
        ("tcp://head-node:5555", False),
    ],
)
def test_loopback_is_told_from_reachable_endpoints(endpoint: str, local: bool) -> None:
    """Only loopback TCP, ipc and inproc count as local; wildcards and names do not."""
    assert is_local(endpoint) is local


def test_non_loopback_bind_without_curve_is_refused_unless_insecure(tmp_path: Path) -> None:
    """A routable broker address needs CURVE or an explicit `insecure: true` (which then warns)."""
    with pytest.raises(ConfigError, match=r"c\.yaml: broker\.frontend: expected a loopback address unless CURVE"):
        load_config(write_config(tmp_path, {"frontend": "tcp://0.0.0.0:7001", "backend": "tcp://127.0.0.1:7002"}))
    with pytest.raises(ConfigError, match=r"broker\.backend"):
        load_config(write_config(tmp_path, {"frontend": "tcp://127.0.0.1:7001", "backend": "tcp://*:7002"}))
    config = load_config(
        write_config(tmp_path, {"frontend": "tcp://*:7001", "backend": "tcp://*:7002", "insecure": True})
    )
    assert config.broker.insecure


def test_an_insecure_broker_warns_at_every_start(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """`insecure: true` on a routable address: the broker's start-up logs a warning naming the endpoints."""
    broker = {"frontend": "tcp://*:7001", "backend": "tcp://127.0.0.1:7002", "insecure": True}
    config = load_config(write_config(tmp_path, broker))
    with caplog.at_level(logging.WARNING, logger="metricbus.security"):
        assert broker_curve(config) is None
    assert "WITHOUT encryption or authentication" in caplog.text and "tcp://*:7001" in caplog.text
    assert "127.0.0.1:7002" not in caplog.text


def test_curve_key_paths_are_checked_at_load_with_the_key_path(tmp_path: Path, keys: Path) -> None:
    """Missing, wrong-kind or half-given key files fail at load naming broker.curve.<key>."""
    ep = {"frontend": "tcp://10.0.0.1:7001", "backend": "tcp://10.0.0.1:7002"}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"server_secret_file": "keys/nope", "authorized_dir": "authorized"}, r"curve\.server_secret_file: .*nope"),
        ({"server_secret_file": "keys/broker.key", "authorized_dir": "authorized"}, r"holds no secret key"),
        ({"server_secret_file": "keys/broker.key_secret", "authorized_dir": "missing"}, r"curve\.authorized_dir"),
        ({"server_secret_file": "keys/broker.key_secret"}, r"curve\.authorized_dir: expected a path: .* go together"),
        ({"client_secret_file": "keys/worker.key_secret"}, r"curve\.server_public_file"),
        ({}, r"broker\.curve: expected server_secret_file and authorized_dir"),
        ({"server_key": "x"}, r"curve\.server_key: expected one of the keys"),
    ]
    for curve, pattern in cases:
        with pytest.raises(ConfigError, match=pattern):
            load_config(write_config(tmp_path, {**ep, "curve": curve}))
    worker = {"client_secret_file": "keys/worker.key_secret", "server_public_file": "keys/broker.key"}
    config = load_config(write_config(tmp_path, {**ep, "curve": worker}))  # relative to the config's folder
    assert client_curve(config) == curve_keys(keys, "worker")


def test_client_keys_come_from_the_environment(tmp_path: Path, keys: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """METRICBUS_CURVE_SECRET_FILE + METRICBUS_CURVE_SERVER_KEY give a client its keys; one alone is an error."""
    monkeypatch.delenv("METRICBUS_CONFIG", raising=False)
    monkeypatch.setenv(ENV_SECRET_FILE, str(keys / "worker.key_secret"))
    with pytest.raises(ConfigError, match="METRICBUS_CURVE_SERVER_KEY is not"):
        default_client_curve()
    monkeypatch.setenv(ENV_SERVER_KEY, str(keys / "broker.key"))
    assert default_client_curve() == curve_keys(keys, "worker")
    monkeypatch.setenv(ENV_SECRET_FILE, str(keys / "worker.key"))
    with pytest.raises(ConfigError, match="not a CURVE secret key file"):
        default_client_curve()


def _bus_counts(stack: Stack) -> dict[str, Any]:
    rows = [r for r in _node_bus_rows(stack.root) if r["data"].get("event") == "broker_stats"]
    return rows[-1]["data"] if rows else {}


def _node_bus_rows(root: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for path in root.glob("_nodes/*/bus.jsonl"):
        rows += [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]
    return rows


def test_only_authorised_keys_get_through_a_curve_broker(
    tmp_path: Path, keys: Path, stack_factory: type[Stack], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Authorised key: every message recorded; unknown key or plain client: none, and refusals are counted."""
    curve = {"server_secret_file": str(keys / "broker.key_secret"), "authorized_dir": str(tmp_path / "authorized")}
    stack = stack_factory(tmp_path, extra={"broker": {"curve": curve}}).start()
    monkeypatch.delenv(ENV_SECRET_FILE, raising=False)
    monkeypatch.delenv("METRICBUS_CONFIG", raising=False)
    with Publisher(stack.frontend, run="stranger", curve=curve_keys(keys, "stranger"), connect_timeout=1.0) as bad:
        bad.metrics({"x": 1.0}, step=0)
        assert not bad.connected
    with Publisher(stack.frontend, run="plain", curve={}, connect_timeout=1.0) as plain:
        plain.metrics({"x": 1.0}, step=0)
        assert not plain.connected
    # The worker's key only through the environment, as a training script on a worker node gets it.
    monkeypatch.setenv(ENV_SECRET_FILE, str(keys / "worker.key_secret"))
    monkeypatch.setenv(ENV_SERVER_KEY, str(keys / "broker.key"))
    with Publisher(stack.frontend, run="worker", connect_timeout=15.0) as good:  # a CURVE handshake, maybe slow
        assert good.connected
        for step in range(500):
            good.metrics({"step": step}, step=step)
    rows = wait_until(lambda: len(stack.records("worker", "metrics")) == 500 and stack.records("worker", "metrics"))
    assert [r["step"] for r in rows] == list(range(500))
    counts = wait_until(lambda: _bus_counts(stack).get("auth_denied", 0) >= 1 and _bus_counts(stack), 10, "stats")
    assert counts["auth_allowed"] >= 3  # the jsonl sink (two sockets), the broker's own stats, the worker
    assert not (stack.root / "stranger").exists()
    assert not (stack.root / "plain").exists()


def test_a_key_copied_into_authorized_dir_lets_its_client_in_without_restart(
    tmp_path: Path, keys: Path, stack_factory: type[Stack]
) -> None:
    """The broker re-reads authorized_dir when it changes: a newly authorised worker connects at once."""
    curve = {"server_secret_file": str(keys / "broker.key_secret"), "authorized_dir": str(tmp_path / "authorized")}
    stack = stack_factory(tmp_path, extra={"broker": {"curve": curve}}).start()
    with Publisher(stack.frontend, run="late", curve=curve_keys(keys, "stranger"), connect_timeout=0.5) as pub:
        assert not pub.connected
    (tmp_path / "authorized" / "stranger.key").write_bytes((keys / "stranger.key").read_bytes())
    with Publisher(stack.frontend, run="late", curve=curve_keys(keys, "stranger"), connect_timeout=15.0) as pub:
        assert pub.connected
        pub.metrics({"x": 1.0}, step=1)
    wait_until(lambda: stack.records("late", "metrics"), 10, "the newly authorised worker's line")

"""Two hosts, for real: a CURVE broker and a worker in two network namespaces joined by a veth pair.

The head namespace runs ``metricbus up`` (the broker, bound to its veth address); the
worker namespace runs a JSONL sink and trainings' publishers, all of them across the
veth link with keys from config or environment, as the README's "Several nodes" says.
Needs root and ``ip netns``; only the namespaces this test creates carry traffic.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import wait_until
from test_security import make_keys

HEAD_IP = "10.201.0.1"
WORKER_IP = "10.201.0.2"
FRONTEND = f"tcp://{HEAD_IP}:17555"
BACKEND = f"tcp://{HEAD_IP}:17556"

PUBLISH = """
import json, sys
from bus.publisher import Publisher
run, count = sys.argv[1], int(sys.argv[2])
with Publisher(run=run, connect_timeout=15.0) as pub:
    connected = pub.connected
    for step in range(count):
        pub.metrics({"step": step, "loss": 1.0 / (step + 1)}, step=step)
print(json.dumps({"connected": connected, "sent": pub.sent, "dropped": pub.dropped}))
"""


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)


def _why_no_netns() -> str | None:
    if sys.platform != "linux":
        return "network namespaces are Linux-only"
    if os.geteuid() != 0:
        return "creating network namespaces needs root (run as root to test two hosts over CURVE)"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    return None


@dataclass
class Hosts:
    head: str
    worker: str

    def popen(self, ns: str, argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            return subprocess.Popen(["ip", "netns", "exec", ns, *argv], env=env, stdout=out, stderr=subprocess.STDOUT)

    def run(self, ns: str, argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", ns, *argv], env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    """Two namespaces, head 10.201.0.1/24 and worker 10.201.0.2/24 on a veth pair; always removed."""
    reason = _why_no_netns()
    if reason:
        pytest.skip(reason)
    tag = f"{os.getpid() % 100000}"
    head, worker = f"mb{tag}h", f"mb{tag}w"
    made: list[str] = []
    try:
        for ns in (head, worker):
            done = _ip("netns", "add", ns)
            if done.returncode != 0:
                pytest.skip(f"`ip netns add` failed here: {done.stderr.strip()}")
            made.append(ns)
        steps = [
            ("link", "add", f"mbv{tag}h", "type", "veth", "peer", "name", f"mbv{tag}w"),
            ("link", "set", f"mbv{tag}h", "netns", head),
            ("link", "set", f"mbv{tag}w", "netns", worker),
            ("-n", head, "addr", "add", f"{HEAD_IP}/24", "dev", f"mbv{tag}h"),
            ("-n", worker, "addr", "add", f"{WORKER_IP}/24", "dev", f"mbv{tag}w"),
            ("-n", head, "link", "set", f"mbv{tag}h", "up"),
            ("-n", worker, "link", "set", f"mbv{tag}w", "up"),
            ("-n", head, "link", "set", "lo", "up"),
            ("-n", worker, "link", "set", "lo", "up"),
        ]
        for step in steps:
            done = _ip(*step)
            if done.returncode != 0:
                pytest.skip(f"`ip {' '.join(step)}` failed here: {done.stderr.strip()}")
        yield Hosts(head, worker)
    finally:
        for ns in made:  # deleting a namespace deletes the veth end inside it, and so the pair
            _ip("netns", "del", ns)


def _publish(hosts: Hosts, run: str, count: int, env: dict[str, str]) -> dict[str, Any]:
    done = hosts.run(hosts.worker, [sys.executable, "-c", PUBLISH, run, str(count)], env)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def test_curve_across_two_hosts_lets_only_authorised_keys_in(hosts: Hosts, tmp_path: Path) -> None:
    """Worker with an authorised key: every message arrives; unknown key or plain client: none."""
    keys = tmp_path / "keys"
    make_keys(keys, "broker", "worker-1", "stranger")
    authorized = tmp_path / "head" / "authorized"
    authorized.mkdir(parents=True)
    shutil.copy(keys / "worker-1.key", authorized)
    head_config = tmp_path / "head" / "metricbus.yaml"
    head_config.write_text(
        yaml.safe_dump(
            {
                "broker": {
                    "frontend": FRONTEND,
                    "backend": BACKEND,
                    "stats_interval": 0.5,
                    "curve": {"server_secret_file": str(keys / "broker.key_secret"), "authorized_dir": "authorized"},
                },
                "sinks": {},
                "sampler": {"enabled": False},
            }
        )
    )
    logs = tmp_path / "worker" / "logs"
    worker_config = tmp_path / "worker" / "metricbus.yaml"
    worker_config.parent.mkdir()
    worker_config.write_text(
        yaml.safe_dump(
            {
                "broker": {
                    "frontend": FRONTEND,
                    "backend": BACKEND,
                    "curve": {
                        "client_secret_file": str(keys / "worker-1.key_secret"),
                        "server_public_file": str(keys / "broker.key"),
                    },
                },
                "sinks": {"jsonl": {"type": "jsonl", "root": str(logs)}},
            }
        )
    )
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("METRICBUS_")}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        up = hosts.popen(
            hosts.head,
            [sys.executable, "-m", "metricbus", "up", str(head_config), "--ready-file", str(tmp_path / "up.ready")],
            base_env,
            tmp_path / "up.log",
        )
        procs.append(up)
        wait_until(lambda: (tmp_path / "up.ready").exists() or up.poll() is not None, 60, "head up")
        assert up.poll() is None, (tmp_path / "up.log").read_text()
        ready = tmp_path / "sink.ready"
        argv = [
            sys.executable,
            "-m",
            "metricbus",
            "sink",
            "jsonl",
            "--config",
            str(worker_config),
            "--ready-file",
            str(ready),
        ]
        sink = hosts.popen(hosts.worker, argv, base_env, tmp_path / "sink.log")
        procs.append(sink)
        wait_until(lambda: ready.exists() or sink.poll() is not None, 60, "the worker's sink to be ready")
        assert sink.poll() is None, (tmp_path / "sink.log").read_text()

        env = {**base_env, "METRICBUS_ENDPOINT": FRONTEND}
        stranger = {
            "METRICBUS_CURVE_SECRET_FILE": str(keys / "stranger.key_secret"),
            "METRICBUS_CURVE_SERVER_KEY": str(keys / "broker.key"),
        }
        assert _publish(hosts, "stranger", 200, {**env, **stranger})["connected"] is False
        assert _publish(hosts, "plain", 200, env)["connected"] is False
        # A training script on the worker: no code change, only the config in METRICBUS_CONFIG.
        good = _publish(hosts, "good", 2000, {**env, "METRICBUS_CONFIG": str(worker_config)})
        assert good["connected"] is True and good["dropped"] == 0

        metrics = logs / "good" / "metrics.jsonl"
        wait_until(lambda: len(_lines(metrics)) >= 2000, 30, "all 2000 of the worker's messages")
        assert [r["step"] for r in _lines(metrics)] == list(range(2000))
        assert {r["node"] for r in _lines(metrics)} == {os.uname().nodename}
        assert not (logs / "stranger").exists() and not (logs / "plain").exists()

        def denied() -> int:
            rows = [r for p in logs.glob("_nodes/*/bus.jsonl") for r in _lines(p)]
            return max([r["data"].get("auth_denied", 0) for r in rows], default=0)

        wait_until(lambda: denied() >= 1, 15, "the broker to report the stranger's refusal")
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

"""A DDP job across two "nodes": torchrun in two network namespaces, one rank each, with
their own host names, publishing through CURVE to the broker on the head.

The head namespace runs ``metricbus up`` (CURVE broker on its veth address, a JSONL sink)
and node 0 of the job; the worker namespace runs node 1. gloo and the torchrun rendezvous
cross the veth link too, so this is a two-host DDP job as far as every part can tell.
Needs root, ``ip netns`` and ``unshare`` (skipped otherwise, as the security test is).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import REPO, wait_until
from test_security import make_keys
from test_security_netns import BACKEND, FRONTEND, HEAD_IP, Hosts, hosts  # noqa: F401 (hosts is a fixture)

pytest.importorskip("torch.distributed")

STEPS = 4
MASTER_PORT = 17600


def _torchrun(
    machines: Hosts, ns: str, node_rank: int, hostname: str, env: dict[str, str], out: Path, log: Path
) -> subprocess.Popen[bytes]:
    veth = f"mbv{ns[2:]}"  # the fixture names the veth ends after the namespaces
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=2",
        "--nproc_per_node=1",
        f"--node_rank={node_rank}",
        f"--master_addr={HEAD_IP}",
        f"--master_port={MASTER_PORT}",
        str(REPO / "tests" / "ddp_train.py"),
        str(out),
        "--steps",
        str(STEPS),
    ]
    # a UTS namespace of its own: each "node" has its own host name, as two machines would
    argv = ["unshare", "--uts", "sh", "-c", f'hostname {hostname} && exec "$@"', "sh", *torchrun]
    env = {**env, "GLOO_SOCKET_IFNAME": veth, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return machines.popen(ns, argv, env, log)


@pytest.mark.slow
def test_ddp_ranks_on_two_hosts_publish_one_run_through_curve(hosts: Hosts, tmp_path: Path) -> None:  # noqa: F811
    """Two hosts, one rank each: one run, run_started lists both hosts, each rank's series from its own node."""
    if shutil.which("unshare") is None:
        pytest.skip("`unshare` (util-linux) is not installed")
    keys = tmp_path / "keys"
    make_keys(keys, "broker", "node-a", "node-b")
    authorized = tmp_path / "head" / "authorized"
    authorized.mkdir(parents=True)
    for name in ("node-a", "node-b"):
        shutil.copy(keys / f"{name}.key", authorized)
    logs = tmp_path / "logs"
    head_config = tmp_path / "head" / "metricbus.yaml"
    head_config.write_text(
        yaml.safe_dump(
            {
                "broker": {
                    "frontend": FRONTEND,
                    "backend": BACKEND,
                    "curve": {"server_secret_file": str(keys / "broker.key_secret"), "authorized_dir": "authorized"},
                },
                "sinks": {"jsonl": {"type": "jsonl", "root": str(logs)}},
                "sampler": {"enabled": False},
            }
        )
    )
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("METRICBUS_")}
    out = tmp_path / "out"
    out.mkdir()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        ready = tmp_path / "up.ready"
        up = hosts.popen(
            hosts.head,
            [sys.executable, "-m", "metricbus", "up", str(head_config), "--ready-file", str(ready)],
            base_env,
            tmp_path / "up.log",
        )
        procs.append(up)
        wait_until(lambda: ready.exists() or up.poll() is not None, 60, "head up")
        assert up.poll() is None, (tmp_path / "up.log").read_text()

        nodes = []
        for node_rank, (ns, name) in enumerate([(hosts.head, "node-a"), (hosts.worker, "node-b")]):
            env = {
                **base_env,
                "METRICBUS_ENDPOINT": FRONTEND,
                "METRICBUS_CURVE_SECRET_FILE": str(keys / f"{name}.key_secret"),
                "METRICBUS_CURVE_SERVER_KEY": str(keys / "broker.key"),
            }
            nodes.append(_torchrun(hosts, ns, node_rank, name, env, out, tmp_path / f"{name}.log"))
        procs.extend(nodes)
        for node, name in zip(nodes, ("node-a", "node-b"), strict=True):
            assert node.wait(180) == 0, (tmp_path / f"{name}.log").read_text()[-4000:]

        ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
        run = ranks[0]["run"]
        assert ranks[1]["run"] == run

        def rows(kind: str) -> list[dict[str, Any]]:
            path = logs / run / f"{kind}.jsonl"
            return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

        def ended() -> bool:
            return any(e["data"]["event"] == "run_ended" for e in rows("events"))

        wait_until(lambda: ended() and len(rows("metrics")) >= 3 * STEPS, 30, "both ranks' metrics and the run's end")
        metrics = rows("metrics")
        by_node = {
            rank: {r["node"] for r in metrics if f"rank/{rank}/grad/global_norm" in r["data"]} for rank in (0, 1)
        }
        assert by_node == {0: {"node-a"}, 1: {"node-b"}}
        for rank in (0, 1):
            want = {e["step"]: e["local_norm"] for e in ranks[rank]["expected"]}
            got = {
                r["step"]: r["data"][f"rank/{rank}/grad/global_norm"]
                for r in metrics
                if f"rank/{rank}/grad/global_norm" in r["data"]
            }
            assert got == pytest.approx(want, rel=1e-5)
        events = [e for e in rows("events") if e["data"]["event"] != "heartbeat"]
        assert [e["data"]["event"] for e in events] == ["run_started", "run_ended"]
        config = events[0]["data"]["config"]
        assert config["world_size"] == 2 and config["nodes"] == ["node-a", "node-b"]
        assert [(r["rank"], r["node"]) for r in config["ranks"]] == [(0, "node-a"), (1, "node-b")]
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

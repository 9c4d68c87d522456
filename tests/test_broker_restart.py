"""A broker SIGKILLed under load costs only what was inside it (issue 12), with real processes.

Three publisher processes send 1,000 msg/s each through ``metricbus up``; the broker is
SIGKILLed; ``up`` restarts it. What each publisher sends meanwhile waits in its socket's pipe
(ZeroMQ keeps it across the reconnect) and reaches the new broker, which forwards nothing
until the sinks have subscribed again. What is missing on disk is at most what was in flight,
and exactly the gap the JSONL sink recorded.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from support import REPO, Stack, jsonl_lines, wait_until

RATE = 1000  # messages per second per publisher
SECONDS = 6.0
#: What one publisher may lose: what the dying broker and its kernel socket buffers held. The
#: kernel keeps accepting into a SIGKILLed process's sockets until the process has been torn
#: down; on a busy 2-core machine that was 27 messages (27 ms) per publisher, more when the
#: machine is overloaded. Without the restarted broker waiting for its sinks it was ~1,100.
IN_FLIGHT = 100

PUBLISHER = r"""
import json, sys, time
from bus.publisher import Publisher

endpoint, run, seconds, rate, out = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
pub = Publisher(endpoint, run=run, heartbeat_interval=3600.0, connect_timeout=10.0)
start = time.monotonic()
i = 0
while time.monotonic() - start < seconds:
    pub.metrics({"i": i}, step=i)
    i += 1
    delay = start + i / rate - time.monotonic()
    if delay > 0:
        time.sleep(delay)
pub.close()
result = {"pub": pub.pub, "next_seq": pub._next_seq, "dropped": pub.dropped}
with open(out, "w") as f:
    json.dump(result, f)
"""


def _seqs(root: Path, run: str, pub: str) -> dict[int, float]:
    """seq -> ts of every message of ``pub`` on disk (metrics and the closing heartbeat)."""
    found: dict[int, float] = {}
    for name in ("metrics.jsonl", "events.jsonl"):
        path = root / run / name
        if path.exists():
            found.update({r["seq"]: r["ts"] for r in jsonl_lines(path) if r["pub"] == pub})
    return found


def _gaps(root: Path, run: str, pub: str) -> list[tuple[int, int, int]]:
    path = root / run / "bus.jsonl"
    rows: list[dict[str, Any]] = jsonl_lines(path) if path.exists() else []
    return [
        (r["data"]["first"], r["data"]["last"], r["data"]["missing"])
        for r in rows
        if r["data"].get("event") == "gap" and r["data"].get("of_pub") == pub
    ]


def test_a_sigkilled_broker_loses_only_what_was_in_flight_and_records_it(
    tmp_path: Path, stack_factory: type[Stack]
) -> None:
    """3 x 1,000 msg/s, broker SIGKILLed: all sent while it was down is on disk; loss is in-flight only, a gap."""
    sinks = {"jsonl": {"type": "jsonl", "root": str(tmp_path / "logs"), "flush_interval": 0.05}}
    stack = stack_factory(tmp_path, sinks=sinks).start()
    root = stack.root
    runs = [f"steady-{i}" for i in range(3)]
    outs = [tmp_path / f"{run}.json" for run in runs]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", PUBLISHER, stack.frontend, run, str(SECONDS), str(RATE), str(out)], env=env
        )
        for run, out in zip(runs, outs, strict=True)
    ]
    try:

        def lines(run: str) -> int:
            path = root / run / "metrics.jsonl"
            return len(path.read_bytes().splitlines()) if path.exists() else 0

        wait_until(lambda: all(lines(r) >= RATE for r in runs), 30, "a second of traffic from each publisher")
        broker = stack.child_pid("broker")
        killed_at = time.time()
        os.kill(broker, signal.SIGKILL)
        wait_until(lambda: "restarting broker" in stack.stdout(), 20, "up to restart the broker")
        for proc in procs:
            assert proc.wait(60) == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    results = [json.loads(out.read_text()) for out in outs]
    for run, result in zip(runs, results, strict=True):
        # the closing heartbeat is the publisher's last message: once it is on disk, all is
        last = result["next_seq"] - 1
        wait_until(lambda r=run, p=result["pub"], s=last: s in _seqs(root, r, p), 30, f"the last message of {run}")
    assert stack.stop() == 0
    for run, result in zip(runs, results, strict=True):
        pub = result["pub"]
        on_disk = _seqs(root, run, pub)
        missing = sorted(set(range(result["next_seq"])) - on_disk.keys())
        assert result["dropped"] == 0, result
        assert len(missing) <= IN_FLIGHT, (run, len(missing))
        # exactly recorded: the JSONL sink's gap notes name every missing seq, and no other
        recorded = {seq for first, last, _ in _gaps(root, run, pub) for seq in range(first, last + 1)}
        assert recorded == set(missing), (run, missing, _gaps(root, run, pub))
        # what was published while the broker was down (it cannot be back within 0.5 s) is on disk
        # (judged by seq, not by how many: a publisher stalled by a busy machine sends fewer then)
        while_down = sorted(seq for seq, ts in on_disk.items() if killed_at + 0.05 <= ts <= killed_at + 0.5)
        assert while_down, (run, "nothing on disk from while the broker was down")
        assert not [s for s in missing if while_down[0] <= s <= while_down[-1]], (run, "lost while it was down")

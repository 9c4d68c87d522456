"""``metricbus up`` end to end: real broker and sink processes, real files, real signals."""

from __future__ import annotations

import math
import os
import signal
import socket
import threading
from pathlib import Path
from typing import Any

import msgpack
from support import Stack, wait_until

from bus.publisher import Publisher
from bus.testing import raw_frontend_socket
from sinks.jsonl_files import ReadStats, node_dir, read_file, read_records

TOTAL = 10_000


def value_of(run: int, i: int) -> dict[str, Any]:
    """What message ``i`` of run ``run`` carries: special floats and every v1 value type."""
    special = (math.nan, math.inf, -math.inf)[i % 3]
    return {
        "i": i,
        "x": run + i / 8,
        "special": special,
        "flag": i % 2 == 0,
        "none": None,
        "name": f"r{run}-{i}",
        "nested": {"k": [i, "v"]},
    }


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return bool(a == b) and type(a) is type(b)


def test_three_publishers_send_ten_thousand_messages_and_every_one_is_on_disk(stack: Stack) -> None:
    """Three runs publishing at once right after construction: every message is in the JSONL, in seq order, intact."""
    counts = [TOTAL // 3 + (1 if k < TOTAL % 3 else 0) for k in range(3)]
    pubs: dict[int, tuple[str, int, int]] = {}
    start = threading.Barrier(3)

    def train(k: int) -> None:
        start.wait()
        with Publisher(stack.frontend, run=f"run-{k}", heartbeat_interval=1e9) as pub:
            for i in range(counts[k]):
                pub.metrics(value_of(k, i), step=i)
        pubs[k] = (pub.pub, pub.sent, pub.dropped)

    threads = [threading.Thread(target=train, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(3):
        wait_until(lambda k=k: len(stack.records(f"run-{k}", "metrics")) >= counts[k], 60, f"run-{k}'s metrics")
    stack.stop()
    assert sum(counts) == TOTAL
    for k in range(3):
        pub_id, sent, dropped = pubs[k]
        assert (sent, dropped) == (counts[k] + 1, 0)  # + the closing heartbeat
        rows = stack.records(f"run-{k}", "metrics")
        assert [r["seq"] for r in rows] == list(range(counts[k])), "missing, duplicated or out of order"
        assert {r["pub"] for r in rows} == {pub_id}
        for i, row in enumerate(rows):
            assert row["step"] == i and row["kind"] == "metrics" and row["run"] == f"run-{k}"
            assert same(row["data"], value_of(k, i)), f"run-{k} message {i}: {row['data']}"
        assert stack.records(f"run-{k}", "bus") == [], "a gap was reported"


def test_garbage_is_counted_and_skipped_and_good_messages_around_it_are_recorded(
    stack_factory: type[Stack], tmp_path: Path
) -> None:
    """Random bytes, 1 or 3 frames, non-map msgpack, wrong types, an oversized frame: counted, noted, skipped."""
    cap = 64 * 1024
    stack = stack_factory(tmp_path, extra={"broker": {"max_message_bytes": cap}}).start()
    good = {
        "v": 1,
        "kind": "metrics",
        "run": "g",
        "node": "n",
        "pub": "n:1:g",
        "seq": 0,
        "ts": 1.0,
        "step": 0,
        "data": {},
    }
    garbage = [
        [b"metrics/g", os.urandom(64)],
        [b"metrics/g"],
        [b"metrics/g", msgpack.packb(good), b"a third frame"],
        [b"metrics/g", msgpack.packb([1, 2, 3])],
        [b"metrics/g", msgpack.packb({**good, "seq": "zero", "data": 5})],
        [b"metrics/g", msgpack.packb({**good, "data": {"blob": "x" * (cap + 1)}})],  # over the cap, under 16x
    ]
    with Publisher(stack.frontend, run="g", heartbeat_interval=1e9) as pub:
        for i in range(100):
            pub.metrics({"i": i})
        with raw_frontend_socket(stack.frontend) as raw:
            for frames in garbage:
                raw.send_multipart(frames)
        with raw_frontend_socket(stack.frontend) as raw:
            # Over 16x the cap libzmq itself refuses the frame and drops this connection (a memory bound).
            raw.send_multipart([b"metrics/g", b"\x80" * (16 * cap + 1)])
        for i in range(100, 200):
            pub.metrics({"i": i})

    def undecodable() -> int:
        notes = [r for r in read_records(node_dir(stack.root, socket.gethostname()), ["bus"])]
        return sum(r["data"]["count"] for r in notes if r["data"].get("event") == "undecodable")

    wait_until(lambda: len(stack.records("g", "metrics")) >= 200, 30, "200 good messages")
    wait_until(lambda: undecodable() >= len(garbage), 30, "the undecodable count in bus.jsonl")
    stack.stop()
    assert [r["data"]["i"] for r in stack.records("g", "metrics")] == list(range(200))
    assert undecodable() == len(garbage)  # the refused giant never reached a sink
    assert stack.records("g", "bus") == [], "garbage must not look like a gap"
    assert "undecodable frame" in stack.stderr()
    assert stack.stderr().count("undecodable frame") <= 2, "the stderr report is rate-limited"


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return "X"


def _dead(pid: int) -> bool:
    return _state(pid) in ("Z", "X")


def test_a_killed_sink_is_restarted_its_files_stay_readable_and_the_gap_is_recorded(stack: Stack) -> None:
    """SIGKILL the JSONL sink mid-stream: it restarts, drops the torn line, logs/<run>/bus.jsonl names the gap."""
    run = "kill"
    stop = threading.Event()
    pub = Publisher(stack.frontend, run=run, heartbeat_interval=1e9)

    def train() -> None:
        i = 0
        while not stop.is_set():
            pub.metrics({"i": i}, step=i)
            i += 1
            stop.wait(0.0005)  # about 1-2k messages/s: a steady stream across the restart

    thread = threading.Thread(target=train)
    thread.start()
    metrics = stack.root / run / "metrics.jsonl"
    try:
        wait_until(lambda: len(stack.records(run, "metrics")) > 300, 30, "the first records")
        old = stack.child_pid("sink jsonl")
        # Stopped first, so that the torn line is in place before the supervisor can start a new sink
        # (the sink writes a batch with one os.write: a stopped sink leaves whole lines).
        os.kill(old, signal.SIGSTOP)
        wait_until(lambda: _state(old) == "T", 10, "the sink to stop")
        with metrics.open("ab") as f:  # what a kill in the middle of a write leaves behind
            f.write(b'{"v":1,"kind":"metrics","run":"kill","seq":')
        stats = ReadStats()
        before = len(list(read_file(metrics, stats)))
        assert stats.torn_tail and stats.bad_lines == 0, "the reader must skip the torn line, not choke on it"
        os.kill(old, signal.SIGKILL)
        wait_until(lambda: _dead(old), 10, "the sink to die")
        wait_until(lambda: "restarting sink jsonl" in stack.stdout(), 20, "the supervisor to restart the sink")
        wait_until(lambda: len(stack.records(run, "metrics")) > before + 300, 30, "records after the restart")
    finally:
        stop.set()
        thread.join()
        pub.close()
    total = pub.sent
    assert pub.dropped == 0
    wait_until(lambda: _seqs(stack, run) and max(_seqs(stack, run)) == total - 1, 30, "the last message")
    assert stack.stop() == 0

    assert "sink jsonl exited with code -9" in stack.stdout()
    assert "dropped a torn last line" in stack.stderr()
    for path in stack.root.rglob("*.jsonl"):
        stats = ReadStats()
        list(read_file(path, stats))
        assert (stats.torn_tail, stats.bad_lines) == (False, 0), f"{path} is damaged"
    gaps = [r["data"] for r in stack.records(run, "bus") if r["data"]["event"] == "gap"]
    assert gaps and all(g["of_pub"] == pub.pub for g in gaps)
    missing = {s for g in gaps for s in range(g["first"], g["last"] + 1)}
    recorded = _seqs(stack, run)
    assert sum(g["missing"] for g in gaps) == len(missing)
    assert not recorded & missing
    assert recorded | missing == set(range(total)), "every message is either on disk or inside a reported gap"


def _seqs(stack: Stack, run: str) -> set[int]:
    return {r["seq"] for kind in ("metrics", "event") for r in stack.records(run, kind)}


def test_sigterm_of_up_flushes_every_sink_and_loses_nothing_acknowledged(
    stack_factory: type[Stack], tmp_path: Path
) -> None:
    """Publish a burst, close the publisher, SIGTERM `up` at once: both sinks hold every acknowledged message."""
    sinks = {
        "all": {"type": "jsonl", "root": str(tmp_path / "a")},
        "metrics_only": {"type": "jsonl", "root": str(tmp_path / "b"), "topics": ["metrics/"], "flush_interval": 5.0},
    }
    stack = stack_factory(tmp_path, sinks=sinks).start()
    n = 20_000
    with Publisher(stack.frontend, run="term", heartbeat_interval=1e9) as pub:
        for i in range(n):
            pub.metrics({"i": i}, step=i)
    assert (pub.sent, pub.dropped) == (n + 1, 0)  # acknowledged: taken by the socket, none refused
    assert stack.stop() == 0
    assert "stopped" in stack.stdout()
    for root in ("a", "b"):
        rows = list(read_records(tmp_path / root / "term", ["metrics"]))
        assert [r["seq"] for r in rows] == list(range(n)), f"sink {root} lost messages at shutdown"
    assert [r["data"]["event"] for r in read_records(tmp_path / "a" / "term", ["event"])] == ["heartbeat"]

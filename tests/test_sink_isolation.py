"""A broken sink never costs the others: a raising, a dying and a sleeping sink run beside
the JSONL sink under one ``metricbus up``, and the JSONL record stays complete each time.

The misbehaving sinks live in ``tests/sinks_for_tests.py`` and record ``pub seq kind`` per
message they receive, so the test sees what reached each of them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import Stack, wait_until

from bus.publisher import Publisher

#: Small broker and subscriber queues, so that the sleeping sink overflows its own quickly.
BROKER_HWM = 200
SLOW_QUEUE = 20
#: Publishing paces itself on the JSONL sink (bursts it has fully written), so the JSONL sink
#: never meets the small broker queue while the sleeping one is flooded.
BURST = 100


@dataclass
class Bed:
    stack: Stack
    dir: Path

    def record(self, sink: str) -> list[tuple[str, int, str]]:
        path = self.dir / f"{sink}.rec"
        if not path.exists():
            return []
        rows = []
        for line in path.read_text().splitlines():
            pub, seq, kind = line.split(" ")
            rows.append((pub, int(seq), kind))
        return rows

    def jsonl_count(self, run: str) -> int:
        path = self.stack.root / run / "metrics.jsonl"
        return path.read_bytes().count(b"\n") if path.exists() else 0


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    """One stack: jsonl beside a raising, a dying and a sleeping sink."""
    workdir = tmp_path_factory.mktemp("isolation")
    sinks = {
        "jsonl": {"type": "jsonl", "root": str(workdir / "logs")},
        "raising": {"type": "sinks_for_tests:RaisingSink", "record": str(workdir / "raising.rec")},
        "dying": {
            "type": "sinks_for_tests:DyingSink",
            "record": str(workdir / "dying.rec"),
            "marker": str(workdir / "dying.marker"),
        },
        "slow": {
            "type": "sinks_for_tests:SlowSink",
            "record": str(workdir / "slow.rec"),
            "release": str(workdir / "slow.release"),
            "delay": 0.2,
            "batch_size": 1,
            "queue": SLOW_QUEUE,
        },
    }
    tests_dir = str(Path(__file__).resolve().parent)
    stack = Stack(workdir, sinks=sinks, extra={"broker": {"hwm": BROKER_HWM}}, env={"PYTHONPATH": tests_dir})
    stack.start()
    try:
        yield Bed(stack, workdir)
    finally:
        (workdir / "slow.release").touch()  # let the sleeping sink drain so that it stops quickly
        stack.stop()


def publish_paced(bed: Bed, pub: Publisher, run: str, count: int, pad: int = 0) -> None:
    """Publish ``count`` metrics in bursts, each one waited for in the JSONL files."""
    start = bed.jsonl_count(run)
    sent = 0
    while sent < count:
        n = min(BURST, count - sent)
        for i in range(sent, sent + n):
            pub.metrics({"i": i, "pad": "x" * pad}, step=i)
        sent += n
        target = start + sent
        wait_until(lambda t=target: bed.jsonl_count(run) >= t, 30, f"JSONL to hold {target} lines of {run}")


def assert_jsonl_complete(bed: Bed, run: str, count: int) -> None:
    rows = bed.stack.records(run, "metrics")
    assert [r["data"]["i"] for r in rows] == list(range(count))


def test_a_raising_sink_is_logged_with_a_count_and_keeps_receiving(bed: Bed) -> None:
    """handle() raising on every batch: logged with the sink's name and a count; it and JSONL get everything."""
    pid = bed.stack.child_pid("sink raising")
    with Publisher(bed.stack.frontend, run="raise") as pub:
        publish_paced(bed, pub, "raise", 300)
    assert_jsonl_complete(bed, "raise", 300)
    wait_until(lambda: len([r for r in bed.record("raising") if r[2] == "metrics"]) >= 300, 15, "raising sink's record")
    log = wait_until(
        lambda: re.search(
            r"sink raising: handle raised RuntimeError: boom .*\(errors so far: \d+\)", bed.stack.stderr()
        ),
        15,
        "the raising sink's error in the log",
    )
    assert log is not None
    assert bed.stack.child_pid("sink raising") == pid  # caught in the runner: no restart needed


def test_a_sink_that_kills_its_process_is_restarted(bed: Bed) -> None:
    """os._exit in handle(): the supervisor restarts the sink; JSONL misses nothing meanwhile."""
    pids = bed.dir / "dying.pids"
    with Publisher(bed.stack.frontend, run="die") as pub:
        publish_paced(bed, pub, "die", 200)
        wait_until(lambda: "restarting sink dying" in bed.stack.stdout(), 20, "the supervisor to restart it")
        wait_until(lambda: len(pids.read_text().split()) == 2, 20, "the restarted sink to start")
        first, second = pids.read_text().split()
        assert bed.stack.child_pid("sink dying") == int(second) != int(first)

        def after_restart_received() -> bool:
            pub.metrics({"i": -1}, step=-1)  # keep publishing: the new process subscribes at its own pace
            pub.flush()
            return any(kind == "metrics" for _, _, kind in bed.record("dying"))

        wait_until(after_restart_received, 20, "the restarted sink to receive", interval=0.2)
    assert re.search(r"sink dying exited with code 3; restarting", bed.stack.stdout())
    rows = bed.stack.records("die", "metrics")
    assert [r["data"]["i"] for r in rows if r["data"]["i"] >= 0] == list(range(200))


def test_a_sleeping_sink_fills_only_its_own_queue_and_counts_its_drops(bed: Bed) -> None:
    """A sink sleeping in handle() drops what overflows its own queue, counted as seq gaps; JSONL stays complete."""
    count = 3000
    with Publisher(bed.stack.frontend, run="slow") as pub:
        publish_paced(bed, pub, "slow", count, pad=2000)
        flood_end = bed.stack.records("slow", "metrics")[-1]
        (bed.dir / "slow.release").touch()

        def reached_after_the_flood() -> bool:
            # Its queue is still full right after the release: keep sending one message at a
            # time until one lands after the flood, where the jump in seq shows the drops.
            pub.metrics({"i": -1}, step=-1)
            pub.flush()
            return any(p == flood_end["pub"] and k != "gap" and s > flood_end["seq"] for p, s, k in bed.record("slow"))

        wait_until(reached_after_the_flood, 60, "the released sink to get a message sent after the flood", interval=0.2)
    mine = [(seq, kind) for pub, seq, kind in bed.record("slow") if pub == flood_end["pub"]]
    got = sorted(seq for seq, kind in mine if kind != "gap")
    counted = sum(missing for missing, kind in mine if kind == "gap")
    print(f"sleeping sink: got {len(got)}, counted lost {counted}, range {got[0]}..{got[-1]}")
    assert len([s for s in got if s <= flood_end["seq"]]) < count  # it could not keep up: its queue overflowed
    # every message lost between the first and last it received is counted as a gap, exactly
    assert counted == got[-1] - got[0] + 1 - len(got) > 0
    rows = bed.stack.records("slow", "metrics")
    assert [r["data"]["i"] for r in rows if r["data"]["i"] >= 0] == list(range(count))
    assert re.search(r"sink slow: seq gap: publisher \S+ \(run \S+\) skipped seq \d+\.\.\d+", bed.stack.stderr())

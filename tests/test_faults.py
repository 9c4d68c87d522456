"""Faults against real processes: a killed sink, a restarted broker, a full disk, a stuck sink.

In each, the asserted outcome is what the issue promises: the stack recovers by itself,
files stay valid, and every lost message is accounted for by a ``gap`` record.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import REPO, Stack, wait_until

from bus.publisher import Publisher

TESTS = str(REPO / "tests")


class Trainer(threading.Thread):
    """A training loop's publishing: a steady pace of metrics, each publish() call timed."""

    def __init__(self, pub: Publisher, interval: float = 0.002, payload: int = 0) -> None:
        super().__init__(daemon=True)
        self.pub = pub
        self.interval = interval
        self.pad = "x" * payload
        self.calls = 0
        self.longest_call = 0.0
        self.call_times: list[float] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            start = time.perf_counter()
            self.pub.metrics({"i": self.calls, "pad": self.pad}, step=self.calls)
            self.longest_call = max(self.longest_call, time.perf_counter() - start)
            self.call_times.append(time.monotonic())
            self.calls += 1
            self._halt.wait(self.interval)  # the pace of a training step, not a wait for anything

    def stop(self) -> None:
        self._halt.set()
        self.join(10)


def all_lines_valid(root: Path) -> int:
    """Every line of every JSONL file under ``root`` is one whole JSON object; returns the count."""
    count = 0
    for path in root.rglob("*.jsonl"):
        data = path.read_bytes()
        assert not data or data.endswith(b"\n"), f"{path} ends in a torn line"
        for number, line in enumerate(data.splitlines(), 1):
            try:
                assert isinstance(json.loads(line), dict)
            except ValueError as exc:
                raise AssertionError(f"{path}:{number} is not a JSON object: {line[:200]!r}") from exc
            count += 1
    return count


def seqs_of(stack: Stack, run: str, pub: str) -> list[int]:
    rows = stack.records(run, "metrics") + stack.records(run, "event")
    return sorted(r["seq"] for r in rows if r["pub"] == pub)


def gaps_of(stack: Stack, run: str, pub: str) -> list[tuple[int, int]]:
    rows = stack.records(run, "bus")
    return [(r["data"]["first"], r["data"]["last"]) for r in rows if r["data"].get("of_pub") == pub]


def assert_every_loss_is_a_reported_gap(seqs: list[int], gaps: list[tuple[int, int]], total: int) -> int:
    """Recorded seqs and gap ranges together cover 0..total-1 exactly once; returns the lost count."""
    assert len(seqs) == len(set(seqs)), "a message was recorded twice"
    lost = [s for first, last in gaps for s in range(first, last + 1)]
    assert not set(lost) & set(seqs), "a gap covers a recorded message"
    assert sorted(seqs + lost) == list(range(total)), "a loss that no gap record reports"
    return len(lost)


def _wait_for_restart(stack: Stack, name: str, old_pid: int) -> int:
    def new_pid() -> int | None:
        try:
            pid = stack.child_pid(name)
        except LookupError:
            return None
        return pid if pid != old_pid else None

    pid: int = wait_until(new_pid, 30, f"the supervisor to restart {name}")
    return pid


def test_a_sigkilled_sink_is_restarted_and_its_loss_is_a_reported_gap(
    tmp_path: Path, stack_factory: type[Stack]
) -> None:
    """SIGKILL the JSONL sink mid-stream: restarted, files valid, the loss window is a seq gap in bus.jsonl."""
    stack = stack_factory(tmp_path).start()
    pub = Publisher(stack.frontend, run="killsink")
    trainer = Trainer(pub)
    trainer.start()
    try:
        wait_until(lambda: len(stack.records("killsink", "metrics")) > 200, 20, "the first records")
        old = stack.child_pid("sink jsonl")
        os.kill(old, signal.SIGKILL)
        killed_at = trainer.calls
        _wait_for_restart(stack, "sink jsonl", old)
        wait_until(
            lambda: any(s > killed_at + 200 for s in seqs_of(stack, "killsink", pub.pub)),
            30,
            "records from after the restart",
        )
    finally:
        trainer.stop()
        pub.close()
    total = pub._next_seq  # every seq this publisher handed out, heartbeats included
    wait_until(lambda: total - 1 in seqs_of(stack, "killsink", pub.pub), 20, "the last message")
    assert stack.stop() == 0
    assert "restarting sink jsonl" in stack.stdout()
    all_lines_valid(stack.root)
    gaps = gaps_of(stack, "killsink", pub.pub)
    assert gaps, "the restarted sink reports the messages it missed"
    lost = assert_every_loss_is_a_reported_gap(seqs_of(stack, "killsink", pub.pub), gaps, total)
    assert lost > 0


def test_a_restarted_broker_loses_only_a_reported_gap_and_training_never_blocks(
    tmp_path: Path, stack_factory: type[Stack]
) -> None:
    """Kill the broker mid-training: publishers reconnect by themselves, never block; the gap is reported."""
    stack = stack_factory(tmp_path).start()
    pub = Publisher(stack.frontend, run="killbroker")
    trainer = Trainer(pub)
    trainer.start()
    try:
        wait_until(lambda: len(stack.records("killbroker", "metrics")) > 200, 20, "the first records")
        old = stack.child_pid("broker")
        os.kill(old, signal.SIGKILL)
        down_at = time.monotonic()
        _wait_for_restart(stack, "broker", old)
        up_at = time.monotonic()
        restarted_at = trainer.calls
        wait_until(
            lambda: any(s > restarted_at + 300 for s in seqs_of(stack, "killbroker", pub.pub)),
            30,
            "records from after the broker's restart",
        )
    finally:
        trainer.stop()
        pub.close()
    total = pub._next_seq
    wait_until(lambda: total - 1 in seqs_of(stack, "killbroker", pub.pub), 20, "the last message")
    # Training went on while there was no broker at all, and no call waited for it.
    assert sum(1 for t in trainer.call_times if down_at < t < up_at) > 0
    assert trainer.longest_call < 1.0, f"a publish() call blocked for {trainer.longest_call:.2f} s"
    assert stack.stop() == 0
    seqs = seqs_of(stack, "killbroker", pub.pub)
    gaps = gaps_of(stack, "killbroker", pub.pub)
    # The publisher's own queue survives the outage (a connecting ZeroMQ socket keeps its pipe
    # across reconnects), so often nothing is lost at all; what died inside the broker is a gap.
    assert_every_loss_is_a_reported_gap(seqs, gaps, total)
    resumed = gaps[-1][1] + 1 if gaps else 0
    assert [s for s in seqs if s >= resumed] == list(range(resumed, total)), "everything after the restart"
    all_lines_valid(stack.root)


# -- the disk filling up ----------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs with 200 inodes mounted at tmp_path/disk (root only); always unmounted."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs to fill needs root and mount(8)")
    disk = tmp_path / "disk"
    disk.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m,nr_inodes=200", "tmpfs", str(disk)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield disk
    finally:
        if subprocess.run(["umount", str(disk)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def fill(path: Path) -> int:
    """Write ``path`` until the file system says ENOSPC; returns the bytes written."""
    written = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for chunk in (65536, 4096, 256, 1):
            while True:
                try:
                    written += os.write(fd, b"\0" * chunk)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
    finally:
        os.close(fd)
    return written


def use_up_inodes(directory: Path) -> list[Path]:
    """Create empty files until the file system has no inode left: then no file or directory can be made."""
    directory.mkdir()
    made: list[Path] = []
    while True:
        path = directory / str(len(made))
        try:
            path.touch()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
            return made
        made.append(path)


def _alerts(root: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for path in root.glob("_nodes/*/alerts.jsonl"):
        rows += [json.loads(line) for line in path.read_text().splitlines()]
    return [r for r in rows if r["data"].get("rule") == "jsonl_write_failed"]


def test_a_full_disk_raises_an_alert_keeps_the_sink_running_and_loses_nothing(
    tmp_path: Path, small_disk: Path, stack_factory: type[Stack]
) -> None:
    """Disk full under the JSONL sink: an alert fires, no corrupt line, and it all lands when space returns.

    A run first seen while the disk is full (its directory and file made on a full disk) loses nothing either.
    """
    elsewhere = tmp_path / "alerts"
    sinks = {
        "jsonl": {"type": "jsonl", "root": str(small_disk / "logs"), "fsync_interval": 0.1},
        "alert_log": {"type": "jsonl", "topics": ["alert/"], "root": str(elsewhere)},
    }
    stack = stack_factory(tmp_path, sinks=sinks).start()
    stack.root = small_disk / "logs"
    sink_pid = stack.child_pid("sink jsonl")
    pad = "y" * 1000
    with Publisher(stack.frontend, run="fulldisk") as pub, Publisher(stack.frontend, run="latecomer") as late:
        for step in range(20):
            pub.metrics({"step": step, "pad": pad}, step=step)
        wait_until(lambda: len(stack.records("fulldisk", "metrics")) == 20, 20, "the first 20 records")
        fill(small_disk / "filler")
        inodes = use_up_inodes(small_disk / "inodes")
        for step in range(20, 520):
            pub.metrics({"step": step, "pad": pad}, step=step)
            if step % 10 == 0:
                late.metrics({"step": step, "pad": pad}, step=step)
        firing = wait_until(lambda: [a for a in _alerts(elsewhere) if a["data"]["state"] == "firing"], 20, "alert")
        assert firing[0]["data"]["severity"] == "critical"
        assert re.search(r"\((ENOSPC|short write)\)", firing[0]["data"]["message"])
        assert stack.child_pid("sink jsonl") == sink_pid, "the sink keeps running"
        all_lines_valid(small_disk / "logs")
        assert len(stack.records("fulldisk", "metrics")) < 520
        (small_disk / "filler").unlink()  # space returns
        for path in inodes:
            path.unlink()
        rows = wait_until(
            lambda: len(stack.records("fulldisk", "metrics")) == 520 and stack.records("fulldisk", "metrics"),
            30,
            "every held line to be written once space returned",
        )
    assert [r["step"] for r in rows] == list(range(520))
    wait_until(lambda: len(stack.records("latecomer", "metrics")) == 50, 20, "the latecomer's 50 lines")
    latecomer = stack.records("latecomer", "metrics")
    assert [r["step"] for r in latecomer] == list(range(20, 520, 10))
    wait_until(lambda: [a for a in _alerts(elsewhere) if a["data"]["state"] == "resolved"], 20, "resolved alert")
    assert stack.child_pid("sink jsonl") == sink_pid
    assert stack.stop() == 0
    all_lines_valid(small_disk / "logs")
    assert not stack.records("fulldisk", "bus"), "nothing was lost, so no gap"
    assert not stack.records("latecomer", "bus"), "nothing was lost, so no gap"
    # The alert also reached the full disk's own files once there was room.
    assert _alerts(small_disk / "logs")


# -- a sink that stops reading ----------------------------------------------------------------


@pytest.mark.slow
def test_a_stuck_sink_drops_only_its_own_messages_and_counts_them(tmp_path: Path, stack_factory: type[Stack]) -> None:
    """A sink stuck in handle(): its queue fills and its drops are seq gaps; broker, others and training go on."""
    record, release = tmp_path / "stuck.jsonl", tmp_path / "release"
    sinks = {
        "jsonl": {"type": "jsonl", "root": str(tmp_path / "logs")},
        "stuck": {
            "type": "fault_sinks:StallingSink",
            "record": str(record),
            "release": str(release),
            "queue": 1000,
            "topics": [""],  # every kind: seq gaps are only loss to a sink that sees every kind
        },
    }
    env = {"PYTHONPATH": os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")])}
    stack = stack_factory(tmp_path, sinks=sinks, extra={"broker": {"hwm": 2000}}, env=env).start()
    broker_pid = stack.child_pid("broker")
    count = 30_000
    pad = "z" * 1000
    longest = 0.0

    def stuck_view(pub_id: str, last: int) -> tuple[set[int], int] | None:
        seen, missing = set(), 0
        for line in record.read_text().splitlines() if record.exists() else []:
            item = json.loads(line)
            if "gap" in item and item["gap"]["of_pub"] == pub_id:
                missing += item["gap"]["missing"]
            elif item.get("pub") == pub_id:
                seen.add(item["seq"])
        return (seen, missing) if last in seen else None

    with Publisher(stack.frontend, run="stuck") as pub:
        for step in range(count):
            start = time.perf_counter()
            pub.metrics({"step": step, "pad": pad}, step=step)
            longest = max(longest, time.perf_counter() - start)
            if step % 100 == 99:
                time.sleep(0.02)  # a training's pace, ~5,000 msg/s: the healthy sink keeps up with it
        rows = wait_until(
            lambda: len(stack.records("stuck", "metrics")) == count and stack.records("stuck", "metrics"),
            90,
            "the healthy JSONL sink to record everything",
        )
        assert [r["step"] for r in rows] == list(range(count))
        assert pub.dropped == 0 and longest < 1.0
        assert not stack.records("stuck", "bus"), "the healthy sink saw no gap"
        release.touch()

        def caught_up() -> bool:
            # A drop shows as a gap only when a later message arrives: keep sending one until it does.
            pub.event("marker")
            view = stuck_view(pub.pub, pub._next_seq - 1)
            return view is not None

        wait_until(caught_up, 60, "the released sink to catch up", interval=0.2)
    total = pub._next_seq  # close() sent a last heartbeat

    seen, missing = wait_until(lambda: stuck_view(pub.pub, total - 1), 20, "the released sink to get the last message")
    assert missing > 0, "the stuck sink's queue overflowed and its drops were counted"
    assert len(seen) + missing == total, "every seq either arrived or is inside a reported gap"
    assert stack.child_pid("broker") == broker_pid
    assert stack.stop() == 0

"""The JSONL sink and its reader on real files: layout, values, torn lines, rotation, follow."""

from __future__ import annotations

import json
import math
import os
import threading
import time
from pathlib import Path
from typing import Any

from support import wait_until

from bus.message import Message
from sinks.jsonl import JsonlSink, _File
from sinks.jsonl_files import (
    ReadStats,
    files_of,
    follow,
    list_nodes,
    list_runs,
    node_dir,
    read_file,
    read_records,
    run_dir,
)


def msg(
    seq: int, kind: str = "metrics", run: str | None = "r1", node: str = "n1", pub: str = "p", **data: Any
) -> Message:
    return Message(kind, run, node, pub, seq, 1700000000.0 + seq, seq, data or {"i": seq})


def test_each_kind_goes_to_its_documented_file(tmp_path: Path) -> None:
    """<run>/{metrics,episodes,events,alerts,bus}.jsonl and _nodes/<node>/{system,alerts,bus}.jsonl."""
    sink = JsonlSink(str(tmp_path))
    sink.handle(
        [
            msg(0, "metrics"),
            msg(1, "episode"),
            msg(2, "event"),
            msg(3, "alert"),
            msg(4, "bus"),
            msg(5, "system"),  # system is per node even with a run
            msg(6, "alert", run=None),
            msg(7, "bus", run=None, node="host/with:odd chars"),
        ]
    )
    sink.close()
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.jsonl"))
    assert files == [
        "_nodes/host_with_odd_chars/bus.jsonl",
        "_nodes/n1/alerts.jsonl",
        "_nodes/n1/system.jsonl",
        "r1/alerts.jsonl",
        "r1/bus.jsonl",
        "r1/episodes.jsonl",
        "r1/events.jsonl",
        "r1/metrics.jsonl",
    ]
    assert list_runs(tmp_path) == ["r1"]
    assert list_nodes(tmp_path) == ["host_with_odd_chars", "n1"]
    assert [r["seq"] for r in read_records(node_dir(tmp_path, "n1"), ["system"])] == [5]


def test_a_line_is_the_payload_and_values_survive(tmp_path: Path) -> None:
    """Each line is the v1 payload as JSON; NaN/±Inf, None, bools, strings and nesting read back intact."""
    data = {"nan": math.nan, "inf": math.inf, "ninf": -math.inf, "n": None, "b": True, "s": "é", "d": {"l": [1, 2.5]}}
    sink = JsonlSink(str(tmp_path))
    sink.handle([msg(0, **data)])
    sink.close()
    (record,) = read_records(run_dir(tmp_path, "r1"), ["metrics"])
    assert list(record) == ["v", "kind", "run", "node", "pub", "seq", "ts", "step", "data"]
    got = record["data"]
    assert math.isnan(got.pop("nan")) and got == {k: v for k, v in data.items() if k != "nan"}
    line = (tmp_path / "r1" / "metrics.jsonl").read_text()
    assert "NaN" in line and "-Infinity" in line and line.count("\n") == 1


def test_lines_reach_the_file_when_a_batch_is_handled(tmp_path: Path) -> None:
    """No flush needed: a handled batch is on the OS's side (readable) at once."""
    sink = JsonlSink(str(tmp_path))
    sink.handle([msg(i) for i in range(3)])
    assert [r["seq"] for r in read_file(tmp_path / "r1" / "metrics.jsonl")] == [0, 1, 2]
    sink.close()


def test_the_reader_skips_a_torn_last_line_and_counts_bad_lines(tmp_path: Path) -> None:
    """A last line without its newline (killed writer) is skipped; complete non-JSON lines are counted."""
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"seq":0}\nnot json\n[1,2]\n{"seq":1}\n{"seq":2,"da')
    stats = ReadStats()
    assert [r["seq"] for r in read_file(path, stats)] == [0, 1]
    assert stats.torn_tail is True
    assert stats.bad_lines == 2


def test_reopening_truncates_a_torn_tail(tmp_path: Path) -> None:
    """A sink restarted on a file with a torn last line cuts it off, so new lines start clean."""
    path = tmp_path / "r1" / "metrics.jsonl"
    path.parent.mkdir()
    path.write_bytes(b'{"seq":0}\n{"seq":1}\n{"seq":2,"data":{"lo')
    sink = JsonlSink(str(tmp_path))
    sink.handle([msg(3)])
    sink.close()
    stats = ReadStats()
    assert [r["seq"] for r in read_file(path, stats)] == [0, 1, 3]
    assert (stats.torn_tail, stats.bad_lines) == (False, 0)


def test_a_torn_line_longer_than_the_tail_window_is_cut_whole(tmp_path: Path) -> None:
    """A torn line of 600 KiB (payloads may reach 1 MiB) is removed entirely, not just its last 256 KiB."""
    path = tmp_path / "r1" / "metrics.jsonl"
    path.parent.mkdir()
    path.write_bytes(b'{"seq":0}\n{"seq":1,"data":"' + b"x" * (600 * 1024))
    sink = JsonlSink(str(tmp_path))
    sink.handle([msg(2)])
    sink.close()
    assert len(path.read_bytes().splitlines()) == 2, "the 600 KiB torn line left nothing behind"
    assert [r["seq"] for r in read_file(path)] == [0, 2]


def test_a_file_that_is_only_a_torn_line_is_emptied(tmp_path: Path) -> None:
    """No newline anywhere: the whole content is the torn line."""
    path = tmp_path / "r1" / "metrics.jsonl"
    path.parent.mkdir()
    path.write_bytes(b'{"seq":0,"da')
    sink = JsonlSink(str(tmp_path))
    sink.handle([msg(1)])
    sink.close()
    assert [r["seq"] for r in read_file(path)] == [1]


def test_rotation_by_size_and_the_reader_streams_rotated_files_in_order(tmp_path: Path) -> None:
    """Past rotate_bytes the file becomes metrics.00000N.jsonl; read_records yields every record in order."""
    sink = JsonlSink(str(tmp_path), rotate_bytes=2000)
    for start in range(0, 300, 10):
        sink.handle([msg(i) for i in range(start, start + 10)])
    sink.close()
    files = files_of(tmp_path / "r1", "metrics")
    assert len(files) > 5
    assert [p.name for p in files[:2]] == ["metrics.000001.jsonl", "metrics.000002.jsonl"]
    assert files[-1].name == "metrics.jsonl"
    assert all(p.stat().st_size <= 2000 for p in files)
    assert [r["seq"] for r in read_records(tmp_path / "r1", ["metrics"])] == list(range(300))


def test_rotation_after_an_old_file_was_deleted_keeps_the_order(tmp_path: Path) -> None:
    """Deleting metrics.000001 must not make the next rotation reuse index 1 (it would sort first)."""
    sink = JsonlSink(str(tmp_path), rotate_bytes=500)
    sink.handle([msg(i) for i in range(10)])
    sink.handle([msg(i) for i in range(10, 20)])
    sink.handle([msg(i) for i in range(20, 30)])
    first = files_of(tmp_path / "r1", "metrics")[0]
    first.unlink()
    sink.handle([msg(i) for i in range(30, 40)])
    sink.close()
    seqs = [r["seq"] for r in read_records(tmp_path / "r1", ["metrics"])]
    assert seqs == sorted(seqs) and seqs[-1] == 39


def test_last_seen_recovers_the_highest_seq_per_publisher(tmp_path: Path) -> None:
    """last_seen() reads the ends of the current files: the max seq of each publisher across kinds."""
    sink = JsonlSink(str(tmp_path))
    sink.handle([msg(0, pub="a"), msg(1, "event", pub="a"), msg(2, pub="a"), msg(7, "system", pub="b")])
    sink.close()
    with (tmp_path / "r1" / "metrics.jsonl").open("ab") as f:
        f.write(b'{"pub":"a","seq":99')  # a torn line is not evidence
    assert JsonlSink(str(tmp_path)).last_seen() == {"a": 2, "b": 7}


def test_follow_streams_appends_across_rotations(tmp_path: Path) -> None:
    """follow() yields every record of a file being written and rotated, in order, none twice."""
    path = tmp_path / "r1" / "metrics.jsonl"
    sink = JsonlSink(str(tmp_path), rotate_bytes=3000)
    got: list[int] = []
    stop = threading.Event()

    def reader() -> None:
        for record in follow(path, poll_interval=0.005, stop=stop):
            got.append(record["seq"])

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        sink.handle([msg(i) for i in range(5)])
        wait_until(lambda: len(got) == 5, 10, "follow() to open the file")  # it starts at the current file
        for start in range(5, 1000, 5):
            sink.handle([msg(i) for i in range(start, start + 5)])
        wait_until(lambda: len(got) >= 1000, 20, "follow() to catch up")
    finally:
        stop.set()
        thread.join(10)
        sink.close()
    assert len(files_of(tmp_path / "r1", "metrics")) > 10
    assert got == list(range(1000))


def test_follow_waits_for_a_line_to_be_complete(tmp_path: Path) -> None:
    """A half-written line is held back until its newline arrives; idle_timeout ends the stream."""
    path = tmp_path / "f.jsonl"
    path.write_bytes(b'{"seq":0}\n{"seq":')
    stream = follow(path, poll_interval=0.01, idle_timeout=0.3)
    assert next(stream) == {"seq": 0}
    with path.open("ab") as f:
        f.write(b'1}\n{"seq":2}\n')
    assert [next(stream), next(stream)] == [{"seq": 1}, {"seq": 2}]
    assert list(stream) == []


def test_follow_from_the_end_skips_history_but_reads_a_file_that_appears_later(tmp_path: Path) -> None:
    """from_start=False skips what is there; a file created after follow() started is read from its start."""
    existing = tmp_path / "a.jsonl"
    existing.write_text('{"old":1}\n')
    stream = follow(existing, from_start=False, poll_interval=0.01, idle_timeout=0.3)
    with existing.open("a") as f:
        f.write('{"new":1}\n')
    assert list(stream) == [{"new": 1}]
    later = tmp_path / "b.jsonl"
    stream = follow(later, from_start=False, poll_interval=0.01, idle_timeout=1.0)
    later.write_text('{"first":1}\n')
    assert next(stream) == {"first": 1}
    stream.close()


def test_records_are_json_that_other_tools_read(tmp_path: Path) -> None:
    """Plain json.loads reads every line (Python's NaN/Infinity tokens included)."""
    sink = JsonlSink(str(tmp_path))
    sink.handle([msg(0, x=math.inf), msg(1, x=2)])
    sink.close()
    lines = (tmp_path / "r1" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["data"]["x"] for line in lines] == [math.inf, 2]


def test_each_line_is_exactly_the_payload_as_compact_json(tmp_path: Path) -> None:
    """The cached-head fast path writes byte for byte what json.dumps of the payload map gives."""
    messages = [
        msg(0, x=1.5, nan=math.nan, inf=-math.inf, s='quote " and \\ and é', nested={"a": [1, None, True]}),
        Message("system", None, 'nœud "7"', "nœud:1:x", 5, 1700000000.125, None, {"cpu/percent": 3}),
        Message("event", "r1", "n1", "p", 6, 12, 2**40, {"event": "heartbeat", "sent": 6, "dropped": 0}),
        Message("alert", "r1", "n1", "p", 7, math.inf, True, {}),  # odd values a sink may be handed directly
        Message("bus", "r1", "n1", "p", 8, 1.0, None, {"event": "gap", "first": 1, "last": 2}),
    ]
    sink = JsonlSink(str(tmp_path))
    sink.handle(messages)
    sink.close()
    compact = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=True).encode
    written = {p.relative_to(tmp_path).as_posix(): p.read_text().splitlines() for p in tmp_path.rglob("*.jsonl")}
    lines = [line for _, file_lines in sorted(written.items()) for line in file_lines]
    assert sorted(lines) == sorted(compact(m.to_dict()) for m in messages)


def test_a_sink_writing_many_runs_keeps_a_bounded_number_of_files_open(tmp_path: Path) -> None:
    """Run after run, idle files are closed (no EMFILE on a long-lived sink) and reopen when written again."""
    fds_before = len(os.listdir("/proc/self/fd"))
    sink = JsonlSink(str(tmp_path))
    for run in range(300):
        sink.handle([msg(0, run=f"run-{run}"), msg(1, "event", run=f"run-{run}")])
    assert len(os.listdir("/proc/self/fd")) - fds_before <= 130
    sink.handle([msg(2, run="run-0")])  # its file was closed long ago
    sink.close()
    assert len(os.listdir("/proc/self/fd")) == fds_before
    assert [r["seq"] for r in read_records(run_dir(tmp_path, "run-0"), ["metrics"])] == [0, 2]
    assert len(list_runs(tmp_path)) == 300


def test_last_seen_skips_files_not_written_for_an_hour(tmp_path: Path) -> None:
    """An old run's files are not read at start (its publishers are gone); recent ones are."""
    sink = JsonlSink(str(tmp_path))
    sink.handle([msg(4, run="old", pub="a"), msg(9, run="new", pub="b")])
    sink.close()
    old = tmp_path / "old" / "metrics.jsonl"
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    assert JsonlSink(str(tmp_path)).last_seen() == {"b": 9}


def test_fsync_runs_off_the_loop_and_stops_with_the_sink(tmp_path: Path) -> None:
    """Frequent background fsyncs survive rotations under them; close() ends the fsync thread."""

    def fsync_threads() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name == "jsonl-fsync"}

    before = fsync_threads()
    sink = JsonlSink(str(tmp_path), fsync_interval=0.0, rotate_bytes=1500)
    for start in range(0, 400, 4):
        sink.handle([msg(i) for i in range(start, start + 4)])
        sink.flush()
    assert fsync_threads() - before, "fsync ran on the loop's thread"
    sink.close()
    assert not fsync_threads() - before
    assert [r["seq"] for r in read_records(tmp_path / "r1", ["metrics"])] == list(range(400))


def test_pending_text_drops_its_oldest_whole_lines_past_a_bound(tmp_path: Path) -> None:
    """A file's pending chunks (one per batch) lose their oldest lines, whole, down to the bound."""
    target = _File(tmp_path / "x.jsonl")
    target.chunks = [b'{"a":1}\n{"a":2}\n', b'{"a":3}\n']
    target.count = 3
    assert target.drop_oldest(16) == 1
    assert target.chunks == [b'{"a":2}\n{"a":3}\n'] and target.count == 2 and target.pending_bytes == 16
    assert target.drop_oldest(0) == 2 and target.chunks == [] and target.count == 0

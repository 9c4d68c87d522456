"""The command line beyond `up` and `check`: replay, tail, sink, and a child that cannot start."""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml
from support import REPO, Stack, free_port, wait_until

from bus.message import Message
from bus.publisher import Publisher
from sinks.jsonl import JsonlSink
from sinks.jsonl_files import read_records


def bus_command(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "metricbus", *args], capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env
    )


def test_replay_republishes_records_with_their_identity(stack: Stack, tmp_path: Path) -> None:
    """`metricbus replay FILE...` puts recorded lines back on the bus: same pub, seq, step, ts and data."""
    recorded = tmp_path / "recorded"
    sink = JsonlSink(str(recorded))
    pub_id = "trainer:42:abcd"
    originals = [
        Message("metrics", "orig", "trainer", pub_id, i, 1000.0 + i, i * 8, {"loss": 1 / (i + 1)})
        if i != 25
        else Message("event", "orig", "trainer", pub_id, i, 1000.0 + i, None, {"event": "checkpoint"})
        for i in range(51)
    ]
    sink.handle(originals)
    sink.close()
    files = [str(recorded / "orig" / "metrics.jsonl"), str(recorded / "orig" / "events.jsonl")]

    result = bus_command("replay", *files, "--endpoint", stack.frontend)
    assert result.returncode == 0, result.stderr
    assert "replayed 51 records" in result.stdout

    wait_until(lambda: len(stack.records("orig", "metrics")) >= 50, 15, "the replayed metrics")
    wait_until(lambda: stack.records("orig", "event"), 15, "the replayed event")
    replayed = stack.records("orig", "metrics")
    want = list(read_records(recorded / "orig", ["metrics"]))
    assert replayed == want  # every field, including the original pub and seq
    assert [r["data"]["event"] for r in stack.records("orig", "event")] == ["checkpoint"]
    assert stack.records("orig", "bus") == [], "a replay in seq order reports no gap"


def test_replay_of_a_missing_file_fails_with_its_name(tmp_path: Path) -> None:
    """A file that does not exist is named, exit code 2, before anything is sent."""
    result = bus_command("replay", str(tmp_path / "absent.jsonl"), "--endpoint", f"tcp://127.0.0.1:{free_port()}")
    assert result.returncode == 2
    assert "absent.jsonl" in result.stderr


def test_replay_at_recorded_speed_keeps_timestamp_order(stack: Stack, tmp_path: Path) -> None:
    """--speed paces by the recorded ts; records of several files are merged in ts order."""
    recorded = tmp_path / "recorded"
    sink = JsonlSink(str(recorded))
    sink.handle([Message("metrics", "paced", "n", "n:1:p", 2 * i, 10.0 + 0.01 * i, i, {"i": i}) for i in range(5)])
    sink.handle(
        [Message("episode", "paced", "n", "n:1:p", 2 * i + 1, 10.005 + 0.01 * i, i, {"i": i}) for i in range(5)]
    )
    sink.close()
    files = [str(recorded / "paced" / "metrics.jsonl"), str(recorded / "paced" / "episodes.jsonl")]
    result = bus_command("replay", *files, "--endpoint", stack.frontend, "--speed", "2")
    assert result.returncode == 0, result.stderr
    wait_until(lambda: len(stack.records("paced", "episode")) == 5, 15, "the replayed episodes")
    wait_until(lambda: len(stack.records("paced", "metrics")) == 5, 15, "the replayed metrics")
    # sent in ts order, so seq 0..9 arrive in order: no gap and no replay-looking jump back
    assert stack.records("paced", "bus") == []


def _lines_of(proc: subprocess.Popen[str]) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))

    threading.Thread(target=pump, daemon=True).start()
    return lines


def test_tail_prints_one_line_per_message_of_its_prefixes(stack: Stack) -> None:
    """`metricbus tail metrics/` prints each metrics message as one line (topic, step, values), nothing else."""
    tail = subprocess.Popen(
        [sys.executable, "-m", "metricbus", "tail", "metrics/"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=stack.env,  # METRICBUS_BACKEND points at the stack
        cwd=REPO,
    )
    lines = _lines_of(tail)
    try:
        with Publisher(stack.frontend, run="tailed", heartbeat_interval=1e9) as pub:
            # tail has no ready signal: publish warm-up messages until the first one is printed
            deadline = time.monotonic() + 30
            while True:
                pub.metrics({"warmup": 1})
                try:
                    first = lines.get(timeout=0.1)
                    break
                except queue.Empty:
                    assert time.monotonic() < deadline and tail.poll() is None, "tail printed nothing"
            assert "metrics/tailed" in first
            wait_until(pub.flush, 5, "warm-up sent")
            for i in range(20):
                pub.episode({"reward": 1.0})  # not subscribed: never printed
                pub.metrics({"loss": 0.5 + i, "nan": float("nan")}, step=i)
        got: list[str] = []
        while len([g for g in got if "loss=" in g]) < 20:
            got.append(lines.get(timeout=15))
    finally:
        tail.send_signal(signal.SIGTERM)
        tail.wait(timeout=30)
        assert tail.stderr is not None
        tail.stderr.close()
        assert tail.stdout is not None
        tail.stdout.close()
    printed = [g for g in got if "loss=" in g]
    assert all("episode/" not in g for g in got)
    for i, line in enumerate(printed):
        assert f"metrics/tailed step={i} loss={0.5 + i:g} nan=nan" in line, line
    assert tail.returncode == 0


def test_sink_command_refuses_an_unknown_sink_name(tmp_path: Path) -> None:
    """`metricbus sink NAME` with a name the config lacks exits 2 and lists the sinks it has."""
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"sinks": {"files": {"type": "jsonl", "root": str(tmp_path)}}}))
    result = bus_command("sink", "nope", "--config", str(config))
    assert result.returncode == 2
    assert "no sink 'nope'" in result.stderr and "files" in result.stderr


def test_up_runs_the_rest_when_a_sink_cannot_start_and_retries_it(tmp_path: Path) -> None:
    """A sink whose constructor fails is named and retried with back-off; the other sinks run and write."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    sinks = {
        "bad": {"type": "jsonl", "root": str(blocker / "logs")},  # under a file: cannot mkdir
        "good": {"type": "jsonl", "root": str(tmp_path / "logs")},
    }
    stack = Stack(tmp_path, sinks=sinks).start()
    frontend = stack.frontend
    try:
        assert "sink bad failed to start" in stack.stdout()
        wait_until(lambda: "restarting sink bad (restart #2)" in stack.stdout(), 30, "a second retry of the bad sink")

        def written() -> bool:
            with Publisher(frontend, run="still-runs") as pub:
                pub.metrics({"x": 1.0}, step=0)
            return bool(list(read_records(tmp_path / "logs" / "still-runs", ["metrics"])))

        wait_until(written, 30, "the good sink to write", interval=0.2)
    finally:
        assert stack.stop() == 0

"""The TensorBoard, Prometheus, CSV and console bridges against the JSONL sink's record.

One real ``metricbus up`` runs all of them side by side on the same messages; each bridge's
output, read back with the tool its users would use (tensorboard's EventAccumulator,
prometheus_client's text parser over HTTP, the csv module and pandas), must say what the
JSONL files say.
"""

from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from support import REPO, Stack, free_port, records, wait_until

from bus.message import Message
from bus.publisher import Publisher
from sinks.console import ConsoleSink, render_tables
from sinks.csvfile import CsvSink
from sinks.prometheus import PrometheusSink, metric_name
from sinks.tensorboard import TensorBoardSink

RUNS = ("bridge-a", "bridge-b")
STEPS = 40
#: ``train/late`` first appears at this index, so CSV has to grow a column mid-file.
LATE_FROM = 17


def metrics_at(run_index: int, i: int) -> dict[str, Any]:
    data: dict[str, Any] = {
        "train/value_loss": 1.0 / (i + 1) + run_index,
        "train/entropy": -0.5 * i,
        "time/fps": 1000 + i,
        "train/note": "text is skipped by numeric bridges",
    }
    if i >= LATE_FROM:
        data["train/late"] = i * 0.25
    if i == 5:
        data["train/approx_kl"] = math.nan
    return data


def scrape(port: int) -> dict[tuple[str, str, str], float]:
    """(metric, run, node) -> value, from a real HTTP scrape parsed by prometheus_client."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    values: dict[tuple[str, str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if "run" in sample.labels:
                values[(sample.name, sample.labels["run"], sample.labels["node"])] = sample.value
    return values


@dataclass
class BridgeRun:
    root: Path
    tb: Path
    csv: Path
    scraped: dict[tuple[str, str, str], float]
    node: str


@pytest.fixture(scope="module")
def bridges(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BridgeRun]:
    """Publish two runs through a stack with jsonl, tensorboard, csv and prometheus sinks."""
    workdir = tmp_path_factory.mktemp("bridges")
    port = free_port()
    sinks = {
        "jsonl": {"type": "jsonl", "root": str(workdir / "logs")},
        "tb": {"type": "tensorboard", "logdir": str(workdir / "tb"), "flush_secs": 1},
        "csv": {"type": "csv", "root": str(workdir / "csv")},
        "prom": {"type": "prometheus", "port": port, "topics": ["metrics/", "episode/"]},
    }
    stack = Stack(workdir, sinks=sinks).start()
    try:
        node = "bridge-node"
        for r, run in enumerate(RUNS):
            with Publisher(stack.frontend, run=run, node=node) as pub:
                for i in range(STEPS):
                    pub.metrics(metrics_at(r, i), step=i * 100)
                    if i % 10 == 9:
                        pub.episode({"reward": float(i), "length": i + 1, "success": i % 20 == 19}, step=i * 100)
        for run in RUNS:
            wait_until(lambda run=run: len(stack.records(run, "metrics")) == STEPS, 20, f"jsonl metrics of {run}")
        last_step = float((STEPS - 1) * 100)

        def prometheus_caught_up() -> dict[tuple[str, str, str], float] | None:
            values = scrape(port)
            done = all(values.get(("metricbus_step", run, node)) == last_step for run in RUNS)
            return values if done else None

        scraped = wait_until(prometheus_caught_up, 20, "prometheus to show the last step of both runs")
    finally:
        stack.stop()  # sinks flush and close: event files and CSVs are complete after this
    yield BridgeRun(workdir / "logs", workdir / "tb", workdir / "csv", scraped, node)


def jsonl_series(root: Path, run: str, kind: str) -> dict[str, list[tuple[int, float]]]:
    """Every numeric value of ``kind`` as (step, value) per key, from the JSONL record."""
    series: dict[str, list[tuple[int, float]]] = {}
    prefix = "episode/" if kind == "episode" else ""
    for row in records(root, run, kind):
        for key, value in row["data"].items():
            if isinstance(value, int | float):
                series.setdefault(prefix + key, []).append((row["step"], float(value)))
    return series


def same_float32(a: float, b: float) -> bool:
    # TensorBoard stores scalars as float32: equal after rounding, NaN equal to NaN.
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-30)


def test_tensorboard_event_files_hold_the_jsonl_scalars_and_steps(bridges: BridgeRun) -> None:
    """EventAccumulator reads, per run, exactly the JSONL record's numeric values at their steps."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for run in RUNS:
        expected = jsonl_series(bridges.root, run, "metrics") | jsonl_series(bridges.root, run, "episode")
        accumulator = EventAccumulator(str(bridges.tb / run), size_guidance={"scalars": 0})
        accumulator.Reload()
        assert sorted(accumulator.Tags()["scalars"]) == sorted(expected)
        for tag, points in expected.items():
            got = [(e.step, e.value) for e in accumulator.Scalars(tag)]
            assert [s for s, _ in got] == [s for s, _ in points], tag
            assert all(same_float32(a, b) for (_, a), (_, b) in zip(got, points, strict=True)), tag
    assert expected["train/late"][0][0] == LATE_FROM * 100
    assert expected["episode/success"][-1][1] == 1.0  # bools are drawn as 0/1


def test_prometheus_scrape_shows_the_latest_values_labelled_by_run_and_node(bridges: BridgeRun) -> None:
    """A real HTTP scrape, parsed by prometheus_client, holds each run's latest JSONL values."""
    for run in RUNS:
        for kind in ("metrics", "episode"):
            for key, points in jsonl_series(bridges.root, run, kind).items():
                name = metric_name("metricbus_", kind, key.removeprefix("episode/"))
                got = bridges.scraped[(name, run, bridges.node)]
                assert same_float32(got, points[-1][1]), name
    assert bridges.scraped[("metricbus_train_value_loss", "bridge-b", bridges.node)] == 1.0 / STEPS + 1
    assert ("metricbus_train_note", "bridge-a", bridges.node) not in bridges.scraped  # strings are not gauges


def test_csv_matches_jsonl_including_a_metric_that_appears_midway(bridges: BridgeRun) -> None:
    """The wide CSV loads with csv and pandas; every cell equals the JSONL value, blank before a late metric."""
    for run in RUNS:
        rows = records(bridges.root, run, "metrics")
        path = bridges.csv / run / "metrics.csv"
        with path.open(newline="") as f:
            table = list(csv.DictReader(f))
        assert len(table) == len(rows) == STEPS
        frame = pd.read_csv(path)
        assert list(frame.columns[:3]) == ["step", "ts", "node"]
        assert "train/late" in frame.columns
        for i, (row, line, (_, cells)) in enumerate(zip(rows, table, frame.iterrows(), strict=True)):
            assert int(line["step"]) == row["step"] == cells["step"]
            assert float(line["ts"]) == row["ts"]
            for key in ("train/value_loss", "train/entropy", "time/fps", "train/late", "train/approx_kl"):
                value = row["data"].get(key)
                if value is None:
                    assert line[key] == "" and math.isnan(cells[key]), (i, key)
                elif isinstance(value, float) and math.isnan(value):
                    assert math.isnan(float(line[key])) and math.isnan(cells[key])
                else:
                    assert float(line[key]) == value == cells[key], (i, key)
            assert line["train/note"] == row["data"]["train/note"]
        assert frame["train/late"].isna().sum() == LATE_FROM
        episodes = pd.read_csv(bridges.csv / run / "episodes.csv")
        assert list(episodes["reward"]) == [r["data"]["reward"] for r in records(bridges.root, run, "episode")]
    assert not list(bridges.csv.glob("**/*.tmp"))


def message(i: int, data: dict[str, Any], run: str = "r", kind: str = "metrics") -> Message:
    return Message(kind, run, "n", "p", i, 1_700_000_000.0 + i, i, data)


def test_csv_restart_keeps_the_header_and_drops_a_torn_row(tmp_path: Path) -> None:
    """A restarted CSV sink appends under the old header, growing it safely, after dropping a torn row."""
    sink = CsvSink(str(tmp_path))
    sink.handle([message(0, {"a": 1.0}), message(1, {"a": 2.0})])
    sink.close()
    path = tmp_path / "r" / "metrics.csv"
    with path.open("a") as f:
        f.write("2,1700000002.0,n,3.")  # what a killed writer can leave
    sink = CsvSink(str(tmp_path))
    sink.handle([message(3, {"a": 4.0, "b": "x,y"})])
    sink.close()
    frame = pd.read_csv(path)
    assert list(frame.columns) == ["step", "ts", "node", "a", "b"]
    assert list(frame["step"]) == [0, 1, 3]
    assert list(frame["a"]) == [1.0, 2.0, 4.0]
    assert frame["b"].iloc[-1] == "x,y"


def test_a_reader_never_sees_a_broken_csv_while_columns_grow(tmp_path: Path) -> None:
    """While new metrics widen the header, every read shows equal-width rows and never fewer rows than before."""
    path = tmp_path / "r" / "metrics.csv"
    stop = threading.Event()
    reads: list[int] = []
    problems: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                text = path.read_text()
            except FileNotFoundError:
                continue
            lines = text.split("\n")
            complete = lines[:-1]  # what follows the last newline may be a row being appended
            if not complete:
                continue
            table = list(csv.reader(complete))
            width = len(table[0])
            if table[0][:3] != ["step", "ts", "node"] or any(len(row) != width for row in table):
                problems.append(f"rows of unequal width: {text[:300]}")
            if reads and len(table) < reads[-1]:
                problems.append(f"{len(table)} rows after {reads[-1]}: a half-rewritten file")
            reads.append(len(table))

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    sink = CsvSink(str(tmp_path))
    try:
        for batch in range(100):
            # 20 rows per batch, a new column every 5 batches: 20 rewrites of up to 2000 rows
            sink.handle(
                [
                    message(i, {f"m{j}": float(i * j) for j in range(batch // 5 + 1)})
                    for i in range(batch * 20, batch * 20 + 20)
                ]
            )
        wait_until(lambda: len(reads) >= 20, 20, "the reader to read the file repeatedly")
    finally:
        stop.set()
        thread.join(10)
        sink.close()
    assert not problems, problems[0]
    frame = pd.read_csv(path)
    assert len(frame) == 2000 and frame.columns[-1] == "m19"
    assert frame["m19"].isna().sum() == 1900


def test_prometheus_names_are_sanitised_and_cardinality_is_bounded() -> None:
    """Names follow Prometheus' rules; past max_runs the least recent run's series go, and are counted."""
    from prometheus_client.parser import text_string_to_metric_families

    assert metric_name("metricbus_", "metrics", "grad/layer/fc.0/norm") == "metricbus_grad_layer_fc_0_norm"
    assert metric_name("", "metrics", "9lives-µ") == "_9lives_"
    sink = PrometheusSink(port=0, max_runs=2, max_series=100)
    try:
        for i, run in enumerate(("r1", "r2", "r3")):
            sink.handle([message(i, {"loss": float(i), "acc": 0.5}, run=run)])
        with urllib.request.urlopen(f"http://127.0.0.1:{sink.port}/metrics", timeout=5) as response:
            families = {f.name: f for f in text_string_to_metric_families(response.read().decode())}
    finally:
        sink.close()
    runs = {s.labels["run"] for s in families["metricbus_loss"].samples}
    assert runs == {"r2", "r3"}
    assert families["metricbus_sink_evicted_series"].samples[0].value == 3  # loss, acc, step of r1
    assert families["metricbus_sink_series"].samples[0].value == 6


def test_console_table_shows_the_latest_value_per_run(tmp_path: Path) -> None:
    """Table mode keeps one block per run (and per node) with the latest values, redrawn on flush."""
    out = tmp_path / "console.txt"
    sink = ConsoleSink(mode="table", refresh=0.0, path=str(out), max_fields=2)
    sink.handle([message(0, {"loss": 2.0, "lr": 0.1, "fps": 9}), message(1, {"loss": 1.5})])
    sink.handle([Message("system", None, "n", "q", 0, 1.0, None, {"cpu/percent": 12.5})])
    sink.flush()
    sink.close()
    text = out.read_text()
    assert "run r  node n  step 1" in text
    assert "  loss  1.5\n  lr    0.1\n  (+1 more)" in text
    assert "node n" in text and "cpu/percent  12.5" in text
    assert render_tables([], ["12:00:00 event/r step=1 event=run_ended"], 5, 0.0).strip().endswith("run_ended")


def test_metricbus_tail_table_mode_prints_a_table_per_run(stack: Stack, tmp_path: Path) -> None:
    """``metricbus tail --table`` subscribes to a live bus and draws each run's latest values."""
    out_path = tmp_path / "tail.out"
    with out_path.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "metricbus", "tail", "--table", "--refresh", "0.1", "--endpoint", stack.backend],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    try:
        with Publisher(stack.frontend, run="tail-run", node="tail-node") as pub:

            def shown() -> bool:
                pub.metrics({"train/loss": 0.25}, step=7)  # tail subscribes at its own pace: keep publishing
                pub.flush()
                return "run tail-run  node tail-node  step 7" in out_path.read_text()

            wait_until(shown, 20, "tail to draw the run's table", interval=0.2)
        assert "train/loss  0.25" in out_path.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0


def test_bridges_do_not_import_their_heavy_packages_at_load() -> None:
    """Loading a config naming every bridge, and listing sinks, imports neither tensorboardX nor prometheus_client."""
    code = (
        "import sys\n"
        "from bus.config import parse_config\n"
        "from bus.registry import describe_all\n"
        "parse_config({'sinks': {t: {'type': t} for t in ('jsonl', 'tensorboard', 'prometheus', 'csv', 'console')}})\n"
        "describe_all()\n"
        "heavy = ('tensorboardX', 'tensorboard', 'prometheus_client', 'torch', 'dash')\n"
        "heavy = [m for m in heavy if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr


def test_a_misspelt_kind_is_an_error_not_an_empty_output(tmp_path: Path) -> None:
    """``kinds: [metric]`` would write nothing at all; each numeric bridge refuses it, naming itself."""
    with pytest.raises(ValueError, match=r"csv: unknown kinds \['metric'\]; kinds are alert, bus, episode"):
        CsvSink(str(tmp_path), kinds=["metric"])
    with pytest.raises(ValueError, match=r"tensorboard: unknown kinds \['metric'\]"):
        TensorBoardSink(str(tmp_path), kinds=["metric"])
    with pytest.raises(ValueError, match=r"prometheus: unknown kinds \['metric'\]"):
        PrometheusSink(port=0, kinds=["metric"])


def test_tensorboard_sink_bounds_open_writers(tmp_path: Path) -> None:
    """Past max_open_writers the least recent run's writer closes; reopening adds a file TensorBoard reads too."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    sink = TensorBoardSink(str(tmp_path), max_open_writers=1)
    sink.handle([message(0, {"x": 1.0}, run="a")])
    sink.handle([message(1, {"x": 2.0}, run="b")])
    sink.handle([message(2, {"x": 3.0}, run="a")])
    sink.close()
    accumulator = EventAccumulator(str(tmp_path / "a"))
    accumulator.Reload()
    assert [(e.step, e.value) for e in accumulator.Scalars("x")] == [(0, 1.0), (2, 3.0)]

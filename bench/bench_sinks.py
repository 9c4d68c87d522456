"""Messages per second each built-in sink sustains, beside the JSONL sink's, in one run.

In-process: every sink's ``handle`` gets the same decoded batches (real frames, encoded and
decoded by ``bus.message``), each followed by ``flush``; that time gives the sustained rate.
``close`` (fsync, writer threads, the HTTP server's shutdown) is timed apart: it happens once. The
reference is the JSONL sink measured in the same run (ratio = sink / jsonl), and for the
bridges also the library used directly the obvious way (tensorboardX ``add_scalar`` per
value, ``csv.DictWriter``, a labelled prometheus_client ``Gauge``), so the bridge's own
overhead shows. Messages look like a PPO run's: SB3-style metrics of 14 scalars, one
episode per 4 metrics messages, over 4 runs.

    .venv/bin/python bench/bench_sinks.py            # 50k messages, best of 3
    .venv/bin/python bench/bench_sinks.py --quick    # 10k messages, 1 round
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bus.message import Message, decode, encode

RUNS = 4
BATCH = 1000


def make_messages(count: int) -> list[Message]:
    """``count`` decoded messages: metrics and episodes of ``RUNS`` runs, through the real codec."""
    out: list[Message] = []
    for i in range(count):
        run = f"ppo-{i % RUNS}"
        step = (i // RUNS) * 2048
        if i % 5 == 4:
            data: dict[str, Any] = {"reward": 100.0 + i % 50, "length": 200 + i % 17, "success": i % 3 == 0}
            kind = "episode"
        else:
            kind = "metrics"
            data = {
                "train/value_loss": 0.5 / (1 + i % 97),
                "train/policy_gradient_loss": -0.01 * (i % 13),
                "train/entropy_loss": -0.69 + 0.001 * (i % 50),
                "train/approx_kl": 0.002 * (i % 11),
                "train/clip_fraction": 0.1,
                "train/clip_range": 0.2,
                "train/explained_variance": 0.9,
                "train/learning_rate": 3e-4,
                "train/loss": 0.3,
                "train/n_updates": i,
                "rollout/ep_rew_mean": 150.0,
                "rollout/ep_len_mean": 180.0,
                "time/fps": 1500,
                "grad/global_norm": 0.7 + 0.01 * (i % 7),
            }
        message = Message(kind, run, "node-1", "bench:1:abc", i, time.time(), step, data)
        out.append(decode(encode(message)))
    return out


def batches_of(messages: Sequence[Message]) -> list[Sequence[Message]]:
    return [messages[i : i + BATCH] for i in range(0, len(messages), BATCH)]


# -- the sinks and their raw references -------------------------------------------------------


class RawTensorBoard:
    """tensorboardX's SummaryWriter, one add_scalar per value: what a user would write by hand."""

    def __init__(self, logdir: str) -> None:
        from tensorboardX import SummaryWriter

        self.logdir = logdir
        self.writers: dict[str, Any] = {}
        self.writer_cls = SummaryWriter

    def handle(self, batch: Sequence[Message]) -> None:
        for m in batch:
            writer = self.writers.get(m.run or "")
            if writer is None:
                writer = self.writers[m.run or ""] = self.writer_cls(os.path.join(self.logdir, m.run or "_"))
            for key, value in m.data.items():
                if isinstance(value, int | float):
                    writer.add_scalar(key, value, m.step, walltime=m.ts)

    def flush(self) -> None:
        for writer in self.writers.values():
            writer.flush()

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()


class RawCsv:
    """csv.DictWriter per run and kind with the columns known up front (no growing header)."""

    def __init__(self, root: str, messages: Sequence[Message]) -> None:
        self.root = root
        self.columns: dict[str, list[str]] = {}
        for m in messages:
            cols = self.columns.setdefault(m.kind, ["step", "ts", "node"])
            cols.extend(k for k in m.data if k not in cols)
        self.files: dict[tuple[str, str], tuple[Any, Any]] = {}

    def handle(self, batch: Sequence[Message]) -> None:
        for m in batch:
            key = (m.run or "", m.kind)
            entry = self.files.get(key)
            if entry is None:
                f = open(os.path.join(self.root, f"{key[0]}-{key[1]}.csv"), "w", newline="")  # noqa: SIM115
                writer = csv.DictWriter(f, self.columns[m.kind])
                writer.writeheader()
                entry = self.files[key] = (f, writer)
            entry[1].writerow({"step": m.step, "ts": m.ts, "node": m.node, **m.data})

    def flush(self) -> None:
        for f, _ in self.files.values():
            f.flush()

    def close(self) -> None:
        for f, _ in self.files.values():
            f.close()


class RawPrometheus:
    """One labelled prometheus_client Gauge per metric name, set per value."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Gauge

        self.registry = CollectorRegistry()
        self.gauge_cls = Gauge
        self.gauges: dict[str, Any] = {}

    def handle(self, batch: Sequence[Message]) -> None:
        for m in batch:
            for key, value in m.data.items():
                if isinstance(value, int | float):
                    gauge = self.gauges.get(key)
                    if gauge is None:
                        name = "raw_" + "".join(c if c.isalnum() else "_" for c in key)
                        gauge = self.gauges[key] = self.gauge_cls(name, key, ["run", "node"], registry=self.registry)
                    gauge.labels(m.run or "", m.node).set(value)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def candidates(tmp: Path, messages: Sequence[Message]) -> list[tuple[str, Callable[[], Any]]]:
    from sinks.console import ConsoleSink
    from sinks.csvfile import CsvSink
    from sinks.jsonl import JsonlSink
    from sinks.prometheus import PrometheusSink
    from sinks.tensorboard import TensorBoardSink

    def fresh(name: str) -> str:
        path = tmp / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return str(path)

    return [
        ("jsonl", lambda: JsonlSink(fresh("jsonl"))),
        ("csv", lambda: CsvSink(fresh("csv"))),
        ("  raw csv.DictWriter", lambda: RawCsv(fresh("rawcsv"), messages)),
        ("tensorboard", lambda: TensorBoardSink(fresh("tb"))),
        ("  raw SummaryWriter.add_scalar", lambda: RawTensorBoard(fresh("rawtb"))),
        ("prometheus", lambda: PrometheusSink(port=0)),
        ("  raw Gauge.labels().set", RawPrometheus),
        ("console (lines, /dev/null)", lambda: ConsoleSink(path=os.devnull)),
        ("console (table, /dev/null)", lambda: ConsoleSink(path=os.devnull, mode="table", refresh=0.0)),
    ]


def measure(make: Callable[[], Any], batches: Sequence[Sequence[Message]]) -> tuple[float, float]:
    """Seconds for handle() over every batch, each followed by flush() as the runner does it
    (sustained rate), and seconds for close() (a one-off: fsync, thread and server shutdown)."""
    sink = make()
    start = time.perf_counter()
    for batch in batches:
        sink.handle(batch)
        sink.flush()
    sustained = time.perf_counter() - start
    start = time.perf_counter()
    sink.close()
    return sustained, time.perf_counter() - start


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10k messages, one round")
    parser.add_argument("--messages", type=int, help="messages per round (default 50000, quick 10000)")
    parser.add_argument("--rounds", type=int, help="rounds; the best is kept (default 3, quick 1)")
    args = parser.parse_args(argv)
    count = args.messages or (10_000 if args.quick else 50_000)
    rounds = args.rounds or (1 if args.quick else 3)
    messages = make_messages(count)
    batches = batches_of(messages)
    tmp = Path(tempfile.mkdtemp(prefix="bench-sinks-"))
    try:
        best: dict[str, float] = {}
        closing: dict[str, float] = {}
        for _ in range(rounds):
            # interleaved rounds: a burst of load on the shared machine hits every sink alike
            for name, make in candidates(tmp, messages):
                seconds, close = measure(make, batches)
                best[name] = min(best.get(name, float("inf")), seconds)
                closing[name] = min(closing.get(name, float("inf")), close)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    jsonl_rate = count / best["jsonl"]
    print(f"{count} messages ({BATCH} per batch, {RUNS} runs), best of {rounds}; in-process handle+flush per batch")
    print(f"{'sink':34} {'msg/s':>12} {'× jsonl':>9} {'close ms':>9}")
    for name, seconds in best.items():
        rate = count / seconds
        print(f"{name:34} {rate:12,.0f} {rate / jsonl_rate:9.2f} {closing[name] * 1000:9.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

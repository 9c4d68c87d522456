"""A hostile or buggy publisher cannot blind, stall or crash anything (issue 12), on a real stack.

One ``metricbus up`` for the module runs every built-in sink that keeps per-name state
(jsonl, alerts with a command notifier, csv, prometheus, dashboard). Each test throws one
kind of attack at it from this process while a well-behaved training publishes beside it;
the last test checks that the training's every message is on disk and that every sink's
memory stayed within :data:`RSS_GROWTH_BOUND` of what it took after start-up.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import Stack, free_port, jsonl_lines, wait_until

from bus.publisher import Publisher

SINKS = ("jsonl", "alerts", "csv", "prometheus", "dashboard")
#: How much a sink's resident memory may grow over the whole suite (floods of 20,000 runs,
#: 200,000 publisher ids and 30,000 metric names included). Measured on the shared 2-core
#: machine: jsonl 50-52 MiB, csv 28-47, dashboard 38-43, alerts 19-23, prometheus 14-15; the
#: bounded maps filled, and what the allocator keeps. Before the bounds the issue measured the
#: dashboard at +158 MB for 200,000 publisher ids; prometheus, csv and alerts grew without limit.
RSS_GROWTH_BOUND = 100 * 1024 * 1024
#: The command notifier appends "rule state run" for every alert it is handed.
NOTE_SCRIPT = (
    "import os, sys\n"
    "e = os.environ\n"
    "open(sys.argv[1], 'a').write(' '.join([e['METRICBUS_ALERT_RULE'], e['METRICBUS_ALERT_STATE'],"
    " e['METRICBUS_ALERT_RUN']]) + '\\n')\n"
)


class Training(threading.Thread):
    """The well-behaved publisher beside the attacks: one metrics message every 5 ms until stopped."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(name="good-training", daemon=True)
        self.publisher = Publisher(endpoint, run="good-training")
        self.stop_event = threading.Event()
        self.sent = 0

    def run(self) -> None:
        step = 0
        while not self.stop_event.wait(0.005):
            self.publisher.metrics({"train/loss": 1.0 / (step + 1), "rollout/ep_rew_mean": float(step)}, step=step)
            step += 1
        self.sent = step
        self.publisher.close()


class Suite:
    def __init__(self, stack: Stack, notes: Path, csv_root: Path) -> None:
        self.stack = stack
        self.notes = notes
        self.csv_root = csv_root
        self.baseline: dict[str, int] = {}
        self.training = Training(stack.frontend)
        self.attacker = Publisher(stack.frontend, run="attacker", node="attacker-node")

    def forge(self, **fields: Any) -> None:
        """Send one payload as given (``forward`` does not check it): what a hostile client can do."""
        payload = {
            "v": 1,
            "kind": "metrics",
            "run": "attacker",
            "node": "attacker-node",
            "pub": self.attacker.pub,
            "seq": 0,
            "ts": time.time(),
            "step": 0,
            "data": {"x": 1.0},
        }
        # forward() never blocks: at the publisher's HWM it counts a drop. Resend until taken,
        # so the floods below arrive whole (the attack is on the sinks, not on this socket).
        while True:
            dropped = self.attacker.dropped
            self.attacker.forward({**payload, **fields})
            if self.attacker.dropped == dropped:
                return
            time.sleep(0.001)

    def rss(self) -> dict[str, int]:
        return {name: _rss(self.stack.child_pid(f"sink {name}")) for name in SINKS}

    def notified(self) -> list[str]:
        return self.notes.read_text().splitlines() if self.notes.exists() else []


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Suite]:
    """The stack, its baseline memory and the good training running beside every test."""
    workdir = tmp_path_factory.mktemp("hostile")
    root = workdir / "logs"
    notes = workdir / "notified.txt"
    sinks = {
        "jsonl": {"type": "jsonl", "root": str(root), "flush_interval": 0.05},
        "alerts": {
            "type": "alerts",
            "topics": ["metrics/", "episode/", "system/", "event/", "bus/"],
            "flush_interval": 0.1,
            "max_series": 2000,  # small, so that the run-id flood below must evict
            "rules": [
                {"name": "nonfinite", "kind": "nonfinite", "select": {"metric": ["train/*"]}, "severity": "critical"}
            ],
            "notify": [
                {
                    "type": "command",
                    "argv": [sys.executable, "-c", NOTE_SCRIPT, str(notes)],
                    "retries": 3,
                    "backoff": "1s",
                }
            ],
        },
        "csv": {"type": "csv", "root": str(workdir / "csv"), "kinds": ["metrics"], "topics": ["metrics/"]},
        "prometheus": {"type": "prometheus", "port": free_port(), "topics": ["metrics/"]},
        "dashboard": {"type": "dashboard", "topics": [""], "port": free_port(), "history_root": str(root)},
    }
    stack = Stack(workdir, sinks=sinks).start()
    suite = Suite(stack, notes, workdir / "csv")
    try:
        wait_until(lambda: all(_rss(stack.child_pid(f"sink {n}")) for n in SINKS), 30, "every sink to run")
        suite.baseline = suite.rss()
        suite.training.start()
        yield suite
    finally:
        suite.training.stop_event.set()
        suite.training.join(10)
        suite.attacker.close()
        stack.stop()


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _alerts(root: Path, run: str) -> list[dict[str, Any]]:
    path = root / run / "alerts.jsonl"
    return jsonl_lines(path) if path.exists() else []


def _undecodable_total(root: Path) -> int:
    totals = [0]
    for path in root.glob("_nodes/*/bus.jsonl"):
        for row in jsonl_lines(path):
            if row["data"].get("event") == "undecodable" and isinstance(row["data"].get("total"), int):
                totals.append(row["data"]["total"])
    return max(totals)


def test_a_forged_alert_with_a_list_metric_is_skipped_when_the_engine_restarts(suite: Suite) -> None:
    """An `alert` whose data.metric is a list is stored, and the engine restarted over it comes back and works."""
    stack = suite.stack
    forged = {"rule": "nonfinite", "state": "firing", "severity": "critical", "metric": ["x"], "message": "forged"}
    suite.forge(kind="alert", data=forged)
    wait_until(lambda: _alerts(stack.root, "attacker"), 10, "the forged alert on disk")
    old = stack.child_pid("sink alerts")
    os.kill(old, signal.SIGKILL)

    def restarted() -> int | None:
        try:
            pid = stack.child_pid("sink alerts")
        except LookupError:
            return None
        return pid if pid != old and "records in" in stack.stderr() else None

    wait_until(restarted, 30, "the alerts engine to restart and say what it skipped")
    assert "not alerts this engine wrote; skipped" in stack.stderr()
    # The restarted engine subscribes a moment after it logs: publish until it has judged one.
    with Publisher(stack.frontend, run="after-restart") as pub:

        def fired() -> list[dict[str, Any]]:
            pub.metrics({"train/loss": math.nan}, step=0)
            return _alerts(stack.root, "after-restart")

        wait_until(fired, 30, "the restarted engine's NaN alert", interval=0.1)


BAD_FIELDS: list[tuple[str, dict[str, Any]]] = [
    ("node over 128 chars", {"node": "n" * 300}),
    ("node metrics.jsonl beside a run _nodes", {"run": "_nodes", "node": "metrics.jsonl"}),
    ("run _nodes", {"run": "_nodes"}),
    ("run .", {"run": "."}),
    ("run ..", {"run": ".."}),
    ("run _", {"run": "_"}),
    ("node ..", {"kind": "system", "run": None, "node": ".."}),
    ("NUL in a metric name", {"data": {"train/lo\x00ss": math.nan}}),
    ("CR/LF in a metric name", {"data": {"train/loss\r\nBcc: x@example.com": math.nan}}),
    ("metric name of 10,000 chars", {"data": {"m" * 10_000: 1.0}}),
    ("pub with a newline", {"pub": "a\nb"}),
    ("far-future ts", {"kind": "alert", "ts": 1e20, "data": {"rule": "r", "state": "firing"}}),
    ("negative ts", {"ts": -1e20}),
    ("step 2**63", {"step": 2**63}),
    ("seq 2**64-1", {"seq": 2**64 - 1}),
]


def test_bad_names_and_absurd_numbers_are_refused_at_decode_and_counted(suite: Suite) -> None:
    """Each bad name or absurd ts/step/seq is refused by every sink (counted), and nothing is made on disk."""
    stack = suite.stack
    before = _undecodable_total(stack.root)
    for _what, fields in BAD_FIELDS:
        suite.forge(**fields)
    wait_until(lambda: _undecodable_total(stack.root) >= before + len(BAD_FIELDS), 20, "every bad frame counted")
    made = {p.name for p in stack.root.iterdir()} | {p.name for p in (stack.root / "_nodes").iterdir()}
    assert not made & {"_", ".", "..", "metrics.jsonl", "n" * 300}
    assert not [line for line in suite.notified() if "\x00" in line or "Bcc" in line]


def test_a_huge_string_then_a_new_column_loses_no_csv_row(suite: Suite) -> None:
    """A 200 KiB string cell, then a new column (a header rewrite reads it back), then more rows: all kept."""
    with Publisher(suite.stack.frontend, run="huge-cells") as pub:
        pub.metrics({"a": 1.0}, step=0)
        pub.metrics({"a": 2.0, "text": "x" * 200_000}, step=1)
        pub.flush()
        wait_until(lambda: (suite.csv_root / "huge-cells" / "metrics.csv").exists(), 60, "the csv file")
        pub.metrics({"a": 3.0, "new_column": 1.0}, step=2)
        for step in range(3, 10):
            pub.metrics({"a": float(step)}, step=step)
    import csv

    csv.field_size_limit(2**31 - 1)

    def rows() -> list[dict[str, str]] | None:
        with (suite.csv_root / "huge-cells" / "metrics.csv").open(newline="") as f:
            found = list(csv.DictReader(f))
        return found if len(found) == 10 else None

    found = wait_until(rows, 60, "all ten rows in the csv")
    assert [r["step"] for r in found] == [str(s) for s in range(10)]
    assert found[1]["text"] == "x" * 200_000 and found[2]["new_column"] == "1.0"


def test_20000_run_ids_do_not_blind_the_alert_engine(suite: Suite) -> None:
    """After 20,000 new run ids (10x the engine's series bound), a later run's NaN loss still fires and notifies."""
    stack = suite.stack
    for chunk in range(0, 20_000, 5_000):  # in chunks, as below
        for i in range(chunk, chunk + 5_000):
            suite.forge(run=f"flood-{i}", seq=i, data={"train/loss": 1.0, "train/value_loss": 2.0})
        last = stack.root / f"flood-{chunk + 4_999}"
        wait_until(last.is_dir, 60, "a chunk of the flood on disk", interval=0.2)
    with Publisher(stack.frontend, run="real-after-flood") as pub:
        for step in range(3):
            pub.metrics({"train/loss": math.nan}, step=step)
    wait_until(lambda: _alerts(stack.root, "real-after-flood"), 30, "the NaN alert of the run after the flood")
    wait_until(lambda: "nonfinite firing real-after-flood" in suite.notified(), 30, "the notification")


def test_200000_publisher_ids_and_30000_metric_names_are_absorbed(suite: Suite) -> None:
    """Floods of distinct publisher ids and metric names are taken (and evicted), not refused or leaked."""
    stack = suite.stack
    events = stack.root / "flood-pubs" / "events.jsonl"

    def lines() -> int:
        if not events.exists():
            return 0
        with events.open("rb") as f:
            return sum(1 for _ in f)

    # In chunks the JSONL sink has taken before the next: what is measured is the sinks'
    # state, not how deep ZeroMQ's queues got while a sink caught up (that depends on the machine).
    for chunk in range(0, 200_000, 25_000):
        for i in range(chunk, chunk + 25_000):
            suite.forge(kind="event", run="flood-pubs", pub=f"pub-{i}", data={"event": "note", "i": i})
        wait_until(lambda c=chunk: lines() >= c + 25_000, 60, "a chunk of the flood on disk", interval=0.2)
    for i in range(3_000):
        suite.forge(run="flood-names", seq=i, step=i, data={f"name/{i}/{j}": float(j) for j in range(10)})
    with Publisher(stack.frontend, run="flood-marker") as pub:
        pub.metrics({"done": 1.0}, step=0)
    wait_until(lambda: (stack.root / "flood-marker" / "metrics.jsonl").exists(), 120, "the floods to be taken")
    assert lines() == 200_000


def test_the_training_beside_the_attacks_is_on_disk_in_full_and_every_sink_stayed_bounded(suite: Suite) -> None:
    """Every message of the good training is on disk; every sink is alive and its RSS grew by less than the bound."""
    training = suite.training
    training.stop_event.set()
    training.join(10)
    assert training.sent > 0
    stack = suite.stack
    rows = wait_until(
        lambda: (r := stack.records("good-training", "metrics")) and len(r) >= training.sent and r,
        30,
        "every message of the good training",
    )
    assert sorted(r["step"] for r in rows) == list(range(training.sent))
    grown = {name: rss - suite.baseline[name] for name, rss in suite.rss().items()}
    print("RSS growth over the suite, MiB:", {name: round(g / 2**20, 1) for name, g in grown.items()})
    assert all(growth < RSS_GROWTH_BOUND for growth in grown.values()), json.dumps(grown)

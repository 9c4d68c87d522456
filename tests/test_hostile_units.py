"""Issue 12, piece by piece: each bound, validation and isolation in the module that owns it.

The real-stack suite (test_hostile_publisher.py) shows the whole; these pin each mechanism
with real files, sockets and subprocesses, in-process so they are quick.
"""

from __future__ import annotations

import json
import math
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import zmq.auth
from support import wait_until

import alerts.engine
import sinks.jsonl
import sinks.prometheus
from alerts.engine import AlertEngine
from alerts.notifiers import CommandNotifier, NotifierWorker, alert_env, alert_text
from alerts.state import RestoreStats, restore_alerts
from bus.bounded import Memo, Recent
from bus.message import DecodeError, Message, from_record
from bus.security import KeyGate
from bus.subscriber import SeqTracker
from metricbus.report import RunSummary, markdown
from sinks.dashboard.series import Series
from sinks.dashboard.store import MAX_PUBLISHERS_PER_SOURCE, Store
from sinks.jsonl import JsonlSink
from sinks.prometheus import PrometheusSink
from sinks.tensorboard import TensorBoardSink


def _message(
    run: str | None = "r", step: int | None = 0, data: dict[str, object] | None = None, **kw: object
) -> Message:
    fields: dict[str, object] = {"kind": "metrics", "run": run, "node": "n", "pub": "p", "seq": 0, "ts": time.time()}
    fields.update(kw)
    return Message(step=step, data=data if data is not None else {"x": 1.0}, **fields)  # type: ignore[arg-type]


def test_recent_evicts_the_least_recently_seen_and_counts_it() -> None:
    """A flood of new keys pushes out the flood's oldest, not a key that is still being read."""
    evicted: list[str] = []
    recent: Recent[str, int] = Recent(3, lambda k, _v: evicted.append(k))
    recent.put("live", 0)
    for i in range(10):
        recent.put(f"flood-{i}", i)
        assert recent.get("live") == 0  # the live key is seen between flood keys
    assert "live" in recent and len(recent) == 3
    assert recent.evicted == 8 and evicted[:2] == ["flood-0", "flood-1"]


def test_memo_ages_out_what_was_not_seen_for_a_generation_and_counts_it() -> None:
    """A flood of new keys ages out the flood; a key looked up between flood keys stays, at most limit kept."""
    memo: Memo[str, int] = Memo(8)
    memo.put("live", 0)
    for i in range(100):
        memo.put(f"flood-{i}", i)
        assert (memo.hot.get("live") or memo.get("live")) == 0
    assert "live" in memo and len(memo) <= 8
    assert memo.evicted == 100 - (len(memo) - 1) and "flood-0" not in memo


def test_jsonl_routes_keep_the_live_run_through_a_flood_of_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flood of new runs evicts the flood's routes (counted in the stats), not the live run's; its lines are whole."""
    monkeypatch.setattr(sinks.jsonl, "_MAX_ROUTES", 8)
    sink = JsonlSink(str(tmp_path))
    try:
        for i in range(40):
            sink.handle([_message(run="live", seq=i), _message(run=f"flood-{i}")])
        assert ("metrics", "live", "n") in sink._routes
        stats = sink.stats()
        assert stats["routes"] <= 8 and stats["routes_evicted"] == 40 - (stats["routes"] - 1)  # all but live
    finally:
        sink.close()
    lines = (tmp_path / "live" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["seq"] for line in lines] == list(range(40))


def test_prometheus_name_memo_keeps_a_live_name_through_a_flood(monkeypatch: pytest.MonkeyPatch) -> None:
    """A flood of metric names evicts the flood's sanitised names; the live name stays memoised and exported."""
    monkeypatch.setattr(sinks.prometheus, "_MAX_NAMES", 8)
    sink = PrometheusSink(port=0, max_series=1000)
    try:
        for i in range(40):
            sink.handle([_message(run="r", data={"train/loss": float(i), f"flood/{i}": 1.0})])
        stats = sink.stats()
        assert stats["names"] <= 8 and stats["names_evicted"] == 40 - (stats["names"] - 1)
        assert ("metrics", "train/loss") in sink._names
        assert sink.values.series[("metricbus_train_loss", "r", "n")] == 39.0
    finally:
        sink.close()


def test_alert_metric_memo_keeps_a_live_metric_through_a_flood(monkeypatch: pytest.MonkeyPatch) -> None:
    """A run with a flood of metric names: the live metric stays memoised, its held state survives, and
    the rule still fires on it; the memo's evictions are counted in the engine's stats."""
    monkeypatch.setattr(alerts.engine, "_MAX_METRICS_PER_PLAN", 8)
    rule = {"name": "high", "kind": "threshold", "select": {"metric": "train/loss"}, "threshold": 10, "for": 40}
    engine = AlertEngine(rules=[rule], restore=False)
    try:
        for i in range(40):
            engine.handle([_message(run="r", data={"train/loss": 100.0, f"flood/{i}": 1.0})])
        assert [(a["run"], a["data"]["state"]) for a in engine.recent] == [("r", "firing")]
        plan = engine._plans.peek(("metrics", "r", "n"))
        assert plan is not None and "train/loss" in plan.by_metric
        assert engine.stats()["metric_names_evicted"] == 40 - (len(plan.by_metric) - 1)
    finally:
        engine.close()


def test_seq_tracker_is_bounded_and_does_not_count_an_absurd_jump_as_lost() -> None:
    """Past its bound the tracker forgets the oldest publishers; a jump to 2**63-1 is no 9e18-message gap."""
    tracker = SeqTracker(limit=100)
    for i in range(1000):
        tracker.observe(f"pub-{i}", 0)
    assert len(tracker) == 100 and tracker.evicted == 900
    tracker.observe("forged", 0)
    assert tracker.observe("forged", 2**63 - 1) is None and tracker.implausible == 1
    assert tracker.observe("forged", 2**63) is None  # the next one after it: no gap either


def _forged_alert_file(root: Path) -> None:
    run = root / "victim"
    run.mkdir(parents=True)
    data = {"rule": "nan", "state": "firing", "metric": "train/loss", "source": "victim", "since": 1.0e9}
    good = {"v": 1, "kind": "alert", "run": "victim", "node": "n", "pub": "p", "seq": 0, "ts": 1.0e9, "step": None}
    good["data"] = data
    forged = {**good, "seq": 1, "data": {**data, "metric": ["a", "list"], "rule": "other"}}
    far = {**good, "seq": 2, "ts": 1e20}
    (run / "alerts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (good, forged, far)))


def test_alert_restore_skips_and_counts_records_that_are_not_the_engines(tmp_path: Path) -> None:
    """A forged alerts.jsonl record (metric a list, ts 1e20) is skipped and counted; the good one restores."""
    _forged_alert_file(tmp_path)
    stats = RestoreStats()
    restored = restore_alerts(tmp_path, stats)
    assert list(restored) == [("nan", "victim", "train/loss")]
    assert stats.skipped == 2 and stats.records == 1
    engine = AlertEngine(rules=[{"name": "nan", "kind": "nonfinite", "select": {"metric": "train/*"}}],
                         state_root=str(tmp_path))  # fmt: skip
    try:
        assert engine.stats()["restore_skipped"] == 2 and engine.stats()["series"] == 1
    finally:
        engine.close()


def test_a_flood_of_runs_evicts_series_and_a_later_nan_still_fires() -> None:
    """With max_series=50, 5,000 runs later a new run's NaN still fires (least recently seen evicted, counted)."""
    engine = AlertEngine(rules=[{"name": "nan", "kind": "nonfinite", "select": {"metric": "train/*"}}],
                         max_series=50, restore=False)  # fmt: skip
    try:
        engine.handle([_message(run=f"flood-{i}", data={"train/loss": 1.0}) for i in range(5000)])
        engine.handle([_message(run="real", data={"train/loss": math.nan})])
        assert [(a["run"], a["data"]["state"]) for a in engine.recent] == [("real", "firing")]
        stats = engine.stats()
        assert stats["series"] == 50 and stats["series_evicted"] == 4951
        assert stats["plans"] <= 10_000
    finally:
        engine.close()


def test_an_alert_with_control_characters_reaches_argv_env_and_subject_clean() -> None:
    """NUL, CR and LF in an alert's fields become spaces in the environment, the text and the JSON is escaped."""
    alert = {"rule": "r\x00x", "severity": "critical", "state": "firing", "message": "a\r\nBcc: x", "run": "a\nb"}
    env = alert_env(alert)
    assert all("\x00" not in v and "\n" not in v and "\r" not in v for v in env.values())
    assert "\n" not in alert_text(alert) and "\r" not in alert_text(alert)
    assert json.loads(env["METRICBUS_ALERT_JSON"])["message"] == "a\r\nBcc: x"
    CommandNotifier([sys.executable, "-c", "pass"]).send(alert)  # a NUL in env would raise ValueError


def test_failing_alerts_retry_off_the_worker_and_never_delay_the_next_one(tmp_path: Path) -> None:
    """10 alerts whose delivery fails (retried 3x, 1 s back-off) do not hold up a good alert behind them."""
    done = tmp_path / "delivered.txt"
    script = (
        "import os, sys\n"
        "rule = os.environ['METRICBUS_ALERT_RULE']\n"
        "sys.exit(1) if rule.startswith('bad') else open(sys.argv[1], 'a').write(rule + '\\n')\n"
    )
    worker = NotifierWorker(CommandNotifier([sys.executable, "-c", script, str(done)]), retries=3, backoff=1.0)
    try:
        for i in range(10):
            worker.submit({"rule": f"bad-{i}", "severity": "critical", "state": "firing", "message": ""})
        worker.submit({"rule": "good", "severity": "critical", "state": "firing", "message": ""})
        wait_until(lambda: done.exists() and "good" in done.read_text(), 30, "the good alert")
        assert worker.failed == 0 and not worker.idle()  # the bad ones are still waiting for a retry
    finally:
        worker.close(timeout=0.0)
    assert worker.failed == 10  # closing gives up on what still waits


def test_a_file_that_cannot_be_written_does_not_hold_up_the_others(tmp_path: Path) -> None:
    """A path the file system refuses (ENAMETOOLONG, a file where a directory goes) costs only its own lines."""
    (tmp_path / "blocked").write_text("a file where the run's directory would go")
    sink = JsonlSink(str(tmp_path))
    bad = [_message(run="x" * 300), _message(run="blocked")]  # built directly: decode refuses both names
    sink.handle([bad[0], _message(run="a", seq=0), bad[1], _message(run="b", seq=0)])
    sink.handle([_message(run="a", seq=1)])
    sink.close()
    assert len((tmp_path / "a" / "metrics.jsonl").read_text().splitlines()) == 2
    assert len((tmp_path / "b" / "metrics.jsonl").read_text().splitlines()) == 1
    assert sink.lines_dropped == 2 and sink.write_errors == 2


def test_tensorboard_takes_the_rest_of_a_batch_after_a_message_it_cannot_write(tmp_path: Path) -> None:
    """A step over int64 (built directly; decode refuses it) fails alone; the other run's scalars are written."""
    sink = TensorBoardSink(str(tmp_path))
    try:
        sink.handle([_message(run="huge", step=2**64), _message(run="fine", step=1)])
        assert sink.messages_failed == 1 and sink.scalars_written == 1
    finally:
        sink.close()
    assert list((tmp_path / "fine").glob("events.out.tfevents.*"))


def test_prometheus_metric_names_never_collide_with_the_sinks_own_families() -> None:
    """Metrics named like the sink's own families get their own names: one # TYPE line per family."""
    sink = PrometheusSink(port=0)
    try:
        names = ["sink_series", "sink_evicted_series", "sink_evicted_series_total", "sink_evicted_series_created"]
        sink.handle([_message(run="r", data={n: 1.0 for n in names})])
        with urllib.request.urlopen(f"http://127.0.0.1:{sink.port}/metrics", timeout=10) as response:
            text = response.read().decode()
        types = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
        assert len(types) == len(set(types)), types
        assert "metricbus_sink_series_metric" in types
    finally:
        sink.close()


def test_the_dashboard_store_refuses_a_far_future_history_record_and_bounds_publishers() -> None:
    """A stored alert with ts 1e20 is skipped like on the wire; 5,000 publishers of one run keep a bounded memo."""
    store = Store(max_runs=4)
    record = _message(run="r", ts=1e20).to_dict()
    with pytest.raises(DecodeError):
        from_record(record)
    assert store.add_history([record]) == 0
    store.add_live([_message(run="r", kind="event", pub=f"p{i}", data={"event": "heartbeat", "dropped": 1})
                    for i in range(5000)])  # fmt: skip
    assert len(store._seen.peek(("run", "r")) or ()) == MAX_PUBLISHERS_PER_SOURCE
    assert store.health.dropped == 5000  # drops of forgotten publishers still count
    assert len(store.health.dropped_by_pub) <= 20_000


def test_out_of_order_points_are_merged_in_batches_not_one_sort_each() -> None:
    """1,000 points alternating 10 s back in time: sorted on read, with one merge per 256 late points or read."""
    series = Series(100_000)
    for i in range(1000):
        series.append(float(i), 1000.0 + i - (10.0 if i % 2 else 0.0), float(i))
    generations = series.generation
    _, ts, _ = series.arrays()
    assert len(ts) == 1000 and bool(np.all(np.diff(ts) >= 0))
    assert generations <= 1000 // 2 // 256 + 2


def test_report_markdown_cells_are_literal_text() -> None:
    """A rule name with |, a newline, HTML or a link cannot break or inject into the markdown table."""
    summary = RunSummary("r", "completed", ["n"], 1.0, 10, 1, None, None, {}, 1, ["a|b\n<script>x</script> [l](u)"])
    row = next(line for line in markdown([summary]).splitlines() if line.startswith("| r |"))
    assert "<script>" not in row and "\\|" in row and "\\[l\\]" in row
    header = next(line for line in markdown([summary]).splitlines() if line.startswith("| run |"))
    assert row.count(" | ") == header.count(" | ")


def test_a_curve_key_replaced_by_overwriting_its_file_is_noticed(tmp_path: Path) -> None:
    """Overwriting an authorised key's file in place (the directory does not change) takes effect at once."""
    keys = tmp_path / "keys"
    keys.mkdir()
    first_public, _ = zmq.auth.create_certificates(str(tmp_path), "first")
    second_public, _ = zmq.auth.create_certificates(str(tmp_path), "second")
    authorised = keys / "client.key"
    authorised.write_bytes(Path(first_public).read_bytes())
    first = zmq.auth.load_certificate(first_public)[0]
    second = zmq.auth.load_certificate(second_public)[0]
    gate = KeyGate(str(keys), b"x" * 40)
    assert gate.callback("*", first) and not gate.callback("*", second)
    with authorised.open("r+b") as f:  # in place: same inode, the directory's mtime unchanged
        data = Path(second_public).read_bytes()
        f.write(data)
        f.truncate(len(data))
    assert gate.callback("*", second) and not gate.callback("*", first)


def test_a_plain_client_refused_by_a_curve_broker_is_counted(tmp_path: Path) -> None:
    """A client that speaks no CURVE fails its handshake before any key check; the broker counts it."""
    from bus.broker import Broker
    from bus.config import BrokerConfig
    from bus.curve import CurveKeys
    from bus.security import BrokerCurve
    from bus.testing import free_port

    public, secret = zmq.curve_keypair()
    (tmp_path / "authorized").mkdir()
    config = BrokerConfig(frontend=f"tcp://127.0.0.1:{free_port()}", backend=f"tcp://127.0.0.1:{free_port()}")
    broker = Broker(config, BrokerCurve(CurveKeys(secret, public), KeyGate(str(tmp_path / "authorized"), public)))
    broker.start()
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    plain = context.socket(zmq.PUB)
    try:
        plain.connect(config.frontend)
        wait_until(lambda: broker.handshake_failures() >= 1, 20, "the plain client's failed handshake")
    finally:
        plain.close(linger=0)
        context.term()
        broker.stop()

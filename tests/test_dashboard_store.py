"""The dashboard's memory (bounded series, history/live de-duplication, alerts, run status),
its smoothing and downsampling, and the sink's web server and history loading — without a browser."""

from __future__ import annotations

import math
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from support import free_port, wait_until

from bus.message import Message
from sinks.dashboard import downsample
from sinks.dashboard.figures import EmaState, ema, rolling_mean
from sinks.dashboard.store import RUN, Series, Store
from sinks.jsonl import JsonlSink

pytest.importorskip("dash")


def metric(run: str, seq: int, step: int, value: float, *, pub: str = "p1", ts: float | None = None) -> Message:
    return Message("metrics", run, "n1", pub, seq, ts if ts is not None else 1000.0 + seq, step, {"train/loss": value})


def write_history(root: Path, messages: list[Message]) -> None:
    sink = JsonlSink(root=str(root))
    sink.handle(messages)
    sink.close()


def tensorboard_ema(values: list[float], weight: float) -> list[float]:
    # TensorBoard's own loop (tf_smoothing in the scalars plugin), as a reference.
    last, n, out = 0.0, 0, []
    for v in values:
        if not math.isfinite(v):
            out.append(v)
            continue
        last = last * weight + (1 - weight) * v
        n += 1
        out.append(last / (1 - weight**n))
    return out


def test_series_stays_bounded_and_keeps_the_whole_run_visible() -> None:
    """A series past its capacity thins old points: memory bounded, first and last points kept."""
    series = Series(1000)
    for i in range(100_000):
        series.append(float(i), 1000.0 + i, float(i))
    step, _, _ = series.arrays()
    assert series.n <= 1000
    assert series.nbytes <= 3 * 8 * 1000
    assert series.appended == 100_000
    assert step[0] == 0 and step[-1] == 99_999
    assert np.all(np.diff(step) > 0)
    # the recent part keeps every point
    assert np.array_equal(step[-250:], np.arange(99_750, 100_000))


def test_series_since_returns_only_new_points() -> None:
    """A reader holding a cursor gets exactly the points appended after it, or None if it fell behind."""
    series = Series(64)
    for i in range(10):
        series.append(i, i, i * 2.0)
    cursor = series.appended
    for i in range(10, 13):
        series.append(i, i, i * 2.0)
    new = series.since(cursor)
    assert new is not None
    assert new[0].tolist() == [10, 11, 12]
    assert new[2].tolist() == [20.0, 22.0, 24.0]
    for i in range(13, 200):
        series.append(i, i, 0.0)
    assert series.since(cursor) is None


def test_history_then_live_takes_each_message_once() -> None:
    """Live messages already read from the JSONL files are not taken twice."""
    store = Store()
    store.add_history([metric("r", s, s, float(s)).to_dict() for s in range(100)])
    store.add_live([metric("r", s, s, float(s)) for s in range(50, 150)])
    series = store.runs["r"].series["train/loss"]
    assert series.n == 150
    assert series.arrays()[0].tolist() == list(range(150))


def test_live_then_history_fills_in_only_what_came_before() -> None:
    """History read after live messages adds what preceded them and skips what arrived live."""
    store = Store()
    new = store.add_live([metric("r", s, s, float(s)) for s in range(100, 120)])
    assert new == [(RUN, "r")]
    taken = store.add_history([metric("r", s, s, float(s)).to_dict() for s in range(0, 110)])
    assert taken == 100
    series = store.runs["r"].series["train/loss"]
    assert series.arrays()[0].tolist() == list(range(120))
    assert series.generation == 1  # older points merged in: readers redraw


def test_limits_evict_the_quietest_run_and_cap_series() -> None:
    """More runs than max_runs evict the longest-quiet one; more metrics than max_series are ignored."""
    store = Store(max_runs=3, max_series=2, max_points=16)
    for i, run in enumerate(["a", "b", "c", "d"]):
        store.add_live([metric(run, 0, 0, 1.0, pub=run, ts=1000.0 + i)])
    assert sorted(store.runs) == ["b", "c", "d"]
    store.add_live([Message("metrics", "d", "n1", "d", 1, 2000.0, 1, {"x": 1.0, "y": 2.0, "z": 3.0})])
    assert len(store.runs["d"].series) == 2
    assert store.runs["d"].ignored_series == 2
    assert store.bound_bytes() == (3 + 50) * 2 * 16 * 24


def test_alerts_fire_sort_by_severity_and_resolve_into_history() -> None:
    """Firing alerts are listed most severe first; a resolved one leaves them for the history."""
    store = Store()

    def alert(seq: int, rule: str, severity: str, state: str) -> Message:
        data = {"rule": rule, "severity": severity, "state": state, "message": rule, "metric": "m", "value": 1.0}
        return Message("alert", "r", "n1", "alerts", seq, 1000.0 + seq, None, data)

    store.add_live([alert(0, "slow", "warning", "firing"), alert(1, "nan", "critical", "firing")])
    assert [a["rule"] for a in store.alerts.firing()] == ["nan", "slow"]
    store.add_live([alert(2, "nan", "critical", "resolved")])
    assert [a["rule"] for a in store.alerts.firing()] == ["slow"]
    assert [a["rule"] for a in store.alerts.history] == ["nan"]
    assert store.alerts.fired["r"] == 2


def test_run_status_follows_events_and_silence() -> None:
    """A run is running, then failed on run_ended (or stopped, with its reason); a quiet run reads as silent."""
    now = [2000.0]
    store = Store(silent_after=30.0, clock=lambda: now[0])
    store.add_live([metric("ok", 0, 0, 1.0, ts=1990.0), metric("quiet", 0, 0, 1.0, pub="q", ts=1990.0)])
    assert store.status(store.runs["ok"]) == "running"
    end = Message("event", "ok", "n1", "p1", 1, 1995.0, 5, {"event": "run_ended", "status": "failed", "error": "boom"})
    store.add_live([end])
    now[0] = 2100.0
    assert store.status(store.runs["ok"]) == "failed"
    assert store.runs["ok"].error == "boom"
    assert store.status(store.runs["quiet"]) == "silent"
    reason = "stopped early by Tune's scheduler or a stopper"
    ended = {"event": "run_ended", "status": "stopped", "reason": reason}
    cut = Message("event", "trial", "n1", "p2", 1, 2000.0, 3, ended)
    store.add_live([cut])
    assert store.status(store.runs["trial"]) == "stopped"  # not "completed", not "silent"
    assert store.runs["trial"].error == reason  # the badge's tooltip, the report's diagnosis


def test_bus_health_counts_gaps_drops_and_rate() -> None:
    """Gap notes and heartbeats feed the header's counters."""
    now = [5000.5]
    store = Store(clock=lambda: now[0])
    gap = Message("bus", "r", "n1", "sink", 0, 5000.0, None, {"event": "gap", "missing": 7})
    beat = Message("event", "r", "n1", "p1", 3, 5000.0, None, {"event": "heartbeat", "sent": 10, "dropped": 4})
    store.add_live([gap, beat])
    now[0] = 5001.5
    store.add_live([metric("r", 4, 1, 1.0)] * 20)
    now[0] = 5002.5
    assert (store.health.gaps, store.health.missing, store.health.dropped) == (1, 7, 4)
    assert store.health.rate(now[0], window=2) == pytest.approx(22 / 2)


def test_ema_is_tensorboards_debiased_ema_in_one_go_or_in_pieces() -> None:
    """Smoothing matches TensorBoard's loop, whether computed whole or carried across appends."""
    rng = np.random.default_rng(1)
    values = rng.normal(size=300)
    values[17] = math.nan
    reference = tensorboard_ema(values.tolist(), 0.8)
    whole, _ = ema(values, 0.8)
    np.testing.assert_allclose(whole, reference, equal_nan=True)
    pieces, state = [], EmaState()
    for chunk in (values[:5], values[5:200], values[200:203], values[203:]):
        out, state = ema(chunk, 0.8, state)
        pieces.append(out)
    np.testing.assert_allclose(np.concatenate(pieces), reference, equal_nan=True)


def test_rolling_mean_over_episodes() -> None:
    """The episode rolling mean averages the last window of finite values."""
    np.testing.assert_allclose(rolling_mean(np.array([1.0, 3.0, 5.0, 7.0]), 2), [1.0, 2.0, 4.0, 6.0])


def test_downsampling_keeps_ends_and_spikes() -> None:
    """Drawing 100k points as ~1000 keeps the first, the last and a one-point spike."""
    values = np.sin(np.linspace(0, 50, 100_000))
    values[54_321] = 40.0
    picked = downsample.select(values, 1000)
    assert len(picked) <= 1000
    assert picked[0] == 0 and picked[-1] == 99_999
    assert 54_321 in picked
    assert np.all(np.diff(picked) > 0)
    assert downsample.select(values[:10], 1000).tolist() == list(range(10))


def test_sink_serves_the_page_when_constructed_and_frees_the_port_on_close(tmp_path: Path) -> None:
    """The page answers as soon as the sink exists; close() stops the server."""
    from sinks.dashboard.sink import DashboardSink

    port = free_port()
    sink = DashboardSink(port=port, history_root=str(tmp_path))
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
            assert response.status == 200
            assert b"metricbus" in response.read()
    finally:
        sink.close()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).close()


def test_sink_loads_history_on_start_and_for_a_run_first_seen_live(tmp_path: Path) -> None:
    """History on disk is loaded at start; a run appearing live gets its earlier records, once each."""
    from sinks.dashboard.sink import DashboardSink

    write_history(tmp_path, [metric("old", s, s, 1.0) for s in range(5000)])
    sink = DashboardSink(port=free_port(), history_root=str(tmp_path))
    try:
        store = sink.store

        def points(run: str) -> list[float]:
            with store.lock:
                data = store.runs.get(run)
                series = data.series.get("train/loss") if data else None
                return series.arrays()[0].tolist() if series else []

        wait_until(lambda: len(points("old")) == 5000, 20, "the history on disk at start")
        # a run whose first 30 messages are on disk only; the dashboard sees it from seq 20
        write_history(tmp_path, [metric("late", s, s, 2.0) for s in range(30)])
        sink.handle([metric("late", s, s, 2.0) for s in range(20, 40)])
        wait_until(lambda: points("late") == list(range(40)), 20, "the late run's history merged without duplicates")
    finally:
        sink.close()

"""What the live dashboard costs: server time and bytes per poll with a lot in memory, its
RSS against the configured bound, and publish → visible latency in a real browser.

Part 1 (in-process sink, headless Chromium polling it): 10 runs × 20 metrics × 100k points
held. Each poll's server time and response bytes are recorded by hooks on the sink's own
Flask server. The reference, in the same run, is what a page that re-sends whole figures
every tick would cost: every chart drawn whole (already downsampled) and serialised. Polls
are measured with 1 and with 10 new points per series, to show the payload follows the new
points, not what is held.

Part 2 (a real stack: broker and dashboard sink as processes, default poll interval 1 s):
20 points published one at a time; the time until each is in the chart's drawn data, beside
the bare bus latency (a raw pyzmq SUB on the broker's backend receiving the same message).

    .venv/bin/python bench/bench_dashboard.py            # 10 × 20 × 100k points, 20 latency points
    .venv/bin/python bench/bench_dashboard.py --quick    # 10 × 20 × 10k points, 8 latency points
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from support import CHROMIUM, CHROMIUM_ARGS  # noqa: E402

from bus.message import Message  # noqa: E402

RUNS = 10
METRICS = 20


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


class RequestLog:
    """Server time and bytes of each Dash callback request, from Flask hooks on the sink's server."""

    def __init__(self, server: Any) -> None:
        self.records: list[tuple[str, float, int, int]] = []  # (output, seconds, response bytes, request bytes)
        self._lock = threading.Lock()
        local = threading.local()

        def _start() -> None:
            local.start = time.perf_counter()

        def _stop(response: Any) -> Any:
            from flask import request

            if request.path.endswith("_dash-update-component"):
                output = str((request.get_json(silent=True) or {}).get("output", ""))
                size = len(response.get_data())
                with self._lock:
                    self.records.append((output, time.perf_counter() - local.start, size, request.content_length or 0))
            return response

        server.before_request(_start)
        server.after_request(_stop)

    def take(self) -> list[tuple[str, float, int, int]]:
        with self._lock:
            out, self.records = self.records, []
        return out


def fill(store: Any, points: int) -> int:
    """RUNS × METRICS series of ``points`` each, straight into the store (as history would)."""
    from sinks.dashboard.store import RUN

    t0 = time.time() - points
    steps = np.arange(points, dtype=np.float64)
    ts = t0 + steps
    rng = np.random.default_rng(0)
    with store.lock:
        for r in range(RUNS):
            data = store._data((RUN, f"run-{r}"))
            data.touch(float(ts[0]))
            data.touch(float(ts[-1]))
            for m in range(METRICS):
                series = store._series(data, f"train/m{m:02d}")
                series.merge(steps, ts, np.cumsum(rng.normal(size=points)))
        store.version += 1
    return points


def new_points(step: int, per_series: int) -> list[Message]:
    """One metrics message per run and step: ``per_series`` new points in each of its series."""
    now = time.time()
    batch = []
    for k in range(per_series):
        for r in range(RUNS):
            data = {f"train/m{m:02d}": float(np.sin(step + k + m)) for m in range(METRICS)}
            batch.append(Message("metrics", f"run-{r}", "bench", f"pub-{r}", step + k, now, step + k, data))
    return batch


def part_server(points: int, polls: int) -> dict[str, Any]:
    import plotly.utils
    from playwright.sync_api import sync_playwright
    from support import free_port

    from sinks.dashboard.charts import Painter, View, chart_specs
    from sinks.dashboard.sink import DashboardSink

    process = psutil.Process()
    rss_start = process.memory_info().rss
    sink = DashboardSink(
        port=free_port(), history_root=None, max_points=points, max_runs=RUNS, max_nodes=1, max_series=METRICS,
        poll_interval=0.5, default_runs=RUNS,
    )  # fmt: skip
    log = RequestLog(sink.app.server)
    rss_empty = process.memory_info().rss
    started = time.perf_counter()
    fill(sink.store, points)
    fill_s = time.perf_counter() - started
    rss_full = process.memory_info().rss
    held = sink.store.memory_bytes()
    bound = sink.store.bound_bytes()

    # the reference: every figure drawn whole and serialised, as a page re-sending figures would
    view = View(tuple(f"run-{r}" for r in range(RUNS)), "", 0.6, "step")
    started = time.perf_counter()
    with sink.store.lock:
        specs = chart_specs(sink.store, view)
        painter = Painter(sink.store, view, 2000, 10_000)
        full_bytes = sum(len(json.dumps(painter.full(s)[0], cls=plotly.utils.PlotlyJSONEncoder)) for s in specs)
    full_s = time.perf_counter() - started

    results: dict[int, dict[str, Any]] = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        # tall enough that every chart is on or near the screen: the page sends points only to those
        page = browser.new_page(viewport={"width": 1400, "height": 1400})
        page.set_default_timeout(120_000)
        page.goto(sink.url)
        last_chart = f'[data-chart="m:train/m{METRICS - 1:02d}"] .js-plotly-plot'
        page.wait_for_function(
            f"() => {{ const g = document.querySelector('{last_chart}');"
            f" return g && g.data && g.data.length === {2 * RUNS} && g.data[0].x.length > 0 }}"
        )
        first = sorted((r for r in log.take() if "cursors" in r[0]), key=lambda r: -r[2])[:1]
        step = points
        for per_series in (1, 10):
            log.take()
            for _ in range(polls):
                sink.handle(new_points(step, per_series))
                step += per_series
                page.wait_for_function(
                    f"() => {{ const d = document.querySelector('{last_chart}').data;"
                    f" return d[{2 * (RUNS - 1)}].x.at(-1) === {step - 1}; }}"
                )
            # and a few polls with nothing new
            idle_from = time.monotonic()
            while sum(1 for r in log.records if "cursors" in r[0]) < polls + 3 and time.monotonic() - idle_from < 30:
                page.wait_for_timeout(100)  # the polls come from the page's own clock
            records = [r for r in log.take() if "cursors" in r[0]]
            carrying = [r for r in records if r[2] > 200]
            idle = [r for r in records if r[2] <= 200]
            results[per_series] = {
                "polls": len(records),
                "ms_median": 1000 * statistics.median(r[1] for r in records),
                "ms_p95": 1000 * percentile([r[1] for r in records], 95),
                "bytes_with_points": statistics.median(r[2] for r in carrying) if carrying else 0,
                "bytes_idle": statistics.median(r[2] for r in idle) if idle else 0,
                "request_bytes": statistics.median(r[3] for r in records),
                "new_points": per_series * RUNS * METRICS,
            }
        browser.close()
    rss_end = process.memory_info().rss
    sink.close()
    return {
        "points": points,
        "fill_s": fill_s,
        "rss_start": rss_start,
        "rss_empty": rss_empty,
        "rss_full": rss_full,
        "rss_end": rss_end,
        "held": held,
        "bound": bound,
        "full_bytes": full_bytes,
        "full_ms": 1000 * full_s,
        "first_draw": first,
        "polls": results,
    }


def part_latency(count: int, websocket: bool = False) -> dict[str, Any]:
    """Publish → drawn for ``count`` points; ``websocket``: a websocket sink beside, pushing to the page."""
    import zmq
    from playwright.sync_api import sync_playwright
    from support import Stack, free_port

    from bus.publisher import Publisher

    with tempfile.TemporaryDirectory(prefix="bench-dashboard-") as tmp:
        port = free_port()
        sinks: dict[str, Any] = {
            "dashboard": {"type": "dashboard", "port": port, "history_root": None, "poll_interval": 1.0}
        }
        if websocket:  # the dashboard's push: auto finds it in the config
            sinks["ws"] = {"type": "websocket", "port": free_port()}
        stack = Stack(Path(tmp), sinks=sinks).start()
        context = zmq.Context()
        sub = context.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVTIMEO, 5000)
        sub.setsockopt(zmq.SUBSCRIBE, b"metrics/lat")
        sub.connect(stack.backend)
        pub = Publisher(stack.frontend, run="lat")
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                page = browser.new_page()
                page.set_default_timeout(30_000)
                page.goto(f"http://127.0.0.1:{port}")
                if websocket:
                    page.wait_for_function("() => document.body.dataset.push === 'live'")
                # the first point creates the chart; the measured ones extend it
                pub.metrics({"lat/x": 0.0}, step=0)
                sub.recv_multipart()
                page.wait_for_selector('[data-chart="m:lat/x"] .js-plotly-plot')
                visible, raw = [], []
                phases = random.Random(0)
                for i in range(1, count + 1):
                    # at a random moment of the page's 1 s poll cycle, as real points arrive (a
                    # fixed pause would lock onto one phase of the cycle and always measure it)
                    time.sleep(phases.uniform(0.0, 1.0))
                    started = time.perf_counter()
                    pub.metrics({"lat/x": float(i)}, step=i)
                    sub.recv_multipart()
                    raw.append(time.perf_counter() - started)
                    page.wait_for_function(
                        "(i) => { const g = document.querySelector('[data-chart=\"m:lat/x\"] .js-plotly-plot');"
                        " return g && g.data && g.data[0].x.includes(i); }",
                        arg=i,
                        polling="raf",
                    )
                    visible.append(time.perf_counter() - started)
                browser.close()
        finally:
            pub.close()
            sub.close()
            context.term()
            stack.stop()
    return {"visible": visible, "raw": raw}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10k points per series, 8 latency points")
    args = parser.parse_args()
    points = 10_000 if args.quick else 100_000
    polls = 5 if args.quick else 10
    count = 8 if args.quick else 20
    mib = 1 << 20

    s = part_server(points, polls)
    print(f"dashboard server: {RUNS} runs × {METRICS} metrics × {points:,} points held (filled in {s['fill_s']:.1f} s)")
    print(
        f"  series memory {s['held'] / mib:.0f} MiB, configured bound {s['bound'] / mib:.0f} MiB;"
        f" process RSS {s['rss_empty'] / mib:.0f} MiB empty → {s['rss_full'] / mib:.0f} MiB filled"
        f" → {s['rss_end'] / mib:.0f} MiB after the browser session"
    )
    if s["first_draw"]:
        first = s["first_draw"][0]
        print(f"  first draw (whole figures, downsampled): {1000 * first[1]:.0f} ms, {first[2] / 1024:.0f} KiB")
    print(f"  reference, whole figures every tick: {s['full_ms']:.0f} ms, {s['full_bytes'] / 1024:.0f} KiB per poll")
    for per_series, r in s["polls"].items():
        ratio_bytes = r["bytes_with_points"] / s["full_bytes"] if s["full_bytes"] else float("nan")
        ratio_ms = r["ms_median"] / s["full_ms"] if s["full_ms"] else float("nan")
        print(
            f"  {per_series:>2} new point(s) per series ({r['new_points']} per poll, {r['polls']} polls):"
            f" server {r['ms_median']:.1f} ms median / {r['ms_p95']:.1f} ms p95,"
            f" response {r['bytes_with_points'] / 1024:.1f} KiB with points"
            f" ({r['bytes_with_points'] / r['new_points']:.0f} B/point), {r['bytes_idle']} B idle,"
            f" request {r['request_bytes'] / 1024:.1f} KiB;"
            f" vs whole figures: {ratio_ms:.3f}× time, {ratio_bytes:.4f}× bytes"
        )

    lat = part_latency(count)
    vis = [1000 * v for v in lat["visible"]]
    raw = [1000 * v for v in lat["raw"]]
    print(f"publish → visible in Chromium (poll interval 1 s), {count} points:")
    print(f"  dashboard: median {statistics.median(vis):.0f} ms, p95 {percentile(vis, 95):.0f} ms")
    print(f"  raw pyzmq SUB on the backend: median {statistics.median(raw):.2f} ms, p95 {percentile(raw, 95):.2f} ms")
    print(f"  ratio (median): {statistics.median(vis) / statistics.median(raw):.0f}×")
    return 0


if __name__ == "__main__":
    sys.exit(main())

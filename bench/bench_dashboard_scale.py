"""The dashboard at scale, beside the dashboard as it was (commit 7318d66) in the same run.

Two loads, each fed to both dashboards at once (each a process of its own code: a
``DashboardSink`` under a ``SinkRunner`` on one broker), then measured in headless Chromium
at 1400×900, one page at a time:

- **scale**: simulated real ``Publisher``s, ``--runs`` runs × 30 metrics (one metrics message a
  second per run, an episode a second) and ``--nodes`` nodes × ``--cores`` cores × ``--gpus``
  GPUs (a sample every 2 s, the sampler's default), together. Measured per page: first
  meaningful paint (a chart with a drawn point), the page answering input (a round trip to
  its main thread, sampled every 5 s), server time and bytes per poll (Flask hooks in the
  sink process), the JS heap over ``--minutes`` (CDP ``Runtime.getHeapUsage``), charts and
  page height.
- **demo**: the JSONL logs of a real ``metricbus demo --exit`` (2 PPO runs on CartPole), read
  as history; the page height with every section open and the node's charts opened.

Screenshots go to ``artifacts/bench-scale-{new,base}.png`` and ``artifacts/bench-demo-*.png``.

    .venv-test/bin/python bench/bench_dashboard_scale.py                        # 200 runs, 64 nodes × 64 cores × 8 GPUs
    .venv-test/bin/python bench/bench_dashboard_scale.py --runs 50 --nodes 16   # a smaller machine
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from support import CHROMIUM, CHROMIUM_ARGS, free_port, wait_until  # noqa: E402

from bus.publisher import Publisher  # noqa: E402

BASE_COMMIT = "7318d66"
ARTIFACTS = ROOT / "artifacts"
#: A sink process: the dashboard of the code under ``sys.path[0]``, with Flask hooks that
#: record each callback's server time and response bytes, served at /_bench.
SINK_PROCESS = r"""
import json, sys, threading, time
from bus.subscriber import SinkRunner
from sinks.dashboard.sink import DashboardSink
port, backend, options, ready = int(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
sink = DashboardSink(port=port, **options)
records, lock, local = [], threading.Lock(), threading.local()
server = sink.app.server
@server.before_request
def _start():
    local.t, local.wall = time.perf_counter(), time.time()
@server.after_request
def _stop(response):
    from flask import request
    if request.path.endswith("_dash-update-component"):
        output = str((request.get_json(silent=True) or {}).get("output", ""))
        with lock:
            records.append([output, time.perf_counter() - local.t, len(response.get_data()), local.wall])
    return response
@server.route("/_bench")
def _bench():
    with lock:
        out = list(records)
        records.clear()
    return json.dumps(out)
open(ready, "w").close()  # only now: a request before the hooks would make Flask refuse them
SinkRunner(sink, name="dashboard", backend=backend).run()
"""


def base_tree(where: Path) -> Path:
    """The dashboard as it was: ``git archive`` of the base commit (no worktree is touched)."""
    target = where / "base"
    target.mkdir()
    archive = where / "base.tar"
    subprocess.run(["git", "-C", str(ROOT), "archive", "-o", str(archive), BASE_COMMIT], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(target, filter="data")
    return target


class Dashboard:
    """One dashboard sink process of the code at ``code``."""

    def __init__(self, name: str, code: Path, backend: str, options: dict[str, Any], workdir: Path) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ready = workdir / f"{name}-{self.port}.ready"
        env = {**os.environ, "PYTHONPATH": str(code)}
        self.process = subprocess.Popen(
            [sys.executable, "-c", SINK_PROCESS, str(self.port), backend, json.dumps(options), str(self.ready)],
            cwd=code,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_until(self._answers, 60, f"the {name} dashboard to listen")

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.name} dashboard died: {self.process.stderr.read()[-2000:]}")  # type: ignore[union-attr]
        return self.ready.exists()

    def requests(self) -> list[tuple[str, float, int, float]]:
        with urllib.request.urlopen(self.url + "/_bench", timeout=30) as answer:
            return [tuple(r) for r in json.loads(answer.read())]

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_broker(workdir: Path) -> tuple[subprocess.Popen[bytes], str, str]:
    frontend, backend = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    config = workdir / "broker.yaml"
    config.write_text(yaml.safe_dump({"broker": {"frontend": frontend, "backend": backend}, "sinks": {}}))
    ready = workdir / "broker.ready"
    process = subprocess.Popen(
        [sys.executable, "-m", "metricbus", "broker", "-c", str(config), "--ready-file", str(ready)], cwd=ROOT
    )
    wait_until(ready.exists, 30, "the broker")
    return process, frontend, backend


# -- the scale load -----------------------------------------------------------------------------

METRICS = (
    [
        f"train/{m}"
        for m in (
            "loss",
            "policy_gradient_loss",
            "value_loss",
            "entropy_loss",
            "approx_kl",
            "clip_fraction",
            "explained_variance",
            "learning_rate",
            "clip_range",
            "std",
        )
    ]
    + [f"rollout/{m}" for m in ("ep_rew_mean", "ep_len_mean", "success_rate", "ep_rew_std")]
    + [
        f"grad/{m}"
        for m in (
            "global_norm",
            "policy_norm",
            "value_norm",
            "max_abs",
            "update_ratio",
            "nan_count",
            "clip_fraction",
            "layer0_norm",
        )
    ]
    + [f"time/{m}" for m in ("fps", "iterations", "time_elapsed", "total_timesteps")]
    + [f"custom/m{i}" for i in range(4)]
)


class Load:
    """Runs and nodes publishing at their natural rates from one thread until stopped."""

    def __init__(self, frontend: str, runs: int, nodes: int, cores: int, gpus: int) -> None:
        self.stop_event = threading.Event()
        rng = random.Random(0)
        rates = (1e-4, 3e-4, 1e-3, 3e-3)
        self.runs = []
        for i in range(runs):
            name = f"sweep-c{i // 5:02d}-seed{i % 5}"
            pub = Publisher(frontend, run=name, node=f"node-{i % max(1, nodes):02d}")
            config = {
                "algorithm": "PPO",
                "hyperparameters": {
                    "learning_rate": rates[(i // 5) % 4],
                    "n_steps": (512, 1024, 2048)[(i // 20) % 3],
                    "gamma": 0.99,
                    "ent_coef": rng.choice((0.0, 0.01)),
                },
            }
            self.runs.append((pub, config, 0.5 + rng.random()))
        self.nodes = [Publisher(frontend, node=f"node-{n:02d}") for n in range(nodes)]
        self.cores, self.gpus = cores, gpus
        self.sent = 0
        self.thread = threading.Thread(target=self._loop, name="bench-load", daemon=True)

    def start(self) -> Load:
        for pub, config, _ in self.runs:
            pub.event("run_started", step=0, config=config)
        self.thread.start()
        return self

    def _loop(self) -> None:
        tick = 0
        started = time.monotonic()
        while not self.stop_event.is_set():
            step = 2048 * (tick + 1)
            for i, (pub, _, speed) in enumerate(self.runs):
                x = step * speed / 1e5
                values = {m: math.sin(x + k) * 0.1 + k * 0.01 for k, m in enumerate(METRICS)}
                values["rollout/ep_rew_mean"] = 200 * (1 - math.exp(-x)) + 5 * math.sin(i + x)
                pub.metrics(values, step=step)
                pub.episode({"reward": values["rollout/ep_rew_mean"] + random.gauss(0, 10), "length": 200.0}, step=step)
                self.sent += 2
            if tick % 2 == 0:
                for n, pub in enumerate(self.nodes):
                    sample = {
                        "cpu/percent": 50 + 30 * math.sin(tick / 10 + n),
                        "mem/percent": 40.0 + n % 20,
                        "disk/percent": 60.0,
                        "net/rx_bytes_per_s": 1e6 * (1 + n % 3),
                        "net/tx_bytes_per_s": 2e5,
                        "proc/rss_bytes": 2e9,
                    }
                    for c in range(self.cores):
                        sample[f"cpu/{c}/percent"] = 50 + 40 * math.sin(tick / 7 + c + n)
                    for g in range(self.gpus):
                        sample.update(
                            {
                                f"gpu/{g}/util_percent": 80 + 15 * math.sin(tick / 5 + g),
                                f"gpu/{g}/mem_used_bytes": 6e10,
                                f"gpu/{g}/mem_total_bytes": 8e10,
                                f"gpu/{g}/temp_c": 60 + g + n % 10,
                                f"gpu/{g}/power_w": 400.0 + g,
                            }
                        )
                    pub.system(sample)
                    self.sent += 1
            tick += 1
            self.stop_event.wait(max(0.0, started + tick - time.monotonic()))

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join()
        for pub, _, _ in self.runs:
            pub.close()
        for pub in self.nodes:
            pub.close()


# -- measuring a page -----------------------------------------------------------------------------

#: A chart with data drawn: a Plotly graph holding a trace with points *and* its SVG or WebGL
#: layer painted (an empty axis, or a figure not yet drawn, does not count). Answers the time
#: since navigation started (``performance.now()``), so the split below shares its clock.
FIRST_CHART_JS = """() => [...document.querySelectorAll('.js-plotly-plot')]
    .some(g => g._fullData && g._fullData.some(t => t.x && t.x.length > 0)
               && g.querySelector('.scatterlayer .trace path.js-line, .gl-canvas-context'))
    && performance.now()"""
#: Installed before the page's own scripts: the first moment each milestone is seen (checked
#: every animation frame, so at most one frame late) and the main thread's long tasks.
MILESTONES_JS = """(() => {
  const seen = {}, long = [];
  window.__benchMilestones = seen; window.__benchLongTasks = long;
  try { new PerformanceObserver(l => { for (const e of l.getEntries())
          long.push([Math.round(e.startTime), Math.round(e.duration)]); })
        .observe({type: 'longtask', buffered: true}); } catch (e) {}
  const checks = {
    plotly_defined: () => !!(window.Plotly && window.Plotly.newPlot),
    renderer_started: () => !!document.querySelector('#react-entry-point > *:not(._dash-loading)'),
    chart_card: () => !!document.querySelector('[data-chart]'),
    plotly_graph: () => !!document.querySelector('.js-plotly-plot'),
    chart_with_data: () => [...document.querySelectorAll('.js-plotly-plot')]
        .some(g => g._fullData && g._fullData.some(t => t.x && t.x.length > 0)),
  };
  const tick = () => {
    for (const [k, f] of Object.entries(checks)) {
      if (!(k in seen)) { try { if (f()) seen[k] = performance.now(); } catch (e) {} }
    }
    if (Object.keys(seen).length < Object.keys(checks).length) requestAnimationFrame(tick);
  };
  requestAnimationFrame(tick);
})();"""
#: What the browser itself timed: navigation, every resource (scripts, _dash-layout,
#: _dash-dependencies, callbacks), milestones and long tasks.
SPLIT_JS = """() => {
  const nav = performance.getEntriesByType('navigation')[0] || {};
  return {
    origin: performance.timeOrigin,
    nav: {response_end: nav.responseEnd, dom_content_loaded: nav.domContentLoadedEventEnd, load: nav.loadEventEnd},
    resources: performance.getEntriesByType('resource').map(r => ({
      name: r.name.replace(location.origin, ''), start: r.startTime, end: r.responseEnd,
      ttfb: r.responseStart - r.startTime, bytes: r.encodedBodySize, decoded: r.decodedBodySize})),
    milestones: window.__benchMilestones || {},
    long_tasks: window.__benchLongTasks || [],
  };
}"""
PAGE_JS = """() => ({height: document.documentElement.scrollHeight,
                    charts: document.querySelectorAll('.js-plotly-plot').length})"""


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def open_and_paint(browser: Any, dash: Dashboard, paint_limit: float) -> tuple[Any, dict[str, Any]]:
    """A fresh page (a new browser context: nothing cached) opened on ``dash``; the time to its
    first chart with data drawn, and where that time went (the split)."""
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(int(paint_limit * 1000))
    page.add_init_script(MILESTONES_JS)
    dash.requests()  # forget what came before this page
    out: dict[str, Any] = {"name": dash.name, "load_before": load_average()}
    started = time.perf_counter()
    page.goto(dash.url, wait_until="commit")
    try:
        painted = page.wait_for_function(FIRST_CHART_JS, polling="raf").json_value()
        out["paint_s"] = time.perf_counter() - started
        out["paint_page_ms"] = float(painted)
        out["split"] = page.evaluate(SPLIT_JS)
        out["first_callbacks"] = dash.requests()
    except Exception:
        out["paint_s"] = None
    out["load_after"] = load_average()
    return page, out


def paint_line(result: dict[str, Any]) -> str:
    paint = f"{result['paint_s']:.2f} s" if result.get("paint_s") is not None else "none in the limit"
    return f"first chart {paint} (load average {result['load_before']} before, {result['load_after']} after)"


def measure_page(
    browser: Any, dash: Dashboard, minutes: float, screenshot: Path, paint_limit: float, repeats: int
) -> dict[str, Any]:
    paints = []
    for _ in range(repeats - 1):  # extra fresh pages, for the first chart only
        page, result = open_and_paint(browser, dash, paint_limit)
        page.close()
        paints.append(result)
        print(f"    {dash.name} (paint only): {paint_line(result)}", flush=True)
        if result.get("split"):
            print(split_report(result), flush=True)
    page, out = open_and_paint(browser, dash, paint_limit)
    out["paints"] = [*paints, dict(out)]
    started = time.perf_counter()
    cdp = page.context.new_cdp_session(page)
    heap: list[float] = []
    answers: list[float] = []
    deadline = time.monotonic() + 60 * minutes
    while time.monotonic() < deadline:
        t0 = time.perf_counter()
        try:  # a round trip to the page's main thread, given up after 30 s
            page.wait_for_function("() => true", timeout=30_000)
            answers.append(time.perf_counter() - t0)
            heap.append(cdp.send("Runtime.getHeapUsage")["usedSize"] / 2**20)
        except Exception:
            answers.append(math.inf)
        time.sleep(max(0.0, 5.0 - (time.perf_counter() - t0)))
    try:
        out.update(page.wait_for_function(PAGE_JS, timeout=60_000).json_value())
        page.screenshot(path=str(screenshot), timeout=60_000)
    except Exception as exc:
        out["error"] = str(exc).splitlines()[0]
    records = out.get("first_callbacks", []) + dash.requests()
    seconds = max(1e-9, time.perf_counter() - started)
    polls = [r for r in records if "cursors" in r[0]]
    out["answer_ms"] = [1000 * a for a in answers]
    out["heap_mb"] = heap
    out["poll_ms"] = [1000 * r[1] for r in polls]
    out["poll_bytes"] = [r[2] for r in polls]
    out["all_bytes_per_s"] = sum(r[2] for r in records) / seconds
    out["callback_ms"] = [1000 * r[1] for r in records]
    page.close()
    return out


def pct(values: list[float], q: float) -> float:
    finite = sorted(v for v in values if math.isfinite(v))
    if not finite:
        return math.inf
    return finite[min(len(finite) - 1, int(q / 100 * len(finite)))]


def split_report(result: dict[str, Any]) -> str:
    """Where the time to the first chart went, by the browser's own clock (ms since navigation
    started), with the server's time for each callback answered before it."""
    split = result.get("split")
    if not split:
        return ""
    nav, milestones, resources = split["nav"], split["milestones"], split["resources"]

    def span(match: Any) -> str:
        found = [r for r in resources if match(r["name"])]
        if not found:
            return "—"
        start, end = min(r["start"] for r in found), max(r["end"] for r in found)
        size = sum(r["bytes"] for r in found) / 1024
        decoded = sum(r["decoded"] for r in found) / 1024
        return f"{start:.0f}–{end:.0f} ms, {len(found)} file(s), {size:,.0f} KiB sent ({decoded:,.0f} KiB)"

    scripts = [r for r in resources if r["name"].split("?")[0].endswith(".js")]
    lines = [
        f"    split of the first chart ({result['paint_page_ms']:.0f} ms after navigation started, page's clock):",
        f"      HTML answered {nav['response_end']:.0f} ms; DOMContentLoaded {nav['dom_content_loaded']:.0f} ms;"
        f" load {nav['load']:.0f} ms",
        f"      scripts: {span(lambda n: n.split('?')[0].endswith('.js'))}",
        f"        of which plotly: {span(lambda n: 'plotly' in n and n.split('?')[0].endswith('.js'))}",
        f"        the last script answered at {max((r['end'] for r in scripts), default=0):.0f} ms",
        f"      _dash-layout: {span(lambda n: '_dash-layout' in n)}",
        f"      _dash-dependencies: {span(lambda n: '_dash-dependencies' in n)}",
        "      milestones: "
        + ", ".join(f"{k} {v:.0f} ms" for k, v in sorted(milestones.items(), key=lambda kv: kv[1])),
    ]
    origin = split["origin"] / 1000
    updates = [r for r in resources if "_dash-update-component" in r["name"]]
    painted = origin + result["paint_page_ms"] / 1000
    calls = sorted((r for r in result.get("first_callbacks", []) if r[3] < painted), key=lambda r: r[3])
    lines.append(f"      callbacks asked before it: {len(updates)} (server time, output):")
    for r in calls[:12]:
        at = 1000 * (r[3] - origin)
        lines.append(f"        at {at:6.0f} ms: {1000 * r[1]:6.1f} ms, {r[2] / 1024:7.1f} KiB  {r[0][:90]}")
    busy = [t for t in split["long_tasks"] if t[0] < result["paint_page_ms"]]
    lines.append(
        f"      main thread: {len(busy)} long tasks before it, {sum(d for _, d in busy):,} ms in all; longest "
        + ", ".join(f"{d} ms at {s}" for s, d in sorted(busy, key=lambda t: -t[1])[:5])
    )
    return "\n".join(lines)


def report(result: dict[str, Any]) -> str:
    heap = result["heap_mb"]
    answers, polls, sizes = result["answer_ms"], result["poll_ms"], [float(b) for b in result["poll_bytes"]]
    error = "; " + result["error"] if "error" in result else ""
    heap_text = f"{heap[0]:.0f} MB first, {max(heap):.0f} MB max, {heap[-1]:.0f} MB last" if heap else "—"
    lines = [
        f"  {result['name']}: {paint_line(result)}; charts {result.get('charts', '?')},"
        f" page height {result.get('height', '?')} px{error}",
        f"    page answering: median {pct(answers, 50):.0f} ms, worst {max(answers or [0]):.0f} ms"
        f" ({len(answers)} probes, every 5 s)",
        f"    JS heap: {heap_text}",
        f"    server per poll (chart update): median {pct(polls, 50):.1f} ms, p95 {pct(polls, 95):.1f} ms,"
        f" {len(polls)} polls; bytes median {statistics.median(sizes or [0]) / 1024:.1f} KiB,"
        f" p95 {pct(sizes, 95) / 1024:.1f} KiB",
        f"    every callback together: {result['all_bytes_per_s'] / 1024:.1f} KiB/s,"
        f" callback p95 {pct(result['callback_ms'], 95):.0f} ms",
    ]
    if result.get("split"):
        lines.append(split_report(result))
    times = sorted(p["paint_s"] for p in result["paints"] if p.get("paint_s") is not None)
    if len(result["paints"]) > 1:
        lines.append(
            f"    first chart over {len(result['paints'])} fresh pages: "
            + (f"median {statistics.median(times):.2f} s, " if times else "")
            + ", ".join(f"{p['paint_s']:.2f} s" if p.get("paint_s") is not None else "none" for p in result["paints"])
        )
    return "\n".join(lines)


# -- the demo load ------------------------------------------------------------------------------


def demo_logs(workdir: Path, timesteps: int) -> Path:
    """The JSONL root of a real ``metricbus demo --exit`` run in ``workdir``."""
    config = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())
    config["broker"]["frontend"] = f"tcp://127.0.0.1:{free_port()}"
    config["broker"]["backend"] = f"tcp://127.0.0.1:{free_port()}"
    config["sinks"]["alerts"]["rules"] = str(ROOT / "configs" / "alerts.yaml")
    config["sinks"]["dashboard"]["port"] = free_port()
    path = workdir / "demo.yaml"
    path.write_text(yaml.safe_dump(config))
    subprocess.run(
        [sys.executable, "-m", "metricbus", "demo", "--timesteps", str(timesteps), "--exit", "-c", str(path)],
        cwd=workdir,
        check=True,
        stdout=subprocess.DEVNULL,
        timeout=900,
    )
    return workdir / "logs"


def demo_height(browser: Any, dash: Dashboard, shot: Path, node: str | None) -> int:
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(60_000)
    page.goto(dash.url + (f"/?node={node}" if node else ""))
    page.wait_for_function(FIRST_CHART_JS, polling=200)
    # history loads, then every chart is laid out: wait until the page stops growing
    last, same = -1, 0
    while same < 3:
        page.wait_for_timeout(1500)
        height = int(page.evaluate("document.documentElement.scrollHeight"))
        same = same + 1 if height == last else 0
        last = height
    # charts get points once on or near the screen: scroll through so the picture has them all
    for y in range(0, last, 800):
        page.evaluate(f"window.scrollTo(0, {y})")
        page.wait_for_timeout(1200)
    page.screenshot(path=str(shot), full_page=True)
    page.close()
    return last


class _Skip(Exception):
    """The scale part is skipped (``--demo-only``)."""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--nodes", type=int, default=64)
    parser.add_argument("--cores", type=int, default=64)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--minutes", type=float, default=2.0, help="each page is watched this long")
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds of load before the first page")
    parser.add_argument("--paint-limit", type=float, default=90.0, help="seconds to wait for a first chart")
    parser.add_argument("--paint-repeats", type=int, default=1, help="fresh pages timed to their first chart, each")
    parser.add_argument(
        "--pages", default="new,base", help="which dashboards' pages to open (both are fed either way): new,base"
    )
    parser.add_argument("--demo-timesteps", type=int, default=20_000, help="0: skip the demo part")
    parser.add_argument("--demo-only", action="store_true", help="skip the scale part")
    parser.add_argument("--base", help="a checkout of the base commit (default: git archive of it)")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-dash-scale-") as tmp:
        workdir = Path(tmp)
        base = Path(args.base) if args.base else base_tree(workdir)
        codes = {"new": ROOT, "base": base}
        options = {"history_root": None, "max_runs": args.runs + 10, "max_nodes": args.nodes + 6}
        broker, frontend, backend = start_broker(workdir)
        try:
            dashboards: list[Dashboard] = []
            try:
                dashboards = [Dashboard(name, code, backend, options, workdir) for name, code in codes.items()]
                if args.demo_only:
                    raise _Skip
                load = Load(frontend, args.runs, args.nodes, args.cores, args.gpus).start()
                values = len(METRICS) * args.runs + args.nodes * (6 + args.cores + 5 * args.gpus) / 2
                print(
                    f"scale load: {args.runs} runs × {len(METRICS)} metrics (1 msg/s + 1 episode/s each), "
                    f"{args.nodes} nodes × {args.cores} cores × {args.gpus} GPUs (a sample every 2 s): "
                    f"≈ {values:,.0f} values/s; both dashboards subscribed; {args.warmup:.0f} s warm-up, "
                    f"then each page watched {args.minutes:g} min"
                )
                time.sleep(args.warmup)
                with sync_playwright() as playwright:
                    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                    for dash in dashboards:
                        if dash.name not in args.pages.split(","):
                            continue
                        shot = ARTIFACTS / f"bench-scale-{dash.name}.png"
                        result = measure_page(browser, dash, args.minutes, shot, args.paint_limit, args.paint_repeats)
                        print(report(result), flush=True)
                    browser.close()
                load.stop()
                print(f"  publishers sent {load.sent:,} messages")
            except _Skip:
                pass
            finally:
                for dash in dashboards:
                    dash.stop()
            if args.demo_timesteps:
                logs = demo_logs(workdir, args.demo_timesteps)
                node = next(p.name for p in (logs / "_nodes").iterdir()) if (logs / "_nodes").is_dir() else None
                demo = {**options, "history_root": str(logs)}
                try:
                    dashboards = [Dashboard(name, code, backend, demo, workdir) for name, code in codes.items()]
                    with sync_playwright() as playwright:
                        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                        print(
                            f"demo ({args.demo_timesteps:,} steps × 2 PPO runs, from its JSONL logs), 1400×900,"
                            " every section open:"
                        )
                        for dash in dashboards:
                            opened = node if dash.name == "new" else None
                            shot = ARTIFACTS / f"bench-demo-{dash.name}.png"
                            height = demo_height(browser, dash, shot, opened)
                            print(
                                f"  {dash.name}: page height {height:,} px"
                                + (f" (node {opened} opened)" if opened else "")
                            )
                        browser.close()
                finally:
                    for dash in dashboards:
                        dash.stop()
        finally:
            broker.terminate()
            broker.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The live dashboard in headless Chromium against a real stack (broker, JSONL and dashboard
sinks as processes): runs, nodes, alerts, controls, live updates and history on start.

Tests read what Plotly drew from each chart's ``.data`` (and ``data-*`` hooks) rather than
pixels; a full-page screenshot goes to ``artifacts/dashboard.png``.
"""

from __future__ import annotations

import itertools
import math
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import REPO, Stack, free_port, wait_until

from bus.message import Message
from bus.publisher import Publisher
from sinks.jsonl import JsonlSink

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
HISTORY_STEPS = 5000
#: Steps of points published while a page is open: after the fixture's last step (1990).
LIVE_STEPS = itertools.count(2000, 10)

if not os.path.exists(CHROMIUM):
    pytest.skip(f"browser tests need Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="browser tests need playwright")
pytest.importorskip("dash", reason="the dashboard needs the dashboard extra")

TRACES_JS = """(id) => {
  const g = document.querySelector(`[data-chart="${id}"] .js-plotly-plot`);
  if (!g || !g.data) return null;
  return g.data.map(t => ({name: t.name, role: t.meta && t.meta.role, type: t.type,
                           x: Array.from(t.x || []), y: Array.from(t.y || [])}))
    .concat([{layout: {xtype: g.layout.xaxis && g.layout.xaxis.type}}]);
}"""


class Dashboard:
    """A page on the dashboard, with helpers that wait for what was drawn."""

    def __init__(self, page: Any) -> None:
        self.page = page

    def traces(self, chart: str) -> list[dict[str, Any]]:
        found = self.page.evaluate(TRACES_JS, chart)
        return found[:-1] if found else []

    def x_type(self, chart: str) -> str | None:
        found = self.page.evaluate(TRACES_JS, chart)
        return found[-1]["layout"]["xtype"] if found else None

    def raw(self, chart: str, run: str) -> dict[str, Any] | None:
        return next((t for t in self.traces(chart) if t["name"] == run and t["role"] == "raw"), None)

    def wait_points(self, chart: str, run: str, predicate: Any, timeout: float, what: str) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            trace = self.raw(chart, run)
            return trace if trace is not None and trace["x"] and predicate(trace) else None

        return wait_until(check, timeout, what, interval=0.05)  # type: ignore[no-any-return]


def write_history(root: Path) -> None:
    """5,000 steps of run ``hist`` on disk before the stack starts."""
    sink = JsonlSink(root=str(root))
    t0 = time.time() - 3600
    sink.handle(
        [
            Message("metrics", "hist", "old-node", "hist-pub", i, t0 + i * 0.5, i, {"train/loss": 1.0 / (1 + i)})
            for i in range(HISTORY_STEPS)
        ]
    )
    sink.close()


class DashboardStack(Stack):
    url = ""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DashboardStack]:
    workdir = tmp_path_factory.mktemp("dashboard")
    root = workdir / "logs"
    write_history(root)
    port = free_port()
    sinks = {
        "jsonl": {"type": "jsonl", "root": str(root)},
        "dashboard": {
            "type": "dashboard",
            "port": port,
            "history_root": str(root),
            "poll_interval": 0.5,
            "silent_after": 300.0,
        },
    }
    running = DashboardStack(workdir, sinks=sinks)
    running.url = f"http://127.0.0.1:{port}"
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def publishers(stack: DashboardStack) -> Iterator[dict[str, Publisher]]:
    """Two runs with metrics and episodes, and one node with system metrics (GPU included)."""
    pubs = {
        "ppo-a": Publisher(stack.frontend, run="ppo-a", node="trainer-1"),
        "ppo-b": Publisher(stack.frontend, run="ppo-b", node="trainer-1"),
        "node-x": Publisher(stack.frontend, node="node-x"),
    }
    for run, offset in (("ppo-a", 0.0), ("ppo-b", 0.3)):
        pub = pubs[run]
        pub.event("run_started", step=0, config={"seed": 1})
        for step in range(0, 2000, 10):
            pub.metrics(
                {
                    "train/loss": math.exp(-step / 600) + offset + 0.05 * math.sin(step / 7),
                    "train/entropy": 0.7 - step / 4000,
                    "rollout/ep_rew_mean": step / 20 + offset * 50,
                    "grad/global_norm": 1.0 + 0.5 * math.sin(step / 30),
                },
                step=step,
            )
            if step % 100 == 0:
                pub.episode({"reward": step / 20 + 10 * math.sin(step), "length": 200}, step=step)
    for pub in pubs.values():
        pub.flush()
    stop = threading.Event()

    def sample() -> None:
        # a system sampler's pace, sped up: one sample every 0.2 s while the tests run
        i = 0
        while not stop.wait(0.2):
            pubs["node-x"].system(
                {
                    "cpu/percent": 30.0 + 20.0 * math.sin(i / 5),
                    "mem/percent": 40.0 + i % 7,
                    "disk/percent": 55.0,
                    "net/rx_bytes_per_s": 1000.0 * (i % 10),
                    "net/tx_bytes_per_s": 500.0 * (i % 4),
                    "gpu/0/util_percent": 90.0 - i % 20,
                    "gpu/0/temp_c": 65.0 + i % 3,
                }
            )
            i += 1

    sampler = threading.Thread(target=sample, name="test-sampler", daemon=True)
    sampler.start()
    try:
        yield pubs
    finally:
        stop.set()
        sampler.join()
        for pub in pubs.values():
            pub.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def dashboard(stack: DashboardStack, publishers: dict[str, Publisher], browser: Any) -> Iterator[Dashboard]:
    """A fresh page with both runs' training charts drawn."""
    page = browser.new_page(viewport={"width": 1500, "height": 1000})
    page.set_default_timeout(30_000)
    try:
        page.goto(stack.url)
        view = Dashboard(page)
        for run in ("ppo-a", "ppo-b"):
            view.wait_points("m:train/loss", run, lambda t: 1990 in t["x"], 30, f"{run}'s training chart")
        yield view
    finally:
        page.close()


def test_page_shows_both_runs_and_the_nodes_system_charts(dashboard: Dashboard) -> None:
    """Both runs overlay on the training charts; the node gets its own column of system charts."""
    page = dashboard.page
    for chart in ("m:train/loss", "m:train/entropy", "m:rollout/ep_rew_mean", "m:grad/global_norm"):
        names = {t["name"] for t in dashboard.traces(chart) if t["x"]}
        assert {"ppo-a", "ppo-b"} <= names, chart
    episodes = dashboard.wait_points("m:episode/reward", "ppo-a", lambda t: len(t["x"]) == 20, 10, "episodes")
    assert episodes["x"][0] == 0
    page.wait_for_selector('[data-node="node-x"] [data-chart="n:node-x:cpu/percent"] .js-plotly-plot')
    for chart in ("cpu/percent", "mem/percent", "disk/percent", "net/bytes_per_s", "gpu/util_percent", "gpu/temp_c"):

        def drawn(chart: str = chart) -> bool:
            return any(t["x"] for t in dashboard.traces(f"n:node-x:{chart}"))

        wait_until(drawn, 10, f"node chart {chart}")
    net = {t["name"] for t in dashboard.traces("n:node-x:net/bytes_per_s") if t["role"] == "raw"}
    assert net == {"net/rx_bytes_per_s", "net/tx_bytes_per_s"}
    page.wait_for_selector('#run-table tr[data-run="ppo-a"][data-status="running"]')
    # a run keeps one colour: the checklist chip and its traces agree
    colours = page.evaluate(
        """() => { const g = document.querySelector('[data-chart="m:train/loss"] .js-plotly-plot');
                   return g.data.filter(t => t.name === 'ppo-a').map(t => t.line.color); }"""
    )
    chip = page.evaluate(
        """() => [...document.querySelectorAll('#run-select label')].find(l => l.textContent.includes('ppo-a'))
                   .querySelector('.chip').style.background"""
    )
    assert len(set(colours)) == 1
    hex_colour = colours[0].lstrip("#")
    assert chip.replace(" ", "") == "rgb({},{},{})".format(*(int(hex_colour[i : i + 2], 16) for i in (0, 2, 4)))
    assert page.get_attribute("#health-connected", "data-connected") == "true"


def test_a_point_published_now_is_visible_within_2s(dashboard: Dashboard, publishers: dict[str, Publisher]) -> None:
    """A metric published while the page is open is drawn within 2 s, without reloading."""
    step = next(LIVE_STEPS)
    publishers["ppo-a"].metrics({"train/loss": 0.123}, step=step)
    trace = dashboard.wait_points("m:train/loss", "ppo-a", lambda t: step in t["x"], 2.0, "the new point")
    assert trace["y"][trace["x"].index(step)] == pytest.approx(0.123)


def test_alert_appears_firing_then_moves_to_history(dashboard: Dashboard, publishers: dict[str, Publisher]) -> None:
    """An alert on the bus is listed as firing with its hint; once resolved it is counted in one line that opens."""
    page = dashboard.page
    alert = {
        "rule": "grad_explosion",
        "severity": "critical",
        "metric": "grad/global_norm",
        "value": 1e6,
        "threshold": 100.0,
        "since": time.time(),
    }
    publishers["ppo-b"].alert({**alert, "state": "firing", "message": "grad norm 1e6 > 100", "hint": "lower the lr"})
    row = page.wait_for_selector('[data-alerts="firing"] tr[data-alert-rule="grad_explosion"]')
    assert row.get_attribute("data-severity") == "critical"
    assert "grad norm 1e6 > 100" in row.inner_text()
    assert "check: lower the lr" in row.inner_text()
    publishers["ppo-b"].alert({**alert, "state": "resolved", "message": "grad norm back under 100"})
    page.wait_for_selector('[data-alerts="firing"][data-count="0"]')
    folded = page.wait_for_selector('#alerts-resolved[data-resolved="1"]')
    assert "1 resolved alert" in folded.inner_text()
    assert not page.is_visible('[data-alerts="resolved"] tr[data-alert-rule="grad_explosion"]')  # folded away
    page.click("#alerts-resolved summary")
    page.wait_for_selector('[data-alerts="resolved"] tr[data-alert-rule="grad_explosion"]')


def test_header_counts_seq_gaps_and_publisher_drops(dashboard: Dashboard, publishers: dict[str, Publisher]) -> None:
    """A publisher's seq jump shows as a gap with its lost count; its heartbeat's drops are summed."""
    page = dashboard.page
    gaps_before = int(page.get_attribute("#health-gaps", "data-gaps") or 0)
    missing_before = int(page.get_attribute("#health-gaps", "data-missing") or 0)

    def payload(seq: int, kind: str, data: dict[str, Any]) -> dict[str, Any]:
        return {"v": 1, "kind": kind, "run": "gappy", "node": "n", "pub": "gappy-pub", "seq": seq,
                "ts": time.time(), "step": seq, "data": data}  # fmt: skip

    # forward() sends recorded payloads as they are: seq 1..4 never reach the bus
    publishers["ppo-a"].forward(payload(0, "metrics", {"x": 1.0}))
    publishers["ppo-a"].forward(payload(5, "metrics", {"x": 2.0}))
    publishers["ppo-a"].forward(payload(6, "event", {"event": "heartbeat", "sent": 7, "dropped": 3}))
    page.wait_for_function(
        "([g, m]) => { const e = document.getElementById('health-gaps');"
        " return e && +e.dataset.gaps === g + 1 && +e.dataset.missing === m + 4; }",
        arg=[gaps_before, missing_before],
    )
    page.wait_for_selector('#health-dropped[data-dropped="3"]')


def test_run_filter_hides_a_run(dashboard: Dashboard) -> None:
    """A regex in the run filter removes the runs it does not match from every chart."""
    dashboard.page.fill("#run-filter", "^ppo-a$")
    wait_until(
        lambda: {t["name"] for t in dashboard.traces("m:train/loss")} == {"ppo-a"}, 10, "only ppo-a on the chart"
    )
    assert {t["name"] for t in dashboard.traces("m:rollout/ep_rew_mean")} == {"ppo-a"}
    dashboard.page.fill("#run-filter", "")
    wait_until(lambda: "ppo-b" in {t["name"] for t in dashboard.traces("m:train/loss")}, 10, "ppo-b back")


def test_smoothing_slider_changes_the_drawn_series(dashboard: Dashboard) -> None:
    """Moving the smoothing slider redraws the smoothed line; the raw one stays as it was."""

    def lines() -> tuple[list[float], list[float]]:
        traces = [t for t in dashboard.traces("m:train/loss") if t["name"] == "ppo-b"]
        raw = next(t["y"] for t in traces if t["role"] == "raw")
        smooth = next(t["y"] for t in traces if t["role"] == "smooth")
        return raw, smooth

    raw_before, smooth_before = lines()
    thumb = dashboard.page.locator("#smoothing [role=slider]")
    thumb.focus()
    thumb.press("End")  # the keyboard moves a Radix slider as a drag does
    wait_until(lambda: lines()[1] != smooth_before, 10, "the smoothed line to change")
    raw_after, smooth_after = lines()
    assert raw_after[: len(raw_before)] == raw_before

    # heavier smoothing: the smoothed line moves less from point to point
    def roughness(ys: list[float]) -> float:
        return sum(abs(b - a) for a, b in itertools.pairwise(ys[:200]))

    assert roughness(smooth_after) < roughness(smooth_before)


def test_x_axis_switch_redraws_by_wall_time_and_time_since_start(dashboard: Dashboard) -> None:
    """The x-axis switch draws by step, wall-clock time (a date axis) or seconds since the run began."""
    page = dashboard.page
    page.get_by_label("wall time").check()
    wait_until(lambda: dashboard.x_type("m:train/loss") == "date", 10, "a date axis")
    trace = dashboard.wait_points("m:train/loss", "ppo-a", lambda t: t["x"][0] > 1e12, 10, "epoch-ms x values")
    assert abs(trace["x"][-1] / 1000 - time.time()) < 600
    page.get_by_label("time since start (s)").check()
    trace = dashboard.wait_points("m:train/loss", "ppo-a", lambda t: t["x"][0] < 1e6, 10, "seconds since start")
    assert trace["x"][0] >= 0 and dashboard.x_type("m:train/loss") == "linear"


def test_history_written_before_start_is_shown_whole(dashboard: Dashboard) -> None:
    """A run with 5,000 steps already on disk when the dashboard started is drawn from step 0 to the last."""
    trace = dashboard.wait_points(
        "m:train/loss", "hist", lambda t: t["x"][0] == 0 and t["x"][-1] == HISTORY_STEPS - 1, 20, "the history"
    )
    # downsampled for drawing, but spanning the whole run and keeping its shape
    assert len(trace["x"]) >= 1000
    assert trace["y"][0] == pytest.approx(1.0)


def test_screenshot_is_written_as_an_artifact(dashboard: Dashboard) -> None:
    """A full-page screenshot with drawn charts lands in artifacts/ for a human to look at."""
    page = dashboard.page
    page.wait_for_selector('[data-node="node-x"] [data-chart="n:node-x:cpu/percent"] .js-plotly-plot')
    wait_until(lambda: dashboard.raw("m:episode/reward", "ppo-b"), 10, "episode chart")
    artifacts = REPO / "artifacts"
    artifacts.mkdir(exist_ok=True)
    path = artifacts / "dashboard.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 50_000  # a blank page is a few KiB

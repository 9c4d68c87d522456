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
from support import CHROMIUM, CHROMIUM_ARGS, REPO, Stack, free_port, wait_until

from bus.message import Message
from bus.publisher import Publisher
from sinks.jsonl import JsonlSink

pytestmark = pytest.mark.browser

HISTORY_STEPS = 5000
#: A small sweep: (run, learning rate); ``(.*)-seed\d+`` groups it into 3 + 2 runs.
SWEEP = (("sweep-lr1-seed0", 1e-3), ("sweep-lr1-seed1", 1e-3), ("sweep-lr1-seed2", 1e-3),
         ("sweep-lr3-seed0", 3e-4), ("sweep-lr3-seed1", 3e-4))  # fmt: skip
BIG_CORES = 16
BIG_GPUS = 2
#: Steps of points published while a page is open: after the fixture's last step (1990).
LIVE_STEPS = itertools.count(2000, 10)

if not os.path.exists(CHROMIUM):
    pytest.skip(f"browser tests need Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="browser tests need playwright")
pytest.importorskip("dash", reason="the dashboard needs the dashboard extra")

TRACES_JS = """(id) => {
  const g = document.querySelector(`[data-chart="${id}"] .js-plotly-plot`);
  const r = g && g.getBoundingClientRect();  // the page sends points to charts on or near the screen
  if (r && (r.bottom < 0 || r.top > innerHeight)) g.scrollIntoView({block: "nearest"});
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
            "default_runs": 6,
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
    pubs = {run: Publisher(stack.frontend, run=run, node="trainer-2") for run, _ in SWEEP}
    pubs.update(
        {
            "ppo-a": Publisher(stack.frontend, run="ppo-a", node="trainer-1"),
            "ppo-b": Publisher(stack.frontend, run="ppo-b", node="trainer-1"),
            "node-x": Publisher(stack.frontend, node="node-x"),
            "node-big": Publisher(stack.frontend, node="node-big"),
        }
    )
    # a sweep: two learning rates over seeds; reward grows faster with the larger rate
    for run, lr in SWEEP:
        pub = pubs[run]
        seed = int(run[-1])
        pub.event("run_started", step=0, config={"algorithm": "PPO", "hyperparameters": {"learning_rate": lr}})
        for step in range(0, 1000, 20):
            pub.metrics({"rollout/ep_rew_mean": step * lr * 100 + seed}, step=step)
            if step % 100 == 0:
                pub.episode({"reward": step * lr * 100 + seed, "length": 100}, step=step)
        pub.flush()
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

    big = {f"cpu/{c}/percent": float(c) for c in range(BIG_CORES)}
    for g in range(BIG_GPUS):
        big.update({f"gpu/{g}/util_percent": 50.0 + g, f"gpu/{g}/temp_c": 60.0, f"gpu/{g}/power_w": 250.0})
    for i in range(5):
        pubs["node-big"].system({"cpu/percent": 50.0 + i, "mem/percent": 20.0, **big})
    pubs["node-big"].flush()
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
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
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


def test_page_shows_both_runs_and_opens_a_nodes_system_charts(dashboard: Dashboard) -> None:
    """Both runs overlay on the run charts; a node's charts open from its overview row."""
    page = dashboard.page
    for chart in ("m:train/loss", "m:train/entropy", "m:rollout/ep_rew_mean", "m:grad/global_norm"):
        names = {t["name"] for t in dashboard.traces(chart) if t["x"]}
        assert {"ppo-a", "ppo-b"} <= names, chart
    episodes = dashboard.wait_points("m:episode/reward", "ppo-a", lambda t: len(t["x"]) == 20, 10, "episodes")
    assert episodes["x"][0] == 0
    page.click('[data-overview-node="node-x"] a.node-link')
    page.wait_for_selector('[data-node="node-x"] [data-chart="n:node-x:cpu/percent"] .js-plotly-plot')
    for chart in ("cpu/percent", "mem/percent", "disk/percent", "net/bytes_per_s", "gpu/util_percent", "gpu/temp_c"):

        def drawn(chart: str = chart) -> bool:
            return any(t["x"] for t in dashboard.traces(f"n:node-x:{chart}"))

        wait_until(drawn, 10, f"node chart {chart}")
    net = {t["name"] for t in dashboard.traces("n:node-x:net/bytes_per_s") if t["role"] == "raw"}
    assert net == {"net/rx_bytes_per_s", "net/tx_bytes_per_s"}
    page.wait_for_selector('#runs-table td[data-dash-column="run"]:has-text("ppo-a")')
    assert page.get_attribute("#health-connected", "data-connected") == "true"


def test_a_point_published_now_is_drawn_without_reloading(
    dashboard: Dashboard, publishers: dict[str, Publisher]
) -> None:
    """A metric published while the page is open is drawn by the next polls (how fast: bench_dashboard.py)."""
    step = next(LIVE_STEPS)
    publishers["ppo-a"].metrics({"train/loss": 0.123}, step=step)
    trace = dashboard.wait_points("m:train/loss", "ppo-a", lambda t: step in t["x"], 15.0, "the new point")
    assert trace["y"][trace["x"].index(step)] == pytest.approx(0.123)


def test_the_page_draws_with_the_partial_plotly_bundle_alone(
    stack: DashboardStack, publishers: dict[str, Publisher], browser: Any
) -> None:
    """Only plotly_bundle/'s Plotly is fetched, and every trace type the page draws is registered in it."""
    page = browser.new_page(viewport={"width": 1500, "height": 1000})
    page.set_default_timeout(30_000)
    fetched: list[str] = []
    page.on("request", lambda request: fetched.append(request.url))
    try:
        page.goto(stack.url)
        view = Dashboard(page)
        view.wait_points("m:train/loss", "ppo-a", lambda t: 1990 in t["x"], 30, "the training chart")
        page.click('[data-overview-node="node-big"] a.node-link')  # the per-core heatmap

        def heatmap_drawn() -> bool:
            # its figure has come (the layer alone may exist, hidden, before the first one)
            traces = page.evaluate(HEATMAP_JS, "n:node-big:cpu/per_core_percent")
            return bool(traces and traces[0]["type"] == "heatmap" and traces[0]["x"])

        wait_until(heatmap_drawn, 30, "the per-core heatmap")
        registered, drawn = page.evaluate(
            """() => [Object.keys(Plotly.PlotSchema.get().traces),
                      [...document.querySelectorAll('.js-plotly-plot')]
                        .flatMap(gd => (gd.data || []).map(t => t.type || 'scatter'))]"""
        )
    finally:
        page.close()
    plotly = [url for url in fetched if "plotly" in url.rsplit("/", 1)[-1]]
    assert len(plotly) == 1 and plotly[0].split("?")[0].endswith("/assets/plotly-metricbus.min.js"), plotly
    assert {"scatter", "scattergl", "heatmap", "parcoords"} <= set(registered)
    assert drawn and set(drawn) <= set(registered), set(drawn) - set(registered)
    assert "heatmap" in drawn


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
    # the oldest run is not among the most recent ones a page opens on: select it by pattern
    dashboard.page.fill("#run-filter", "^hist$")
    dashboard.page.click("#select-matching")
    trace = dashboard.wait_points(
        "m:train/loss", "hist", lambda t: t["x"][0] == 0 and t["x"][-1] == HISTORY_STEPS - 1, 20, "the history"
    )
    # downsampled for drawing, but spanning the whole run and keeping its shape
    assert len(trace["x"]) >= 1000
    assert trace["y"][0] == pytest.approx(1.0)


def test_screenshot_is_written_as_an_artifact(dashboard: Dashboard) -> None:
    """A full-page screenshot with drawn charts lands in artifacts/ for a human to look at."""
    page = dashboard.page
    page.click('[data-overview-node="node-x"] a.node-link')
    page.wait_for_selector('[data-node="node-x"] [data-chart="n:node-x:cpu/percent"] .js-plotly-plot')
    wait_until(lambda: dashboard.raw("m:episode/reward", "ppo-b"), 10, "episode chart")
    artifacts = REPO / "artifacts"
    artifacts.mkdir(exist_ok=True)
    path = artifacts / "dashboard.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 50_000  # a blank page is a few KiB


META_JS = """(id) => {
  const g = document.querySelector(`[data-chart="${id}"] .js-plotly-plot`);
  const r = g && g.getBoundingClientRect();
  if (r && (r.bottom < 0 || r.top > innerHeight)) g.scrollIntoView({block: "nearest"});
  if (!g || !g.data) return [];
  return g.data.map(t => ({name: t.name, meta: t.meta || {}, colour: t.line && t.line.color,
                           x: Array.from(t.x || []), y: Array.from(t.y || [])}));
}"""


HEATMAP_JS = """(id) => {
  const g = document.querySelector(`[data-chart="${id}"] .js-plotly-plot`);
  if (g) g.scrollIntoView({block: "nearest"});
  if (!g || !g.data) return [];
  return g.data.map(t => ({type: t.type, x: Array.from(t.x || []), y: Array.from(t.y || []),
                           z: Array.from(t.z || []).map(r => Array.from(r)), cores: t.meta && t.meta.cores}));
}"""


def choose(page: Any, dropdown: str, option: str) -> None:
    """Pick ``option`` in a Dash dropdown as a reader does: open it, click the option."""
    page.click(dropdown)
    page.get_by_role("option", name=option, exact=True).click()
    page.keyboard.press("Escape")


def test_page_opens_on_the_most_recent_runs_each_in_a_colour_of_its_own(dashboard: Dashboard) -> None:
    """With more runs than ``default_runs`` (6), a page draws the 6 most recent, each in a distinct, stable colour."""
    from sinks.dashboard.runs import run_colour

    page = dashboard.page
    page.wait_for_selector("#runs-table input[type=checkbox]")
    wait_until(lambda: page.locator("#runs-table input[type=checkbox]:checked").count() == 6, 10, "6 rows ticked")
    assert "hist" not in {t["name"] for t in dashboard.traces("m:train/loss")}
    traces = page.evaluate(META_JS, "m:rollout/ep_rew_mean")
    colours = {t["name"]: t["colour"] for t in traces if t["meta"].get("role") == "raw"}
    assert len(colours) >= 5
    assert len(set(colours.values())) == len(colours)
    assert all(colour == run_colour(name) for name, colour in colours.items())


def test_sections_put_rewards_first_and_a_closed_one_stays_closed_across_a_reload(dashboard: Dashboard) -> None:
    """Sections run Rollout, Training, Gradients, System, Other, Runs; one closed stays closed after a reload."""
    page = dashboard.page
    order = page.eval_on_selector_all("section[data-section]", "els => els.map(e => e.dataset.section)")
    assert order == ["rollout", "training", "gradients", "system", "other", "runs"]
    page.click("#toggle-training")
    page.wait_for_selector("#section-training.closed")
    page.wait_for_selector('[data-chart="m:train/loss"]', state="detached")
    page.reload()
    page.wait_for_selector('[data-chart="m:rollout/ep_rew_mean"] .js-plotly-plot')
    page.wait_for_selector("#section-training.closed")
    assert page.query_selector('[data-chart="m:train/loss"]') is None
    page.click("#toggle-training")
    page.wait_for_selector('[data-chart="m:train/loss"] .js-plotly-plot')
    assert "closed" not in (page.get_attribute("#section-training", "class") or "")


def test_groups_by_run_id_draw_a_mean_with_a_band_over_the_right_runs(dashboard: Dashboard) -> None:
    """Grouped by ``(.*)-seed\\d+``, the sweep is one line per group, its band spanning its 3 or 2 runs."""
    page = dashboard.page
    choose(page, "#group-mode", "by run id regex")

    def roles(role: str) -> dict[str, dict[str, Any]]:
        traces = page.evaluate(META_JS, "m:rollout/ep_rew_mean")
        return {t["meta"]["series"]: t for t in traces if t["meta"].get("role") == role}

    def settled() -> dict[str, dict[str, Any]] | None:
        # a group line is recomputed at most every few seconds, so the first one drawn may
        # predate the selection that grouping makes (every matching run): wait for the counts
        g = roles("group")
        counts = {name: g[name]["meta"]["members"] for name in ("sweep-lr1", "sweep-lr3") if name in g}
        return g if counts == {"sweep-lr1": 3, "sweep-lr3": 2} else None

    groups = wait_until(settled, 40, "groups of 3 and 2 runs")  # 3 group charts a poll, each at most every 3 s
    assert groups["sweep-lr1"]["meta"]["members"] == 3
    assert groups["sweep-lr3"]["meta"]["members"] == 2
    assert groups["ppo-a"]["meta"]["members"] == 1  # a run no pattern matches is a group of its own
    lo, hi = roles("band-lo")["sweep-lr1"], roles("band-hi")["sweep-lr1"]
    centre = groups["sweep-lr1"]["y"]
    # the x grid is the chart's: beyond the sweep's last step (ppo-a runs longer) it has no value
    spans = [(a, c, b) for a, c, b in zip(lo["y"], centre, hi["y"], strict=True) if c is not None]
    assert len(spans) > 50
    assert all(a <= c + 1e-9 and c <= b + 1e-9 for a, c, b in spans)
    # seeds add 0, 1 and 2 to the same curve: min–max spans 2, ±1 std 2 × 0.816
    assert max(b - a for a, _, b in spans) == pytest.approx(2.0, rel=1e-3)
    choose(page, "#group-band", "±1 std")

    def std_band() -> bool:
        lo, hi = roles("band-lo").get("sweep-lr1"), roles("band-hi").get("sweep-lr1")
        return bool(lo and hi and lo["meta"]["band"] == "std")

    wait_until(std_band, 20, "the ±std band")
    lo, hi = roles("band-lo")["sweep-lr1"], roles("band-hi")["sweep-lr1"]
    widths = [b - a for a, b in zip(lo["y"], hi["y"], strict=True) if a is not None and b is not None]
    assert max(widths) == pytest.approx(2 * 0.8165, rel=1e-3)
    page.click("#group-members input")
    members = wait_until(lambda: roles("member"), 20, "the members' own lines")
    assert {run for run, _ in SWEEP} <= set(members)


def test_runs_table_sorts_by_a_hyperparameter_and_its_rows_select_runs(dashboard: Dashboard) -> None:
    """Sorting the runs table by learning_rate orders runs by it; unticking a row takes that run off the charts."""
    page = dashboard.page
    header = '#runs-table th[data-dash-column="hp:learning_rate"]'
    page.wait_for_selector(header)
    page.click(f"{header} .column-header--sort")

    def column(name: str) -> list[str]:
        cells = f'#runs-table td[data-dash-column="{name}"]'
        return [t.strip() for t in page.eval_on_selector_all(cells, "els => els.map(e => e.innerText)")]

    rates = [float(v) for v in column("hp:learning_rate") if v]
    assert len(rates) == len(SWEEP)
    assert rates == sorted(rates)
    figure = page.evaluate("() => document.querySelector('#hparams .js-plotly-plot').data[0].dimensions")
    assert [d["label"] for d in figure][-2:] == ["learning_rate", "final reward"]
    runs = column("run")
    row = page.locator("#runs-table tbody tr").nth(runs.index("ppo-b") + 2)  # header and filter rows first
    assert "ppo-b" in row.inner_text()
    row.locator("input[type=checkbox]").uncheck()
    traces = dashboard.traces
    wait_until(lambda: "ppo-b" not in {t["name"] for t in traces("m:train/loss")}, 20, "ppo-b gone", interval=0.2)


def test_node_overview_has_a_row_per_node_and_a_click_opens_that_nodes_charts(dashboard: Dashboard) -> None:
    """A row per node with its GPUs' cells; a click opens its charts: the cores as one heatmap, GPUs sharing a chart."""
    page = dashboard.page
    page.wait_for_selector('[data-overview-node="node-big"]')
    nodes = page.eval_on_selector_all("[data-overview-node]", "els => els.map(e => e.dataset.overviewNode)")
    assert sorted(nodes) == ["node-big", "node-x"]
    assert page.locator('[data-overview-node="node-big"] .g').count() == 4 * BIG_GPUS  # util, mem, temp, power
    assert page.query_selector("[data-node] [data-chart]") is None  # no node's charts until one is opened
    page.click('[data-overview-node="node-big"] a.node-link')
    page.wait_for_selector('[data-overview-node="node-big"][data-open="true"]')
    assert "node=node-big" in page.url

    def raw_count(chart: str) -> int:
        return sum(1 for t in page.evaluate(META_JS, chart) if t["meta"].get("role") == "raw" and t["x"])

    def heatmap_rows() -> int:
        traces = page.evaluate(HEATMAP_JS, "n:node-big:cpu/per_core_percent")
        return len(traces[0]["z"]) if traces and traces[0]["type"] == "heatmap" and traces[0]["x"] else 0

    wait_until(lambda: heatmap_rows() == BIG_CORES, 20, "every core a row of one heatmap")
    heatmap = page.evaluate(HEATMAP_JS, "n:node-big:cpu/per_core_percent")[0]
    assert heatmap["y"] == [str(c) for c in range(BIG_CORES)]
    assert heatmap["cores"] == BIG_CORES
    assert all(len(row) == len(heatmap["x"]) for row in heatmap["z"])
    assert [row[-1] for row in heatmap["z"]] == [float(c) for c in range(BIG_CORES)]  # core c published c %
    wait_until(lambda: raw_count("n:node-big:gpu/util_percent") == BIG_GPUS, 20, "both GPUs in one chart")
    charts = page.eval_on_selector_all("[data-chart]", "els => els.map(e => e.dataset.chart)")
    assert not [c for c in charts if c.startswith("n:") and "/3/" in c]  # no chart per core
    assert not [c for c in charts if c.startswith("n:node-x:")]


def test_chart_tools_log_scale_full_width_and_downloads(dashboard: Dashboard) -> None:
    """A chart's log toggle survives a redraw, it expands to full width, and CSV and PNG download what it shows."""
    page = dashboard.page
    card = '[data-chart="m:train/loss"]'
    y_type = f"() => document.querySelector('{card} .js-plotly-plot').layout.yaxis.type"
    page.hover(card)
    page.click(f"{card} [data-action=log]")
    page.wait_for_function(f"() => ({y_type})() === 'log'")
    width = page.locator(card).bounding_box()["width"]
    page.click(f"{card} [data-action=wide]")
    wait_until(lambda: page.locator(card).bounding_box()["width"] > 1.5 * width, 10, "the chart at full width")
    with page.expect_download() as download:
        page.click(f"{card} [data-action=csv]")
    lines = Path(download.value.path()).read_text().splitlines()
    assert lines[0] == "series,role,x,y"
    drawn = dashboard.raw("m:train/loss", "ppo-a")
    assert drawn is not None
    assert sum(1 for line in lines if line.startswith("ppo-a,raw,")) >= len(drawn["x"])
    with page.expect_download() as download:
        page.click(f"{card} [data-action=png]")
    assert download.value.suggested_filename.endswith(".png")
    # a control change draws every chart whole again: the log axis stays
    page.get_by_label("time since start (s)").check()
    dashboard.wait_points("m:train/loss", "ppo-a", lambda t: t["x"][0] < 1e6, 10, "seconds since start")
    assert page.evaluate(y_type) == "log"

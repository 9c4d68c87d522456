"""The websocket sink in headless Chromium: ``examples/live.html`` draws a run live, reconnects
after the sink restarts and is refused from a foreign origin; the dashboard is pushed to.

The sinks run in-process (their real servers and threads); the pages are real pages, served
from loopback HTTP as the README says, and tests read what they hold (``window.live``,
``data-*`` attributes, Plotly's ``.data``), not pixels.
"""

from __future__ import annotations

import functools
import math
import os
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from support import CHROMIUM, CHROMIUM_ARGS, REPO, free_port, wait_until

from bus.message import Message

pytestmark = pytest.mark.browser


if not os.path.exists(CHROMIUM):
    pytest.skip(f"browser tests need Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="browser tests need playwright")
pytest.importorskip("websockets", reason="the websocket sink needs the websocket extra")

from sinks.websocket import WebSocketSink  # noqa: E402

_seq = iter(range(10**9))


def msg(kind: str, run: str, data: dict[str, Any], step: int) -> Message:
    return Message(kind, run, "n1", "pub-b", next(_seq), time.time(), step, data)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        b = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    p = browser.new_page()
    p.set_default_timeout(20_000)
    yield p
    p.close()


@pytest.fixture(scope="module")
def examples_url() -> Iterator[str]:
    """examples/ over HTTP on loopback, as the README serves live.html."""
    handler = functools.partial(_QuietHandler, directory=str(REPO / "examples"))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def live_state(page: Any) -> dict[str, Any]:
    return page.evaluate(
        "() => ({status: live.status, run: live.run, runs: Object.keys(live.runs).sort(), connects: live.connects,"
        " nonFinite: live.nonFinite, series: Object.fromEntries(Object.entries(live.series)"
        ".map(([k, v]) => [k, v.map(p => p[0])]))})"
    )


def test_live_page_draws_one_runs_reward_and_losses_and_counts_nan(page: Any, examples_url: str) -> None:
    """live.html subscribes to the first run, draws its reward and losses, ignores other runs, counts a NaN."""
    sink = WebSocketSink(port=0)
    try:
        sink.handle([msg("event", "ppo-a", {"event": "run_started"}, 0)])
        page.goto(f"{examples_url}/live.html?ws={sink.url}")
        # the page subscribes to every run, then (on the first snapshot) to the one it chose: wait for
        # the second snapshot, or the batches below may go out under the first filter
        page.wait_for_function("() => live.status === 'live' && live.run === 'ppo-a' && live.frames >= 2")
        for step in range(1, 21):
            sink.handle(
                [
                    msg("episode", "ppo-a", {"reward": float(step), "length": 10}, step),
                    msg("metrics", "ppo-a", {"train/value_loss": 1.0 / step, "train/policy_loss": -0.1}, step),
                    msg("episode", "ppo-b", {"reward": 1000.0}, step),
                    msg("event", "ppo-b", {"event": "heartbeat"}, step),
                ]
            )
        sink.handle([msg("metrics", "ppo-a", {"train/value_loss": math.nan}, 21)])
        page.wait_for_function("() => (live.series.reward || []).length === 20 && live.nonFinite === 1")
        state = live_state(page)
        assert state["series"]["reward"] == list(range(1, 21))
        assert state["series"]["train/value_loss"] == list(range(1, 21))
        assert state["series"]["train/policy_loss"] == list(range(1, 21))
        assert max(page.evaluate("() => live.series.reward.map(p => p[1])")) == 20.0  # ppo-b's 1000 never came
        assert state["runs"] == ["ppo-a", "ppo-b"]
        page.screenshot(path=str(_artifacts() / "live.png"))
    finally:
        sink.close()


def test_live_page_reconnects_after_the_sink_restarts(page: Any, examples_url: str) -> None:
    """When the sink goes away the page says so, retries with back-off and draws again once a new sink listens."""
    port = free_port()
    sink = WebSocketSink(port=port)
    try:
        sink.handle([msg("episode", "r1", {"reward": 1.0}, 1)])
        page.goto(f"{examples_url}/live.html?ws=ws://127.0.0.1:{port}&run=r1")
        page.wait_for_function("() => live.status === 'live' && (live.series.reward || []).length === 1")
        sink.close()
        page.wait_for_function("() => live.status === 'down'")
        sink = WebSocketSink(port=port)
        page.wait_for_function("() => live.status === 'live' && live.connects === 2", timeout=30_000)
        wait_until(lambda: sink.stats()["clients"] == 1, 10, "the page to be a client again")

        def drawn() -> bool:
            sink.handle([msg("episode", "r1", {"reward": 2.0}, 2)])
            return bool(page.evaluate("() => live.series.reward.some(p => p[0] === 2)"))

        wait_until(drawn, 15, "a point from the new sink", interval=0.2)
    finally:
        sink.close()


def test_a_page_from_another_origin_is_refused(page: Any) -> None:
    """A page of another origin (served from 127.0.0.2, another web app on this host) cannot open the stream.

    A page of a public site (http://evil.test) is already stopped by Chromium's own Local Network
    Access checks before it reaches the sink; other browsers leave that to the sink's Origin check.
    """
    sink = WebSocketSink(port=0)
    handler = functools.partial(_QuietHandler, directory=str(REPO / "examples"))
    other = ThreadingHTTPServer(("127.0.0.2", 0), handler)
    thread = threading.Thread(target=other.serve_forever, daemon=True)
    thread.start()
    try:
        page.goto(f"http://127.0.0.2:{other.server_port}/live.html?ws={sink.url}")
        wait_until(lambda: sink.stats()["refused_origin"] >= 1, 15, "the sink to refuse the page")
        page.wait_for_function("() => live.status === 'down'")
        assert page.evaluate("() => live.connects") == 0
        assert sink.stats()["clients"] == 0
    finally:
        other.shutdown()
        other.server_close()
        sink.close()


CHART_HAS = (
    '([id, step]) => { const g = document.querySelector(`[data-chart="${id}"] .js-plotly-plot`);'
    " return !!(g && g.data && g.data[0] && Array.from(g.data[0].x).includes(step)); }"
)


def test_the_dashboard_is_pushed_to_while_the_socket_is_up(page: Any) -> None:
    """With a 60 s poll, new points still show at once: the websocket sink's news makes the page poll."""
    pytest.importorskip("dash", reason="the dashboard needs the dashboard extra")
    from sinks.dashboard.sink import DashboardSink

    ws = WebSocketSink(port=0)
    dash = DashboardSink(port=free_port(), history_root=None, poll_interval=60.0, push=ws.url)
    try:
        page.goto(dash.url)
        page.wait_for_function("() => document.body.dataset.push === 'live'")
        wait_until(lambda: ws.stats()["subscribed"] == 1, 10, "the page to subscribe")
        for step in (1, 2, 3):
            batch = [msg("metrics", "push-run", {"push/x": float(step)}, step)]
            dash.handle(batch)
            ws.handle(batch)
            page.wait_for_function(CHART_HAS, arg=["m:push/x", step])
        assert page.evaluate("() => window.metricbusPushPolls") >= 3
    finally:
        dash.close()
        ws.close()


def test_the_dashboard_polls_when_the_socket_is_down(page: Any) -> None:
    """With nothing listening at the push URL the page says push is down and its poll still brings points."""
    pytest.importorskip("dash", reason="the dashboard needs the dashboard extra")
    from sinks.dashboard.sink import DashboardSink

    dash = DashboardSink(port=free_port(), history_root=None, poll_interval=0.5, push=f"ws://127.0.0.1:{free_port()}")
    try:
        page.goto(dash.url)
        page.wait_for_function("() => document.body.dataset.push === 'down'")
        for step in (1, 2):
            dash.handle([msg("metrics", "poll-run", {"poll/x": float(step)}, step)])
            page.wait_for_function(CHART_HAS, arg=["m:poll/x", step])
    finally:
        dash.close()


def _artifacts() -> Any:
    path = REPO / "artifacts"
    path.mkdir(exist_ok=True)
    return path

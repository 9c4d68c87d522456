"""``metricbus report`` on a finished run recorded by a real stack: a self-contained HTML file
that Chromium renders offline with its charts, and a markdown summary with the right counts."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import CHROMIUM, CHROMIUM_ARGS, Stack, wait_until

from bus.publisher import Publisher

pytest.importorskip("plotly", reason="reports need the dashboard extra")

EPISODES = 37
STEPS = 1500


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Run ``done-1`` recorded start to end (metrics, episodes, an alert, run_ended) by the JSONL sink."""
    workdir = tmp_path_factory.mktemp("report")
    with Stack(workdir) as stack:
        node = Publisher(stack.frontend, node="report-node")
        with Publisher(stack.frontend, run="done-1", node="report-node") as pub:
            pub.event("run_started", step=0, config={"algo": "PPO"})
            node.system({"cpu/percent": 12.0, "mem/percent": 30.0})
            for step in range(0, STEPS, 10):
                pub.metrics(
                    {"train/value_loss": math.exp(-step / 500), "train/policy_loss": -0.01, "train/entropy_loss": -0.6},
                    step=step,
                )
            for i in range(EPISODES):
                pub.episode({"reward": 10.0 + i, "length": 100 + i}, step=i * 40)
            alert = {"rule": "reward_stagnation", "severity": "warning", "metric": "episode/reward", "since": 0.0,
                     "hint": "check the learning rate"}  # fmt: skip
            pub.alert({**alert, "state": "firing", "message": "no progress", "value": 12.0, "threshold": 15.0})
            pub.alert({**alert, "state": "resolved", "message": "progress again", "value": 40.0, "threshold": 15.0})
            node.system({"cpu/percent": 14.0, "mem/percent": 31.0})
            pub.event("run_ended", step=STEPS, status="completed")
        node.close()
        wait_until(
            lambda: (
                any(r["data"].get("event") == "run_ended" for r in stack.records("done-1", "event"))
                and len(stack.records("done-1", "episode")) == EPISODES
            ),
            20,
            "the whole run on disk",
        )
    yield stack.root / "done-1"


def report(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "metricbus", "report", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_markdown_summary_counts_episodes_and_names_the_outcome(finished_run: Path, tmp_path: Path) -> None:
    """The markdown summary has the run's episode count, status, steps, rewards, losses and alerts."""
    done = report(str(finished_run), "--format", "md", "-o", str(tmp_path / "r.md"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    text = (tmp_path / "r.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| done-1 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    header = [c.strip() for c in text.splitlines()[4].strip("|").split("|")]
    summary = dict(zip(header, cells, strict=True))
    assert summary["episodes"] == str(EPISODES)
    assert summary["status"] == "completed"
    assert summary["steps"] == str(STEPS - 10)
    # rewards 10..46: the mean of the (fewer than 100) episodes, and the best such mean
    assert float(summary["final reward"]) == pytest.approx(28.0)
    assert "value_loss" in summary["final losses"]
    assert summary["alerts fired"].startswith("1 (reward_stagnation")
    diagnosis = text.split("## Diagnosis", 1)[1]  # what fired, when, its hint, how the run ended
    assert "**done-1**" in diagnosis
    assert "- ended completed; 1 rule(s) fired, the worst warning (reward_stagnation)." in diagnosis
    line = next(x for x in diagnosis.splitlines() if x.startswith("- warning reward_stagnation"))
    assert "since resolved" in line and line.endswith("no progress")
    assert "  - check: check the learning rate" in diagnosis


@pytest.mark.browser
def test_html_report_is_self_contained_and_renders_its_charts(finished_run: Path, tmp_path: Path) -> None:
    """The HTML report embeds plotly.js and, opened offline in Chromium, draws every chart with data."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"rendering needs Chromium at {CHROMIUM}")
    sync_api = pytest.importorskip("playwright.sync_api")
    output = tmp_path / "report.html"
    done = report(str(finished_run), "-o", str(output), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    html = output.read_text()
    assert "<script src=" not in html  # nothing fetched: it opens offline
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            requests: list[str] = []

            def offline(route: Any) -> None:
                requests.append(route.request.url)
                route.abort()

            page.route("http*://**", offline)
            page.goto(output.as_uri())
            page.wait_for_function(
                """() => { const g = [...document.querySelectorAll('.js-plotly-plot')];
                           return g.length > 0 && g.every(p => p.data && p.querySelector('.main-svg')); }"""
            )
            drawn = page.evaluate(
                """() => Object.fromEntries([...document.querySelectorAll('[data-chart]')].map(d =>
                     [d.dataset.chart, d.querySelector('.js-plotly-plot').data.map(t => (t.x || []).length)]))"""
            )
            episodes = page.inner_text('#summary tr[data-run="done-1"] td:nth-child(5)')
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        finally:
            browser.close()
    assert requests == []
    assert episodes == str(EPISODES)
    for chart in ("m:train/value_loss", "m:episode/reward", "m:episode/length", "n:report-node:cpu/percent"):
        assert chart in drawn, sorted(drawn)
    assert drawn["m:train/value_loss"][0] == STEPS // 10
    assert drawn["m:episode/reward"][0] == EPISODES


def test_report_names_a_directory_that_is_not_a_run(tmp_path: Path) -> None:
    """A missing or empty run directory fails with exit code 2 and says which one."""
    (tmp_path / "empty").mkdir()
    for bad in ("missing", "empty"):
        done = report(str(tmp_path / bad), cwd=tmp_path)
        assert done.returncode == 2
        assert bad in done.stderr

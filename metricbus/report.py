"""``metricbus report RUN_DIR... -o report.html``: what a finished training looked like, in
one file a colleague can open offline (plotly.js is embedded), or a short markdown summary.

The charts are the dashboard's own (same sections, colours, smoothing and downsampling),
drawn from the JSONL files; the summary table gives per run its duration, steps, episodes,
final and best reward (means over the last :data:`REWARD_WINDOW` episodes), final losses and
the alerts that fired. System charts of the nodes a run used are included when the JSONL
root beside the run directories holds them.
"""

from __future__ import annotations

import argparse
import html
import math
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np

from alerts.diagnosis import diagnose
from sinks.dashboard.figures import SECTIONS, rolling_mean
from sinks.dashboard.store import Store

#: Final and best reward are means over this many episodes (SB3's ``ep_rew_mean`` window).
REWARD_WINDOW: Final = 100
_DRAW_POINTS: Final = 4000


@dataclass
class RunSummary:
    run: str
    status: str
    nodes: list[str]
    duration_s: float
    steps: int | None
    episodes: int
    final_reward: float | None
    best_reward: float | None
    final_losses: dict[str, float] = field(default_factory=dict)
    alerts_fired: int = 0
    alert_rules: list[str] = field(default_factory=list)
    #: what fired, when, what to check, how it ended (alerts.diagnosis)
    diagnosis: list[str] = field(default_factory=list)


class ReportError(ValueError):
    """A run directory that cannot be reported on; the text names it."""


def load(run_dirs: Sequence[Path]) -> tuple[Store, list[str]]:
    """A store holding every record of ``run_dirs`` (and their nodes' system metrics)."""
    from sinks.jsonl_files import node_dir, read_records

    store = Store(max_points=1 << 30, max_runs=len(run_dirs) + 1, max_series=100_000, max_alerts=100_000)
    runs: list[str] = []
    for directory in run_dirs:
        if not directory.is_dir():
            raise ReportError(f"{directory}: no such directory")
        if not any(directory.glob("*.jsonl")):
            raise ReportError(f"{directory}: no .jsonl files (is this a run directory under the JSONL root?)")
        before = set(store.runs)
        store.add_history(read_records(directory))
        added = sorted(set(store.runs) - before)
        if not added:
            raise ReportError(f"{directory}: no records of a run")
        runs += added
    nodes = {store.runs[r].node for r in runs if store.runs[r].node}
    start = min(store.runs[r].first_ts for r in runs)
    end = max(store.runs[r].last_ts for r in runs)
    for directory in {d.resolve().parent for d in run_dirs}:
        for node in sorted(nodes):
            path = node_dir(directory, node)
            if path.is_dir():
                # a node's file spans every run it served: keep the window of these runs
                records = read_records(path, ["system"])
                store.add_history(r for r in records if start <= _ts(r) <= end)
    return store, runs


def _ts(record: dict[str, Any]) -> float:
    ts = record.get("ts")
    return float(ts) if isinstance(ts, int | float) else math.nan


def summarise(store: Store, run: str) -> RunSummary:
    data = store.runs[run]
    steps = [s.arrays()[0] for s in data.series.values() if s.n]
    finite_steps = [float(np.nanmax(a)) for a in steps if np.isfinite(a).any()]
    step = int(max(finite_steps)) if finite_steps else None
    final_reward = best_reward = None
    rewards = data.series.get("episode/reward")
    if rewards is not None and rewards.n:
        values = rewards.arrays()[2]
        means = rolling_mean(values, REWARD_WINDOW)
        final_reward = float(means[-1])
        best_reward = float(np.nanmax(means))
    losses = {
        name: series.last()
        for name, series in sorted(data.series.items())
        if name.startswith("train/") and "loss" in name and series.n
    }
    alerts = [a for a in [*store.alerts.history, *store.alerts.active.values()] if a["source"] == run]
    rules = sorted({a["rule"] for a in alerts})
    status = data.status if data.status != "running" else "unfinished"
    return RunSummary(
        run=run,
        status=status,
        nodes=[data.node] if data.node else [],
        duration_s=max(0.0, data.last_ts - data.first_ts) if math.isfinite(data.first_ts) else 0.0,
        steps=step,
        episodes=data.episodes,
        final_reward=final_reward,
        best_reward=best_reward,
        final_losses=losses,
        alerts_fired=store.alerts.fired.get(run, 0),
        alert_rules=rules,
        diagnosis=diagnose(status, data.error or None, alerts),
    )


def _num(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.4g}"


def _duration(seconds: float) -> str:
    minutes, sec = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{sec:02d}"


_COLUMNS: Final = ("run", "status", "duration", "steps", "episodes", "final reward", "best reward", "final losses",
                   "alerts fired")  # fmt: skip


def _row(s: RunSummary) -> list[str]:
    losses = ", ".join(f"{k.removeprefix('train/')} {_num(v)}" for k, v in s.final_losses.items()) or "–"
    alerts = str(s.alerts_fired) + (f" ({', '.join(s.alert_rules)})" if s.alert_rules else "")
    return [
        s.run,
        s.status,
        _duration(s.duration_s),
        "–" if s.steps is None else str(s.steps),
        str(s.episodes),
        _num(s.final_reward),
        _num(s.best_reward),
        losses,
        alerts,
    ]


_MD_SPECIAL: Final = re.compile(r"([\\`*\[\]<>|!])")
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _md_cell(text: str) -> str:
    """A table cell's text as literal markdown: rule names come from the wire (via alerts.jsonl),
    so a name with ``|``, a newline, ``<script>`` or ``[link](…)`` must not change the page."""
    return _MD_SPECIAL.sub(r"\\\1", _CONTROL.sub(" ", text))


def markdown(summaries: Sequence[RunSummary]) -> str:
    lines = [
        "# metricbus report",
        "",
        f"Runs: {', '.join(s.run for s in summaries)}. Rewards are means over the last {REWARD_WINDOW} episodes"
        f" (best: the highest such mean).",
        "",
        "| " + " | ".join(_COLUMNS) + " |",
        "|" + "---|" * len(_COLUMNS),
    ]
    lines += ["| " + " | ".join(_md_cell(cell) for cell in _row(s)) + " |" for s in summaries]
    lines += ["", "## Diagnosis"]
    for s in summaries:
        # the lines carry rule names and messages from the wire: literal markdown, like the table
        lines += ["", f"**{_md_cell(s.run)}**", ""]
        lines += [("  - " if line.startswith("  ") else "- ") + _md_cell(line.strip()) for line in s.diagnosis]
    return "\n".join(lines) + "\n"


def html_report(store: Store, runs: Sequence[str], summaries: Sequence[RunSummary]) -> str:
    import plotly.io as pio

    from sinks.dashboard.charts import ChartSpec, Painter, View, chart_specs

    view = View(tuple(runs), "", 0.6, "step")
    specs: list[ChartSpec] = chart_specs(store, view)
    painter = Painter(store, view, _DRAW_POINTS, webgl_points=1 << 62)  # SVG: renders without WebGL
    first = True
    blocks: list[str] = []
    titles = {key: title for key, title, _ in SECTIONS} | {"system": "System (per node)"}
    for key in [k for k, _, _ in SECTIONS[:3]] + ["system", "other"]:
        charts = [s for s in specs if s.section == key]
        if not charts:
            continue
        blocks.append(f"<h2>{html.escape(titles[key])}</h2><div class='grid'>")
        for spec in charts:
            fig, _ = painter.full(spec)
            if spec.node:
                fig["layout"]["title"]["text"] = f"{spec.node}: {spec.title}"
            div = pio.to_html(
                fig,
                include_plotlyjs=first,  # inline once: the file opens offline
                full_html=False,
                config={"displaylogo": False},
                default_width="100%",
                default_height="260px",
            )
            first = False
            blocks.append(f"<div class='chart' data-chart='{html.escape(spec.id)}'>{div}</div>")
        blocks.append("</div>")
    head = "".join(f"<th>{html.escape(c)}</th>" for c in _COLUMNS)
    rows = "".join(
        f"<tr data-run='{html.escape(s.run)}'>" + "".join(f"<td>{html.escape(c)}</td>" for c in _row(s)) + "</tr>"
        for s in summaries
    )
    legend = "".join(
        f"<span class='chip' style='background:{_colour(store, r)}'></span>{html.escape(r)} &nbsp; " for r in runs
    )
    made = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>metricbus report: {html.escape(", ".join(runs))}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 16px; color: #1f2933; }}
table {{ border-collapse: collapse; font-size: 13px; }} th, td {{ padding: 4px 8px; border-bottom: 1px solid #ddd; }}
.grid {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(440px, 1fr)); gap: 10px; }}
.chart {{ border: 1px solid #e1e4e8; border-radius: 4px; }}
li.hint {{ list-style: none; color: #52606d; }}
.chip {{ display: inline-block; width: 12px; height: 12px; border-radius: 2px; margin-right: 4px; }}
</style></head><body>
<h1>metricbus report</h1>
<p>{legend}</p>
<p>Made {html.escape(made)}. Rewards are means over the last {REWARD_WINDOW} episodes (best: the highest such mean);
lines are smoothed (EMA 0.6, episodes: rolling mean) over the faint raw values.</p>
<table id="summary"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>
<h2>Diagnosis</h2>
{_diagnosis_html(summaries)}
{"".join(blocks)}
</body></html>
"""


def _diagnosis_html(summaries: Sequence[RunSummary]) -> str:
    parts = []
    for s in summaries:
        items = "".join(
            f"<li class='hint'>{html.escape(line.strip())}</li>" if line.startswith("  ") else
            f"<li>{html.escape(line)}</li>"
            for line in s.diagnosis
        )  # fmt: skip
        run = html.escape(s.run)
        parts.append(f"<div class='diagnosis' data-run='{run}'><b>{run}</b><ul>{items}</ul></div>")
    return "".join(parts)


def _colour(store: Store, run: str) -> str:
    from sinks.dashboard.figures import colour

    return colour(store.runs[run].colour)


def cmd_report(args: argparse.Namespace) -> int:
    run_dirs = [Path(p) for p in args.runs]
    try:
        store, runs = load(run_dirs)
    except ReportError as exc:
        print(f"metricbus: report: {exc}", file=sys.stderr)
        return 2
    with store.lock:
        summaries = [summarise(store, r) for r in runs]
        text = markdown(summaries) if args.format == "md" else html_report(store, runs, summaries)
    output = Path(args.output or f"report.{args.format}")
    output.write_text(text, encoding="utf-8")
    print(f"metricbus: wrote {output} ({len(runs)} run(s), {len(text) // 1024} KiB)")
    return 0


__all__ = ["ReportError", "RunSummary", "cmd_report", "html_report", "load", "markdown", "summarise"]

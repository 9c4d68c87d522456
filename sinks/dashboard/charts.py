"""What the page draws: which charts a view shows (:func:`chart_specs`) and how their
series become whole figures or increments of what is new (:class:`Painter`).

Shared by the live page and ``metricbus report``; knows nothing of Dash callbacks.
"""

from __future__ import annotations

import math
import re
import threading
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from bus.bounded import Recent
from sinks.dashboard import downsample
from sinks.dashboard.figures import (
    EPISODE_WINDOW,
    Y_DIGITS,
    EmaState,
    colour,
    ema,
    figure,
    is_episode,
    node_family,
    plain,
    rolling_mean,
    section_of,
    trace_pair,
    x_values,
)
from sinks.dashboard.groups import MAX_GROUPS, aggregate, group_traces, member_trace
from sinks.dashboard.runs import Grouping, groups, run_colour
from sinks.dashboard.store import NODE, RUN, Series, SourceData, Store

#: A chart's traces are redrawn (downsampled again) once extends have grown them past this
#: many times the drawing budget, so the browser's memory stays bounded too.
_REDRAW_FACTOR: Final = 3
#: At most this many charts per section; the metric search narrows the rest.
MAX_CHARTS_PER_SECTION: Final = 48
#: Columns (samples) of a per-core heatmap at most: a 64-core node's chart stays ~25k cells.
HEATMAP_COLUMNS: Final = 400


@dataclass(frozen=True)
class SeriesRef:
    scope: str
    source: str
    metric: str
    label: str
    colour: str

    @property
    def key(self) -> str:
        return f"{self.scope}|{self.source}|{self.metric}"


@dataclass(frozen=True)
class ChartSpec:
    id: str
    section: str  # a run section key, or "system"
    title: str
    node: str
    series: tuple[SeriesRef, ...]
    episode: bool
    heatmap: bool = False  # a node's per-core CPU: cores × time, one row per core


@dataclass(frozen=True)
class View:
    """What the controls ask for: ``nodes`` and ``sections`` None mean all of them."""

    runs: tuple[str, ...]
    search: str
    smoothing: float
    x_mode: str
    nodes: tuple[str, ...] | None = None
    sections: tuple[str, ...] | None = None
    grouping: Grouping | None = None

    @property
    def grouped(self) -> bool:
        return self.grouping is not None and self.grouping.active

    def signature(self) -> list[Any]:
        grouping = self.grouping.signature() if self.grouping is not None else []
        return [list(self.runs), self.smoothing, self.x_mode, grouping]


#: A metric search longer than this is cut (a pattern is typed, not pasted).
MAX_SEARCH_CHARS: Final = 200
#: (pattern, metric name) -> whether it matches: see warm_search.
_MATCHES: Recent[tuple[str, str], bool] = Recent(50_000)
_MATCHES_LOCK = threading.Lock()


def compile_filter(text: str | None) -> re.Pattern[str] | None:
    """The regex in ``text``; an invalid one matches as a plain substring."""
    if not text:
        return None
    text = text[:MAX_SEARCH_CHARS]
    try:
        return re.compile(text)
    except re.error:
        return re.compile(re.escape(text))


def _matches(pattern: re.Pattern[str], metric: str) -> bool:
    key = (pattern.pattern, metric)
    with _MATCHES_LOCK:
        hit = _MATCHES.get(key)
    if hit is None:
        hit = pattern.search(metric) is not None
        with _MATCHES_LOCK:
            _MATCHES.put(key, hit)
    return hit


def warm_search(store: Store, view: View) -> None:
    """Match the view's metric search against every name *before* the caller takes the store's lock.

    A pattern that backtracks badly (``(a+)+$``) then stalls only the page that typed it, not
    the sink filling the store nor other viewers; chart_specs, under the lock, finds the
    answers memoised (only a name that arrived in between is matched there).
    """
    pattern = compile_filter(view.search)
    if pattern is None:
        return
    with store.lock:
        names = {m for table in (store.runs, store.nodes) for d in table.values() for m in d.series}
    for name in names:
        _matches(pattern, name)


def chart_specs(store: Store, view: View) -> list[ChartSpec]:
    """Every chart the view shows, in page order (caller holds the store's lock)."""
    search = compile_filter(view.search)
    runs = [store.runs[r] for r in view.runs if r in store.runs]
    metrics: set[str] = set()
    for data in runs:
        metrics.update(data.series)
    specs: list[ChartSpec] = []
    per_section: dict[str, int] = {}
    # reward first in its section: what a reader looks for first
    for metric in sorted(metrics, key=lambda m: ("reward" not in m and "rew_" not in m, m)):
        if search is not None and not _matches(search, metric):
            continue
        section = section_of(metric)
        if view.sections is not None and section not in view.sections:
            continue
        per_section[section] = per_section.get(section, 0) + 1
        if per_section[section] > MAX_CHARTS_PER_SECTION:
            continue
        refs = tuple(SeriesRef(RUN, d.name, metric, d.name, run_colour(d.name)) for d in runs if metric in d.series)
        specs.append(ChartSpec(f"m:{metric}", section, metric, "", refs, is_episode(metric)))
    if view.sections is not None and "system" not in view.sections:
        return specs
    for node in sorted(store.nodes) if view.nodes is None else [n for n in view.nodes if n in store.nodes]:
        data = store.nodes[node]
        families: dict[str, list[str]] = {}
        for metric in sorted(data.series):
            if metric.endswith("/mem_total_bytes"):
                continue  # a constant: the overview shows memory used as a share of it
            if search is None or _matches(search, metric):
                families.setdefault(node_family(metric), []).append(metric)
        for family, members in families.items():
            n = len(members)
            heatmap = family.startswith("cpu/per_core_")
            if heatmap:  # cores in their numeric order, bottom to top
                members.sort(key=lambda m: int(m.split("/")[1]))
            refs = tuple(SeriesRef(NODE, node, m, m if n > 1 else node, colour(i, n)) for i, m in enumerate(members))
            specs.append(ChartSpec(f"n:{node}:{family}", "system", family, node, refs, False, heatmap))
    return specs


# -- drawing -------------------------------------------------------------------------------------


class Painter:
    """Turns series into whole figures or into patches of what is new, for one view."""

    def __init__(self, store: Store, view: View, draw_points: int, webgl_points: int) -> None:
        self.store = store
        self.view = view
        self.draw_points = draw_points
        self.webgl_points = webgl_points

    def _origin(self, ref: SeriesRef) -> float:
        data = self.store.sources(ref.scope).get(ref.source)
        return data.first_ts if data is not None and math.isfinite(data.first_ts) else 0.0

    def _x_mode(self, spec: ChartSpec) -> str:
        # system samples carry no step: by step, a node's charts use wall time
        return "wall" if spec.section == "system" and self.view.x_mode == "step" else self.view.x_mode

    def _series(self, ref: SeriesRef) -> Series | None:
        data: SourceData | None = self.store.sources(ref.scope).get(ref.source)
        return data.series.get(ref.metric) if data is not None else None

    def _smoothing_on(self, spec: ChartSpec) -> bool:
        return spec.episode or self.view.smoothing > 0.0

    def wants_webgl(self, spec: ChartSpec) -> bool:
        longest = max((s.n for s in map(self._series, spec.series) if s is not None), default=0)
        return longest >= self.webgl_points

    def is_grouped(self, spec: ChartSpec) -> bool:
        return self.view.grouped and spec.section != "system"

    def whole_only(self, spec: ChartSpec) -> bool:
        """Drawn whole each time (no cheap increment): a group chart or a heatmap."""
        return spec.heatmap or self.is_grouped(spec)

    def whole(self, spec: ChartSpec) -> dict[str, Any]:
        return self.heatmap(spec) if spec.heatmap else self.grouped(spec)

    def heatmap(self, spec: ChartSpec) -> dict[str, Any]:
        """Every core of a node as a row of cells over time (a node samples its cores together,
        so the rows share their timestamps): 64 cores read at a glance, where 64 lines do not."""
        rows: list[tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], np.ndarray[Any, Any]]] = []
        for ref in spec.series:
            series = self._series(ref)
            rows.append(series.arrays() if series is not None else (np.empty(0), np.empty(0), np.empty(0)))
        x_mode = self._x_mode(spec)
        n = min((len(values) for _, _, values in rows), default=0)
        if n == 0:
            traces: list[dict[str, Any]] = []
        else:
            # the last n samples of every core, thinned evenly to at most HEATMAP_COLUMNS
            picked = np.unique(np.linspace(0, n - 1, min(n, HEATMAP_COLUMNS)).round().astype(np.int64))
            step, ts, _ = rows[0]
            x = x_values(step[-n:], ts[-n:], x_mode, self._origin(spec.series[0]))[picked]
            z = [plain(np.round(values[-n:][picked], 1)) for _, _, values in rows]
            cores = [ref.metric.split("/")[1] for ref in spec.series]
            traces = [
                {
                    "type": "heatmap",
                    "x": plain(x),
                    "y": cores,
                    "z": z,
                    "zmin": 0,
                    "zmax": 100,
                    "colorscale": "Viridis",
                    "colorbar": {"thickness": 8, "len": 0.9, "title": {"text": "%"}},
                    "hovertemplate": "core %{y}<br>%{x}<br>%{z:.0f}%<extra></extra>",
                    "meta": {"role": "heatmap", "series": spec.title, "cores": len(cores)},
                }
            ]
        fig = figure(spec.title, traces, x_mode, spec.id)
        fig["layout"]["yaxis"] = {"type": "category", "title": {"text": "core"}, "nticks": 9}
        return fig

    def grouped(self, spec: ChartSpec) -> dict[str, Any]:
        """The chart with the view's runs as groups: centre line and band per group, and the
        members' own lines when asked for. Smoothing and the x mode apply to every member."""
        assert self.view.grouping is not None
        grouping = self.view.grouping
        x_mode = self._x_mode(spec)
        refs = {ref.source: ref for ref in spec.series}
        traces: list[dict[str, Any]] = []
        members_drawn: list[dict[str, Any]] = []
        found = groups(self.store, refs, grouping)
        largest = sorted(sorted(found, key=lambda g: (-len(found[g]), g))[:MAX_GROUPS])
        arrays: dict[str, list[tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]]] = {}
        for name in largest:
            for run in found[name]:
                series = self._series(refs[run])
                if series is None or series.n == 0:
                    continue
                step, ts, values = series.arrays()
                x = x_values(step, ts, x_mode, self._origin(refs[run]))
                arrays.setdefault(name, []).append((x, values))
                if grouping.members:
                    picked = downsample.select(values, self.draw_points // 4)
                    members_drawn.append(member_trace(run, run_colour(name), x[picked], values[picked]))
        lines = aggregate(
            arrays, stat=grouping.stat, band=grouping.band, smoothing=self.view.smoothing, episode=spec.episode
        )
        for name, line in lines.items():
            traces += group_traces(name, run_colour(name), line, stat=grouping.stat, band=grouping.band)
        return figure(spec.title, members_drawn + traces, x_mode, spec.id)

    def full(self, spec: ChartSpec, webgl: bool = False) -> tuple[dict[str, Any], dict[str, list[float]]]:
        """The whole figure and the cursors of its series."""
        if self.whole_only(spec):
            return self.whole(spec), {}
        traces: list[dict[str, Any]] = []
        cursors: dict[str, list[float]] = {}
        x_mode = self._x_mode(spec)
        for ref in spec.series:
            series = self._series(ref)
            if series is None or series.n == 0:
                step = ts = values = np.empty(0)
                appended = generation = 0
            else:
                step, ts, values = series.arrays()
                appended, generation = series.appended, series.generation
            state = EmaState()
            smooth = None
            if spec.episode:
                smooth = rolling_mean(values)
            elif self._smoothing_on(spec):
                smooth, state = ema(values, self.view.smoothing)
            else:
                _, state = ema(values, 0.0)
            picked = downsample.select(values, self.draw_points)
            x = x_values(step, ts, x_mode, self._origin(ref))[picked]
            traces += trace_pair(
                ref.label,
                ref.colour,
                x,
                values[picked],
                smooth[picked] if smooth is not None else None,
                webgl=webgl,
                group=ref.key,
            )
            cursors[ref.key] = [appended, generation, state.acc, state.den, len(picked)]
        return figure(spec.title, traces, x_mode, spec.id), cursors

    def extend(self, spec: ChartSpec, cursors: dict[str, list[float]]) -> tuple[Any, dict[str, list[float]]] | None:
        """Graph ``extendData`` adding the new points, and the new cursors; None when a redraw is due.

        Returns ``(None, {})`` when nothing is new. ``extendData`` makes the browser call
        ``Plotly.extendTraces`` (append and redraw) where a figure ``Patch`` would make it
        ``Plotly.react`` the whole figure, diffing every point it holds, on every poll.
        """
        if self.whole_only(spec):
            return None
        x_mode = self._x_mode(spec)
        xs: list[list[float | None]] = []
        ys: list[list[float | None]] = []
        indices: list[int] = []
        changed: dict[str, list[float]] = {}
        for i, ref in enumerate(spec.series):
            cursor = cursors.get(ref.key)
            series = self._series(ref)
            if cursor is None:
                return None
            appended, generation, acc, den, drawn = cursor
            if series is None:
                if appended:
                    return None
                continue
            if series.appended == appended:
                continue
            if series.generation != generation:
                return None
            new = series.since(int(appended))
            if new is None or drawn + len(new[0]) > _REDRAW_FACTOR * self.draw_points:
                return None
            step, ts, values = new
            x = plain(x_values(step, ts, x_mode, self._origin(ref)))
            state = EmaState(acc, den)
            xs.append(x)
            ys.append(plain(values, Y_DIGITS))
            indices.append(2 * i)
            if spec.episode:
                held = series.tail(len(values) + EPISODE_WINDOW)
                smooth = rolling_mean(held)[-len(values) :]
            elif self._smoothing_on(spec):
                smooth, state = ema(values, self.view.smoothing, state)
            else:
                smooth = None
                _, state = ema(values, 0.0, state)
            if smooth is not None:
                xs.append(x)
                ys.append(plain(smooth, Y_DIGITS))
                indices.append(2 * i + 1)
            changed[ref.key] = [series.appended, series.generation, state.acc, state.den, drawn + len(values)]
        if not changed:
            return (None, {})
        # maxPoints only as a safety net: the server redraws (downsampled) well before it
        cap = 2 * _REDRAW_FACTOR * self.draw_points
        return [{"x": xs, "y": ys}, indices, cap], changed

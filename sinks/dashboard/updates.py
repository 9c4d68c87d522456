"""The page's update path in one function, :func:`chart_updates`: given what the browser
holds (its charts and their cursors), what to send now — a whole figure for a chart that is
new or must be redrawn, else ``extendData`` with only the points taken since its cursor.

Dash-free, so any delivery (the poll callback today, a pushed stream) can call it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from sinks.dashboard.charts import Painter, View, chart_specs, warm_search
from sinks.dashboard.store import Store

#: Charts drawn with WebGL at most (Chromium keeps 16 WebGL contexts per page).
MAX_WEBGL_CHARTS: Final = 8
#: A group chart (mean and band over its members) or a per-core heatmap is recomputed at most
#: this often: it has no cheap increment, and a band or a heatmap that moves every few seconds
#: reads as well as a live one.
GROUP_REFRESH: Final = 3.0
#: Such charts drawn per poll at most: the others wait for the next polls, so one poll never
#: carries every group chart of a page (which over a sweep is seconds of work).
GROUP_CHARTS_PER_POLL: Final = 3
#: Charts drawn when the page has not yet said which are on screen (the first screen's).
FIRST_DRAWN: Final = 8


@dataclass
class PageUpdate:
    """Per chart (in the order asked): a whole figure or None, ``extendData`` or None; and the
    cursors: ``whole`` replaces the browser's, else ``redrawn``/``moved`` patch them."""

    figures: list[dict[str, Any] | None] = field(default_factory=list)
    extends: list[Any] = field(default_factory=list)
    whole: dict[str, Any] | None = None
    redrawn: dict[str, Any] = field(default_factory=dict)
    moved: dict[tuple[str, str], list[float]] = field(default_factory=dict)


def _group_mark(painter: Painter, spec: Any) -> int:
    """Sums the members' ``appended``: changes when any member took a point."""
    total = 0
    for ref in spec.series:
        series = painter._series(ref)
        total += series.appended if series is not None else 0
    return total


def chart_updates(
    store: Store,
    view: View,
    chart_ids: list[str],
    cursors: dict[str, Any] | None,
    *,
    draw_points: int,
    webgl_points: int,
    now: float,
    log_charts: frozenset[str] = frozenset(),
    visible: frozenset[str] | None = None,
) -> PageUpdate:
    """What to send for ``chart_ids`` given the browser's ``cursors`` (takes the store's lock).

    Only ``visible`` charts (on screen or near it, as the page said) are drawn or extended;
    the others keep their cursors and catch up when scrolled to, so a page's work follows
    what a reader sees, not how many charts exist. Unknown (None): the first
    ``FIRST_DRAWN`` charts, which are on the first screen."""
    cursors = cursors or {}
    if visible is not None and not visible.intersection(chart_ids):
        visible = None  # said before these charts were laid out: as good as unknown
    signature = view.signature()
    # A new chart list means the charts were laid out again, empty: draw them all whole.
    redraw_all = cursors.get("view") != signature or cursors.get("ids") != chart_ids
    charts: dict[str, Any] = {} if redraw_all else dict(cursors.get("charts") or {})
    out = PageUpdate()
    grouped_drawn = 0
    warm_search(store, view)  # the regex runs outside the store's lock
    with store.lock:
        specs = {s.id: s for s in chart_specs(store, view)}
        painter = Painter(store, view, draw_points, webgl_points)
        for index, chart_id in enumerate(chart_ids):
            spec = specs.get(chart_id)
            known = charts.get(chart_id)
            seen = index < FIRST_DRAWN if visible is None else chart_id in visible
            if spec is None or not seen:
                out.figures.append(None)
                out.extends.append(None)
                continue
            keys = [r.key for r in spec.series]
            if painter.whole_only(spec):
                mark = _group_mark(painter, spec)
                due = grouped_drawn < GROUP_CHARTS_PER_POLL and (
                    known is None
                    or known.get("keys") != keys
                    or (known.get("mark") != mark and now - float(known.get("at", 0.0)) >= GROUP_REFRESH)
                )
                grouped_drawn += int(due)
                out.figures.append(_with_axis(painter.whole(spec), chart_id in log_charts) if due else None)
                out.extends.append(None)
                if due:
                    out.redrawn[chart_id] = {"keys": keys, "series": {}, "gl": False, "mark": mark, "at": now}
                continue
            result = None
            if known is not None and known.get("keys") == keys:
                result = painter.extend(spec, known["series"])
            if result is None:
                # WebGL where series are long, but browsers keep ~16 WebGL contexts per page
                # (one per chart) and drop the oldest beyond: the first few long charts get it.
                others = sum(1 for c, v in {**charts, **out.redrawn}.items() if c != chart_id and v.get("gl"))
                webgl = painter.wants_webgl(spec) and others < MAX_WEBGL_CHARTS
                fig, series_cursors = painter.full(spec, webgl)
                out.figures.append(_with_axis(fig, chart_id in log_charts))
                out.extends.append(None)
                out.redrawn[chart_id] = {"keys": keys, "series": series_cursors, "gl": webgl}
            else:
                extend, changed = result
                out.figures.append(None)
                out.extends.append(extend)
                for key, value in changed.items():
                    out.moved[(chart_id, key)] = value
    if redraw_all:
        out.whole = {"view": signature, "ids": chart_ids, "charts": out.redrawn}
    return out


def _with_axis(fig: dict[str, Any], log: bool) -> dict[str, Any]:
    """A chart the reader switched to a log y axis stays so when it is drawn whole again."""
    if log and fig["layout"].get("yaxis", {}).get("type") != "category":  # a heatmap's rows stay as they are
        fig["layout"]["yaxis"] = {**fig["layout"].get("yaxis", {}), "type": "log"}
    return fig

"""The callbacks that keep the charts: which cards are laid out (again only when the set of
charts changes) and what each poll sends them — a whole figure when a chart is new or a
control changed, else only the points that are new (:func:`sinks.dashboard.updates.chart_updates`).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from sinks.dashboard.cards import chart_children
from sinks.dashboard.charts import chart_specs, warm_search
from sinks.dashboard.layout import RUN_SECTIONS
from sinks.dashboard.panels import valid_regex
from sinks.dashboard.store import Store
from sinks.dashboard.updates import chart_updates
from sinks.dashboard.views import PageOptions, grouping_of, view_of

if TYPE_CHECKING:
    from dash import Dash


def register(app: Dash, store: Store, settings: PageOptions) -> None:
    from dash import ALL, Input, Output, Patch, State, ctx, no_update

    @app.callback(
        *[Output(f"charts-{key}", "children") for key in RUN_SECTIONS],
        Output("charts-system", "children"),
        Output("chart-ids", "data"),
        Output("run-filter", "className"),
        Input("tick", "data"),
        Input("run-select", "value"),
        Input("run-filter", "value"),
        Input("metric-search", "value"),
        Input("closed-sections", "data"),
        Input("url", "search"),
        State("chart-ids", "data"),
        State("chart-options", "data"),
    )
    def update_layout(
        _tick: Any,
        runs: list[str] | None,
        run_filter: str | None,
        search: str | None,
        closed: list[str] | None,
        url: str | None,
        ids: Any,
        options: dict[str, Any] | None,
    ) -> Any:
        view = view_of(runs, run_filter, search, 0.0, "step", closed, url)
        warm_search(store, view)  # the regex runs outside the store's lock
        with store.lock:
            specs = chart_specs(store, view)
        bad = "" if not run_filter or valid_regex(run_filter) else "bad-regex"
        signature = [s.id for s in specs]
        if signature == ids:
            return (*[no_update] * (len(RUN_SECTIONS) + 2), bad)
        marked = {k: set((options or {}).get(k) or []) for k in ("log", "wide")}
        children = chart_children(specs, {}, marked)
        return (*[children[key] for key in RUN_SECTIONS], children["system"], signature, bad)

    # -- the figures: whole when new or when a control changed, else only what is new -------

    @app.callback(
        Output({"type": "chart", "id": ALL}, "figure"),
        Output({"type": "chart", "id": ALL}, "extendData"),
        Output("cursors", "data"),
        Output("ack", "data"),
        Input("tick", "data"),
        Input({"type": "chart", "id": ALL}, "id"),
        Input("run-select", "value"),
        Input("run-filter", "value"),
        Input("smoothing", "value"),
        Input("x-axis", "value"),
        Input("group-mode", "value"),
        Input("group-regex", "value"),
        Input("group-hparam", "value"),
        Input("group-stat", "value"),
        Input("group-band", "value"),
        Input("group-members", "value"),
        State("metric-search", "value"),
        State("cursors", "data"),
        State("closed-sections", "data"),
        State("url", "search"),
        State("chart-options", "data"),
        State("visible-charts", "data"),
    )
    def update_figures(
        _tick: Any,
        chart_ids: list[dict[str, str]],
        runs: list[str] | None,
        run_filter: str | None,
        smooth: float | None,
        x_mode: str | None,
        group_mode: str | None,
        group_regex: str | None,
        group_hparam: str | None,
        group_stat: str | None,
        group_band: str | None,
        group_members: list[str] | None,
        search: str | None,
        cursors: dict[str, Any] | None,
        closed: list[str] | None,
        url: str | None,
        options: dict[str, Any] | None,
        visible: list[str] | None,
    ) -> Any:
        if ctx.triggered_id is None and cursors:
            # the page's load, not a poll: it was served with these figures and their cursors,
            # and its graphs may not be mounted yet to take an extend
            return [no_update] * len(chart_ids), [no_update] * len(chart_ids), no_update, no_update
        grouping = grouping_of(group_mode, group_regex, group_hparam, group_stat, group_band, group_members)
        view = view_of(runs, run_filter, search, smooth, x_mode, closed, url, grouping)
        update = chart_updates(
            store,
            view,
            [c["id"] for c in chart_ids],
            cursors,
            draw_points=settings.draw_points,
            webgl_points=settings.webgl_points,
            now=time.time(),
            log_charts=frozenset((options or {}).get("log") or []),
            visible=frozenset(visible) if isinstance(visible, list) else None,
        )
        figures = [f if f is not None else no_update for f in update.figures]
        extends = [e if e is not None else no_update for e in update.extends]
        if update.whole is not None:
            return figures, extends, update.whole, time.time()
        if not update.redrawn and not update.moved:
            return figures, extends, no_update, time.time()
        # the cursors change by a Patch too: only what moved travels back
        cursor_patch = Patch()
        for chart_id, value in update.redrawn.items():
            cursor_patch["charts"][chart_id] = value
        for (chart_id, key), value in update.moved.items():
            cursor_patch["charts"][chart_id]["series"][key] = value
        return figures, extends, cursor_patch, time.time()

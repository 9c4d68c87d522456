"""The Dash page: layout and callbacks over a :class:`~sinks.dashboard.store.Store`
(which charts exist and how they are drawn is :mod:`sinks.dashboard.charts`).

The page polls, one poll at a time (a poll waits for the last answer). Each poll answers
with *only what is new*: a chart the browser already has gets ``extendData`` (Plotly's
``extendTraces``) with the points taken since its cursor, and the cursors (kept in the
browser, in a ``dcc.Store``, so that a lost answer is simply asked again) change by a
``Patch`` that carries only the series that moved. A chart is drawn whole only when it is
new, when a control changed, when what it shows was merged out of order or when extends
have made it long; then long series are downsampled (MinMaxLTTB per pixel bucket) and, up
to a few charts a page, drawn with WebGL.

Test hooks: every chart sits in a ``div[data-chart=ID]``; health, run and alert elements
carry ``data-*`` attributes, so a browser test reads state instead of pixels.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import Any, Final

from sinks.dashboard.charts import ChartSpec, Painter, View, chart_specs, compile_filter, warm_search
from sinks.dashboard.figures import SECTIONS, X_MODES, colour
from sinks.dashboard.panels import age_text, alert_table, attrs, run_table, valid_regex
from sinks.dashboard.store import Store

#: Charts drawn with WebGL at most (Chromium keeps 16 WebGL contexts per page).
MAX_WEBGL_CHARTS: Final = 8
_CSS: Final = """
body { font-family: system-ui, sans-serif; margin: 0; background: #f3f4f6; color: #1f2933; }
header { background: #1f2933; color: #fff; padding: 8px 16px; display: flex; gap: 18px; align-items: baseline;
         flex-wrap: wrap; }
header h1 { font-size: 18px; margin: 0 12px 0 0; }
.health span { margin-right: 14px; font-size: 13px; }
.dot { display: inline-block; width: 10px; height: 10px; border-radius: 5px; margin-right: 4px; }
.controls { display: flex; flex-wrap: wrap; gap: 18px; padding: 10px 16px; background: #fff;
            border-bottom: 1px solid #ddd; align-items: flex-start; }
.controls label.title { font-size: 12px; color: #555; display: block; margin-bottom: 4px; }
.control { min-width: 180px; }
.control input[type=text] { padding: 4px 6px; width: 200px; }
.bad-regex { outline: 2px solid #c62828; }
main { padding: 8px 16px; }
section h2 { font-size: 16px; margin: 14px 0 6px; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(420px, 1fr)); gap: 10px; }
.chart { background: #fff; border: 1px solid #e1e4e8; border-radius: 4px; }
.nodes { display: flex; gap: 12px; overflow-x: auto; }
.node-col { flex: 1 0 420px; }
.node-col h3 { font-size: 14px; margin: 4px 0; }
.node-col .chart { margin-bottom: 8px; }
table { border-collapse: collapse; font-size: 13px; background: #fff; }
th, td { padding: 3px 8px; border-bottom: 1px solid #eee; text-align: left; }
.chip { display: inline-block; width: 12px; height: 12px; border-radius: 2px; margin-right: 5px; vertical-align: -1px; }
.badge { padding: 1px 6px; border-radius: 3px; color: #fff; font-size: 12px; }
.empty { color: #888; font-size: 13px; }
"""


# -- page -----------------------------------------------------------------------------------------


def _section_layout() -> list[Any]:
    from dash import html

    blocks: list[Any] = []
    for key, title, _ in SECTIONS:
        blocks.append(
            html.Section([html.H2(title), html.Div(id=f"charts-{key}", className="grid")], id=f"section-{key}")
        )
    blocks.insert(
        3,
        html.Section(
            [html.H2("System (per node)"), html.Div(id="charts-system", className="nodes")], id="section-system"
        ),
    )
    blocks.insert(
        0,
        html.Section(
            [
                html.H2("Alerts"),
                html.Div(id="alerts-firing"),
                html.Div(id="alerts-history"),  # one line: "N resolved alerts", opens into a table
            ],
            id="section-alerts",
        ),
    )
    return blocks


def layout(poll_interval: float, smoothing: float) -> Any:
    from dash import dcc, html

    return html.Div(
        [
            html.Header(
                [
                    html.H1("metricbus"),
                    html.Div(id="health", className="health"),
                ]
            ),
            html.Div(
                [
                    html.Div(
                        [
                            html.Label("Runs (regex filter)", className="title"),
                            dcc.Input(id="run-filter", type="text", placeholder="e.g. ^ppo-", debounce=False),
                            dcc.Checklist(id="run-select", options=[], value=[], inline=False),
                        ],
                        className="control",
                    ),
                    html.Div(
                        [
                            html.Label("Metric search", className="title"),
                            dcc.Input(id="metric-search", type="text", placeholder="e.g. loss|reward"),
                        ],
                        className="control",
                    ),
                    html.Div(
                        [
                            html.Label("Smoothing (EMA weight)", className="title"),
                            dcc.Slider(
                                id="smoothing",
                                min=0.0,
                                max=0.99,
                                step=0.01,
                                value=smoothing,
                                marks={0: "0", 0.5: "0.5", 0.9: "0.9"},
                                updatemode="mouseup",
                            ),
                        ],
                        className="control",
                        style={"width": "300px"},
                    ),
                    html.Div(
                        [
                            html.Label("X axis", className="title"),
                            dcc.RadioItems(
                                id="x-axis",
                                options=[{"label": label, "value": mode} for mode, label in X_MODES.items()],
                                value="step",
                                inline=True,
                            ),
                        ],
                        className="control",
                    ),
                    html.Div(id="run-status", className="control"),
                ],
                className="controls",
            ),
            html.Main(_section_layout()),
            # A poll starts only when the last one has answered (or is long overdue): Dash drops
            # the older answer of a callback that is asked again while in flight, so with a
            # plain Interval and answers slower than it, no answer would ever land.
            dcc.Interval(id="clock", interval=int(poll_interval * 1000)),
            dcc.Store(id="tick", data=0),
            dcc.Store(id="ack", data=0),
            dcc.Store(id="ack-seen", data=0),
            dcc.Store(id="cursors", data={}),
            dcc.Store(id="known-runs", data=[]),
            dcc.Store(id="chart-ids", data=[]),
            dcc.Store(id="panel-keys", data={}),
        ]
    )


def build_app(
    store: Store,
    *,
    poll_interval: float = 1.0,
    draw_points: int = 2000,
    webgl_points: int = 10_000,
    smoothing: float = 0.6,
    connected_window: float = 15.0,
    loading: Callable[[], int] = lambda: 0,
) -> Any:
    """The Dash app; ``loading`` says how many sources' history is still being read."""
    from dash import ALL, Dash, Input, Output, Patch, State, html, no_update

    # update_title=None: no "Updating..." flicker in the tab title on every poll (Dash's documented
    # way; its stubs only say str)
    app = Dash(__name__, title="metricbus", update_title=None, serve_locally=True)  # type: ignore[arg-type]
    app.index_string = app.index_string.replace("{%css%}", "{%css%}<style>" + _CSS + "</style>")
    app.layout = layout(poll_interval, smoothing)

    def view_of(
        runs: list[str] | None, run_filter: str | None, search: str | None, smooth: float | None, x: str | None
    ) -> View:
        pattern = compile_filter(run_filter)
        chosen = tuple(r for r in (runs or []) if pattern is None or pattern.search(r))
        return View(chosen, search or "", float(smooth or 0.0), x if x in X_MODES else "step")

    overdue_ms = int(max(5.0, 10 * poll_interval) * 1000)
    app.clientside_callback(  # type: ignore[no-untyped-call]
        f"""function(n) {{
            const started = window.metricbusPoll || 0, now = Date.now();
            if (started && now - started < {overdue_ms}) {{ return window.dash_clientside.no_update; }}
            window.metricbusPoll = now;
            return now;
        }}""",
        Output("tick", "data"),
        Input("clock", "n_intervals"),
    )
    app.clientside_callback(  # type: ignore[no-untyped-call]
        "function(ack) { window.metricbusPoll = 0; return window.dash_clientside.no_update; }",
        Output("ack-seen", "data"),
        Input("ack", "data"),
    )

    # -- runs: new runs join the selection, the checklist shows each run's colour ------------

    @app.callback(
        Output("run-select", "options"),
        Output("run-select", "value"),
        Output("known-runs", "data"),
        Input("tick", "data"),
        State("run-select", "value"),
        State("known-runs", "data"),
    )
    def update_runs(_tick: float | None, selected: list[str] | None, known: list[str] | None) -> Any:
        with store.lock:
            runs = sorted(store.runs)
            colours = {r: colour(store.runs[r].colour) for r in runs}
        if runs == (known or []):
            return no_update, no_update, no_update
        options = [
            {
                "label": html.Span([html.Span(className="chip", style={"background": colours[r]}), r]),
                "value": r,
            }
            for r in runs
        ]
        fresh = [r for r in runs if r not in set(known or [])]
        value = [r for r in (selected or []) if r in colours] + fresh
        return options, value, runs

    # -- the charts that exist: laid out again only when the set of charts changes ----------

    @app.callback(
        Output("charts-training", "children"),
        Output("charts-rollout", "children"),
        Output("charts-gradients", "children"),
        Output("charts-other", "children"),
        Output("charts-system", "children"),
        Output("chart-ids", "data"),
        Output("run-filter", "className"),
        Input("tick", "data"),
        Input("run-select", "value"),
        Input("run-filter", "value"),
        Input("metric-search", "value"),
        State("chart-ids", "data"),
    )
    def update_layout(
        _tick: float | None, runs: list[str] | None, run_filter: str | None, search: str | None, ids: Any
    ) -> Any:
        from dash import dcc

        view = view_of(runs, run_filter, search, 0.0, "step")
        warm_search(store, view)  # the regex runs outside the store's lock
        with store.lock:
            specs = chart_specs(store, view)
        bad = "" if not run_filter or valid_regex(run_filter) else "bad-regex"
        signature = [s.id for s in specs]
        if signature == ids:
            return (*[no_update] * 6, bad)
        by_section: dict[str, list[Any]] = {key: [] for key, _, _ in SECTIONS}
        nodes: dict[str, list[Any]] = {}

        def card(spec: ChartSpec) -> Any:
            graph = dcc.Graph(
                id={"type": "chart", "id": spec.id},
                figure={"data": [], "layout": {"height": 260, "title": {"text": spec.title}}},
                config={"displaylogo": False, "responsive": True},
                style={"height": "260px"},
            )
            return html.Div(graph, className="chart", **attrs({"data-chart": spec.id}))

        for spec in specs:
            if spec.section == "system":
                nodes.setdefault(spec.node, []).append(card(spec))
            else:
                by_section[spec.section].append(card(spec))
        columns = [
            html.Div([html.H3(node), *cards], className="node-col", **attrs({"data-node": node}))
            for node, cards in nodes.items()
        ]
        empty = html.Div("no metrics yet", className="empty")
        sections = [by_section[key] or empty for key, _, _ in SECTIONS]
        return (
            *sections,
            columns or html.Div("no node is publishing system metrics", className="empty"),
            signature,
            bad,
        )

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
        State("metric-search", "value"),
        State("cursors", "data"),
    )
    def update_figures(
        _tick: float | None,
        chart_ids: list[dict[str, str]],
        runs: list[str] | None,
        run_filter: str | None,
        smooth: float | None,
        x_mode: str | None,
        search: str | None,
        cursors: dict[str, Any] | None,
    ) -> Any:
        view = view_of(runs, run_filter, search, smooth, x_mode)
        cursors = cursors or {}
        signature = view.signature()
        ids_now = [c["id"] for c in chart_ids]
        # A new chart list means the charts were laid out again, empty: draw them all whole.
        redraw_all = cursors.get("view") != signature or cursors.get("ids") != ids_now
        charts: dict[str, Any] = {} if redraw_all else dict(cursors.get("charts") or {})
        figures: list[Any] = []
        extends: list[Any] = []
        redrawn: dict[str, Any] = {}
        moved: dict[tuple[str, str], list[float]] = {}
        warm_search(store, view)  # the regex runs outside the store's lock
        with store.lock:
            specs = {s.id: s for s in chart_specs(store, view)}
            painter = Painter(store, view, draw_points, webgl_points)
            for chart_id in ids_now:
                spec = specs.get(chart_id)
                known = charts.get(chart_id)
                keys = [r.key for r in spec.series] if spec else []
                result = None
                if spec is not None and known is not None and known.get("keys") == keys:
                    result = painter.extend(spec, known["series"])
                if spec is None:
                    figures.append(no_update)
                    extends.append(no_update)
                elif result is None:
                    # WebGL where series are long, but browsers keep ~16 WebGL contexts per page
                    # (one per chart) and drop the oldest beyond: the first few long charts get it.
                    others = sum(1 for c, v in {**charts, **redrawn}.items() if c != chart_id and v.get("gl"))
                    webgl = painter.wants_webgl(spec) and others < MAX_WEBGL_CHARTS
                    fig, series_cursors = painter.full(spec, webgl)
                    figures.append(fig)
                    extends.append(no_update)
                    redrawn[chart_id] = {"keys": keys, "series": series_cursors, "gl": webgl}
                else:
                    extend, changed = result
                    figures.append(no_update)
                    extends.append(extend if extend is not None else no_update)
                    for key, value in changed.items():
                        moved[(chart_id, key)] = value
        if redraw_all:
            return figures, extends, {"view": signature, "ids": ids_now, "charts": redrawn}, time.time()
        if not redrawn and not moved:
            return figures, extends, no_update, time.time()
        # the cursors change by a Patch too: only what moved travels back
        cursor_patch = Patch()
        for chart_id, value in redrawn.items():
            cursor_patch["charts"][chart_id] = value
        for (chart_id, key), value in moved.items():
            cursor_patch["charts"][chart_id]["series"][key] = value
        return figures, extends, cursor_patch, time.time()

    # -- header, run table, alerts ------------------------------------------------------------

    @app.callback(
        Output("health", "children"),
        Input("tick", "data"),
    )
    def update_health(_tick: float | None) -> Any:
        now = time.time()
        with store.lock:
            h = store.health
            age = None if h.last_receipt is None else max(0.0, now - h.last_receipt)
            connected = age is not None and age <= connected_window
            rate = h.rate(now)
            dropped, gaps, missing, undecodable = h.dropped, h.gaps, h.missing, h.undecodable
        pending = loading()
        dot = "#2e7d32" if connected else "#c62828"
        return [
            html.Span(
                [html.Span(className="dot", style={"background": dot}), "connected" if connected else "no messages"],
                id="health-connected",
                **attrs({"data-connected": "true" if connected else "false"}),
            ),
            html.Span(f"{rate:.1f} msg/s", id="health-rate", **attrs({"data-rate": f"{rate:.3f}"})),
            html.Span(f"last message {age_text(age)} ago", id="health-age"),
            html.Span(f"dropped {dropped}", id="health-dropped", **attrs({"data-dropped": str(dropped)})),
            html.Span(
                f"gaps {gaps} ({missing} lost)" + (f", undecodable {undecodable}" if undecodable else ""),
                id="health-gaps",
                **attrs({"data-gaps": str(gaps), "data-missing": str(missing)}),
            ),
            html.Span(
                f"loading history of {pending} source(s)" if pending else "history loaded",
                id="health-history",
                **attrs({"data-loading": str(pending)}),
            ),
        ]

    @app.callback(
        Output("run-status", "children"),
        Output("alerts-firing", "children"),
        Output("alerts-history", "children"),
        Output("panel-keys", "data"),
        Input("tick", "data"),
        State("panel-keys", "data"),
    )
    def update_panels(_tick: float | None, keys: dict[str, Any] | None) -> Any:
        keys = keys or {}
        with store.lock:
            rows = []
            for name in sorted(store.runs):
                data = store.runs[name]
                reward = data.series.get("episode/reward")
                rows.append(
                    (name, colour(data.colour), store.status(data), data.node, data.episodes,
                     reward.last() if reward else math.nan, data.error)
                )  # fmt: skip
            alerts_version = store.alerts.version
            firing = store.alerts.firing()
            history = list(store.alerts.history)[:50]
            resolved = len(store.alerts.history)
        status_key = json.dumps([r[:3] + r[4:5] for r in rows])
        out: list[Any] = [no_update, no_update, no_update]
        if keys.get("status") != status_key:
            out[0] = run_table(rows)
        if keys.get("alerts") != alerts_version:
            out[1] = alert_table(firing, "firing")
            out[2] = alert_table(history, "resolved", resolved)
        if out == [no_update] * 3:
            return (*out, no_update)
        return (*out, {"status": status_key, "alerts": alerts_version})

    return app

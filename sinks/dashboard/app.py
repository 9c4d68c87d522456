"""The Dash page's callbacks over a :class:`~sinks.dashboard.store.Store` (the layout is
:mod:`sinks.dashboard.layout`; which charts exist and how they are drawn,
:mod:`sinks.dashboard.charts`; what a poll sends, :func:`sinks.dashboard.updates.chart_updates`).

The page polls, one poll at a time (a poll waits for the last answer). Each poll answers
with *only what is new*: a chart the browser already has gets ``extendData`` (Plotly's
``extendTraces``) with the points taken since its cursor, and the cursors (kept in the
browser, in a ``dcc.Store``, so that a lost answer is simply asked again) change by a
``Patch`` that carries only the series that moved. A chart is drawn whole only when it is
new, when a control changed, when what it shows was merged out of order or when extends
have made it long. What is laid out is bounded: only open sections get charts, only the
nodes opened from the overview get theirs, and a page starts with the most recent runs.

Test hooks: every chart sits in a ``div[data-chart=ID]``; health, run, node and alert
elements carry ``data-*`` attributes, so a browser test reads state instead of pixels.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Callable
from typing import Any, Final

from sinks.dashboard.charts import View, chart_specs, compile_filter, warm_search
from sinks.dashboard.figures import X_MODES
from sinks.dashboard.layout import (
    CSS,
    PAGE_SECTIONS,
    RUN_SECTIONS,
    Served,
    chart_children,
    layout,
    page_order,
    run_options,
)
from sinks.dashboard.nodes import overview_key, overview_table
from sinks.dashboard.panels import alert_table, health_row, valid_regex
from sinks.dashboard.runs import (
    DEFAULT_DRAWN,
    DEFAULT_GROUP_PATTERN,
    Grouping,
    config_keys,
    hparams_figure,
    matching,
    recent_runs,
    table_rows,
)
from sinks.dashboard.store import Store
from sinks.dashboard.updates import chart_updates

#: The runs table and the node overview are rebuilt at most this often (seconds).
TABLE_REFRESH: Final = 5.0
#: The cookie (its name ends with the page's port) that tells the server which sections are
#: closed, so that a page is served without their charts; the page keeps it beside its local storage.
CLOSED_COOKIE: Final = "metricbus_closed_"
_TABLE_COLUMNS: Final = (
    ("run", "run", "text"),
    ("status", "status", "text"),
    ("steps", "steps", "numeric"),
    ("episodes", "episodes", "numeric"),
    ("final_reward", "final reward", "numeric"),
    ("best_reward", "best reward", "numeric"),
    ("alerts", "alerts", "numeric"),
    ("node", "node", "text"),
)


def open_nodes(search: str | None) -> tuple[str, ...]:
    """The nodes whose charts are open: ``?node=a&node=b`` in the page's URL."""
    return tuple(urllib.parse.parse_qs((search or "").lstrip("?")).get("node", []))


def grouping_of(
    mode: str | None,
    regex: str | None,
    hparam: str | None,
    stat: str | None,
    band: str | None,
    members: list[str] | None,
) -> Grouping:
    key = (regex or "") if mode == "regex" else (hparam or "")
    return Grouping(mode or "none", key, stat or "mean", band or "minmax", bool(members))


#: The grouping the controls start with (as the first poll will read them).
FIRST_GROUPING: Final = grouping_of("none", DEFAULT_GROUP_PATTERN, None, "mean", "minmax", [])


def request_state() -> tuple[frozenset[str], dict[str, str]]:
    """For a page being served (from the ``_dash-layout`` request): the sections its reader
    closed (the cookie) and where the page is (the request's referrer: ``?node=`` opens nodes)."""
    import flask

    if not flask.has_request_context():
        return frozenset(), {}
    request = flask.request
    keys = {key for key, _ in PAGE_SECTIONS}
    cookie = request.cookies.get(CLOSED_COOKIE + request.host.rpartition(":")[2], "")
    closed = frozenset(k for k in cookie.split(",") if k in keys)
    referrer = request.referrer or ""
    parts = urllib.parse.urlsplit(referrer)
    if not referrer or parts.netloc != request.host:
        return closed, {}  # unknown: dcc.Location reads the page's own on mount
    search = f"?{parts.query}" if parts.query else ""
    return closed, {"pathname": parts.path or "/", "search": search, "href": referrer, "hash": ""}


def build_app(
    store: Store,
    *,
    poll_interval: float = 1.0,
    draw_points: int = 2000,
    webgl_points: int = 10_000,
    smoothing: float = 0.6,
    connected_window: float = 15.0,
    default_runs: int = DEFAULT_DRAWN,
    loading: Callable[[], int] = lambda: 0,
) -> Any:
    """The Dash app; ``loading`` says how many sources' history is still being read;
    ``default_runs`` how many of the most recent runs a page draws when it opens."""
    from dash import ALL, Dash, Input, Output, Patch, State, ctx, no_update

    # update_title=None: no "Updating..." flicker in the tab title on every poll (Dash's documented
    # way; its stubs only say str)
    app = Dash(__name__, title="metricbus", update_title=None, serve_locally=True)  # type: ignore[arg-type]
    # Plotly (~4.7 MB) is fetched from the start and evaluated while the renderer asks for the
    # layout (a deferred script runs after the page's own, which start the renderer), instead
    # of being asked for only once a graph is laid out; dcc.Graph takes window.Plotly as it finds it.
    plotly_js = f"{app.config.requests_pathname_prefix}_dash-component-suites/plotly/package_data/plotly.min.js"
    app.index_string = app.index_string.replace(
        "{%css%}", f'{{%css%}}<style>{CSS}</style><script defer src="{plotly_js}"></script>'
    )

    def page() -> Any:
        """The page with its first screen in it: the charts of the most recent runs, the first
        ones with their figures and their cursors, so no callback stands before the first chart."""
        closed, location = request_state()
        with store.lock:
            runs = sorted(store.runs)
            recent = recent_runs(store, default_runs)
        view = view_of(recent, None, None, smoothing, "step", sorted(closed), location.get("search"), FIRST_GROUPING)
        with store.lock:
            specs = chart_specs(store, view)
        ordered = [s.id for s in page_order(specs)]
        update = chart_updates(
            store, view, ordered, None, draw_points=draw_points, webgl_points=webgl_points, now=time.time()
        )
        figures = {cid: f for cid, f in zip(ordered, update.figures, strict=True) if f is not None}
        served = Served(
            charts=chart_children(specs, figures, {}),
            chart_ids=[s.id for s in specs],
            cursors=update.whole or {},
            health=health_row(store, connected_window, loading()),
            location=location,
            closed=closed,
        )
        return layout(poll_interval, smoothing, default_runs, runs, recent, served)

    def view_of(
        runs: list[str] | None,
        run_filter: str | None,
        search: str | None,
        smooth: float | None,
        x: str | None,
        closed: list[str] | None,
        url: str | None,
        grouping: Grouping | None = None,
    ) -> View:
        pattern = compile_filter(run_filter)
        chosen = tuple(r for r in (runs or []) if pattern is None or pattern.search(r))
        sections = tuple(k for k, _ in PAGE_SECTIONS if k not in set(closed or []))
        return View(
            chosen,
            search or "",
            float(smooth or 0.0),
            x if x in X_MODES else "step",
            open_nodes(url),
            sections,
            grouping,
        )

    app.layout = page

    overdue_ms = int(max(5.0, 10 * poll_interval) * 1000)
    app.clientside_callback(  # type: ignore[no-untyped-call]
        f"""function(n) {{
            if (!window.metricbusReady || !window.metricbusReady()) {{ return window.dash_clientside.no_update; }}
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

    # -- sections: a click on a title opens or closes it; closed ones are kept in local storage --

    keys = [key for key, _ in PAGE_SECTIONS]
    app.clientside_callback(  # type: ignore[no-untyped-call]
        """function() {
            const closed = (arguments[arguments.length - 1] || []).slice();
            const trig = window.dash_clientside.callback_context.triggered;
            if (!trig.length || !trig[0].value) { return window.dash_clientside.no_update; }
            const key = trig[0].prop_id.split('.')[0].replace('toggle-', '');
            const at = closed.indexOf(key);
            if (at >= 0) { closed.splice(at, 1); } else { closed.push(key); }
            return closed;
        }""",
        Output("closed-sections", "data"),
        *[Input(f"toggle-{key}", "n_clicks") for key in keys],
        State("closed-sections", "data"),
    )
    app.clientside_callback(  # type: ignore[no-untyped-call]
        f"""function(closed) {{
            closed = closed || [];
            document.cookie = '{CLOSED_COOKIE}' + location.port + '=' + closed.join(',')
                + '; path=/; max-age=31536000; SameSite=Lax';
            return {json.dumps(keys)}.map(k => closed.includes(k) ? 'fold closed' : 'fold');
        }}""",
        *[Output(f"section-{key}", "className") for key in keys],
        Input("closed-sections", "data"),
    )

    # -- runs: which are drawn; the dropdown, the table's selection and the buttons agree --------

    @app.callback(
        Output("run-select", "options"),
        Output("run-select", "value"),
        Output("known-runs", "data"),
        Output("runs-table", "columns"),
        Output("runs-table", "data"),
        Output("runs-table", "selected_rows"),
        Output("hparams", "figure"),
        Output("group-hparam", "options"),
        Output("runs-key", "data"),
        Input("tick", "data"),
        Input("run-select", "value"),
        Input("runs-table", "selected_rows"),
        Input("select-recent", "n_clicks"),
        Input("select-matching", "n_clicks"),
        Input("group-mode", "value"),
        State("run-filter", "value"),
        State("known-runs", "data"),
        State("runs-table", "data"),
        State("runs-key", "data"),
        State("closed-sections", "data"),
        prevent_initial_call=True,  # the page is served with its runs; the first poll fills the table
    )
    def update_runs(
        _tick: Any,
        selected: list[str] | None,
        ticked: list[int] | None,
        _recent: Any,
        _matching: Any,
        group_mode: str | None,
        run_filter: str | None,
        known: list[str] | None,
        shown: list[dict[str, Any]] | None,
        runs_key: Any,
        closed: list[str] | None,
    ) -> Any:
        """Which runs are drawn, from whichever control moved; the runs table (its rows are
        rebuilt here too, at most every TABLE_REFRESH, so that its ticked rows' indices and
        its rows always come from one answer)."""
        trigger = ctx.triggered_id
        bucket = int(time.time() / TABLE_REFRESH)
        with store.lock:
            runs = sorted(store.runs)
            recent = recent_runs(store, default_runs)
            rebuild = "runs" not in set(closed or []) and (runs_key or {}).get("at") != bucket
            hp_keys = config_keys(store) if rebuild or runs != (known or []) else []
            rows = table_rows(store, hp_keys) if rebuild else None
        present = set(runs)
        selected = [r for r in (selected or []) if r in present]
        if trigger == "runs-table":
            ids = [row["id"] for row in shown or []]
            value = [ids[i] for i in sorted(ticked or []) if i < len(ids) and ids[i] in present]
        elif trigger == "select-recent":
            value = recent
        elif trigger == "select-matching" or (trigger == "group-mode" and group_mode not in (None, "none")):
            value = matching(runs, compile_filter(run_filter))
        elif trigger == "run-select":
            value = selected
        elif not known and runs:
            value = recent  # a page opens on the most recent runs, not on a whole sweep
        else:
            fresh = [r for r in runs if r not in set(known or [])]
            grouped = group_mode not in (None, "none")
            room = len(fresh) if grouped else max(0, default_runs - len(selected))
            value = selected + fresh[-room:] if room and fresh else selected
        out: list[Any] = [no_update] * 9
        if runs != (known or []):
            out[0] = run_options(runs)
            out[2] = runs
            out[7] = [{"label": k, "value": k} for k in hp_keys]
        if value != selected:
            out[1] = value
        ids = [row["id"] for row in shown or []]
        if rows is not None:
            key = json.dumps([rows, hp_keys], sort_keys=True, default=str)
            if key != (runs_key or {}).get("rows"):
                columns = [{"id": i, "name": n, "type": t} for i, n, t in _TABLE_COLUMNS]
                columns += [{"id": f"hp:{k}", "name": k, "type": "any"} for k in hp_keys]
                out[3], out[4], out[6] = columns, rows, hparams_figure(rows, hp_keys)
                ids = [row["id"] for row in rows]
            out[8] = {"at": bucket, "rows": key}
        # the ticked rows follow the drawn runs (by index into the rows the table holds)
        wanted = set(value)
        ticks = [i for i, run in enumerate(ids) if run in wanted]
        if out[4] is not no_update or sorted(ticked or []) != ticks:
            out[5] = ticks
        return tuple(out)

    # -- the charts that exist: laid out again only when the set of charts changes ----------

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
            draw_points=draw_points,
            webgl_points=webgl_points,
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

    # -- header, runs table, node overview, alerts ----------------------------------------------

    @app.callback(
        Output("health", "children"),
        Input("tick", "data"),
        prevent_initial_call=True,  # served with the page
    )
    def update_health(_tick: Any) -> Any:
        return health_row(store, connected_window, loading())

    # the overview arrives as an HTML string (sinks/dashboard/nodes.py), set in place here
    app.clientside_callback(  # type: ignore[no-untyped-call]
        """function(html) {
            const box = document.getElementById('node-overview-box');
            if (box && typeof html === 'string') { box.innerHTML = html; }
            return window.dash_clientside.no_update;
        }""",
        Output("node-overview-box", "title"),
        Input("overview-html", "data"),
    )

    @app.callback(
        Output("overview-html", "data"),
        Output("alerts-firing", "children"),
        Output("alerts-history", "children"),
        Output("panel-keys", "data"),
        Input("tick", "data"),
        Input("url", "search"),
        State("panel-keys", "data"),
        State("closed-sections", "data"),
        prevent_initial_call=True,  # after the first chart: the overview is the page's largest answer
    )
    def update_panels(_tick: Any, url: str | None, keys: dict[str, Any] | None, closed: list[str] | None) -> Any:
        keys = dict(keys or {})
        bucket = int(time.time() / TABLE_REFRESH)
        out: list[Any] = [no_update] * 3
        opened = list(open_nodes(url))
        with store.lock:
            if "system" not in set(closed or []):
                nodes_key = json.dumps([overview_key(store), opened, bucket])
                if keys.get("nodes") != nodes_key:
                    out[0] = overview_table(store, opened)
                    keys["nodes"] = nodes_key
            alerts_version = store.alerts.version
            if keys.get("alerts") != alerts_version:
                out[1] = alert_table(store.alerts.firing(), "firing")
                out[2] = alert_table(list(store.alerts.history)[:50], "resolved", len(store.alerts.history))
                keys["alerts"] = alerts_version
        if out == [no_update] * 3:
            return (*out, no_update)
        return (*out, keys)

    return app

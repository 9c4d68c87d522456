"""The page's layout: header, a compact control bar, then the charts in collapsible sections
(Rollout and episodes, Training, Gradients, System, Other), then the runs table with its
parallel-coordinates view. Which sections are closed is kept in the browser's local
storage, so a reload keeps them as they were.

Test hooks: sections carry ``data-section`` and ``data-open``; charts ``data-chart``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from sinks.dashboard.figures import SECTIONS, X_MODES
from sinks.dashboard.groups import BANDS, STATS
from sinks.dashboard.panels import attrs
from sinks.dashboard.runs import DEFAULT_DRAWN, DEFAULT_GROUP_PATTERN, run_colour

#: Collapsible sections in page order: run sections with System before Other, then the runs.
PAGE_SECTIONS: Final = (
    *[(k, t) for k, t, _ in SECTIONS if k != "other"],
    ("system", "System"),
    ("other", "Other metrics"),
    ("runs", "Runs and hyperparameters"),
)
CHART_HEIGHT: Final = 260
#: Sections of run charts (each a ``charts-<key>`` grid); the system section holds nodes.
RUN_SECTIONS: Final = tuple(key for key, _, _ in SECTIONS)

CSS: Final = """
body { font-family: system-ui, sans-serif; margin: 0; background: #f3f4f6; color: #1f2933; }
header { background: #1f2933; color: #fff; padding: 6px 16px; display: flex; gap: 18px; align-items: baseline;
         flex-wrap: wrap; }
header h1 { font-size: 18px; margin: 0 12px 0 0; }
.health span { margin-right: 14px; font-size: 13px; }
.dot { display: inline-block; width: 10px; height: 10px; border-radius: 5px; margin-right: 4px; }
.controls { display: flex; flex-wrap: wrap; gap: 6px 16px; padding: 6px 16px; background: #fff;
            border-bottom: 1px solid #ddd; align-items: center; font-size: 13px; }
.controls label.title { font-size: 12px; color: #555; margin-right: 4px; }
.control { display: flex; align-items: center; gap: 4px; }
.control input[type=text] { padding: 3px 6px; width: 130px; font-size: 13px; }
#run-select { width: 300px; font-size: 13px; }
.mini { font-size: 12px; padding: 2px 6px; cursor: pointer; }
.bad-regex { outline: 2px solid #c62828; }
main { padding: 4px 16px; }
section.fold > h2 { font-size: 15px; margin: 10px 0 4px; cursor: pointer; user-select: none; }
section.fold > h2::before { content: "▾ "; color: #666; }
section.fold.closed > h2::before { content: "▸ "; }
section.fold.closed > .body { display: none; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(400px, 1fr)); gap: 8px; }
.chart { background: #fff; border: 1px solid #e1e4e8; border-radius: 4px; position: relative; }
.chart.wide { grid-column: 1 / -1; }
.tools { position: absolute; top: 3px; right: 150px; z-index: 5; display: flex; gap: 2px; opacity: 0.35; }
.chart:hover .tools { opacity: 1; }
.tools button { font-size: 11px; padding: 0 4px; border: 1px solid #ccc; background: #fff; border-radius: 3px;
                cursor: pointer; }
.chart.log .tools [data-action=log], .chart.wide .tools [data-action=wide] { background: #dbeafe; }
.node-charts h3 { font-size: 14px; margin: 8px 0 4px; }
table { border-collapse: collapse; font-size: 13px; background: #fff; }
th, td { padding: 2px 8px; border-bottom: 1px solid #eee; text-align: left; vertical-align: top; }
#node-overview td .val { display: inline-block; min-width: 42px; }
#node-overview .spark { color: #4b6cb7; letter-spacing: -1px; font-size: 11px; }
#node-overview tr.open { background: #eef4ff; }
.gpus .grow { display: flex; align-items: center; height: 9px; margin: 1px 0; }
.gpus .glabel { font-size: 9px; width: 34px; color: #666; }
.g { display: inline-block; width: 14px; height: 8px; margin-right: 1px; border-radius: 1px; }
.hn { background: #e5e7eb; }
.h0 { background: #f7fbff; } .h1 { background: #deebf7; } .h2 { background: #c6dbef; } .h3 { background: #9ecae1; }
.h4 { background: #6baed6; } .h5 { background: #4292c6; } .h6 { background: #2171b5; } .h7 { background: #fd8d3c; }
.h8 { background: #e6550d; } .h9 { background: #a63603; }
.chip { display: inline-block; width: 12px; height: 12px; border-radius: 2px; margin-right: 5px; vertical-align: -1px; }
.badge { padding: 1px 6px; border-radius: 3px; color: #fff; font-size: 12px; }
.empty { color: #888; font-size: 13px; }
.runs-body { display: grid; grid-template-columns: minmax(600px, 3fr) minmax(380px, 2fr); gap: 10px; }
"""


def _control(label: str, *children: Any, **kwargs: Any) -> Any:
    from dash import html

    return html.Div([html.Label(label, className="title"), *children], className="control", **kwargs)


def run_options(runs: list[str]) -> list[dict[str, Any]]:
    """The run selector's options: each run's name with its colour."""
    from dash import html

    return [
        {
            "label": html.Span([html.Span(className="chip", style={"background": run_colour(r)}), r]),
            "value": r,
            "search": r,
        }
        for r in runs
    ]


def controls(smoothing: float, default_runs: int, runs: list[str], selected: list[str]) -> Any:
    from dash import dcc, html

    return html.Div(
        [
            _control(
                "Runs",
                dcc.Dropdown(
                    id="run-select",
                    options=run_options(runs),
                    value=selected,
                    multi=True,
                    placeholder="runs to draw",
                    maxHeight=360,
                    closeOnSelect=False,
                ),
                html.Button(f"recent {default_runs}", id="select-recent", className="mini"),
                html.Button(
                    "all matching", id="select-matching", className="mini", title="select every run the pattern matches"
                ),
            ),
            _control(
                "pattern",
                dcc.Input(
                    id="run-filter",
                    type="text",
                    placeholder="regex, e.g. ^ppo-",
                    debounce=False,
                    style={"width": "130px"},
                ),
            ),
            _control(
                "metrics",
                dcc.Input(id="metric-search", type="text", placeholder="e.g. loss|reward", style={"width": "130px"}),
            ),
            _control(
                "group",
                dcc.Dropdown(
                    id="group-mode",
                    options=[
                        {"label": "no groups", "value": "none"},
                        {"label": "by run id regex", "value": "regex"},
                        {"label": "by hyperparameter", "value": "hparam"},
                    ],
                    value="none",
                    clearable=False,
                    searchable=False,
                    style={"width": "150px"},
                ),
                dcc.Input(id="group-regex", type="text", value=DEFAULT_GROUP_PATTERN, style={"width": "110px"}),
                dcc.Dropdown(id="group-hparam", options=[], placeholder="key", style={"width": "130px"}),
                dcc.Dropdown(
                    id="group-stat",
                    options=[{"label": v, "value": k} for k, v in STATS.items()],
                    value="mean",
                    clearable=False,
                    searchable=False,
                    style={"width": "90px"},
                ),
                dcc.Dropdown(
                    id="group-band",
                    options=[{"label": v, "value": k} for k, v in BANDS.items()],
                    value="minmax",
                    clearable=False,
                    searchable=False,
                    style={"width": "100px"},
                ),
                dcc.Checklist(id="group-members", options=[{"label": "runs", "value": "on"}], value=[]),
            ),
            _control(
                "smoothing",
                html.Div(
                    dcc.Slider(
                        id="smoothing",
                        min=0.0,
                        max=0.99,
                        step=0.01,
                        value=smoothing,
                        marks={0: "0", 0.5: "0.5", 0.9: "0.9"},
                        updatemode="mouseup",
                    ),
                    style={"width": "200px"},
                ),
            ),
            _control(
                "x",
                dcc.RadioItems(
                    id="x-axis",
                    options=[{"label": label, "value": mode} for mode, label in X_MODES.items()],
                    value="step",
                    inline=True,
                ),
            ),
        ],
        className="controls",
    )


def section(key: str, title: str, *body: Any, closed: bool = False) -> Any:
    from dash import html

    return html.Section(
        [html.H2(title, id=f"toggle-{key}"), html.Div(list(body), className="body")],
        id=f"section-{key}",
        className="fold closed" if closed else "fold",
        **attrs({"data-section": key}),
    )


def sections(charts: dict[str, Any] | None = None, closed: frozenset[str] = frozenset()) -> list[Any]:
    from dash import dash_table, dcc, html

    charts = charts or {}
    blocks: list[Any] = []
    for key, title in PAGE_SECTIONS:
        if key == "system":
            # the overview is one HTML string, set as innerHTML by a clientside callback: a
            # Markdown component would parse 64 nodes' rows (~270 KiB) as markdown every refresh
            overview = html.Div(id="node-overview-box")
            body = [overview, html.Div(charts.get("system"), id="charts-system", className="node-charts")]
        elif key == "runs":
            table = dash_table.DataTable(  # type: ignore[attr-defined]
                id="runs-table",
                columns=[],
                data=[],
                sort_action="native",
                filter_action="native",
                row_selectable="multi",
                selected_rows=[],
                page_size=15,
                style_table={"overflowX": "auto"},
                style_cell={"fontSize": "12px", "padding": "2px 6px", "maxWidth": "160px"},
                style_header={"fontWeight": "600"},
            )
            parcoords = dcc.Graph(
                id="hparams",
                figure={"data": [], "layout": {"height": 360}},
                config={"displaylogo": False},
                style={"height": "360px"},
            )
            body = [html.Div([html.Div(table), parcoords], className="runs-body")]
        else:
            body = [html.Div(charts.get(key), id=f"charts-{key}", className="grid")]
        blocks.append(section(key, title, *body, closed=key in closed))
    return blocks


def alerts_section() -> Any:
    from dash import html

    return html.Section(
        [
            html.H2("Alerts", style={"fontSize": "15px", "margin": "8px 0 4px"}),
            html.Div(id="alerts-firing"),
            html.Div(id="alerts-history"),  # one line: "N resolved alerts", opens into a table
        ],
        id="section-alerts",
    )


@dataclass(frozen=True)
class Served:
    """What a page is served with, so that its first screen needs no callback: the charts (their
    first figures drawn in), the cursors of what those figures hold, the header, where the page
    is (``dcc.Location``'s props, so that it does not announce them as a change) and the
    sections the reader closed (from the cookie the page keeps beside its local storage)."""

    charts: dict[str, Any] = field(default_factory=dict)
    chart_ids: list[str] = field(default_factory=list)
    cursors: dict[str, Any] = field(default_factory=dict)
    health: Any = None
    location: dict[str, str] = field(default_factory=dict)
    closed: frozenset[str] = frozenset()


def layout(
    poll_interval: float,
    smoothing: float,
    default_runs: int = DEFAULT_DRAWN,
    runs: list[str] | None = None,
    selected: list[str] | None = None,
    served: Served | None = None,
) -> Any:
    """The page; ``runs`` and ``selected`` fill the run selector as the page is served, and
    ``served`` its first charts, so the first screen is drawn without a callback."""
    runs, selected, served = runs or [], selected or [], served or Served()
    from dash import dcc, html

    return html.Div(
        [
            html.Header([html.H1("metricbus"), html.Div(served.health, id="health", className="health")]),
            controls(smoothing, default_runs, runs, selected),
            html.Main([alerts_section(), *sections(served.charts, served.closed)]),
            dcc.Location(id="url", refresh=False, **served.location),
            # A poll starts only when the last one has answered (or is long overdue): Dash drops
            # the older answer of a callback that is asked again while in flight, so with a
            # plain Interval and answers slower than it, no answer would ever land.
            dcc.Interval(id="clock", interval=int(poll_interval * 1000)),
            dcc.Store(id="tick", data=0),
            dcc.Store(id="ack", data=0),
            dcc.Store(id="ack-seen", data=0),
            dcc.Store(id="cursors", data=served.cursors),
            dcc.Store(id="known-runs", data=runs),
            dcc.Store(id="chart-ids", data=served.chart_ids),
            dcc.Store(id="panel-keys", data={}),
            dcc.Store(id="closed-sections", data=sorted(served.closed), storage_type="local"),
            dcc.Store(id="chart-options", data={}),
            dcc.Store(id="runs-key", data={}),
            dcc.Store(id="visible-charts", data=None),  # filled by assets/dashboard.js
            dcc.Store(id="overview-html", data=None),
        ]
    )

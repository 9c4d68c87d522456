"""The Dash app over a :class:`~sinks.dashboard.store.Store`, put together: the page as served
(:mod:`sinks.dashboard.served`, laid out by :mod:`sinks.dashboard.layout`, its charts'
cards by :mod:`sinks.dashboard.cards`) and its callbacks —
in the browser (:mod:`~sinks.dashboard.browser_callbacks`), which runs are drawn
(:mod:`~sinks.dashboard.run_callbacks`), the charts (:mod:`~sinks.dashboard.chart_callbacks`;
which charts exist and how they are drawn, :mod:`sinks.dashboard.charts`; what a poll sends,
:func:`sinks.dashboard.updates.chart_updates`) and the header, node overview and alerts
(:mod:`~sinks.dashboard.panel_callbacks`).

A page is served with its first screen drawn in (the first charts' figures and cursors), so
no callback stands before the first chart; its polls start once that chart is painted.

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

import re
from collections.abc import Callable
from typing import Any

from sinks.dashboard import browser_callbacks, chart_callbacks, panel_callbacks, run_callbacks
from sinks.dashboard.layout import CSS
from sinks.dashboard.runs import DEFAULT_DRAWN
from sinks.dashboard.served import serve_page
from sinks.dashboard.store import Store
from sinks.dashboard.views import PageOptions

#: plotly.js with only the trace types the dashboard draws, built by plotly_bundle/build.mjs
PLOTLY_BUNDLE = "plotly-metricbus.min.js"


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
    from dash import Dash

    settings = PageOptions(poll_interval, draw_points, webgl_points, smoothing, connected_window, default_runs, loading)

    # update_title=None: no "Updating..." flicker in the tab title on every poll (Dash's documented
    # way; its stubs only say str)
    # the Plotly bundle is not one of the page's automatic assets: it is loaded below, deferred
    app = Dash(
        __name__,
        title="metricbus",
        update_title=None,  # type: ignore[arg-type]
        serve_locally=True,
        assets_ignore=re.escape(PLOTLY_BUNDLE),
    )
    # Plotly is our partial bundle (plotly_bundle/: the four trace types drawn, 1.5 MB, evaluated
    # in ~0.2 s where the full 4.8 MB one takes ~1.3 s on this kind of CPU). It is fetched from
    # the start and evaluated while the renderer asks for the layout (a deferred script runs
    # after the page's own, which start the renderer), instead of being asked for only once a
    # graph is laid out. dcc.Graph loads its own full Plotly unless window.Plotly is set, and
    # waits on it as a promise: until the script has run, window.Plotly is a promise of it, so a
    # graph laid out first waits instead of loading a second Plotly.
    plotly_js = app.get_asset_url(PLOTLY_BUNDLE)
    plotly = (
        "<script>window.Plotly = new Promise(function (done) { window.metricbusPlotlyLoaded = done; });</script>"
        f'<script defer src="{plotly_js}" onload="window.metricbusPlotlyLoaded()"'
        ' onerror="window.Plotly = undefined; window.metricbusPlotlyLoaded()"></script>'
    )
    app.index_string = app.index_string.replace("{%css%}", f"{{%css%}}<style>{CSS}</style>{plotly}")
    app.layout = lambda: serve_page(store, settings)
    browser_callbacks.register(app, settings)
    run_callbacks.register(app, store, settings)
    chart_callbacks.register(app, store, settings)
    panel_callbacks.register(app, store, settings)
    return app

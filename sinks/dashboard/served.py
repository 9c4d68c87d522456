"""The page as it is served: its first screen drawn in, so that no callback stands before the
first chart. The layout function reads the request (which sections the reader closed, from a
cookie; where the page is, from the referrer), draws the first screen's charts as a first
poll would, and hands the figures with their cursors to :func:`sinks.dashboard.layout.layout`.
"""

from __future__ import annotations

import time
import urllib.parse
from typing import Any, Final

from sinks.dashboard.cards import chart_children, page_order
from sinks.dashboard.charts import chart_specs
from sinks.dashboard.layout import PAGE_SECTIONS, Served, layout
from sinks.dashboard.panels import health_row
from sinks.dashboard.runs import recent_runs
from sinks.dashboard.store import Store
from sinks.dashboard.updates import chart_updates
from sinks.dashboard.views import FIRST_GROUPING, PageOptions, view_of

#: The cookie (its name ends with the page's port) that tells the server which sections are
#: closed, so that a page is served without their charts; the page keeps it beside its local storage.
CLOSED_COOKIE: Final = "metricbus_closed_"


def request_state() -> tuple[frozenset[str], dict[str, str]]:
    """For a page being served (from the ``_dash-layout`` request): the sections its reader
    closed (the cookie) and where the page is (the request's referrer: ``?node=`` opens nodes)."""
    import flask

    if not flask.has_request_context():
        return frozenset(), {}
    request = flask.request
    keys = {key for key, _ in PAGE_SECTIONS}
    host, _, port = request.host.rpartition(":")
    if not host or port.endswith("]"):  # no port in the URL (an IPv6 host ends with "]"): location.port is ""
        port = ""
    cookie = request.cookies.get(CLOSED_COOKIE + port, "")
    closed = frozenset(k for k in cookie.split(",") if k in keys)
    referrer = request.referrer or ""
    parts = urllib.parse.urlsplit(referrer)
    if not referrer or parts.netloc != request.host:
        return closed, {}  # unknown: dcc.Location reads the page's own on mount
    search = f"?{parts.query}" if parts.query else ""
    return closed, {"pathname": parts.path or "/", "search": search, "href": referrer, "hash": ""}


def serve_page(store: Store, options: PageOptions) -> Any:
    """The page with its first screen in it: the charts of the most recent runs, the first
    ones with their figures and their cursors."""
    closed, location = request_state()
    with store.lock:
        runs = sorted(store.runs)
        recent = recent_runs(store, options.default_runs)
    view = view_of(
        recent, None, None, options.smoothing, "step", sorted(closed), location.get("search"), FIRST_GROUPING
    )
    with store.lock:
        specs = chart_specs(store, view)
    ordered = [s.id for s in page_order(specs)]
    update = chart_updates(
        store,
        view,
        ordered,
        None,
        draw_points=options.draw_points,
        webgl_points=options.webgl_points,
        now=time.time(),
    )
    figures = {cid: f for cid, f in zip(ordered, update.figures, strict=True) if f is not None}
    served = Served(
        charts=chart_children(specs, figures, {}),
        chart_ids=[s.id for s in specs],
        cursors=update.whole or {},
        health=health_row(store, options.connected_window, options.loading()),
        location=location,
        closed=closed,
    )
    return layout(options.poll_interval, options.smoothing, options.default_runs, runs, recent, served)

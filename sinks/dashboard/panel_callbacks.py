"""The callbacks of the page's panels: the header's bus health, and the node overview with
the alerts (rebuilt only when what they show changed, the overview at most every
``TABLE_REFRESH`` seconds and not while the System section is closed).
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from sinks.dashboard.nodes import overview_key, overview_table
from sinks.dashboard.panels import alert_table, health_row
from sinks.dashboard.store import Store
from sinks.dashboard.views import TABLE_REFRESH, PageOptions, open_nodes

if TYPE_CHECKING:
    from dash import Dash


def register(app: Dash, store: Store, settings: PageOptions) -> None:
    from dash import Input, Output, State, no_update

    @app.callback(
        Output("health", "children"),
        Input("tick", "data"),
        prevent_initial_call=True,  # served with the page
    )
    def update_health(_tick: Any) -> Any:
        return health_row(store, settings.connected_window, settings.loading())

    # the overview arrives as an HTML string (sinks/dashboard/nodes.py), set in place here

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

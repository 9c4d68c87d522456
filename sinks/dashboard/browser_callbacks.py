"""The page's callbacks that run in the browser: when a poll starts (one at a time, and not
before the first chart is painted: ``window.metricbusReady`` in ``assets/dashboard.js``),
opening and closing sections (remembered in local storage and in a cookie the server reads),
and setting the node overview's HTML in place.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from sinks.dashboard.layout import PAGE_SECTIONS
from sinks.dashboard.served import CLOSED_COOKIE
from sinks.dashboard.views import PageOptions

if TYPE_CHECKING:
    from dash import Dash


def register(app: Dash, settings: PageOptions) -> None:
    from dash import Input, Output, State

    overdue_ms = int(max(5.0, 10 * settings.poll_interval) * 1000)
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

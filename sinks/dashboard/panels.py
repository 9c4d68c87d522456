"""The page's header and tables: bus health, run status and alerts, with ``data-*`` hooks for tests."""

from __future__ import annotations

import re
import time
from typing import Any, Final

from sinks.dashboard.figures import SEVERITY_COLOURS, STATUS_COLOURS
from sinks.dashboard.store import Store


def age_text(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def health_row(store: Store, connected_window: float, pending: int) -> list[Any]:
    """The header: connected, rate, last message's age, drops, gaps, history loading."""
    from dash import html

    now = time.time()
    with store.lock:
        h = store.health
        age = None if h.last_receipt is None else max(0.0, now - h.last_receipt)
        connected = age is not None and age <= connected_window
        rate = h.rate(now)
        dropped, gaps, missing, undecodable = h.dropped, h.gaps, h.missing, h.undecodable
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


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def attrs(attrs: dict[str, str]) -> dict[str, Any]:
    """``data-*`` attributes for a component (typed loosely: Dash's stubs list no data props)."""
    return attrs


def valid_regex(pattern: str) -> bool:
    try:
        re.compile(pattern)
    except re.error:
        return False
    return True


def run_table(rows: list[tuple[Any, ...]]) -> Any:
    from dash import html

    if not rows:
        return html.Div("no runs yet", className="empty")
    body = []
    for name, hex_colour, status, node, episodes, reward, error in rows:
        body.append(
            html.Tr(
                [
                    html.Td([html.Span(className="chip", style={"background": hex_colour}), name]),
                    html.Td(
                        html.Span(status, className="badge", style={"background": STATUS_COLOURS.get(status, "#555")}),
                        title=error or None,
                    ),
                    html.Td(node),
                    html.Td(str(episodes)),
                    html.Td(_fmt(reward) if reward == reward else ""),
                ],
                **attrs({"data-run": name, "data-status": status}),
            )
        )
    head = html.Tr([html.Th(t) for t in ("run", "status", "node", "episodes", "last reward")])
    return html.Table([html.Thead(head), html.Tbody(body)], id="run-table")


def alert_table(alerts: list[dict[str, Any]], state: str, total: int | None = None) -> Any:
    """Firing alerts as a table (each with its hint); resolved ones folded into one line that opens.

    Resolved alerts are history: on a long sweep they are many, and as an open table they
    pushed the charts off the first screen. ``total``: how many resolved there are in all.
    """
    from dash import html

    if not alerts:
        text = "no alert is firing" if state == "firing" else "no resolved alerts"
        return html.Div(text, className="empty", **attrs({"data-alerts": state, "data-count": "0"}))
    rows = []
    for a in alerts:
        sev = a["severity"]
        when = time.strftime("%H:%M:%S", time.localtime(a["ts"]))
        rows.append(
            html.Tr(
                [
                    html.Td(html.Span(sev, className="badge", style={"background": SEVERITY_COLOURS.get(sev, "#555")})),
                    html.Td(a["rule"]),
                    html.Td(a["source"]),
                    html.Td(_fmt(a["metric"])),
                    html.Td(_fmt(a["value"])),
                    html.Td(_fmt(a["threshold"])),
                    html.Td(
                        [
                            html.Div(a["message"]),
                            *(
                                [html.Div(f"check: {a['hint']}", className="hint", style=_HINT_STYLE)]
                                if a.get("hint")
                                else []
                            ),
                        ]
                    ),
                    html.Td(when),
                ],
                className=f"alert sev-{sev}",
                style={"borderLeft": f"4px solid {SEVERITY_COLOURS.get(sev, '#555')}"},
                **{
                    "data-alert-rule": a["rule"],
                    "data-severity": sev,
                    "data-state": a["state"],
                    "data-source": a["source"],
                },
            )
        )
    head = html.Tr(
        [html.Th(t) for t in ("severity", "rule", "run/node", "metric", "value", "threshold", "message", "at")]
    )
    table = html.Table(
        [html.Thead(head), html.Tbody(rows)], **attrs({"data-alerts": state, "data-count": str(len(alerts))})
    )
    if state == "firing":
        return table
    count = total if total is not None else len(alerts)
    more = f" (latest {len(alerts)} below)" if count > len(alerts) else ""
    return html.Details(
        [html.Summary(f"{count} resolved alert{'s' if count != 1 else ''}{more}"), table],
        id="alerts-resolved",
        **attrs({"data-resolved": str(count)}),
    )


_HINT_STYLE: Final = {"color": "#52606d", "fontSize": "12px", "marginTop": "2px"}

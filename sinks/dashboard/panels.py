"""The page's tables: run status and alerts, with ``data-*`` hooks for tests."""

from __future__ import annotations

import re
import time
from typing import Any, Final

from sinks.dashboard.figures import SEVERITY_COLOURS, STATUS_COLOURS


def age_text(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


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

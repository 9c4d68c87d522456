"""The chart cards: a chart with its tools (log, full width, CSV, PNG), and each section's
cards as :func:`chart_children` lays them out — served with the page (the first ones with
their figures drawn in) or laid out again by the charts callback.

Test hooks: a card is a ``div[data-chart=ID]``; one served with its figure has ``data-served``.
"""

from __future__ import annotations

from typing import Any, Final

from sinks.dashboard.charts import ChartSpec
from sinks.dashboard.layout import CHART_HEIGHT, PAGE_SECTIONS, RUN_SECTIONS
from sinks.dashboard.panels import attrs

_TOOLS: Final = (
    ("log", "log", "log-scale y axis"),
    ("wide", "⤢", "full width"),
    ("csv", "csv", "download the shown series as CSV"),
    ("png", "png", "download a PNG"),
)


def chart_card(spec: ChartSpec, figure: dict[str, Any] | None, flags: list[str]) -> Any:
    """A chart with its tools; ``figure`` None: an empty axis the first poll fills. A card
    served with its figure says so (``data-served``): the page starts polling once one is drawn."""
    from dash import dcc, html

    # axes hidden until the first figure: an empty chart then costs Plotly no ticks or grid to draw
    hidden = {"visible": False}
    title = {"text": spec.title}
    empty = {"data": [], "layout": {"height": CHART_HEIGHT, "title": title, "xaxis": hidden, "yaxis": hidden}}
    graph = dcc.Graph(
        id={"type": "chart", "id": spec.id},
        figure=figure if figure is not None else empty,
        config={
            "displaylogo": False,
            "responsive": True,
            "modeBarButtonsToRemove": ["select2d", "lasso2d", "zoomIn2d", "zoomOut2d"],
        },
        style={"height": f"{CHART_HEIGHT}px"},
    )
    tools = html.Div(
        [html.Button(label, title=title, **attrs({"data-action": action})) for action, label, title in _TOOLS],
        className="tools",
    )
    hooks = {"data-chart": spec.id, **{f"data-{k}": "true" for k in flags}}
    if figure is not None:
        hooks["data-served"] = "true"
    return html.Div([tools, graph], className=" ".join(["chart", *flags]), **attrs(hooks))


def chart_children(
    specs: list[ChartSpec], figures: dict[str, dict[str, Any]], marked: dict[str, set[str]]
) -> dict[str, Any]:
    """Each section's charts (``charts-<key>``'s children; ``system``: a block per opened node),
    with the ``figures`` given drawn in and the reader's ``marked`` charts (log, wide) kept so."""
    from dash import html

    by_section: dict[str, list[Any]] = {key: [] for key in RUN_SECTIONS}
    nodes: dict[str, list[Any]] = {}
    for spec in specs:
        flags = [k for k in ("log", "wide") if spec.id in marked.get(k, set())]
        card = chart_card(spec, figures.get(spec.id), flags)
        if spec.section == "system":
            nodes.setdefault(spec.node, []).append(card)
        else:
            by_section[spec.section].append(card)
    empty = html.Div("no metrics yet", className="empty")
    out: dict[str, Any] = {key: cards or empty for key, cards in by_section.items()}
    node_blocks = [
        html.Div([html.H3(f"node {node}"), html.Div(cards, className="grid")], **attrs({"data-node": node}))
        for node, cards in nodes.items()
    ]
    out["system"] = node_blocks or html.Div("click a node's name to open its charts", className="empty")
    return out


def page_order(specs: list[ChartSpec]) -> list[ChartSpec]:
    """The charts in the order the page lays them out (section by section), which is the order
    Dash lists them in a callback's ``ALL`` input."""
    keys = [key for key, _ in PAGE_SECTIONS]
    return sorted(specs, key=lambda s: keys.index(s.section))

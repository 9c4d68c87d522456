"""What the page's controls ask for, as a :class:`~sinks.dashboard.charts.View`, and the
options every callback of a page shares (:class:`PageOptions`).

No Dash here: the callbacks (``*_callbacks.py``) and the served page (:mod:`sinks.dashboard.served`)
turn their inputs into a view with :func:`view_of`.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from sinks.dashboard.charts import View, compile_filter
from sinks.dashboard.figures import X_MODES
from sinks.dashboard.layout import PAGE_SECTIONS
from sinks.dashboard.runs import DEFAULT_DRAWN, DEFAULT_GROUP_PATTERN, Grouping

#: The runs table and the node overview are rebuilt at most this often (seconds).
TABLE_REFRESH: Final = 5.0


@dataclass(frozen=True)
class PageOptions:
    """The sink's options a page is built with; ``loading`` says how many sources' history is
    still being read, ``default_runs`` how many of the most recent runs a page opens on."""

    poll_interval: float = 1.0
    draw_points: int = 2000
    webgl_points: int = 10_000
    smoothing: float = 0.6
    connected_window: float = 15.0
    default_runs: int = DEFAULT_DRAWN
    loading: Callable[[], int] = field(default=lambda: 0)


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
    """The view the controls' values ask for (closed sections and unopened nodes get no charts)."""
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

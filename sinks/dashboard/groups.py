"""A group of runs as one line with a band: each member is put on a common x grid (linear
interpolation within its own range, nothing outside it), optionally smoothed there, and the
group's mean or median is drawn with its min–max, ±std or 95% CI band.

Members are gridded rather than matched point by point because runs of one sweep log at
different steps (and, by wall time, never at the same instants). Pure numpy; no Dash.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from sinks.dashboard.figures import EPISODE_WINDOW, Y_DIGITS, plain, rolling_mean

FloatArray = np.ndarray[Any, np.dtype[np.float64]]

#: Groups drawn per chart at most, the largest first: a sweep of hundreds of runs in
#: hundreds of groups would be as unreadable as hundreds of lines.
MAX_GROUPS: Final = 24
#: Points of a group's line: a chart is ~400–1300 px wide, and a band wider than a pixel
#: per point shows nothing more.
GRID_POINTS: Final = 150
#: Significant digits of a group's numbers: an interpolated mean has no more (and JSON stays short).
GRID_DIGITS: Final = 6
STATS: Final = {"mean": "mean", "median": "median"}
BANDS: Final = {"minmax": "min–max", "std": "±1 std", "ci95": "95% CI"}


@dataclass
class GroupLine:
    x: FloatArray
    centre: FloatArray
    lo: FloatArray
    hi: FloatArray
    members: int  # runs that have any point of this metric


def _ema_rows(grid: FloatArray, weight: float) -> FloatArray:
    """Debiased EMA along each row (a member), skipping the NaNs outside its range."""
    import pandas as pd

    # pandas' adjusted EWM is the debiased EMA; ignore_na carries it over a member's gaps
    smoothed = pd.DataFrame(grid.T).ewm(alpha=1.0 - weight, adjust=True, ignore_na=True).mean().to_numpy().T
    return np.where(np.isfinite(grid), smoothed, np.nan)


def aggregate(
    groups: dict[str, list[tuple[FloatArray, FloatArray]]],
    *,
    stat: str = "mean",
    band: str = "minmax",
    smoothing: float = 0.0,
    episode: bool = False,
    points: int = GRID_POINTS,
) -> dict[str, GroupLine]:
    """Each group's line over one x grid shared by the chart (each member ``(x, y)``); a group
    without a finite point is left out. Every member of every group is gridded and smoothed
    in one matrix, so a chart costs a few numpy calls however many groups it has."""
    names: list[str] = []
    cleaned: list[tuple[FloatArray, FloatArray]] = []
    for name, members in groups.items():
        for x, y in members:
            if episode:
                y = rolling_mean(y, EPISODE_WINDOW)
            keep = np.isfinite(x) & np.isfinite(y)
            x, y = x[keep], y[keep]
            if len(x):
                if np.any(x[1:] < x[:-1]):  # steps and times are mostly in order already
                    order = np.argsort(x, kind="stable")
                    x, y = x[order], y[order]
                cleaned.append((x, y))
                names.append(name)
    if not cleaned:
        return {}
    lo_x = min(float(x[0]) for x, _ in cleaned)
    hi_x = max(float(x[-1]) for x, _ in cleaned)
    grid_x = np.linspace(lo_x, hi_x, points) if hi_x > lo_x else np.array([lo_x])
    grid = np.full((len(cleaned), len(grid_x)), np.nan)
    for i, (x, y) in enumerate(cleaned):
        inside = (grid_x >= x[0]) & (grid_x <= x[-1])
        grid[i, inside] = np.interp(grid_x[inside], x, y)
    weight = min(max(float(smoothing), 0.0), 0.999)
    if weight > 0.0 and not episode:
        grid = _ema_rows(grid, weight)
    rows_of: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        rows_of.setdefault(name, []).append(i)
    return {name: _line(grid_x, grid[rows], stat, band) for name, rows in rows_of.items()}


def _line(grid_x: FloatArray, grid: FloatArray, stat: str, band: str) -> GroupLine:
    count = np.isfinite(grid).sum(axis=0)
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns are NaN, as meant
        centre = np.nanmedian(grid, axis=0) if stat == "median" else np.nanmean(grid, axis=0)
        if band in ("std", "ci95"):
            std = np.nanstd(grid, axis=0, ddof=0)
            half = std if band == "std" else 1.96 * np.nanstd(grid, axis=0, ddof=1) / np.sqrt(count)
            half = np.where(count > 1, half, 0.0)
            lo, hi = centre - half, centre + half
        else:
            lo, hi = np.nanmin(grid, axis=0), np.nanmax(grid, axis=0)
    return GroupLine(grid_x, centre, lo, hi, grid.shape[0])


def _rgba(hex_colour: str, alpha: float) -> str:
    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def group_traces(name: str, colour: str, line: GroupLine, *, stat: str, band: str) -> list[dict[str, Any]]:
    """The band (lower edge, then the upper one filled down to it) and the centre line."""
    x = plain(line.x, GRID_DIGITS)
    meta = {"series": name, "members": line.members, "stat": stat, "band": band}
    edge = {
        "type": "scatter",
        "mode": "lines",
        "x": x,
        "line": {"width": 0, "color": colour},
        "hoverinfo": "skip",
        "showlegend": False,
        "legendgroup": f"group|{name}",
    }
    label = f"{name} ({line.members} run{'s' if line.members != 1 else ''})"
    return [
        {**edge, "name": f"{name} low", "y": plain(line.lo, GRID_DIGITS), "meta": {**meta, "role": "band-lo"}},
        {
            **edge,
            "name": f"{name} high",
            "y": plain(line.hi, GRID_DIGITS),
            "fill": "tonexty",
            "fillcolor": _rgba(colour, 0.2),
            "meta": {**meta, "role": "band-hi"},
        },
        {
            "type": "scatter",
            "mode": "lines",
            "name": label,
            "legendgroup": f"group|{name}",
            "x": x,
            "y": plain(line.centre, GRID_DIGITS),
            "line": {"color": colour, "width": 2},
            "hovertemplate": "%{y:.4g}<extra>" + label + "</extra>",
            "meta": {**meta, "role": "group"},
        },
    ]


def member_trace(run: str, colour: str, x: FloatArray, y: FloatArray) -> dict[str, Any]:
    """A member's own line, thin and faint under its group's."""
    return {
        "type": "scatter",
        "mode": "lines",
        "name": run,
        "x": plain(x),
        "y": plain(y, Y_DIGITS),
        "line": {"color": colour, "width": 1},
        "opacity": 0.35,
        "hovertemplate": "%{y:.4g}<extra>" + run + "</extra>",
        "meta": {"role": "member", "series": run},
    }

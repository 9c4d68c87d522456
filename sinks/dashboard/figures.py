"""What the charts are made of, shared by the live page and ``metricbus report``: which
section a metric belongs to, run colours, smoothing, x values, and plotly figure dicts.

Figures are plain dicts rather than ``plotly.graph_objects`` because the page sends them on
every redraw: a dict without a template is a few hundred bytes of layout, a ``go.Figure``
carries its whole default template.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from sinks.dashboard.store import EPISODE_PREFIX

FloatArray = np.ndarray[Any, np.dtype[np.float64]]

#: Tableau 10, then a second set: a run keeps its index, hence its colour, for the page's life.
PALETTE: Final = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#393b79", "#ad494a", "#637939", "#8c6d31", "#843c39", "#7b4173",
)  # fmt: skip
SEVERITY_COLOURS: Final = {"critical": "#7b1fa2", "error": "#c62828", "warning": "#ef6c00", "info": "#1565c0"}
STATUS_COLOURS: Final = {
    "running": "#2e7d32",
    "completed": "#1565c0",
    "stopped": "#00838f",  # cut short by a sweep's scheduler: an ordinary end, not a fault
    "failed": "#c62828",
    "interrupted": "#ef6c00",
    "silent": "#9e9e9e",
}
#: Sections of run metrics, in page order (reward first: what people look at first); the
#: last one takes everything else.
SECTIONS: Final = (
    ("rollout", "Rollout and episodes", ("rollout/", EPISODE_PREFIX)),
    ("training", "Training", ("train/", "time/")),
    ("gradients", "Gradients", ("grad/", "weight/")),
    ("other", "Other metrics", ("",)),
)
X_MODES: Final = {"step": "step", "wall": "wall time", "relative": "time since start (s)"}
#: Episodes are smoothed by a rolling mean over this many episodes (SB3's ep_rew_mean already
#: gives the 100-episode mean; a shorter window shows early learning sooner).
EPISODE_WINDOW: Final = 20
#: Significant digits of drawn y values.
Y_DIGITS: Final = 10


def colour(index: int, of: int = 0) -> str:
    """The palette's colour for ``index``; among more than the palette holds (a node's 64
    cores), hues spread evenly instead, so no two lines share a colour."""
    if of <= len(PALETTE):
        return PALETTE[index % len(PALETTE)]
    import colorsys

    r, g, b = colorsys.hls_to_rgb(index / of, 0.45 + 0.1 * (index % 2), 0.7)
    return f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}"


def section_of(metric: str) -> str:
    for key, _title, prefixes in SECTIONS:
        if any(metric.startswith(p) for p in prefixes):
            return key
    return "other"


def node_family(metric: str) -> str:
    """System metrics drawn together: every GPU's ``util_percent`` in one chart, rx with tx."""
    parts = metric.split("/")
    if len(parts) == 3 and parts[0] == "gpu" and parts[1].isdigit():
        return f"gpu/{parts[2]}"
    if len(parts) == 3 and parts[0] == "cpu" and parts[1].isdigit():
        return f"cpu/per_core_{parts[2]}"  # every core in one chart, not a chart per core
    if parts[0] == "net":
        return "net/bytes_per_s" if metric.endswith("_per_s") else "net/bytes"
    return metric


def is_episode(metric: str) -> bool:
    return metric.startswith(EPISODE_PREFIX)


# -- smoothing -----------------------------------------------------------------------------------


@dataclass
class EmaState:
    """TensorBoard's debiased EMA, carried across appends: y = acc / den."""

    acc: float = 0.0
    den: float = 0.0


def ema(values: FloatArray, weight: float, state: EmaState | None = None) -> tuple[FloatArray, EmaState]:
    """Debiased EMA as TensorBoard draws it; a non-finite value is shown as is and skipped."""
    weight = min(max(float(weight), 0.0), 0.999)
    state = EmaState(state.acc, state.den) if state else EmaState()
    if len(values) > 64:
        return _ema_vectorised(values, weight, state)
    out = np.empty(len(values))
    acc, den = state.acc, state.den
    for i, v in enumerate(values.tolist()):
        if not math.isfinite(v):
            out[i] = v
            continue
        acc = acc * weight + v
        den = den * weight + 1.0
        out[i] = acc / den
    return out, EmaState(acc, den)


def _ema_vectorised(values: FloatArray, weight: float, state: EmaState) -> tuple[FloatArray, EmaState]:
    import pandas as pd

    finite = np.isfinite(values)
    out = values.astype(np.float64, copy=True)
    clean = values[finite]
    if not len(clean):
        return out, state
    if weight <= 0.0:
        smoothed = clean
    else:
        # pandas' adjusted EWM is exactly the debiased EMA: sum(w^i x) / sum(w^i). A carried
        # state is folded in as a leading pseudo-point holding acc/den with weight den.
        series = pd.Series(clean)
        smoothed = series.ewm(alpha=1.0 - weight, adjust=True).mean().to_numpy()
        if state.den > 0.0:
            k = np.arange(1, len(clean) + 1, dtype=np.float64)
            powers = weight**k
            plain_den = (1.0 - powers) / (1.0 - weight)
            acc = smoothed * plain_den + state.acc * powers
            smoothed = acc / (plain_den + state.den * powers)
    out[finite] = smoothed
    n = len(clean)
    if weight <= 0.0:
        return out, EmaState(float(clean[-1]), 1.0)
    den = (1.0 - weight**n) / (1.0 - weight) + state.den * weight**n
    return out, EmaState(float(smoothed[-1]) * den, den)


def rolling_mean(values: FloatArray, window: int = EPISODE_WINDOW) -> FloatArray:
    """Mean of the last ``window`` finite values at each point (fewer at the start)."""
    finite = np.where(np.isfinite(values), values, 0.0)
    counts = np.cumsum(np.isfinite(values).astype(np.float64))
    sums = np.cumsum(finite)
    lo_sums = np.concatenate([np.zeros(window), sums[:-window]]) if len(sums) > window else np.zeros(len(sums))
    lo_counts = np.concatenate([np.zeros(window), counts[:-window]]) if len(counts) > window else np.zeros(len(counts))
    n = counts - lo_counts[: len(counts)]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, (sums - lo_sums[: len(sums)]) / np.maximum(n, 1), np.nan)


# -- x values --------------------------------------------------------------------------------------


def x_values(step: FloatArray, ts: FloatArray, mode: str, origin: float) -> FloatArray:
    """Step, wall time (ms since the epoch, for a date axis) or seconds since ``origin``."""
    if mode == "wall":
        return ts * 1000.0
    if mode == "relative":
        return ts - origin
    return step


def axis(mode: str) -> dict[str, Any]:
    if mode == "wall":
        return {"type": "date", "title": {"text": X_MODES["wall"]}}
    return {"type": "linear", "title": {"text": X_MODES.get(mode, "step")}}


# -- figure dicts ------------------------------------------------------------------------------------


def plain(values: FloatArray | Sequence[float], digits: int | None = None) -> list[float | None]:
    """JSON-ready numbers, y values rounded to ``digits`` significant digits; NaN/Inf (which
    JSON lacks) become null, a gap in the line. Rounding keeps a smoothed constant at 65
    instead of 64.99999999999999 (which Plotly autoranges into a nonsense axis) and shortens
    the JSON. x values (epoch milliseconds) are never rounded."""
    arr = np.asarray(values, dtype=np.float64)
    if digits is None:
        return _nulls(arr)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        magnitude = np.floor(np.log10(np.abs(arr)))
        scale = 10.0 ** (digits - 1 - np.where(np.isfinite(magnitude), magnitude, 0.0))
        rounded = np.round(arr * scale) / scale
    return _nulls(np.where(np.isfinite(rounded), rounded, arr))


def _nulls(arr: FloatArray) -> list[float | None]:
    out: list[float | None] = arr.tolist()
    if not np.isfinite(arr).all():
        for i in np.flatnonzero(~np.isfinite(arr)).tolist():
            out[i] = None
    return out


def trace_pair(
    label: str,
    colour_hex: str,
    x: FloatArray,
    raw: FloatArray,
    smooth: FloatArray | None,
    *,
    webgl: bool,
    group: str,
) -> list[dict[str, Any]]:
    """The raw trace (faint when a smoothed one is drawn over it) and the smoothed trace."""
    kind = "scattergl" if webgl else "scatter"
    faint = smooth is not None
    raw_trace = {
        "type": kind,
        "mode": "lines",
        "name": label,
        "legendgroup": group,
        "x": plain(x),
        "y": plain(raw, Y_DIGITS),
        "line": {"color": colour_hex, "width": 1},
        "opacity": 0.3 if faint else 1.0,
        "hoverinfo": "skip" if faint else "x+y+name",
        "meta": {"role": "raw", "series": label},
    }
    smooth_trace = {
        "type": kind,
        "mode": "lines",
        "name": label,
        "legendgroup": group,
        "x": plain(x) if faint else [],
        "y": plain(smooth, Y_DIGITS) if smooth is not None else [],
        "line": {"color": colour_hex, "width": 2},
        "hovertemplate": "%{y:.4g}<extra>" + label + "</extra>",
        "meta": {"role": "smooth", "series": label},
    }
    return [raw_trace, smooth_trace]


def figure(title: str, traces: list[dict[str, Any]], x_mode: str, revision: str, height: int = 260) -> dict[str, Any]:
    return {
        "data": traces,
        "layout": {
            "title": {"text": title, "font": {"size": 13}, "x": 0.02},
            "height": height,
            "margin": {"l": 55, "r": 12, "t": 30, "b": 40},
            "showlegend": False,
            "xaxis": axis(x_mode),
            "yaxis": {"automargin": True},
            "hovermode": "closest",
            "uirevision": revision,  # keeps a reader's zoom across updates
            "paper_bgcolor": "#ffffff",
            "plot_bgcolor": "#fafafa",
        },
    }

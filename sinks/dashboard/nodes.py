"""The node overview: one compact row per node (CPU, memory, disk, network as value and
text sparkline; each GPU's utilisation, memory, temperature and power as a row of coloured
cells), so 64 nodes fit a screen where a chart per metric per node would be thousands of
charts. Clicking a node's name opens its charts (``?node=NAME`` in the URL, so a reload or
a shared link keeps it open).

Callers hold the store's lock. No Dash here: the table is an HTML string (see
:func:`overview_table`).
"""

from __future__ import annotations

import math
import urllib.parse
from html import escape
from typing import Any, Final

import numpy as np

from sinks.dashboard.store import SourceData, Store

#: Samples a sparkline spans, and the characters it is drawn with (eight heights).
SPARK_POINTS: Final = 24
_BARS: Final = "▁▂▃▄▅▆▇█"
#: GPU metrics in the cells, with the range their colour scale spans.
GPU_ROWS: Final = (
    ("util", "util_percent", 0.0, 100.0, "%"),
    ("mem", "mem_percent", 0.0, 100.0, "%"),
    ("temp", "temp_c", 30.0, 90.0, "°C"),
    ("power", "power_w", 0.0, 700.0, " W"),
)
HEAT_STEPS: Final = 10


def sparkline(values: np.ndarray[Any, Any], lo: float | None = None, hi: float | None = None) -> str:
    """The last values as block characters; a fixed ``lo``–``hi`` makes rows comparable."""
    values = values[np.isfinite(values)][-SPARK_POINTS:]
    if not len(values):
        return ""
    low = float(values.min()) if lo is None else lo
    high = float(values.max()) if hi is None else hi
    span = high - low
    if span <= 0:
        return _BARS[0] * len(values)
    scaled = np.clip((values - low) / span, 0.0, 1.0)
    return "".join(_BARS[min(len(_BARS) - 1, int(v * len(_BARS)))] for v in scaled.tolist())


def human_rate(value: float) -> str:
    for unit in ("B/s", "kB/s", "MB/s", "GB/s"):
        if abs(value) < 1000 or unit == "GB/s":
            return f"{value:.0f} {unit}" if unit == "B/s" else f"{value:.1f} {unit}"
        value /= 1000
    return ""


def _last(data: SourceData, metric: str) -> float:
    series = data.series.get(metric)
    return series.last() if series is not None else math.nan


def _tail(data: SourceData, metric: str) -> np.ndarray[Any, Any]:
    series = data.series.get(metric)
    return series.tail(SPARK_POINTS) if series is not None else np.empty(0)


def gpu_indices(data: SourceData) -> list[int]:
    found = {int(m.split("/")[1]) for m in data.series if m.startswith("gpu/") and m.split("/")[1].isdigit()}
    return sorted(found)


def gpu_value(data: SourceData, index: int, field: str) -> float:
    if field == "mem_percent":
        used, total = _last(data, f"gpu/{index}/mem_used_bytes"), _last(data, f"gpu/{index}/mem_total_bytes")
        return 100.0 * used / total if total > 0 else math.nan
    return _last(data, f"gpu/{index}/{field}")


def heat(value: float, lo: float, hi: float) -> int:
    if not math.isfinite(value) or hi <= lo:
        return -1
    return int(min(HEAT_STEPS - 1, max(0.0, (value - lo) / (hi - lo)) * HEAT_STEPS))


def node_cores(data: SourceData) -> int:
    return sum(1 for m in data.series if m.startswith("cpu/") and m.split("/")[1].isdigit())


def overview_key(store: Store) -> list[Any]:
    """Changes when any row would: the newest sample of each node."""
    return [(name, data.last_ts) for name, data in sorted(store.nodes.items())]


def _cell(text: str, spark: str, title: str) -> str:
    return f'<td title="{escape(title)}"><span class="val">{escape(text)}</span><span class="spark">{spark}</span></td>'


def overview_table(store: Store, open_nodes: list[str]) -> str:
    """The overview as one HTML table (names from the wire escaped): a row per node, the open
    ones marked. One HTML string, not a component per cell: 64 nodes × 8 GPUs would be
    thousands of Dash components, which the page would take seconds to render every refresh."""
    if not store.nodes:
        return '<div class="empty">no node is publishing system metrics</div>'
    rows = []
    widest = max(len(gpu_indices(d)) for d in store.nodes.values())
    for name in sorted(store.nodes):
        data = store.nodes[name]
        cpu, mem, disk = _last(data, "cpu/percent"), _last(data, "mem/percent"), _last(data, "disk/percent")
        rx, tx = _last(data, "net/rx_bytes_per_s"), _last(data, "net/tx_bytes_per_s")
        net_tail = _tail(data, "net/rx_bytes_per_s")
        tx_tail = _tail(data, "net/tx_bytes_per_s")
        if len(tx_tail) == len(net_tail):
            net_tail = net_tail + tx_tail
        net = (rx if math.isfinite(rx) else 0.0) + (tx if math.isfinite(tx) else 0.0)
        gpu_rows = []
        indices = gpu_indices(data)
        for label, field, lo, hi, unit in GPU_ROWS if indices else ():
            cells = []
            for index in indices:
                value = gpu_value(data, index, field)
                level = heat(value, lo, hi)
                text = f"gpu{index} {label} {value:.0f}{unit}" if math.isfinite(value) else f"gpu{index} {label} —"
                cells.append(f'<span class="g {f"h{level}" if level >= 0 else "hn"}" title="{escape(text)}"></span>')
            gpu_rows.append(f'<div class="grow"><span class="glabel">{label}</span>{"".join(cells)}</div>')
        href = "?" + urllib.parse.urlencode({"node": name})
        is_open = name in open_nodes
        rows.append(
            f'<tr class="{"open" if is_open else ""}" data-overview-node="{escape(name)}"'
            f' data-open="{"true" if is_open else "false"}">'
            f'<td class="node-name"><a class="node-link" href="{escape(href)}">{escape(name)}</a></td>'
            + _cell(
                _pct(cpu), sparkline(_tail(data, "cpu/percent"), 0, 100), f"CPU {_pct(cpu)}, {node_cores(data)} cores"
            )
            + _cell(_pct(mem), sparkline(_tail(data, "mem/percent"), 0, 100), f"memory {_pct(mem)}")
            + _cell(_pct(disk), "", f"disk {_pct(disk)}")
            + _cell(human_rate(net) if math.isfinite(rx) or math.isfinite(tx) else "—", sparkline(net_tail), "net")
            + f'<td class="gpus">{"".join(gpu_rows) or "—"}</td></tr>'
        )
    head = "".join(f"<th>{t}</th>" for t in ("node", "CPU", "mem", "disk", "net", f"GPUs ({widest} max)"))
    return f'<table id="node-overview"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _pct(value: float) -> str:
    return f"{value:.0f}%" if math.isfinite(value) else "—"

"""A compact live terminal view (``metricbus tail`` uses it).

Two modes: ``lines`` prints one line per message; ``table`` keeps the latest value of every
metric per run (and per node, for system metrics) and redraws one small table per run at
most every ``refresh`` seconds — on a terminal in place, elsewhere (a pipe, a file) as
successive snapshots separated by a blank line. Events and alerts show as the last few lines
under the tables, since a latest-value table would hide them.
"""

from __future__ import annotations

import math
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TextIO

from bus.message import Message


def format_value(value: Any) -> str:
    if isinstance(value, float):
        if math.isfinite(value):
            return f"{value:.6g}"
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict | list):
        text = repr(value)
        return text if len(text) <= 60 else text[:57] + "..."
    return str(value)


def format_line(message: Message, max_fields: int = 12) -> str:
    """``HH:MM:SS topic step=N key=value …`` with at most ``max_fields`` fields."""
    clock = time.strftime("%H:%M:%S", time.localtime(message.ts))
    step = f" step={message.step}" if message.step is not None else ""
    items = list(message.data.items())
    fields = " ".join(f"{k}={format_value(v)}" for k, v in items[:max_fields])
    more = f" (+{len(items) - max_fields} more)" if len(items) > max_fields else ""
    return f"{clock} {message.topic}{step} {fields}{more}"


MODES: Final = ("lines", "table")
_CLEAR: Final = "\x1b[H\x1b[J"  # cursor home, erase below: redraw in place without scrolling
_RECENT_LINES: Final = 5


@dataclass
class RunView:
    """The latest of everything one run (or node) published."""

    title: str
    node: str = ""
    step: int | None = None
    ts: float = 0.0
    values: dict[str, Any] = field(default_factory=dict)


def render_tables(views: Sequence[RunView], recent: Sequence[str], max_fields: int, now: float) -> str:
    """One block per run: a title line, then ``name  value`` rows (at most ``max_fields``)."""
    blocks: list[str] = []
    for view in views:
        step = f"  step {view.step}" if view.step is not None else ""
        age = f"  ({max(0.0, now - view.ts):.1f} s ago)" if view.ts else ""
        where = "" if view.title.startswith("node ") else f"  node {view.node}"
        lines = [f"{view.title}{where}{step}{age}"]
        items = list(view.values.items())
        width = max((len(k) for k, _ in items[:max_fields]), default=0)
        lines += [f"  {k:<{width}}  {format_value(v)}" for k, v in items[:max_fields]]
        if len(items) > max_fields:
            lines.append(f"  (+{len(items) - max_fields} more)")
        blocks.append("\n".join(lines))
    if recent:
        blocks.append("\n".join(recent))
    return "\n\n".join(blocks) + "\n"


class ConsoleSink:
    """Prints each message as one line (``mode: lines``) or a refreshing table per run (``table``)."""

    def __init__(
        self,
        max_fields: int = 12,
        mode: str = "lines",
        refresh: float = 1.0,
        path: str | None = None,
    ) -> None:
        """``path``: a file to append to instead of stdout."""
        if mode not in MODES:
            raise ValueError(f"console mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.max_fields = max_fields
        self._owned: TextIO | None = open(path, "a") if path else None  # noqa: SIM115 -- closed in close()
        self.stream: TextIO = self._owned or sys.stdout
        self.mode = mode
        self.refresh = refresh
        self.count = 0
        self.views: dict[tuple[str, str], RunView] = {}
        self.recent: deque[str] = deque(maxlen=_RECENT_LINES)
        self._dirty = False
        self._last_draw = 0.0
        isatty = getattr(self.stream, "isatty", None)
        self._in_place = bool(isatty and isatty())

    def handle(self, batch: Sequence[Message]) -> None:
        self.count += len(batch)
        if self.mode == "lines":
            lines = [format_line(m, self.max_fields) for m in batch]
            self.stream.write("\n".join(lines) + "\n")
            return
        for message in batch:
            if message.kind in ("metrics", "episode", "system"):
                self._update(message)
            else:
                self.recent.append(format_line(message, self.max_fields))
        self._dirty = True

    def _update(self, message: Message) -> None:
        key = ("node", message.node) if message.of_node else ("run", message.run or "")
        view = self.views.get(key)
        if view is None:
            view = self.views[key] = RunView(title=f"{key[0]} {key[1]}")
        view.node = message.node
        view.ts = message.ts
        if message.step is not None:
            view.step = message.step
        prefix = "episode/" if message.kind == "episode" else ""
        for name, value in message.data.items():
            view.values[prefix + name] = value

    def draw(self) -> None:
        """Write the tables now (``flush`` calls this at most every ``refresh`` seconds)."""
        text = render_tables(list(self.views.values()), list(self.recent), self.max_fields, time.time())
        self.stream.write((_CLEAR + text) if self._in_place else (text + "\n"))
        self._dirty = False
        self._last_draw = time.monotonic()

    def flush(self) -> None:
        if self.mode == "table" and self._dirty and time.monotonic() - self._last_draw >= self.refresh:
            self.draw()
        self.stream.flush()

    def close(self) -> None:
        if self.mode == "table" and self._dirty:
            self.draw()
        self.stream.flush()
        if self._owned is not None:
            self._owned.close()

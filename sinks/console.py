"""A compact live terminal view: one line per message (``metricbus tail`` uses it)."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

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


class ConsoleSink:
    """Prints each message as one line."""

    def __init__(self, max_fields: int = 12, stream: TextIO | None = None) -> None:
        self.max_fields = max_fields
        self.stream = stream or sys.stdout
        self.count = 0

    def handle(self, batch: Sequence[Message]) -> None:
        lines = [format_line(m, self.max_fields) for m in batch]
        self.stream.write("\n".join(lines) + "\n")
        self.count += len(batch)

    def flush(self) -> None:
        self.stream.flush()

    def close(self) -> None:
        self.flush()

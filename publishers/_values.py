"""Turning a framework's hyper-parameters into small JSON-safe values for ``run_started``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def json_safe(value: Any, depth: int = 0) -> Any:
    """A small JSON-safe rendering of a hyper-parameter (classes by name, objects as text)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    item = getattr(value, "item", None)  # numpy and torch scalars
    if callable(item) and getattr(value, "ndim", None) == 0:
        try:
            return item()
        except Exception:  # a scalar that will not convert is still described below
            pass
    if depth < 3 and isinstance(value, Mapping):
        return {str(k): json_safe(v, depth + 1) for k, v in list(value.items())[:256]}
    if depth < 3 and isinstance(value, list | tuple):
        return [json_safe(v, depth + 1) for v in value[:50]]
    if isinstance(value, type):
        return value.__name__
    return str(value)[:200]

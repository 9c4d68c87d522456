"""What the numeric bridges (TensorBoard, Prometheus, CSV) share: which values are numbers,
and a check of the ``kinds`` option they all take."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bus.message import KINDS


def numeric(value: Any) -> float | None:
    """The value as a float if it is a number (bools count as 0/1), else None."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        return float(value)
    return None


def check_kinds(kinds: Sequence[str], sink: str) -> frozenset[str]:
    """``kinds`` as a set; a misspelt kind would silently write nothing, so it is an error."""
    unknown = sorted(set(kinds) - KINDS)
    if unknown:
        raise ValueError(f"{sink}: unknown kinds {unknown}; kinds are {', '.join(sorted(KINDS))}")
    return frozenset(kinds)

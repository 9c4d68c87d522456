"""The burst that lets a training loop wake ZeroMQ once per many messages."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from publishers.burst import Burst


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_goes_out_when_full_or_late_in_order_with_exact_steps() -> None:
    """Held until `size` messages or `delay` seconds, then sent in order; flush() sends the rest."""
    sent: list[tuple[str, Mapping[str, Any], int | None]] = []
    clock = Clock()
    burst = Burst(lambda kind, data, step: sent.append((kind, data, step)), size=3, delay=0.5, clock=clock)
    for step in range(2):
        burst.add("metrics", {"loss": step}, step)
    assert sent == []
    burst.add("metrics", {"loss": 2}, 2)
    assert [s[2] for s in sent] == [0, 1, 2]
    burst.add("metrics", {"loss": 3}, 3)
    clock.now = 0.6  # the held message is late: the next add sends both
    burst.add("episode", {"reward": 1.0}, 4)
    assert [(s[0], s[2]) for s in sent[3:]] == [("metrics", 3), ("episode", 4)]
    burst.add("metrics", {"loss": 5}, 5)
    burst.flush()
    assert sent[-1] == ("metrics", {"loss": 5}, 5)
    with pytest.raises(ValueError, match="burst size must be >= 1"):
        Burst(lambda *a: None, size=0)

"""Fixtures shared by all tests; helpers live in ``support.py`` and ``alert_feed.py`` (importable by name)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from alert_feed import Feed
from support import Stack


@pytest.fixture
def stack_factory(tmp_path: Path) -> Iterator[type[Stack]]:
    """Make stacks with ``stack_factory(tmp_path, sinks=...)``; any left running are stopped."""
    made: list[Stack] = []

    class _Tracked(Stack):
        def start(self, timeout: float = 60.0) -> Stack:
            made.append(self)
            return super().start(timeout)

    yield _Tracked
    for stack in made:
        stack.stop()


@pytest.fixture
def stack(stack_factory: type[Stack], tmp_path: Path) -> Stack:
    """A running ``metricbus up`` with one JSONL sink under ``tmp_path/logs``."""
    return stack_factory(tmp_path).start()


@pytest.fixture
def feed() -> Iterator[Callable[..., Feed]]:
    """Make alert-engine feeds with ``feed(rule, ..., **engine_options)``; each is closed after the test."""
    made: list[Feed] = []

    def make(*rules: dict[str, Any], **options: Any) -> Feed:
        made.append(Feed(list(rules), **options))
        return made[-1]

    yield make
    for f in made:
        f.close()

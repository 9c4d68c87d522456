"""Property-based fuzz (issue 12): any message the schema allows goes through decode and every sink.

hypothesis builds messages that are valid by the wire's rules but otherwise as odd as those
rules permit (names at their length bounds, any printable metric name, NaN/±Inf, ints up to
2**64-1, strings, nested values, ``ts`` and ``step`` at their limits, every kind). Each one is
encoded, decoded (it must come back equal) and handed to every built-in sink's ``handle``:
no exception may escape, and afterwards every line the JSONL sink wrote parses.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alerts.engine import AlertEngine
from bus.message import KINDS, MAX_INT64, MAX_KEY_CHARS, MAX_TS, NAME_PATTERN, Message, decode, encode
from sinks.console import ConsoleSink
from sinks.csvfile import CsvSink
from sinks.dashboard.store import Store
from sinks.jsonl import JsonlSink
from sinks.prometheus import PrometheusSink
from sinks.tensorboard import TensorBoardSink

_names = st.from_regex(NAME_PATTERN, fullmatch=True)
_keys = st.one_of(
    st.sampled_from(["train/loss", "step", "ts", "node", "reward", "gpu/0/util_percent", "a,b", 'q"uote']),
    st.text(min_size=1, max_size=40).filter(str.isprintable),
    st.just("k" * MAX_KEY_CHARS),
)
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=10,
)
_messages = st.builds(
    Message,
    kind=st.sampled_from(sorted(KINDS)),
    run=st.one_of(st.none(), _names),
    node=_names,
    pub=st.text(min_size=1, max_size=40).filter(str.isprintable),
    seq=st.integers(min_value=0, max_value=MAX_INT64),
    ts=st.one_of(st.floats(min_value=0.0, max_value=MAX_TS, exclude_max=True), st.just(0.0)),
    step=st.one_of(st.none(), st.integers(min_value=-MAX_INT64 - 1, max_value=MAX_INT64)),
    data=st.dictionaries(_keys, _values, max_size=6),
)


class Sinks:
    def __init__(self, root: Path) -> None:
        self.jsonl = JsonlSink(str(root / "jsonl"))
        self.all: list[Any] = [
            self.jsonl,
            CsvSink(str(root / "csv"), kinds=sorted(KINDS - {"bus"})),
            TensorBoardSink(str(root / "tb"), kinds=sorted(KINDS - {"bus"})),
            PrometheusSink(port=0, kinds=sorted(KINDS - {"bus"})),
            AlertEngine(restore=False),
            ConsoleSink(path=str(root / "console.txt")),
        ]
        self.store = Store(max_points=16, max_runs=4, max_nodes=4, max_series=8)


@pytest.fixture(scope="module")
def sinks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sinks]:
    root = tmp_path_factory.mktemp("fuzz")
    made = Sinks(root)
    yield made
    for sink in made.all:
        sink.close()
    # JSON Lines end at b"\n" only (str.splitlines would also cut at U+2028 and friends inside strings)
    lines = [line for path in (root / "jsonl").rglob("*.jsonl") for line in path.read_bytes().split(b"\n") if line]
    assert lines, "the JSONL sink wrote nothing"
    for line in lines:
        assert isinstance(json.loads(line), dict), line


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_messages)
def test_every_valid_message_decodes_back_to_itself(message: Message) -> None:
    """encode then decode gives the same message back, for anything the schema allows."""
    decoded = decode(encode(message))
    assert _same(decoded.to_dict(), message.to_dict())


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(st.lists(_messages, min_size=1, max_size=5))
def test_every_sink_takes_any_valid_batch_without_raising(sinks: Sinks, batch: list[Message]) -> None:
    """Each built-in sink's handle and flush take any valid batch; the dashboard's store too."""
    decoded = [decode(encode(m)) for m in batch]
    for sink in sinks.all:
        sink.handle(decoded)
        sink.flush()
    sinks.store.add_live(decoded)
    sinks.store.add_history(m.to_dict() for m in decoded)

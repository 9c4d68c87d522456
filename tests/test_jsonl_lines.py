"""The JSONL sink's lines read back, with Python's json, as exactly what the stdlib encoder writes."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from bus.message import Message, decode, encode
from sinks.jsonl import JsonlSink
from sinks.jsonl_lines import encode_lines

#: The writer before msgspec: the stdlib's compact encoder, NaN/±Inf as Python's tokens.
stdlib = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=True).encode


def same(a: Any, b: Any) -> bool:
    """Equal values of equal types, NaN equal to NaN, floats bit for bit (-0.0 is not 0.0)."""
    if type(a) is not type(b):
        return False
    if type(a) is float:
        return struct.pack("<d", a) == struct.pack("<d", b) or (math.isnan(a) and math.isnan(b))
    if type(a) is dict:
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if type(a) is list:
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def notation_free(value: Any) -> bool:
    """True when no float in ``value`` is one msgspec writes in another notation than Python."""
    if type(value) is float:
        return not math.isfinite(value) or value == 0 or 1e-4 <= abs(value) < 1e16
    if type(value) is dict:
        return all(notation_free(v) for v in value.values())
    if type(value) is list:
        return all(notation_free(v) for v in value)
    return True


FLOATS = [1e-05, 0.1 + 0.2, 1e16, 1e-7, 5e-324, 1.7976931348623157e308, -0.0, 100.0, 2.5e-5, 1 / 3, 3e-4, 123456789.125]
CORPUS: list[dict[str, Any]] = [
    {"loss": 0.4123, "fps": 2011, "lr": 0.0003},
    {"nan": math.nan, "inf": math.inf, "ninf": -math.inf},
    {"nested": {"a": [1, None, True, {"b": [math.nan, 2.5]}], "c": {}}, "empty": []},
    {"s": 'quote " backslash \\ é ü 中文 😀 \u2028 \x00\x1f\x7f \n\t', "null": None, "text": "null"},
    {"big": 2**64 - 1, "small": -(2**63), "zero": 0, "t": True, "f": False},
    {"floats": FLOATS, **{f"f{i}": f for i, f in enumerate(FLOATS)}},
    {'key "quoted" é': 1, " ": 2, 'a,"data":': {"data": "x"}},
    {"event": "run_ended", "status": "failed", "error": None},
]


def messages() -> list[Message]:
    """The corpus as the sink gets it: published, then decoded from real frames."""
    out = []
    for seq, data in enumerate(CORPUS):
        out.append(Message("metrics", "r1", "n1", "n1:1:p", seq, 1700000000.125 + seq, seq, data))
        out.append(Message("system", None, "n2", 'nœud "7":2:q', seq, 1700000000.5, None, data))
    return [decode(encode(m)) for m in out]


def test_every_line_reads_back_as_the_stdlib_encoders_values(tmp_path: Path) -> None:
    """Each line json.loads to the values (types, NaN, -0.0, bits of every float) of the stdlib's line."""
    corpus = messages()
    sink = JsonlSink(str(tmp_path))
    sink.handle(corpus)
    sink.close()
    # split on b"\n" only: str.splitlines would also split at the corpus's \u2028 and \x1f
    written = (tmp_path / "r1" / "metrics.jsonl").read_bytes().split(b"\n")[:-1]
    written += (tmp_path / "_nodes" / "n2" / "system.jsonl").read_bytes().split(b"\n")[:-1]
    expected = [stdlib(m.to_dict()) for m in corpus if m.run] + [stdlib(m.to_dict()) for m in corpus if not m.run]
    assert len(written) == len(expected)
    for line, reference in zip(written, expected, strict=True):
        assert same(json.loads(line), json.loads(reference)), line


def test_lines_are_byte_for_byte_the_stdlibs_but_for_float_notation() -> None:
    """Where no float is written in another notation (1e-05 vs 0.00001), a line is the stdlib's, byte for byte."""
    corpus = messages()
    checked = 0
    for message in corpus:
        line = encode_lines([message])
        assert line.endswith(b"\n") and line.count(b"\n") == 1
        if notation_free(message.data):
            assert line.decode() == stdlib(message.to_dict()) + "\n"
            checked += 1
    assert checked >= len(corpus) - 2
    assert encode_lines(corpus) == b"".join(encode_lines([m]) for m in corpus)


def test_nan_and_infinities_keep_pythons_tokens() -> None:
    """NaN, Infinity and -Infinity are written as the tokens json reads back, never as null."""
    message = decode(encode(Message("metrics", "r", "n", "p", 0, 1.5, 1, CORPUS[1])))
    assert encode_lines([message]) == (
        b'{"v":1,"kind":"metrics","run":"r","node":"n","pub":"p","seq":0,"ts":1.5,"step":1,'
        b'"data":{"nan":NaN,"inf":Infinity,"ninf":-Infinity}}\n'
    )


def test_odd_values_of_messages_made_in_python_are_written_as_before() -> None:
    """Values only Python can hand a sink (inf ts, bool step, 2**70, numpy floats) give the stdlib's line."""
    import numpy as np

    odd = [
        Message("alert", "r1", "n1", "p", 7, math.inf, True, {}),
        Message("event", "r1", "n1", "p", 6, 12, 2**70, {"x": 2**70}),
        Message("metrics", "r1", "n1", "p", 1, 1.0, 1, {"np": np.float64(0.1)}),
    ]
    for message in odd:
        assert encode_lines([message]).decode() == stdlib(message.to_dict()) + "\n"


@settings(max_examples=300, deadline=None)
@given(st.floats(allow_nan=True, allow_infinity=True))
def test_any_float_reads_back_bit_for_bit(value: float) -> None:
    """Every float, written by either path, is read by json as the very same float."""
    message = decode(encode(Message("metrics", "r", "n", "p", 0, 1.0, 0, {"x": value, "l": [value]})))
    record = json.loads(encode_lines([message]))
    assert same(record["data"], {"x": value, "l": [value]})

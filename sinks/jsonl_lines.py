"""The JSON lines of messages, as the JSONL sink writes them: fast, and NaN/±Inf kept.

A line is the payload map as compact JSON, keys in wire order, with Python's ``NaN`` /
``Infinity`` / ``-Infinity`` tokens for non-finite floats (``json``, pandas and DuckDB read
them). Two encoders make it:

- msgspec writes a whole :class:`~bus.message.Message` in one C call (its tag puts ``"v"``
  first), a whole batch of them with ``encode_lines``: about ten times faster than ``json``.
  But it writes NaN and ±Inf as ``null``.
- so a text without ``null`` in it is taken as it is (the common case: metrics at a step).
  In a line with a ``null`` (a NaN or ±Inf, or a nil such as a node message's run), msgspec's
  text is kept up to ``"data":`` when ``ts`` and ``step`` are plain (so its nulls are nils),
  and ``data`` is written by the standard library's C encoder, as the writer did before; a
  line with anything odder (only messages made in Python hold such) is the stdlib's whole.

The two agree on every value the wire can carry: same key order, same string escapes
(``ensure_ascii=False``), same integers (the wire's are 64-bit), ``true``/``false``/``null``.
Floats are the shortest text that reads back as the same float in both, but msgspec writes
very small and very large magnitudes in its own notation: ``0.00001`` and ``1e16`` where Python
writes ``1e-05`` and ``1e+16``. ``json.loads`` gives the identical float from either
(tests/test_jsonl_lines.py checks a corpus value for value and, float notation aside, byte
for byte). msgspec also writes a few types ``json`` refuses (sets, bytes, datetimes) where a
message made in Python holds one; the wire cannot carry them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any, Final

import msgspec

from bus.message import Message

#: What msgspec raises for a value it cannot write (a surrogate in a str, an unsupported type).
_CANNOT: Final = (TypeError, ValueError, OverflowError)


def _stdlib_encoder() -> Callable[[Any], str]:
    """JSON text of one value, compact, NaN/±Inf as ``NaN``/``Infinity``: the exact path.

    Calls the C encoder directly when the interpreter has it: ``JSONEncoder.encode`` builds
    a new one for every call, which costs as much as encoding a small map. There is no
    circular-reference check: payloads are trees by construction.
    """
    encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=True)
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return encoder.encode
    iterencode = make(None, encoder.default, json.encoder.encode_basestring, None, ":", ",", False, False, True)

    def encode(value: Any) -> str:
        return "".join(iterencode(value, 0))

    return encode


encode_value: Final = _stdlib_encoder()
_fast: Final = msgspec.json.Encoder()
#: Looks for a ``null`` in a batch's text: on SB3-like lines ``re`` takes 0.14 µs a line
#: where ``b"null" in text`` takes 0.21 (measured, CPython 3.11), of a line's ~1 µs in all.
_find_null: Final = re.compile(b"null").search


def encode_lines(messages: Sequence[Message]) -> bytes:
    """The JSON lines of ``messages``, in order, each ending with a newline."""
    try:
        text = _fast.encode_lines(messages)
    except _CANNOT:  # a value msgspec cannot write: line by line
        return b"".join([line(message) for message in messages])
    if _find_null(text) is None:
        return text  # no nil, so no NaN or ±Inf either
    # One line per message: a newline inside a string is always escaped. Redo those with a null.
    lines = text.split(b"\n")
    for i, text_line in enumerate(lines):
        if b"null" in text_line:
            lines[i] = _with_nulls(messages[i], text_line)
    return b"\n".join(lines)


def line(message: Message) -> bytes:
    """The JSON line of one message, ending with a newline."""
    try:
        text = _fast.encode(message)
    except _CANNOT:
        return exact_line(message)
    return (_with_nulls(message, text) if b"null" in text else text) + b"\n"


def _with_nulls(message: Message, text: bytes) -> bytes:
    """The line (no newline) of a message whose msgspec ``text`` has a null: a NaN, ±Inf or nil.

    Before ``"data"`` only a nil can be null when ts is a finite float and step an int or
    nil, so msgspec's text is kept up to there; the first ``,"data":`` is the key's, as a
    quote inside a string is always escaped. ``data`` is the stdlib's, NaN tokens and all.
    """
    ts, step = message.ts, message.step
    if type(ts) is not float or ts - ts != 0.0 or not (step is None or type(step) is int):
        return exact_line(message)[:-1]
    head = text[: text.index(b',"data":') + 8]
    return head + encode_value(message.data).encode() + b"}"


def exact_line(message: Message) -> bytes:
    """The line as ``json`` writes it (the writer's only path before msgspec)."""
    return (encode_value(message.to_dict()) + "\n").encode()

"""decode's fast path (msgspec schema) and its strict path give one answer for every frame pair."""

from __future__ import annotations

import math
from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_message import BAD_FRAMES, _deep, frames, payload

from bus.message import KINDS, MAX_DEPTH, MAX_PAYLOAD_BYTES, DecodeError, Message, _decode_strict, decode, pack


def answer(decoder: Any, *args: Any) -> tuple[str, Any]:
    """What a decoder makes of its input: the error's text, or the message's packed form.

    Packed bytes compare types as well as values (1 vs 1.0 vs True) and NaN with NaN.
    """
    try:
        message = decoder(*args)
    except DecodeError as exc:
        return "error", str(exc)
    assert type(message) is Message
    return "message", pack(message.to_dict())


def assert_one_answer(frame_pair: list[bytes]) -> None:
    fast = answer(decode, frame_pair)
    if len(frame_pair) == 2:
        assert fast == answer(_decode_strict, bytes(frame_pair[0]), bytes(frame_pair[1]), MAX_PAYLOAD_BYTES)
    else:
        assert fast[0] == "error"


def test_every_malformed_frame_gets_the_strict_paths_error() -> None:
    """Each of test_message's malformed frames is refused with the strict path's exact text."""
    for bad, _ in BAD_FRAMES.values():
        assert_one_answer(bad)


def test_what_the_schema_leaves_to_the_strict_path_still_decodes() -> None:
    """NaN/±Inf values, an int ts and nesting at the depth limit decode alike on both paths."""
    cases = [
        frames(data={"nan": math.nan, "inf": math.inf, "l": [-math.inf, {"x": math.nan}]}),
        frames(ts=1700000000),
        frames(data=_deep(MAX_DEPTH)),
        frames(data=_deep(MAX_DEPTH + 1)),
        frames(b"system/n1", kind="system"),
        frames(b"system/n1", kind="system", run=None),
        frames(b"metrics/n1", run=None),
        frames(b"metrics/n1", run="a b", node="n1"),  # run invalid though the topic names the node
        frames(seq=2**64 - 1, step=-(2**63), data={"big": 2**64 - 1}),
        frames(data={"s": "é\u2028\x00😀", "b": False, "n": None, "e": {}, "l": []}),
        [b"metrics/ppo-1", msgpack.packb(payload(), use_single_float=True)],
        [b"metrics/ppo-1", msgpack.packb({**payload(), "seq": 5, "seq ": 1})],
        [b"metrics/ppo-1", b"\x8a" + msgpack.packb(payload())[1:] + b"\xa3seq\x07"],  # "seq" twice
        [b"metrics/ppo-1", msgpack.packb(payload(), use_bin_type=False)],
        [b"metrics/ppo-1", msgpack.packb(payload(data={"s": b"\xff"}), use_bin_type=False)],  # str not UTF-8
        [memoryview(b"metrics/ppo-1"), memoryview(frames()[1])],
        [b"metrics/ppo-1", msgpack.packb(dict(reversed(payload().items())))],  # "v" last: strict path
        [b"metrics/ppo-1", msgpack.packb({k: v for k, v in payload().items() if k != "v"})],  # no "v"
    ]
    for case in cases:
        assert_one_answer(case)
    assert decode(frames(data={"x": math.nan})).data["x"] != 0  # NaN came through


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.binary(max_size=4),
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4) | st.integers(0, 3), inner, max_size=3)
    ),
    max_leaves=12,
)
_odd_names = st.sampled_from(["a b", "", "x" * 129, "ü", "a/b"]) | st.text(max_size=6)
_names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,11}", fullmatch=True)
_printable = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FFF), min_size=1, max_size=6)


@st.composite
def frame_pairs(draw: st.DrawFn) -> list[bytes]:
    """A valid payload, half the time with one or two fields made odd, and a topic that mostly matches."""
    kind = draw(st.sampled_from(sorted(KINDS)))
    fields: dict[str, Any] = {
        "v": 1,
        "kind": kind,
        "run": draw(st.none() | _names),
        "node": draw(_names),
        "pub": draw(_printable),
        "seq": draw(st.integers(min_value=0, max_value=2**63 - 1)),
        "ts": draw(st.floats(0, 2**33, exclude_max=True) | st.integers(0, 2**33 - 1)),
        "step": draw(st.none() | st.integers(-(2**63), 2**63 - 1)),
        "data": draw(st.dictionaries(_printable, _values, max_size=4)),
    }
    for _ in range(draw(st.sampled_from([0, 0, 1, 2]))):
        name = draw(st.sampled_from([*sorted(fields), "extra", "drop"]))
        if name == "drop":
            del fields[draw(st.sampled_from(sorted(fields)))]
        elif name in ("run", "node", "pub"):
            fields[name] = draw(_odd_names | _scalars)
        elif name == "kind":
            fields[name] = draw(st.sampled_from(["weird", "Metrics"]) | _scalars)
        else:
            fields[name] = draw(_values | st.sampled_from([-1, True, 2, 1.0, math.nan, math.inf, 2**63, 2.0**33]))
    kind, run, node = fields.get("kind"), fields.get("run"), fields.get("node")
    source = node if kind in ("system", "bus") or run is None else run
    topic = f"{kind}/{source}" if draw(st.integers(0, 9)) else draw(st.text(max_size=10))
    return [topic.encode(errors="surrogatepass"), msgpack.packb(fields, use_bin_type=True)]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frame_pairs())
def test_random_frames_get_one_answer_from_both_paths(frame_pair: list[bytes]) -> None:
    """Random payloads (odd types, NaN, bytes, int keys, deep nesting, wrong topics) agree on both paths."""
    assert_one_answer(frame_pair)


def test_the_fast_path_takes_what_publishers_send() -> None:
    """What encode() and the publisher's packer write (nesting, unicode, 64-bit ints) msgspec unpacks itself."""
    from bus.message import _V1_HEAD, _unpack_message, encode, packer

    for data in (
        {"loss": 0.5},
        {"cfg": {"lr": 3e-4, "arch": [64, 64]}, "s": "é"},
        {"big": 2**64 - 1, "nan": math.nan},
        _deep(MAX_DEPTH),
    ):
        message = Message("metrics", "ppo-1", "n1", "n1:1:abc", 0, 1700000000.5, 10, data)
        topic, body = encode(message)
        assert body.startswith(_V1_HEAD) and packer()(message.to_dict()).startswith(_V1_HEAD)
        assert answer(_unpack_message, body) == answer(decode, [topic, body]) == ("message", body)

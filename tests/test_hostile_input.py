"""Hostile and broken input: rejected and counted, never a crash, good messages keep flowing.

``decode`` is fuzzed with hypothesis (it returns a Message or raises DecodeError, nothing
else); then garbage of every kind goes through a real broker into a real JSONL sink,
interleaved with good messages that must all be recorded.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import Stack, wait_until

from bus.message import KEYS, DecodeError, Message, decode, encode
from bus.publisher import Publisher

CAP = 4096  # the stack's max_message_bytes in these tests: small, so "oversized" is cheap to make

# -- fuzzing decode ---------------------------------------------------------------------------

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.binary(max_size=20),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.one_of(st.text(max_size=8), st.integers(-(2**63), 2**63 - 1), st.binary(max_size=4)), inner, max_size=4
        ),
    ),
    max_leaves=30,
)


def _good_payload() -> dict[str, Any]:
    return {
        "v": 1,
        "kind": "metrics",
        "run": "fuzz",
        "node": "n",
        "pub": "p",
        "seq": 0,
        "ts": 1.0,
        "step": 0,
        "data": {"x": 1.0},
    }


def _check_decode(frames: list[bytes]) -> None:
    try:
        result = decode(frames, CAP)
    except DecodeError:
        return
    assert isinstance(result, Message)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=64), max_size=4))
def test_decode_of_random_frames_returns_a_message_or_raises_decode_error(frames: list[bytes]) -> None:
    """Arbitrary frame lists never raise anything but DecodeError."""
    _check_decode(frames)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(KEYS), _values, st.booleans())
def test_decode_of_a_payload_with_one_field_replaced_never_raises_anything_else(
    key: str, value: Any, drop: bool
) -> None:
    """Any value (or no value) in any field of an otherwise good payload: a Message or DecodeError."""
    payload = _good_payload()
    if drop:
        del payload[key]
    else:
        payload[key] = value
    _check_decode([b"metrics/fuzz", msgpack.packb(payload, use_bin_type=True)])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_values, st.binary(max_size=32))
def test_decode_of_any_msgpack_object_and_topic_never_raises_anything_else(value: Any, topic: bytes) -> None:
    """Any msgpack object as the payload, under any topic bytes: a Message or DecodeError."""
    _check_decode([topic, msgpack.packb(value, use_bin_type=True)])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(min_value=0, max_value=200), st.binary(min_size=1, max_size=8))
def test_decode_of_a_good_payload_with_corrupted_bytes_never_raises_anything_else(at: int, junk: bytes) -> None:
    """A valid payload with bytes overwritten or truncated anywhere: a Message or DecodeError."""
    packed = bytearray(msgpack.packb(_good_payload(), use_bin_type=True))
    at %= len(packed)
    packed[at : at + len(junk)] = junk
    _check_decode([b"metrics/fuzz", bytes(packed)])
    _check_decode([b"metrics/fuzz", bytes(packed[:at])])


# -- garbage through a real broker and sink ----------------------------------------------------


def _garbage() -> Iterator[tuple[str, list[bytes]]]:
    """(what, frames) for every kind of hostile input; each must be refused by decode."""
    good = _good_payload()

    def packed(**changes: Any) -> list[bytes]:
        return [b"metrics/fuzz", msgpack.packb({**good, **changes}, use_bin_type=True)]

    nested: Any = 1.0
    for _ in range(50):
        nested = {"deeper": nested}
    yield "random bytes", [b"metrics/fuzz", os.urandom(64)]
    yield "one frame", [b"metrics/fuzz"]
    yield "three frames", [b"metrics/fuzz", b"\x80", b"extra"]
    yield "non-utf8 topic", [b"\xff\xfe", msgpack.packb(good)]
    yield "oversized", [b"metrics/fuzz", msgpack.packb({**good, "data": {"blob": "x" * (2 * CAP)}})]
    yield "deeply nested", packed(data={"n": nested})
    yield "huge map", [b"metrics/fuzz", msgpack.packb({**good, "data": {f"k{i}": i for i in range(CAP)}})]
    int_keyed: dict[Any, Any] = {**good, 7: 1}
    yield "non-string top key", [b"metrics/fuzz", msgpack.packb(int_keyed)]
    yield "non-string data key", packed(data={1: 2.0})
    yield "seq as a string", packed(seq="1")
    yield "ts as a string", packed(ts="now")
    yield "kind as a list", packed(kind=["metrics"])
    yield "data as a list", packed(data=[1, 2])
    yield "payload as an array", [b"metrics/fuzz", msgpack.packb([1, 2, 3])]
    for key in ("v", "seq", "ts", "step", "run", "node", "pub", "kind"):
        yield f"NaN in {key}", packed(**{key: math.nan})
    yield "NaN as data", packed(data=math.nan)
    yield "topic not matching payload", [b"metrics/other", msgpack.packb(good)]


GARBAGE = list(_garbage())


@pytest.mark.parametrize(("what", "frames"), GARBAGE, ids=[w for w, _ in GARBAGE])
def test_every_kind_of_garbage_is_refused_by_decode(what: str, frames: list[bytes]) -> None:
    """Each hostile input raises DecodeError (and nothing else) at the sink's cap."""
    with pytest.raises(DecodeError):
        decode(frames, CAP)


def test_nan_in_every_data_value_is_kept_not_refused() -> None:
    """NaN and ±Inf are legal metric values: a payload full of them decodes and keeps them."""
    payload = {**_good_payload(), "data": {"a": math.nan, "b": math.inf, "c": -math.inf, "d": {"e": [math.nan]}}}
    message = decode([b"metrics/fuzz", msgpack.packb(payload)], CAP)
    assert math.isnan(message.data["a"]) and message.data["b"] == math.inf and math.isnan(message.data["d"]["e"][0])


class RawPublisher:
    """A hand-made XPUB on the broker's frontend: sends any frames, waiting for room (never dropping)."""

    def __init__(self, context: zmq.Context[Any], endpoint: str) -> None:
        self.sock = context.socket(zmq.XPUB)
        self.sock.setsockopt(zmq.XPUB_NODROP, 1)
        self.sock.setsockopt(zmq.LINGER, 5000)
        self.sock.connect(endpoint)
        assert self.sock.poll(5000, zmq.POLLIN), "the broker's subscription did not arrive"
        self.sock.recv()

    def send(self, frames: list[bytes]) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                self.sock.send_multipart(frames, zmq.NOBLOCK)
                return
            except zmq.Again:
                assert time.monotonic() < deadline, "the broker stopped taking messages"
                self.sock.poll(100, zmq.POLLOUT)

    def close(self) -> None:
        self.sock.close()


def _good(seq: int, pub: str = "hostile:1") -> list[bytes]:
    return encode(Message("metrics", "good", "hostile", pub, seq, time.time(), seq, {"i": seq, "nan": math.nan}))


def _sink_counts(stack: Stack) -> dict[str, int]:
    """The JSONL sink's final counters, from the line it logs when it stops."""
    match = re.search(r"sink jsonl: stopped; received=(\d+) undecodable=(\d+) gaps=(\d+)", stack.stderr())
    assert match, stack.stderr()[-2000:]
    return {"received": int(match[1]), "undecodable": int(match[2]), "gaps": int(match[3])}


@pytest.mark.slow
def test_10000_garbage_messages_interleaved_with_10000_good_ones_lose_no_good_one(
    tmp_path: Path, stack_factory: type[Stack]
) -> None:
    """A hostile publisher's 10,000 garbage frames are all counted; its 10,000 good ones all recorded."""
    stack = stack_factory(tmp_path, extra={"broker": {"max_message_bytes": CAP}}).start()
    broker_pid = stack.child_pid("broker")
    sink_pid = stack.child_pid("sink jsonl")
    context: zmq.Context[Any] = zmq.Context()
    hostile = RawPublisher(context, stack.frontend)
    try:
        garbage = [frames for _, frames in GARBAGE]
        for i in range(10_000):
            hostile.send(garbage[i % len(garbage)])
            hostile.send(_good(i))
    finally:
        hostile.close()
        context.term()
    rows = wait_until(
        lambda: len(stack.records("good", "metrics")) >= 10_000 and stack.records("good", "metrics"),
        60,
        "all 10,000 good messages",
    )
    assert [r["seq"] for r in rows] == list(range(10_000))
    assert all(math.isnan(r["data"]["nan"]) for r in rows)
    # A well-behaved training beside it is unaffected.
    with Publisher(stack.frontend, run="bystander") as pub:
        pub.metrics({"ok": 1}, step=1)
    wait_until(lambda: stack.records("bystander", "metrics"), 10, "the bystander's message")
    assert stack.child_pid("broker") == broker_pid and stack.child_pid("sink jsonl") == sink_pid
    notes = [r for r in _node_bus(stack) if r["data"].get("event") == "undecodable"]
    assert notes, "undecodable frames leave a note in the node's bus.jsonl"
    assert stack.stop() == 0
    counts = _sink_counts(stack)
    assert counts["undecodable"] == 10_000
    assert counts["gaps"] == 0


def _node_bus(stack: Stack) -> list[dict[str, Any]]:
    import json

    rows: list[dict[str, Any]] = []
    for path in stack.root.glob("_nodes/*/bus.jsonl"):
        rows += [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]
    return rows


def test_a_frame_over_the_transport_cap_cuts_only_its_sender_off(tmp_path: Path, stack_factory: type[Stack]) -> None:
    """A frame over 16x the cap is refused by libzmq at the broker: its sender is cut off, nobody else is."""
    stack = stack_factory(tmp_path, extra={"broker": {"max_message_bytes": CAP}}).start()
    broker_pid = stack.child_pid("broker")
    context: zmq.Context[Any] = zmq.Context()
    hostile = RawPublisher(context, stack.frontend)
    try:
        with Publisher(stack.frontend, run="good") as pub:
            pub.metrics({"i": 0}, step=0)
            hostile.send([b"metrics/fuzz", b"\x00" * (CAP * 64)])
            hostile.send([b"metrics/fuzz", os.urandom(CAP * 20)])
            for i in range(1, 200):
                pub.metrics({"i": i}, step=i)
        rows = wait_until(lambda: len(stack.records("good", "metrics")) >= 200 and stack.records("good", "metrics"))
        assert [r["step"] for r in rows] == list(range(200))
        assert stack.child_pid("broker") == broker_pid
    finally:
        hostile.close()
        context.term()

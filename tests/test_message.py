"""Wire format v1: what encodes, what round-trips, and every way decoding refuses a frame."""

from __future__ import annotations

import datetime
import math
from typing import Any

import msgpack
import numpy as np
import pytest

from bus.message import (
    KEYS,
    MAX_DEPTH,
    DecodeError,
    EncodeError,
    Message,
    check_run_id,
    decode,
    encode,
    message_packer,
    pack,
    packer,
)


def payload(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "v": 1,
        "kind": "metrics",
        "run": "ppo-1",
        "node": "n1",
        "pub": "n1:1:abc",
        "seq": 0,
        "ts": 1700000000.5,
        "step": 10,
        "data": {"loss": 0.5},
    }
    base.update(changes)
    return base


def frames(topic: bytes = b"metrics/ppo-1", **changes: Any) -> list[bytes]:
    return [topic, msgpack.packb(payload(**changes), use_bin_type=True)]


def roundtrip(data: dict[str, Any], kind: str = "metrics", run: str | None = "r1") -> Message:
    message = Message(kind, run, "node-a", "node-a:1:x", 3, 1700000000.25, 7, data)
    return decode(encode(message))


def test_encode_produces_the_documented_two_frames() -> None:
    """encode() gives [b"<kind>/<source>", msgpack map with exactly the v1 keys in wire order]."""
    message = Message("episode", "run-1", "n", "n:1:p", 5, 1.5, None, {"reward": 1.0})
    topic, body = encode(message)
    assert topic == b"episode/run-1"
    obj = msgpack.unpackb(body, raw=False)
    assert list(obj) == list(KEYS)
    assert obj == {
        "v": 1,
        "kind": "episode",
        "run": "run-1",
        "node": "n",
        "pub": "n:1:p",
        "seq": 5,
        "ts": 1.5,
        "step": None,
        "data": {"reward": 1.0},
    }


@pytest.mark.parametrize(
    ("kind", "run", "topic"),
    [
        ("metrics", "r", "metrics/r"),
        ("event", "r", "event/r"),
        ("alert", None, "alert/host"),
        ("system", "r", "system/host"),
        ("bus", None, "bus/host"),
    ],
)
def test_topic_source_is_the_run_or_the_node(kind: str, run: str | None, topic: str) -> None:
    """system/bus messages (and run-less ones) are addressed by node, everything else by run."""
    assert Message(kind, run, "host", "p", 0, 0.0, None, {}).topic == topic


def test_nan_and_infinities_survive_the_round_trip() -> None:
    """NaN, +Inf and -Inf are plain msgpack floats and come back as such."""
    data = roundtrip({"nan": math.nan, "inf": math.inf, "ninf": -math.inf}).data
    assert math.isnan(data["nan"])
    assert data["inf"] == math.inf
    assert data["ninf"] == -math.inf


def test_strings_bools_none_and_nested_values_round_trip() -> None:
    """Every value type v1 allows in data comes back equal and with its type."""
    data = {
        "s": "héllo",
        "t": True,
        "f": False,
        "none": None,
        "i": -(2**40),
        "x": 0.125,
        "nested": {"lr": 3e-4, "arch": [64, 64], "deep": {"a": [1, {"b": None}]}},
        "list": [1, "two", 3.0, None, True],
    }
    decoded = roundtrip(data)
    assert decoded.data == data
    assert type(decoded.data["t"]) is bool
    assert type(decoded.data["i"]) is int


def test_numpy_scalars_encode_as_plain_numbers() -> None:
    """numpy scalars (float32/64, int64, bool_) and 0-d arrays go on the wire as msgpack numbers."""
    data = {
        "f32": np.float32(0.5),
        "f64": np.float64(-1.25),
        "i64": np.int64(42),
        "u8": np.uint8(7),
        "b": np.bool_(True),
        "zero_d": np.array(2.5),
        "nan": np.float64("nan"),
    }
    raw = msgpack.unpackb(pack(payload(data=data)), raw=False)["data"]
    assert raw["f32"] == 0.5 and type(raw["f32"]) is float
    assert raw["f64"] == -1.25 and type(raw["f64"]) is float
    assert raw["i64"] == 42 and type(raw["i64"]) is int
    assert raw["u8"] == 7 and type(raw["u8"]) is int
    assert raw["b"] is True
    assert raw["zero_d"] == 2.5
    assert math.isnan(raw["nan"])
    decode([b"metrics/ppo-1", pack(payload(data=data))])  # and it is valid v1


def test_torch_scalars_encode_as_plain_numbers() -> None:
    """0-d torch tensors of any dtype go on the wire as plain numbers, inf included."""
    torch = pytest.importorskip("torch")
    data = {
        "loss": torch.tensor(0.25),
        "half": torch.tensor(1.5, dtype=torch.float16),
        "steps": torch.tensor(9, dtype=torch.int64),
        "flag": torch.tensor(True),
        "inf": torch.tensor(float("inf")),
    }
    raw = msgpack.unpackb(pack(payload(data=data)), raw=False)["data"]
    assert raw == {"loss": 0.25, "half": 1.5, "steps": 9, "flag": True, "inf": math.inf}
    assert type(raw["steps"]) is int


def test_a_multi_element_array_is_refused_with_an_encode_error() -> None:
    """A tensor/array with more than one element is not a scalar: EncodeError names the shape."""
    with pytest.raises(EncodeError, match="shape"):
        pack(payload(data={"w": np.zeros(3)}))


def test_an_unknown_object_is_refused_with_an_encode_error() -> None:
    """An arbitrary object (no .item/.tolist) cannot go on the wire."""
    with pytest.raises(EncodeError, match="object"):
        pack(payload(data={"o": object()}))


def test_decode_returns_a_message_with_the_payload_fields() -> None:
    """A valid frame pair decodes to a Message; an int ts is accepted as float."""
    message = decode(frames(ts=1700000000))
    assert message == Message("metrics", "ppo-1", "n1", "n1:1:abc", 0, 1700000000.0, 10, {"loss": 0.5})
    assert type(message.ts) is float


def test_decode_accepts_memoryview_frames() -> None:
    """Frames straight from pyzmq (buffers) decode like bytes."""
    topic, body = frames()
    assert decode([memoryview(topic), memoryview(body)]).seq == 0


def _deep(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(levels - 1):
        value = {"d": value}
    return value


def _packed(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


# Every way a frame can be wrong: (frames, a fragment the error names).
BAD_FRAMES: dict[str, tuple[list[bytes], str]] = {
    "one frame": ([b"metrics/ppo-1"], "expected 2 frames"),
    "three frames": ([*frames(), b"extra"], "expected 2 frames"),
    "zero frames": ([], "expected 2 frames"),
    "topic not utf-8": ([b"\xff\xfe", frames()[1]], "UTF-8"),
    "not msgpack": ([b"metrics/ppo-1", b"\xc1\xc1\xc1"], "not msgpack"),
    "trailing bytes": ([b"metrics/ppo-1", frames()[1] + b"\x00"], "not msgpack"),
    "truncated": ([b"metrics/ppo-1", frames()[1][:-3]], "not msgpack"),
    "list not map": ([b"metrics/ppo-1", _packed([1, 2, 3])], "not a map"),
    "int not map": ([b"metrics/ppo-1", _packed(7)], "not a map"),
    "non-str map key": ([b"metrics/ppo-1", _packed({1: 2})], "not msgpack"),
    "missing key": ([b"metrics/ppo-1", _packed({k: v for k, v in payload().items() if k != "seq"})], "missing"),
    "extra key": ([b"metrics/ppo-1", _packed({**payload(), "x": 1})], "unexpected"),
    "version 2": (frames(v=2), "'v'"),
    "version as str": (frames(v="1"), "'v'"),
    "unknown kind": (frames(b"weird/ppo-1", kind="weird"), "'kind'"),
    "bad run id": (frames(b"metrics/a b", run="a b"), "'run'"),
    "run as int": (frames(run=5), "'run'"),
    "empty node": (frames(node=""), "'node'"),
    "pub as int": (frames(pub=3), "'pub'"),
    "seq as str": (frames(seq="0"), "'seq'"),
    "seq negative": (frames(seq=-1), "'seq'"),
    "seq as bool": (frames(seq=True), "'seq'"),
    "seq as float": (frames(seq=1.0), "'seq'"),
    "ts as str": (frames(ts="now"), "'ts'"),
    "ts nan": (frames(ts=math.nan), "'ts'"),
    "ts inf": (frames(ts=math.inf), "'ts'"),
    "step as float": (frames(step=1.5), "'step'"),
    "data as list": (frames(data=[1, 2]), "'data'"),
    "data bytes value": (frames(data={"blob": b"\x00\x01"}), "bytes"),
    "data nested bytes key": (frames(data={"m": {b"k": 1}}), "not a string"),
    "data too deep": (frames(data=_deep(MAX_DEPTH + 1)), "deeper"),
    "topic mismatch": (frames(b"metrics/other-run"), "does not match"),
    "timestamp ext": (
        [b"metrics/ppo-1", msgpack.packb(payload(data={"t": msgpack.Timestamp(1, 0)}), datetime=False)],
        "Timestamp",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_FRAMES))
def test_decode_refuses_malformed_frames_with_one_error_type(case: str) -> None:
    """Each malformed input raises DecodeError (never another type) whose text says what is wrong."""
    bad, fragment = BAD_FRAMES[case]
    with pytest.raises(DecodeError) as info:
        decode(bad)
    assert fragment in str(info.value)


def test_decode_refuses_a_payload_over_the_size_cap() -> None:
    """A payload larger than max_bytes is refused before it is unpacked."""
    big = frames(data={"blob": "x" * 5000})
    with pytest.raises(DecodeError, match="over the 1000-byte cap"):
        decode(big, max_bytes=1000)
    assert decode(big, max_bytes=10_000).data["blob"] == "x" * 5000


def test_nesting_up_to_the_depth_limit_is_accepted() -> None:
    """MAX_DEPTH levels of nested maps are fine; one more is refused (above)."""
    assert decode(frames(data=_deep(MAX_DEPTH))).data == _deep(MAX_DEPTH)


@pytest.mark.parametrize("run", ["ppo-1", "a.b_c-D", "x" * 128])
def test_run_ids_of_the_documented_pattern_are_accepted(run: str) -> None:
    """check_run_id passes [A-Za-z0-9._-]{1,128}."""
    assert check_run_id(run) == run


@pytest.mark.parametrize("run", ["", "a b", "a/b", "x" * 129, "ü"])
def test_other_run_ids_are_refused(run: str) -> None:
    """check_run_id refuses anything else, naming the pattern."""
    with pytest.raises(ValueError, match="must match"):
        check_run_id(run)


def test_a_reused_packer_recovers_after_an_encode_error() -> None:
    """packer() (the publisher's) gives what pack() gives, also right after a value it refused."""
    reuse = packer()
    good = payload(data={"n": np.float32(1.5), "l": [1, {"m": None}]})
    for bad in ({"o": object()}, {"a": np.zeros(2)}, {"big": 2**70}):
        with pytest.raises(EncodeError):
            reuse(payload(data=bad))
        assert reuse(good) == pack(good)


#: What message_packer is given in practice and at the edges: its fast path (a flat map of plain
#: values) and everything it must leave to msgpack's packer (numpy, nesting, non-dict maps).
PACKER_CORPUS: dict[str, dict[str, Any]] = {
    "sb3 dump": {"train/value_loss": 0.4123, "time/fps": 2011, "rollout/ep_rew_mean": 187.5},
    "non-finite": {"nan": math.nan, "inf": math.inf, "-inf": -math.inf},
    "plain scalars": {"s": "é ✓ \n", "t": True, "f": False, "none": None, "tiny": 1e-05, "sum": 0.1 + 0.2},
    "int edges": {
        str(i): i for i in (0, 127, 128, -32, -33, 255, 256, 65535, 2**32, 2**63 - 1, 2**63, 2**64 - 1, -(2**63))
    },
    "string lengths": {str(n): "x" * n for n in (0, 31, 32, 255, 256, 65536)},
    "numpy": {"f32": np.float32(0.5), "i64": np.int64(3), "b": np.bool_(True)},
    "nested": {"hp": {"lr": 3e-4, "layers": [64, 64]}, "t": (1, 2)},
    "empty": {},
}


@pytest.mark.parametrize("case", sorted(PACKER_CORPUS))
@pytest.mark.parametrize("step", [None, 7, np.int64(7)])
def test_message_packer_writes_what_pack_writes(case: str, step: Any) -> None:
    """The publisher's packer (msgspec for flat plain maps) gives pack()'s bytes, byte for byte."""
    data = PACKER_CORPUS[case]
    fields = ("metrics", "ppo-1", "n1", "n1:1:abc", 5, 1700000000.5, step, data)
    expected = pack(payload(seq=5, step=step, data=data))
    assert message_packer()(*fields) == expected
    assert message_packer()(*fields[:6], step, dict(data)) == expected  # a copy: no identity tricks


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"when": datetime.datetime(2026, 1, 1)}, "datetime"),  # msgspec alone would write an extension
        ({"ids": {1, 2}}, "set"),
        ({"big": 2**64}, "int"),
        ({"s": "\ud800"}, "surrogate"),
    ],
)
def test_message_packer_refuses_what_pack_refuses(data: dict[str, Any], match: str) -> None:
    """Values msgpack refuses are refused (EncodeError), not written in msgspec's own way."""
    with pytest.raises(EncodeError, match=match):
        message_packer()("metrics", "ppo-1", "n1", "n1:1:abc", 0, 1.0, None, data)

"""Wire format v1: a message is two ZeroMQ frames, ``[topic, msgpack payload]``.

This module is the only place that touches msgpack. Encoding is lenient about scalar
types (numpy and torch scalars become plain numbers); decoding is strict and raises a
single :class:`DecodeError` for anything that is not exactly this format.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal

import msgpack
import msgspec

VERSION: Final = 1
KINDS: Final = frozenset({"metrics", "episode", "system", "event", "alert", "bus"})
KEYS: Final = ("v", "kind", "run", "node", "pub", "seq", "ts", "step", "data")
#: Runs and nodes name directories (``logs/<run>/``, ``logs/_nodes/<node>/``): a first
#: character that is a letter or digit can never be ``.``, ``..``, ``_nodes`` or a hidden file.
NAME_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
RUN_ID_PATTERN: Final = NAME_PATTERN
#: Metric names (``data`` keys) and publisher ids: printable text (no NUL, CR, LF, tab or
#: other control character, which break argv, headers and file formats) of bounded length.
MAX_KEY_CHARS: Final = 256
#: ``ts`` is seconds since the epoch before 2**33 (year 2242): every datetime and
#: nanosecond-int64 conversion downstream (pandas, Plotly, TensorBoard) holds it.
MAX_TS: Final = float(2**33)
#: ``seq`` (never negative) and ``step`` fit a signed 64-bit int (TensorBoard, DuckDB, numpy columns).
MAX_INT64: Final = 2**63 - 1
#: Default cap on one payload. ZeroMQ's own MAXMSGSIZE is set from the same number.
MAX_PAYLOAD_BYTES: Final = 1 << 20
#: Nested maps/lists in ``data`` are for small structures (hyper-parameters), not blobs.
MAX_DEPTH: Final = 8
#: Frames whose topic starts with this byte are bus-internal probes, never messages.
CONTROL_PREFIX: Final = b"\x00"

_KEY_SET: Final = frozenset(KEYS)


class DecodeError(ValueError):
    """Frames that are not a v1 message; the text says what was wrong."""


class EncodeError(TypeError):
    """A value that cannot be put on the wire; the text names the key."""


# -- the payload's types, as msgspec checks them while it unpacks --------------------------------

_Ts = Annotated[float, msgspec.Meta(ge=0.0, lt=MAX_TS)]  # NaN fails both bounds
_Seq = Annotated[int, msgspec.Meta(ge=0, le=MAX_INT64)]
_Step = Annotated[int, msgspec.Meta(ge=-MAX_INT64 - 1, le=MAX_INT64)]
_Pub = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_KEY_CHARS)]  # printable: decode checks
_Scalar = int | float | str | bool | None  # in data any float: NaN and ±Inf are valid there


def _value_at(depth: int) -> Any:
    """The type of a value at ``depth`` of ``data`` (``data`` itself is depth 1)."""
    if depth > MAX_DEPTH:
        return _Scalar  # a container here would nest deeper than MAX_DEPTH
    inner = _value_at(depth + 1)
    return _Scalar | list[inner] | dict[str, inner]  # type: ignore[valid-type]


if TYPE_CHECKING:  # what code that reads a message sees
    _Kind = str
    _Data = dict[str, Any]
else:  # what decoding checks: one of KINDS; no bytes, extension types or non-str keys, depth bounded
    _Kind = Literal[tuple(sorted(KINDS))]
    _Data = dict[str, _value_at(2)]  # its keys' rule: decode checks them against those seen valid


class Message(msgspec.Struct, frozen=True, tag_field="v", tag=VERSION, forbid_unknown_fields=True, gc=False):
    """One v1 message.

    A msgspec struct rather than a dataclass: :func:`decode` has msgspec unpack the payload
    straight into it, checking every field's type and bounds on the way (the annotations;
    what they cannot say, decode checks after), and ``msgspec.json`` writes it as the payload
    map, ``"v"`` first: the JSONL sink's line. Made in Python, nothing is checked, as before.

    ``gc=False``: the cycle collector does not track messages. A sink makes one per message
    and holds a batch of them, so tracked they would trigger and lengthen collections (about
    0.3 µs a message in the JSONL sink); a message cannot be part of a cycle (frozen, and
    ``data`` from the wire is a tree), so nothing is lost.
    """

    kind: _Kind
    run: str | None
    node: str
    pub: _Pub
    seq: _Seq
    ts: _Ts
    step: _Step | None
    data: _Data

    @property
    def source(self) -> str:
        """The topic's second part: the owner, except that ``bus`` notes go by node."""
        return topic_source(self.kind, self.run, self.node)

    @property
    def of_node(self) -> bool:
        """True when the message belongs to its node rather than to a run (see :func:`of_node`)."""
        return of_node(self.kind, self.run)

    @property
    def owner(self) -> str:
        """The run or node the message belongs to: where it is filed, charted and judged."""
        return owner(self.kind, self.run, self.node)

    @property
    def topic(self) -> str:
        return f"{self.kind}/{self.source}"

    def to_dict(self) -> dict[str, Any]:
        """The payload as a plain map, keys in wire order."""
        return payload(self.kind, self.run, self.node, self.pub, self.seq, self.ts, self.step, self.data)


def payload(
    kind: str, run: str | None, node: str, pub: str, seq: int, ts: float, step: int | None, data: Mapping[str, Any]
) -> dict[str, Any]:
    """The one constructor of a v1 payload map, keys in wire order (:data:`KEYS`)."""
    return {
        "v": VERSION,
        "kind": kind,
        "run": run,
        "node": node,
        "pub": pub,
        "seq": seq,
        "ts": ts,
        "step": step,
        "data": data,
    }


#: Kinds that belong to their node even when they name a run; bus notes are also routed by node.
_NODE_KINDS: Final = frozenset({"system"})
_NODE_TOPIC_KINDS: Final = _NODE_KINDS | {"bus"}


def of_node(kind: str, run: str | None) -> bool:
    """The one rule for which run or node a message belongs to: system messages describe a
    node; every other kind belongs to its run when it has one, else to its node."""
    return kind in _NODE_KINDS or run is None


def owner(kind: str, run: str | None, node: str) -> str:
    """The run or node a message belongs to (:func:`of_node`)."""
    return node if kind in _NODE_KINDS or run is None else run


def topic_source(kind: str, run: str | None, node: str) -> str:
    """The topic's second part: the owner (:func:`of_node`), except that ``bus`` messages (the
    broker's counters, a sink's gap notes about a run) are routed by the node that sent them."""
    # one expression, not owner(): every decode calls this
    return node if kind in _NODE_TOPIC_KINDS or run is None else run


def check_run_id(run: str) -> str:
    if not isinstance(run, str) or RUN_ID_PATTERN.fullmatch(run) is None:
        raise ValueError(f"run id {run!r} must match {RUN_ID_PATTERN.pattern}")
    return run


def check_node(node: str) -> str:
    if not isinstance(node, str) or NAME_PATTERN.fullmatch(node) is None:
        raise ValueError(f"node name {node!r} must match {NAME_PATTERN.pattern}")
    return node


def default_node() -> str:
    """This host's name as a node name: the hostname with what the pattern refuses replaced."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:128]
    return name if NAME_PATTERN.fullmatch(name) else f"n{name}"[:128]


def valid_key(key: object) -> bool:
    """True for a metric name or publisher id the wire accepts (see :data:`MAX_KEY_CHARS`)."""
    return type(key) is str and 0 < len(key) <= MAX_KEY_CHARS and key.isprintable()


def _to_plain(obj: Any) -> Any:
    # msgpack calls this only for types it does not know: numpy/torch scalars and 0-d tensors.
    item = getattr(obj, "item", None)
    if item is not None:
        try:
            return item()
        except (ValueError, RuntimeError) as exc:  # a tensor/array with more than one element
            raise EncodeError(
                f"cannot encode {type(obj).__name__} with shape {getattr(obj, 'shape', '?')}: {exc}"
            ) from exc
    tolist = getattr(obj, "tolist", None)
    if tolist is not None:
        return tolist()
    raise EncodeError(f"cannot encode value of type {type(obj).__name__}")


_packer_default = _to_plain


def pack(payload: Mapping[str, Any]) -> bytes:
    """msgpack bytes of one payload map (numpy/torch scalars become plain numbers)."""
    try:
        packed: bytes = msgpack.packb(payload, default=_packer_default, use_bin_type=True)
        return packed
    except EncodeError:
        raise
    except (TypeError, ValueError, OverflowError) as exc:
        raise EncodeError(str(exc)) from exc


def packer() -> Callable[[Mapping[str, Any]], bytes]:
    """A :func:`pack` that reuses one msgpack packer (``packb`` builds a new one per call).

    Not thread-safe: for one owner that serialises its calls (the publisher, under its lock).
    """
    packer = msgpack.Packer(default=_packer_default, use_bin_type=True, autoreset=True)
    pack_one = packer.pack

    def pack_reusing(payload: Mapping[str, Any]) -> bytes:
        try:
            packed: bytes = pack_one(payload)
            return packed
        except EncodeError:
            raise
        except (TypeError, ValueError, OverflowError) as exc:
            # msgpack empties its buffer on an error, so the packer stays usable
            raise EncodeError(str(exc)) from exc

    return pack_reusing


#: Value types msgpack and msgspec write to the same bytes, and nothing else: msgspec also
#: writes sets, datetimes (as an extension type no decoder accepts), UUIDs, ... where msgpack
#: calls the ``default`` hook (numpy, torch) or refuses with a message naming the type.
_PLAIN_VALUES: Final = frozenset({float, int, str, bool, type(None)})
_encode_struct: Final = msgspec.msgpack.Encoder().encode  # plain values only: no hook needed


def message_packer() -> Callable[[str, str | None, str, str, int, float, int | None, Mapping[str, Any]], bytes]:
    """The payload of one message from its fields: :func:`pack` of :func:`payload`, faster.

    What a training loop publishes most (a flat map of plain numbers and strings) msgspec
    writes straight from a :class:`Message`, a third of what building and packing the map
    costs and the same bytes (tests/test_message.py holds the two to one answer). Anything
    else (numpy or torch scalars, nested values, a value out of range) goes through the
    reused msgpack :func:`packer`, which converts or names what it refuses.
    """
    pack_map = packer()

    def pack_fields(
        kind: str,
        run: str | None,
        node: str,
        pub: str,
        seq: int,
        ts: float,
        step: int | None,
        data: Mapping[str, Any],
    ) -> bytes:
        if (
            type(data) is dict
            and (step is None or type(step) is int)
            and _PLAIN_VALUES.issuperset(map(type, data.values()))
        ):
            try:
                packed: bytes = _encode_struct(Message(kind, run, node, pub, seq, ts, step, data))
                return packed
            except (TypeError, ValueError, OverflowError):
                pass  # an int beyond 64 bits, a lone surrogate: the map path names it
        return pack_map(payload(kind, run, node, pub, seq, ts, step, data))

    return pack_fields


def encode(message: Message) -> list[bytes]:
    """The two frames of ``message``."""
    return [message.topic.encode(), pack(message.to_dict())]


def unpack_value(payload: bytes, max_bytes: int = MAX_PAYLOAD_BYTES) -> Any:
    """The object in ``payload``; a thin strict wrapper used by :func:`decode`."""
    if len(payload) > max_bytes:
        raise DecodeError(f"payload of {len(payload)} bytes is over the {max_bytes}-byte cap")
    try:
        return msgpack.unpackb(
            payload,
            raw=False,
            strict_map_key=True,
            use_list=True,
        )
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise DecodeError(f"payload is not msgpack: {type(exc).__name__}: {exc}") from exc


def decode(frames: Sequence[bytes], max_bytes: int = MAX_PAYLOAD_BYTES) -> Message:
    """The message in ``frames``, or :class:`DecodeError` saying what is wrong."""
    if len(frames) != 2:
        raise DecodeError(f"expected 2 frames [topic, payload], got {len(frames)}")
    topic, payload = frames
    if type(topic) is not bytes:  # a check costs a third of a bytes() call that copies nothing
        topic = bytes(topic)
    if type(payload) is not bytes:
        payload = bytes(payload)
    return decode_pair(topic, payload, max_bytes)


def decode_pair(topic: bytes, payload: bytes, max_bytes: int = MAX_PAYLOAD_BYTES) -> Message:
    """:func:`decode` of the two frames ``[topic, payload]``, as bytes (a sink's receive loop).

    Two paths, one answer. The fast one has msgspec unpack the payload into a
    :class:`Message` and check its types and bounds in one pass in C, then checks names
    (run, node, pub, data keys) and the topic against those it has seen valid; it accepts a
    subset of what the strict one accepts. Everything else goes to the strict path, which
    says exactly what is wrong, or returns the same message for what the fast one leaves
    out: an int ``ts``, keys in another order (tests/test_decode_paths.py holds the two
    paths to one answer).
    """
    if len(payload) <= max_bytes and payload.startswith(_V1_HEAD):
        try:
            message = _unpack_message(payload)
        except msgspec.MsgspecError:
            pass  # the strict path below says what is wrong, or accepts it
        else:
            head = (topic, message.kind, message.run, message.node, message.pub)
            if (head in _KNOWN_HEADS or _new_head(head)) and (
                _KNOWN_KEYS.issuperset(message.data) or _new_keys(message.data)
            ):
                return message
    return _decode_strict(topic, payload, max_bytes)


#: msgspec takes the tag ``"v"`` as optional, so the fast path requires it where packing puts
#: it: a nine-entry map whose first entry is ``"v": 1`` (fixmap 9, fixstr "v", fixint 1).
_V1_HEAD: Final = b"\x89\xa1v\x01"

#: (topic, kind, run, node, pub) and data keys found valid: a sink sees the same few over and
#: over. Caches, so starting one over when full (a flood of names) costs only re-checking.
_KNOWN_HEADS: set[tuple[bytes, str, str | None, str, str]] = set()
_KNOWN_KEYS: set[str] = set()
_KNOWN_MAX: Final = 4096


def _new_head(head: tuple[bytes, str, str | None, str, str]) -> bool:
    """True when run, node and pub follow their rules and the topic is ``kind/source``."""
    topic, kind, run, node, pub = head
    if (run is not None and not _valid_name(run)) or not _valid_name(node) or not pub.isprintable():
        return False
    if topic != f"{kind}/{topic_source(kind, run, node)}".encode():
        return False
    if len(_KNOWN_HEADS) >= _KNOWN_MAX:
        _KNOWN_HEADS.clear()
    _KNOWN_HEADS.add(head)
    return True


def _new_keys(data: dict[str, Any]) -> bool:
    """True when every key of ``data`` is a valid metric name (:func:`valid_key`)."""
    if not all(map(valid_key, data)):
        return False
    if len(_KNOWN_KEYS) + len(data) > _KNOWN_MAX:
        _KNOWN_KEYS.clear()
    _KNOWN_KEYS.update(data)
    return True


def _decode_strict(topic: bytes, payload: bytes, max_bytes: int) -> Message:
    obj = unpack_value(payload, max_bytes)
    if type(obj) is not dict:
        raise _fail(topic, f"payload is a {type(obj).__name__}, not a map")
    return _from_map(obj, topic)


def from_record(record: Mapping[str, Any]) -> Message:
    """A stored payload (a JSONL line read back) as a :class:`Message`, checked as strictly as
    :func:`decode` checks frames; :class:`DecodeError` says what is wrong."""
    obj = record if type(record) is dict else dict(record)
    kind, run, node = obj.get("kind"), obj.get("run"), obj.get("node")
    if type(kind) is str and type(node) is str and (run is None or type(run) is str):
        topic = f"{kind}/{topic_source(kind, run, node)}".encode()
    else:
        topic = b"<record>"  # _from_map names the bad field
    return _from_map(obj, topic)


def _fail(topic: bytes, what: str) -> DecodeError:
    try:
        text = topic.decode()
    except UnicodeDecodeError as exc:
        return DecodeError(f"topic is not UTF-8 ({exc}); {what}")
    return DecodeError(f"topic {text!r}: {what}")


#: Run and node names already matched against NAME_PATTERN: a sink sees the same few over
#: and over. A cache, so starting it over when full costs only re-matching.
_KNOWN_NAMES: set[str] = set()
_KNOWN_NAMES_MAX: Final = 4096


def _valid_name(name: object) -> bool:
    if type(name) is not str:
        return False
    if name in _KNOWN_NAMES:
        return True
    if NAME_PATTERN.fullmatch(name) is None:
        return False
    if len(_KNOWN_NAMES) >= _KNOWN_NAMES_MAX:
        _KNOWN_NAMES.clear()
    _KNOWN_NAMES.add(name)
    return True


def _from_map(obj: dict[str, Any], topic: bytes) -> Message:
    # The hot path of every sink: plain lookups and type() checks, no generators or sets.
    try:
        if len(obj) != len(KEYS):
            raise KeyError
        # nine entries and all nine keys found: exactly the v1 keys
        v = obj["v"]
        kind = obj["kind"]
        run = obj["run"]
        node = obj["node"]
        pub = obj["pub"]
        seq = obj["seq"]
        ts = obj["ts"]
        step = obj["step"]
        data = obj["data"]
    except KeyError:
        missing = sorted(_KEY_SET - obj.keys())
        extra = sorted(map(str, obj.keys() - _KEY_SET))
        raise _fail(topic, f"payload keys: missing {missing}, unexpected {extra}") from None
    if type(v) is not int or v != VERSION:
        raise _fail(topic, f"'v' must be {VERSION}, got {v!r}")
    if type(kind) is not str or kind not in KINDS:  # an unhashable kind would raise TypeError
        raise _fail(topic, f"'kind' must be one of {sorted(KINDS)}, got {_short(kind)}")
    if run is not None and not _valid_name(run):
        raise _fail(topic, f"'run' must be nil or match {NAME_PATTERN.pattern}, got {_short(run)}")
    if not _valid_name(node):
        raise _fail(topic, f"'node' must match {NAME_PATTERN.pattern}, got {_short(node)}")
    if type(pub) is not str or not 0 < len(pub) <= MAX_KEY_CHARS or not pub.isprintable():
        raise _fail(topic, f"'pub' must be printable text of 1..{MAX_KEY_CHARS} chars, got {_short(pub)}")
    if type(seq) is not int or not 0 <= seq <= MAX_INT64:
        raise _fail(topic, f"'seq' must be an int in 0..2**63-1, got {seq!r}")
    if type(ts) is not float:
        if type(ts) is not int:
            raise _fail(topic, f"'ts' must be a finite float, got {_short(ts)}")
        ts = float(ts)
    if not 0.0 <= ts < MAX_TS:  # also NaN (every comparison with NaN is False)
        raise _fail(topic, f"'ts' must be seconds since the epoch in [0, 2**33), got {ts!r}")
    if step is not None and (type(step) is not int or not -MAX_INT64 - 1 <= step <= MAX_INT64):
        raise _fail(topic, f"'step' must be nil or a 64-bit signed int, got {_short(step)}")
    if type(data) is not dict:
        raise _fail(topic, f"'data' must be a map, got {type(data).__name__}")
    for key, item in data.items():
        if type(key) is not str or not 0 < len(key) <= MAX_KEY_CHARS or not key.isprintable():
            raise _fail(topic, f"'data' key {_short(key)} is not printable text of 1..{MAX_KEY_CHARS} chars")
        if type(item) not in _SCALARS:
            _check_data(item, topic, 2)
    source = node if kind in _NODE_TOPIC_KINDS or run is None else run  # topic_source(), inlined: the hot path
    if topic != f"{kind}/{source}".encode():
        try:
            topic.decode()
        except UnicodeDecodeError as exc:
            raise DecodeError(f"topic is not UTF-8: {exc}") from exc
        raise _fail(topic, f"topic does not match the payload (expected '{kind}/{source}')")
    return Message(kind, run, node, pub, seq, ts, step, data)


def _short(value: object) -> str:
    """``repr`` cut to a length a log line can carry (a hostile name may be a megabyte)."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


_SCALARS: Final = frozenset({int, float, bool, str, type(None)})


def _check_data(value: Any, topic: bytes, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise _fail(topic, f"'data' nests deeper than {MAX_DEPTH} levels")
    if type(value) is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise _fail(topic, f"'data' key {key!r} is not a string")
            if type(item) not in _SCALARS:
                _check_data(item, topic, depth + 1)
    elif type(value) is list:
        for item in value:
            if type(item) not in _SCALARS:
                _check_data(item, topic, depth + 1)
    elif type(value) not in _SCALARS:
        raise _fail(topic, f"'data' holds a {type(value).__name__}, which v1 does not allow")


_unpack_message: Final = msgspec.msgpack.Decoder(Message).decode

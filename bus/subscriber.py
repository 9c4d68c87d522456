"""The subscriber loop that runs one sink, and the :class:`Sink` protocol itself.

The loop subscribes to the sink's topic prefixes, drains messages in batches, decodes
them, detects per-publisher ``seq`` gaps, hands batches to the sink, flushes on an
interval, and on stop drains what is queued, flushes and closes. Frames that do not
decode are counted and reported (rate-limited); they never stop the sink.

Gaps and undecodable frames are also handed to the sink as ``bus`` messages
(``data.event`` = ``gap`` / ``undecodable``) when the sink subscribes to ``bus/``, so the
JSONL sink records where data is missing. Only a sink whose topics let every kind through
tracks gaps: ``seq`` counts all of a publisher's messages, so to a ``metrics/``-only sink
every heartbeat in between would look like a loss.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, runtime_checkable

import zmq

from bus.bounded import Recent
from bus.curve import CurveKeys, client_keys
from bus.message import (
    CONTROL_PREFIX,
    KINDS,
    MAX_PAYLOAD_BYTES,
    DecodeError,
    Message,
    decode,
    decode_pair,
    default_node,
)

log = logging.getLogger("metricbus.subscriber")

#: How long the loop waits at most between looks at its stop flag and flush timer.
_TICK = 0.1
#: On stop, keep draining until the socket has been quiet this long (or the deadline).
_DRAIN_QUIET = 0.25
#: Below the supervisor's 20 s stop timeout, so a sink with a deep queue still closes cleanly.
_DRAIN_DEADLINE = 15.0
_REPORT_INTERVAL = 10.0
#: Undecodable frames are summed into one ``bus`` note at most this often.
_UNDECODABLE_NOTE_INTERVAL = 1.0
_PROBE_PREFIX = CONTROL_PREFIX + b"probe/"


@runtime_checkable
class Sink(Protocol):
    """What a sink implements. YAML options map one to one onto its constructor keywords."""

    def handle(self, batch: Sequence[Message]) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class SinkContext:
    """Given to a sink whose constructor has a ``context`` parameter (e.g. to publish back)."""

    name: str
    frontend: str
    backend: str
    node: str
    config: Any = None  # the whole bus.config.Config, when run from one
    curve: CurveKeys | None = None


@dataclass
class RunnerStats:
    received: int = 0
    delivered: int = 0
    undecodable: int = 0
    gaps: int = 0
    missing: int = 0
    sink_errors: int = 0
    last_error: str = ""
    errors_by_kind: dict[str, int] = field(default_factory=dict)


#: Publishers whose next seq is remembered (a flood of ids evicts the oldest).
MAX_PUBLISHERS: Final = 65536
#: A seq jump larger than this is not counted as lost messages (2**32 is ~50 days at 1M msg/s).
MAX_PLAUSIBLE_GAP: Final = 2**32


class SeqTracker:
    """Expected next ``seq`` per publisher; reports the range a jump skipped."""

    def __init__(self, known: Mapping[str, int] | None = None, limit: int = MAX_PUBLISHERS) -> None:
        # known: last seq seen per publisher (e.g. recovered from files after a restart).
        # Bounded: a flood of publisher ids evicts the ids seen longest ago, not the live ones.
        self._next: Recent[str, int] = Recent(limit)
        self.implausible = 0
        for pub, seq in (known or {}).items():
            self._next.put(pub, seq + 1)

    @property
    def evicted(self) -> int:
        return self._next.evicted

    def __len__(self) -> int:
        return len(self._next)

    def observe(self, pub: str, seq: int) -> tuple[int, int] | None:
        """(first, last) missing seq when ``seq`` jumps ahead, else None."""
        expected = self._next.get(pub)
        self._next.put(pub, seq + 1)
        return self._jump(expected, seq)

    def track(self, batch: Sequence[Message], start: int = 0, skip: str = "") -> list[tuple[Message, tuple[int, int]]]:
        """What :meth:`observe` says of each of ``batch[start:]`` in turn, for the messages it
        says a jump of: (message, (first, last) missing seq). ``skip`` is a pub not tracked.

        Once per batch rather than per message: a batch is mostly runs of one publisher's
        consecutive seqs, so the common case is two compares against locals; the bounded map
        (and its least-recently-seen order) is read once per publisher and written once per
        publisher per batch.
        """
        gaps: list[tuple[Message, tuple[int, int]]] = []
        seen: dict[str, int] = {}  # this batch's publishers -> next seq
        last_pub = ""  # never a pub (a pub is never empty): the first message takes the slow path
        expected = -1
        peek = self._next.peek
        for message in batch[start:] if start else batch:
            seq = message.seq
            if seq == expected and message.pub == last_pub:
                expected = seq + 1
                continue
            pub = message.pub
            if last_pub:
                seen[last_pub] = expected
            if pub == skip:  # the runner's own notes: their seq is not the wire's
                last_pub, expected = "", -1
                continue
            known = seen.get(pub)
            if known is None:
                known = peek(pub)
            last_pub, expected = pub, seq + 1
            gap = self._jump(known, seq)
            if gap is not None:
                gaps.append((message, gap))
        if last_pub:
            seen[last_pub] = expected
        put = self._next.put
        for pub, next_seq in seen.items():
            put(pub, next_seq)
        return gaps

    def _jump(self, expected: int | None, seq: int) -> tuple[int, int] | None:
        if expected is None or seq <= expected:
            # new publisher, the next one, or a replay / duplicate: nothing we can call lost
            return None
        if seq - expected > MAX_PLAUSIBLE_GAP:
            # More than a publisher could send in days: a forged or reset seq, not a loss.
            self.implausible += 1
            return None
        return expected, seq - 1


class _Reporter:
    """Logs a kind of problem once, then at most every ``_REPORT_INTERVAL`` seconds with a count."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._last: dict[str, float] = {}
        self._pending: dict[str, int] = {}

    def report(self, kind: str, text: str) -> None:
        now = time.monotonic()
        self._pending[kind] = self._pending.get(kind, 0) + 1
        if now - self._last.get(kind, -1e9) >= _REPORT_INTERVAL:
            count = self._pending.pop(kind)
            self._last[kind] = now
            suffix = f" ({count} since last report)" if count > 1 else ""
            log.warning("sink %s: %s: %s%s", self.name, kind, text, suffix)


def _sink_stats(sink: object) -> str:
    """`` name=value`` for each counter of a sink's optional ``stats()`` (bounds, evictions)."""
    stats = getattr(sink, "stats", None)
    if not callable(stats):
        return ""
    try:
        return "".join(f" {key}={value}" for key, value in stats().items())
    except Exception as exc:  # a plug-in's stats() must not spoil the shutdown
        return f" stats_error={type(exc).__name__}"


def probe_topic(token: str) -> bytes:
    return _PROBE_PREFIX + token.encode()


def covers_every_kind(topics: Sequence[str]) -> bool:
    """True when ``topics`` let through every kind of every source.

    ``seq`` counts a publisher's messages of all kinds, so a sink that subscribes to a part
    of them (``metrics/`` only) sees jumps that are filtering, not loss.
    """
    return all(any(f"{kind}/".startswith(t) for t in topics) for kind in KINDS)


class SinkRunner:
    """Runs ``sink`` against the broker's backend until :meth:`stop` (or a signal) is called."""

    def __init__(
        self,
        sink: Sink,
        *,
        name: str,
        backend: str,
        frontend: str | None = None,
        topics: Sequence[str] = ("",),
        batch_size: int = 1000,
        flush_interval: float = 0.2,
        queue: int = 1_000_000,
        max_bytes: int = MAX_PAYLOAD_BYTES,
        catch: bool = True,
        known_seqs: Mapping[str, int] | None = None,
        curve: CurveKeys | Mapping[str, bytes] | None = None,
        node: str | None = None,
    ) -> None:
        self.sink = sink
        self.name = name
        self.backend = backend
        self.frontend = frontend
        self.topics = tuple(topics)
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.queue = queue
        self.max_bytes = max_bytes
        self.catch = catch
        self.curve = client_keys(curve)
        self.node = node or default_node()
        self.stats = RunnerStats()
        self.ready = threading.Event()
        self._stop = threading.Event()
        last = known_seqs
        if last is None:
            last_seen = getattr(sink, "last_seen", None)
            last = last_seen() if callable(last_seen) else None
        self._tracker = SeqTracker(last)
        self._tracks_gaps = covers_every_kind(self.topics)
        self._reporter = _Reporter(name)
        self._wants_bus = any("bus/".startswith(t) or t.startswith("bus/") for t in self.topics)
        self._pub_id = f"{self.node}:{os.getpid()}:sink-{name}"
        self._own_seq = 0
        self._undecodable_since_note = 0
        self._last_undecodable_error = ""
        self._last_undecodable_note = -1e9

    def stop(self) -> None:
        self._stop.set()

    # -- the loop -------------------------------------------------------------------------

    def run(self, on_ready: Callable[[], None] | None = None) -> RunnerStats:
        context = zmq.Context()
        sub = context.socket(zmq.SUB)
        sub.setsockopt(zmq.RCVHWM, self.queue)
        sub.setsockopt(zmq.LINGER, 0)
        if self.curve is not None:
            self.curve.apply(sub)
        for topic in self.topics:
            sub.setsockopt(zmq.SUBSCRIBE, topic.encode())
        token = uuid.uuid4().hex
        sub.setsockopt(zmq.SUBSCRIBE, probe_topic(token))
        sub.connect(self.backend)
        pending: list[Message] = []
        try:
            if self.frontend:
                self._probe(context, sub, token, pending)
            self.ready.set()
            if on_ready:
                on_ready()
            next_flush = time.monotonic() + self.flush_interval
            while not self._stop.is_set():
                timeout = max(0.0, min(_TICK, next_flush - time.monotonic()))
                if pending or sub.poll(int(timeout * 1000), zmq.POLLIN):
                    self._drain(sub, pending)
                    self._deliver(pending)
                if time.monotonic() >= next_flush:
                    self._note_undecodable(pending)
                    self._deliver(pending)
                    self._call("flush", self.sink.flush)
                    next_flush = time.monotonic() + self.flush_interval
            self._final_drain(sub, pending)
        finally:
            self._call("flush", self.sink.flush)
            self._call("close", self.sink.close)
            sub.close(linger=0)
            context.term()
            log.info(
                "sink %s: stopped; received=%d undecodable=%d gaps=%d missing=%d sink_errors=%d "
                "publishers=%d publishers_evicted=%d implausible_seq=%d%s",
                self.name, self.stats.received, self.stats.undecodable, self.stats.gaps,
                self.stats.missing, self.stats.sink_errors, len(self._tracker), self._tracker.evicted,
                self._tracker.implausible, _sink_stats(self.sink),
            )  # fmt: skip
        return self.stats

    def _probe(self, context: zmq.Context[Any], sub: zmq.Socket[Any], token: str, pending: list[Message]) -> None:
        """Publish probes until one comes back: then our subscription is live at the broker."""
        assert self.frontend is not None
        probe = context.socket(zmq.XPUB)
        probe.setsockopt(zmq.LINGER, 0)
        if self.curve is not None:
            self.curve.apply(probe)
        probe.connect(self.frontend)
        topic = probe_topic(token)
        deadline = time.monotonic() + 30.0
        try:
            while time.monotonic() < deadline and not self._stop.is_set():
                # XPUB without NODROP never blocks: a probe sent before the path is open just vanishes
                probe.send_multipart([topic, b""], zmq.NOBLOCK)
                if sub.poll(50, zmq.POLLIN) and self._drain(sub, pending, probe=topic):
                    return
            log.warning("sink %s: no probe came back through %s within 30 s; running anyway", self.name, self.frontend)
        finally:
            probe.close(linger=0)

    def _drain(self, sub: zmq.Socket[Any], pending: list[Message], probe: bytes | None = None) -> bool:
        """Receive up to a batch without blocking; True if ``probe`` was among the frames."""
        # The sink's hot loop: locals instead of attribute lookups, and frames received
        # without copy because a Frame carries ``more``, which spares a getsockopt(RCVMORE)
        # per frame (recv_multipart's way); ``.bytes`` then copies the content once. A
        # two-frame message goes straight to decode_pair: no list, no probe test (a probe
        # never decodes: its topic is not ``kind/source``), 0.4 µs a message (issue 15).
        saw_probe = False
        recv, noblock = sub.recv, int(zmq.NOBLOCK)  # a plain int: pyzmq's Flag enum is slow to convert
        max_bytes, batch_size = self.max_bytes, self.batch_size
        append = pending.append
        start = len(pending)
        received = 0
        try:
            while len(pending) < batch_size:
                try:
                    frame = recv(noblock, copy=False)
                except zmq.Again:
                    break
                topic = frame.bytes
                error: DecodeError | None = None
                if frame.more:
                    frame = recv(noblock, copy=False)
                    payload = frame.bytes
                    if not frame.more:  # [topic, payload], the v1 shape
                        try:
                            append(decode_pair(topic, payload, max_bytes))
                            received += 1
                            continue
                        except DecodeError as exc:
                            error = exc
                    frames = [topic, payload]
                    while frame.more:  # a multipart message arrives whole: the rest is already here
                        frame = recv(noblock, copy=False)
                        frames.append(frame.bytes)
                else:
                    frames = [topic]
                if topic.startswith(_PROBE_PREFIX):
                    # every sink's probes pass through sinks subscribed to everything: not data
                    saw_probe = saw_probe or topic == probe
                    continue
                received += 1
                if error is None:
                    try:
                        decode(frames, max_bytes)  # not two frames: raises, saying so
                    except DecodeError as exc:
                        error = exc
                self._undecodable(str(error), pending)
        finally:
            self.stats.received += received
        if self._tracks_gaps and len(pending) > start:
            # once per batch, not per message (the sink's CPU budget, issue 15)
            gaps = self._tracker.track(pending, start, self._pub_id)
            if gaps:
                self._insert_gaps(pending, start, gaps)
        return saw_probe

    def _insert_gaps(self, pending: list[Message], start: int, gaps: list[tuple[Message, tuple[int, int]]]) -> None:
        """Put each gap's note just before the message that jumped, as if noted on arrival."""
        jumped = {id(message): gap for message, gap in gaps}
        arrived = pending[start:]
        del pending[start:]
        for message in arrived:
            gap = jumped.get(id(message))
            if gap is not None:
                self._gap(message, gap, pending)
            pending.append(message)

    def _final_drain(self, sub: zmq.Socket[Any], pending: list[Message]) -> None:
        deadline = time.monotonic() + _DRAIN_DEADLINE
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            if sub.poll(int(_DRAIN_QUIET * 200), zmq.POLLIN):
                self._drain(sub, pending)
                self._deliver(pending)
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= _DRAIN_QUIET:
                break
        self._note_undecodable(pending, force=True)
        self._deliver(pending)

    def _deliver(self, pending: list[Message]) -> None:
        if not pending:
            return
        batch = pending.copy()
        pending.clear()
        if self._call("handle", self.sink.handle, batch):
            self.stats.delivered += len(batch)

    def _call(self, what: str, fn: Callable[..., None], *args: Any) -> bool:
        if not self.catch:
            fn(*args)
            return True
        try:
            fn(*args)
            return True
        except Exception as exc:
            # A broken sink must not take the loop down: count, report, go on.
            self.stats.sink_errors += 1
            kind = f"{what} raised {type(exc).__name__}"
            self.stats.errors_by_kind[kind] = self.stats.errors_by_kind.get(kind, 0) + 1
            self.stats.last_error = f"{kind}: {exc}"
            self._reporter.report(kind, f"{exc} (errors so far: {self.stats.sink_errors})")
            return False

    # -- bus notes: gaps and undecodable frames ---------------------------------------------

    def _gap(self, message: Message, gap: tuple[int, int], pending: list[Message]) -> None:
        first, last = gap
        missing = last - first + 1
        self.stats.gaps += 1
        self.stats.missing += missing
        self._reporter.report(
            "seq gap", f"publisher {message.pub} (run {message.run}) skipped seq {first}..{last} ({missing} lost)"
        )
        note = {"event": "gap", "of_pub": message.pub, "first": first, "last": last, "missing": missing}
        self._note(message.run, message.node, note, pending)

    def _undecodable(self, error: str, pending: list[Message]) -> None:
        self.stats.undecodable += 1
        self._undecodable_since_note += 1
        self._last_undecodable_error = error
        self._reporter.report("undecodable frame", error)
        self._note_undecodable(pending)

    def _note_undecodable(self, pending: list[Message], force: bool = False) -> None:
        """One ``bus`` note summing the frames counted since the last one (rate-limited).

        Called on every undecodable frame and on every flush tick, so a burst's count is
        written within a second of it even when no further garbage arrives.
        """
        if not self._undecodable_since_note:
            return
        now = time.monotonic()
        if not force and now - self._last_undecodable_note < _UNDECODABLE_NOTE_INTERVAL:
            return
        note = {
            "event": "undecodable",
            "count": self._undecodable_since_note,
            "total": self.stats.undecodable,
            "error": self._last_undecodable_error[:500],
        }
        self._note(None, self.node, note, pending)
        self._undecodable_since_note = 0
        self._last_undecodable_note = now

    def _note(self, run: str | None, node: str, data: dict[str, Any], pending: list[Message]) -> None:
        if not self._wants_bus:
            return
        pending.append(Message("bus", run, node, self._pub_id, self._own_seq, time.time(), None, data))
        self._own_seq += 1


def configure_logging(level: int = logging.INFO) -> None:
    """One plain line per record on stderr, as child processes of the supervisor use."""
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s",
    )

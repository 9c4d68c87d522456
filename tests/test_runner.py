"""The sink runner: batches, seq gaps, undecodable frames, broken sinks, and draining on stop."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st
from support import wait_until

from bus.message import Message, pack
from bus.publisher import Publisher
from bus.subscriber import SeqTracker, SinkRunner, covers_every_kind
from bus.testing import ListSink, broker_config, inproc_bus, raw_frontend_socket, running_broker, running_sink


def wire(seq: int, pub: str = "p:1:x", run: str = "r", kind: str = "metrics", **data: Any) -> list[bytes]:
    payload = {
        "v": 1,
        "kind": kind,
        "run": run,
        "node": "n",
        "pub": pub,
        "seq": seq,
        "ts": 1.0,
        "step": seq,
        "data": data or {"i": seq},
    }
    return [f"{kind}/{run}".encode(), pack(payload)]


def test_seq_tracker_reports_the_skipped_range() -> None:
    """A jump ahead reports (first, last) missing; new publishers, repeats and replays report nothing."""
    tracker = SeqTracker({"old": 9})
    assert tracker.observe("a", 5) is None  # first sight of a publisher
    assert tracker.observe("a", 6) is None
    assert tracker.observe("a", 10) == (7, 9)
    assert tracker.observe("a", 10) is None  # a duplicate
    assert tracker.observe("a", 3) is None  # a replay from the start
    assert tracker.observe("old", 12) == (10, 11)  # seeded from files after a restart


@given(
    st.lists(st.tuples(st.sampled_from(["a", "b", "old", "own"]), st.integers(0, 12)), max_size=60),
    st.lists(st.integers(1, 7), max_size=10),
)
def test_seq_tracking_per_batch_says_what_per_message_says(arrivals: list[tuple[str, int]], cuts: list[int]) -> None:
    """track() over batches (the runner's way) finds the same gaps, at the same messages, as observe()
    one message at a time; the runner's own pub is not tracked."""
    messages = [Message("metrics", "r", "n", pub, seq, 1.0, None, {}) for pub, seq in arrivals]
    one_by_one = SeqTracker({"old": 4})
    expected = [(m, gap) for m in messages if m.pub != "own" and (gap := one_by_one.observe(m.pub, m.seq))]
    batched = SeqTracker({"old": 4})
    found: list[tuple[Message, tuple[int, int]]] = []
    start = 0
    for size in [*cuts, len(messages)]:
        batch = [Message("bus", None, "n", "x", 0, 1.0, None, {}), *messages[start : start + size]]
        found += batched.track(batch, start=1, skip="own")  # a note before `start` is not looked at
        start += size
    assert [(id(m), gap) for m, gap in found] == [(id(m), gap) for m, gap in expected]
    assert {p: batched._next.peek(p) for p in ("a", "b", "old")} == {
        p: one_by_one._next.peek(p) for p in ("a", "b", "old")
    }


@pytest.mark.parametrize(
    ("topics", "covers"),
    [
        ([""], True),
        (["metrics/", "episode/", "system/", "event/", "alert/", "bus/"], True),
        (["metrics/", "episode/", "event/"], False),
        (["metrics/ppo-1"], False),
    ],
)
def test_gap_detection_needs_a_subscription_to_every_kind(topics: list[str], covers: bool) -> None:
    """seq spans all kinds of a publisher, so only a sink that sees every kind can call a jump a loss."""
    assert covers_every_kind(topics) is covers


def test_a_seq_gap_is_counted_and_handed_to_the_sink_as_a_bus_note() -> None:
    """Messages 3 and 4 missing: stats count one gap of two, and a bus/gap note names the publisher and range."""
    with inproc_bus() as (config, sink), raw_frontend_socket(config.frontend) as raw:
        for seq in (0, 1, 2, 5, 6):
            raw.send_multipart(wire(seq))
        wait_until(lambda: len(sink.sink.of_kind("metrics")) == 5, 10, "five messages")
        stats = sink.runner.stats
        assert (stats.gaps, stats.missing) == (1, 2)
    (note,) = sink.sink.notes("gap")
    assert (note.run, note.node) == ("r", "n")  # JSONL files it under the run: logs/r/bus.jsonl
    assert note.data == {"event": "gap", "of_pub": "p:1:x", "first": 3, "last": 4, "missing": 2}
    # the note comes just before the message that revealed the gap
    kinds = [(m.kind, m.seq) for m in sink.sink.messages if m.kind == "metrics" or m.data.get("event") == "gap"]
    assert kinds.index(("bus", note.seq)) == kinds.index(("metrics", 5)) - 1


def test_a_partial_subscription_reports_no_gaps() -> None:
    """A metrics-only sink does not mistake the publisher's heartbeats (other kinds) for lost messages."""
    with inproc_bus(topics=["metrics/"]) as (config, sink):
        with Publisher(config.frontend, run="part", heartbeat_interval=0.0) as pub:  # a heartbeat after every message
            for i in range(50):
                pub.metrics({"i": i})
        wait_until(lambda: len(sink.sink.messages) == 50, 10, "50 metrics")
        assert sink.runner.stats.gaps == 0


def test_last_seen_of_the_sink_seeds_gap_detection() -> None:
    """A sink's last_seen() (recovered from its files) makes the first message after a restart reveal a gap."""

    class Remembering(ListSink):
        def last_seen(self) -> dict[str, int]:
            return {"p:1:x": 9}

    config = broker_config()
    with running_broker(config), running_sink(config, sink=Remembering()) as sink:
        with raw_frontend_socket(config.frontend) as raw:
            raw.send_multipart(wire(12))
        wait_until(lambda: sink.sink.notes("gap"), 10, "the gap note")
    assert sink.sink.notes("gap")[0].data["first"] == 10 and sink.sink.notes("gap")[0].data["last"] == 11


def test_undecodable_frames_are_counted_noted_and_skipped(caplog: pytest.LogCaptureFixture) -> None:
    """Garbage is counted, summed into bus/undecodable notes, logged rate-limited; good messages around it arrive."""
    garbage = [
        [b"metrics/r", b"\xc1 not msgpack"],
        [b"metrics/r"],
        [b"metrics/r", pack({"v": 1}), b"third"],
        [b"metrics/r", msgpack.packb([1, 2, 3])],
        [b"metrics/r", msgpack.packb({**msgpack.unpackb(wire(0)[1]), "seq": "zero"})],
        [b"\x00not-a-probe", b"x"],  # control-prefixed but not a probe: still garbage
    ] * 5
    caplog.set_level(logging.WARNING, logger="metricbus.subscriber")
    with inproc_bus() as (config, sink), raw_frontend_socket(config.frontend) as raw:
        raw.send_multipart(wire(0))
        for frames in garbage:
            raw.send_multipart(frames)
        raw.send_multipart(wire(1))
        wait_until(lambda: sum(n.data["count"] for n in sink.sink.notes("undecodable")) == 30, 10, "30 counted")
        assert sink.runner.stats.undecodable == 30
    assert [m.seq for m in sink.sink.of_kind("metrics")] == [0, 1]
    notes = sink.sink.notes("undecodable")
    assert notes[-1].data["total"] == 30 and notes[-1].node == "test-node" and notes[-1].run is None
    assert 1 <= len(notes) <= 3, "notes are rate-limited, not one per frame"
    logged = [r for r in caplog.records if "undecodable frame" in r.getMessage()]
    assert 1 <= len(logged) <= 3, "the log is rate-limited, not one line per frame"


@pytest.mark.parametrize(
    ("frames", "error"),
    [
        ([b"metrics/r"], "expected 2 frames [topic, payload], got 1"),
        ([b"metrics/r", pack({"v": 1}), b"third"], "expected 2 frames [topic, payload], got 3"),
        ([b"metrics/r", b"\xc1"], "payload is not msgpack"),
        ([b"\x00probe/not-ours", b"x", b"y"], None),  # any sink's probe, whatever its shape: not data
    ],
)
def test_an_undecodable_frame_is_noted_with_what_is_wrong(frames: list[bytes], error: str | None) -> None:
    """The note says why a message was refused, for each shape the receive loop tells apart."""
    with inproc_bus() as (config, sink), raw_frontend_socket(config.frontend) as raw:
        raw.send_multipart(frames)
        raw.send_multipart(wire(0))
        wait_until(lambda: sink.sink.of_kind("metrics"), 10, "the good message after it")
        if error is not None:
            wait_until(lambda: sink.sink.notes("undecodable"), 10, "the undecodable note")
    notes = sink.sink.notes("undecodable")
    if error is None:
        assert notes == [] and sink.runner.stats.received == 1
    else:
        assert sink.runner.stats.undecodable == 1 and sink.runner.stats.received == 2
        assert error in notes[0].data["error"]


def test_a_sink_without_bus_topics_gets_no_notes() -> None:
    """Notes go only to sinks that subscribe to bus/; others just see their data."""
    with inproc_bus(topics=["metrics/"]) as (config, sink), raw_frontend_socket(config.frontend) as raw:
        raw.send_multipart([b"metrics/r", b"junk"])
        raw.send_multipart(wire(0))
        wait_until(lambda: sink.sink.of_kind("metrics"), 10, "the good message")
        assert sink.runner.stats.undecodable == 1
    assert sink.sink.of_kind("bus") == []


class Broken(ListSink):
    """Raises on every other batch."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def handle(self, batch: Sequence[Message]) -> None:
        self.calls += 1
        if self.calls % 2:
            raise ValueError("boom")
        super().handle(batch)


def test_a_sink_that_raises_is_reported_and_keeps_receiving(caplog: pytest.LogCaptureFixture) -> None:
    """With catch on, an exception in handle() is counted and logged once; later batches still arrive."""
    config = broker_config()
    sink = Broken()
    runner = SinkRunner(sink, name="broken", backend=config.backend, frontend=config.frontend, catch=True)
    caplog.set_level(logging.WARNING, logger="metricbus.subscriber")
    with running_broker(config):
        thread = threading.Thread(target=runner.run)
        thread.start()
        try:
            wait_until(runner.ready.is_set, 10, "runner ready")
            with Publisher(config.frontend, run="b", heartbeat_interval=1e9) as pub:
                for i in range(10):
                    pub.metrics({"i": i})
                    wait_until(lambda i=i: sink.calls > i, 10, f"batch {i}")  # one message per batch
        finally:
            runner.stop()
            thread.join(30)
    assert runner.stats.sink_errors >= 5
    assert runner.stats.last_error == "handle raised ValueError: boom"
    assert len(sink.messages) >= 5
    assert sum("handle raised ValueError" in r.getMessage() for r in caplog.records) == 1
    assert sink.closed


def test_stop_drains_what_is_queued_then_flushes_and_closes() -> None:
    """Messages published right before stop() are delivered; flush and close run once the loop ends."""
    config = broker_config()
    with running_broker(config) as broker, running_sink(config) as sink:
        with Publisher(config.frontend, run="d", heartbeat_interval=1e9) as pub:
            for i in range(2000):
                pub.metrics({"i": i})

        def forwarded() -> bool:
            # out of the broker (a stalled broker thread is not what stop() is about), maybe not yet received
            s = broker.stats()
            return s is not None and s.frontend_in_msgs >= 2 * 2000 and s.backend_out_msgs >= s.frontend_in_msgs

        wait_until(forwarded, 15, "the broker to forward the 2,000 messages")
        sink.stop()  # at once: what the sink's socket holds is drained before the sink closes
        assert len(sink.sink.of_kind("metrics")) == 2000
        assert sink.sink.closed and sink.sink.flushes >= 1


def test_batches_are_bounded_by_batch_size() -> None:
    """No batch handed to the sink is larger than batch_size."""
    sizes: list[int] = []

    class Sizes(ListSink):
        def handle(self, batch: Sequence[Message]) -> None:
            sizes.append(len(batch))
            super().handle(batch)

    config = broker_config()
    with running_broker(config), running_sink(config, sink=Sizes(), batch_size=7) as sink:
        with Publisher(config.frontend, run="bs", heartbeat_interval=1e9) as pub:
            for i in range(300):
                pub.metrics({"i": i})
        wait_until(lambda: len(sink.sink.messages) >= 300, 10, "300 messages")
    assert max(sizes) <= 7

"""The publisher: start-up backlog, heartbeats, counted drops at the HWM, thread safety."""

from __future__ import annotations

import threading
import time

import msgpack
import pytest
import zmq
from support import free_port, wait_until

from bus.message import EncodeError, Message
from bus.publisher import Publisher
from bus.testing import broker_config, inproc_bus, running_broker, running_sink


def test_first_messages_are_delivered_in_order_with_contiguous_seq() -> None:
    """A publisher used at once delivers every message, seq 0, 1, 2 … in order, counted as sent."""
    with inproc_bus() as (config, sink):
        with Publisher(config.frontend, run="r1", node="n1", heartbeat_interval=1e9) as pub:
            for i in range(500):
                pub.metrics({"i": i}, step=i)
            assert pub.sent == 500 and pub.dropped == 0
        rows = wait_until(lambda: len(sink.sink.of_kind("metrics")) >= 500 and sink.sink.of_kind("metrics"), 10)
    assert [m.seq for m in rows] == list(range(500))
    assert [m.data["i"] for m in rows] == list(range(500))
    assert {m.topic for m in rows} == {"metrics/r1"}


def test_convenience_methods_send_their_kinds() -> None:
    """metrics/episode/system/event/alert send the right kind; event() puts its name and fields in data."""
    with inproc_bus() as (config, sink):
        with Publisher(config.frontend, run="r2", node="n2", heartbeat_interval=1e9) as pub:
            pub.metrics({"loss": 1.0}, step=1)
            pub.episode({"reward": 3.0, "length": 10}, step=2)
            pub.system({"cpu/percent": 50.0})
            pub.event("run_started", step=0, config={"lr": 0.1})
            pub.alert({"rule": "nan", "state": "firing"})
        wait_until(lambda: len(sink.sink.messages) >= 6, 10, "five messages and the closing heartbeat")
    by_kind = {m.kind: m for m in sink.sink.messages if m.data.get("event") != "heartbeat"}
    assert by_kind["metrics"].step == 1
    assert by_kind["episode"].data == {"reward": 3.0, "length": 10}
    assert by_kind["system"].topic == "system/n2"
    assert by_kind["event"].data == {"event": "run_started", "config": {"lr": 0.1}}
    assert by_kind["alert"].topic == "alert/r2"


def test_backlog_from_before_the_broker_exists_is_delivered_when_it_appears() -> None:
    """Messages published while no broker listens wait in the backlog and arrive, in order, once it binds."""
    config = broker_config()
    pub = Publisher(config.frontend, run="early", connect_timeout=0.05, heartbeat_interval=1e9)
    for i in range(200):
        pub.metrics({"i": i}, step=i)
    assert pub.connected is False and pub.sent == 0 and pub.dropped == 0
    with running_broker(config), running_sink(config) as sink:
        assert pub.flush(timeout=15), "the backlog did not drain after the broker appeared"
        assert pub.sent == 200
        pub.metrics({"i": 200}, step=200)
        pub.close()  # while the broker is up: closing waits (bounded by linger) only for undelivered frames
        wait_until(lambda: len(sink.sink.of_kind("metrics")) >= 201, 10, "201 messages")
    assert [m.seq for m in sink.sink.of_kind("metrics")] == list(range(201))


def test_heartbeat_carries_the_sent_and_dropped_counters() -> None:
    """On its interval (and on close) the publisher sends event/heartbeat with sent and dropped so far."""
    with inproc_bus() as (config, sink):
        started = time.time()
        pub = Publisher(config.frontend, run="hb", heartbeat_interval=0.2)
        pub.metrics({"x": 1})
        wait_until(lambda: time.time() >= started + 0.25, 5, "the heartbeat interval to pass")
        pub.metrics({"x": 2})  # a beat is due by now: this publish carries it
        pub.close()  # and close sends a last one

        def beats() -> list[Message]:
            return [m for m in sink.sink.of_kind("event") if m.data["event"] == "heartbeat"]

        wait_until(lambda: len(sink.sink.messages) >= pub.sent, 10, "every message")
    assert len(beats()) >= 2
    for beat in beats():
        # nothing was dropped, so everything before a beat was sent: sent == its seq
        assert beat.data == {"event": "heartbeat", "sent": beat.seq, "dropped": 0}
    assert beats()[-1].seq == pub.sent - 1


def test_a_peer_that_never_reads_makes_sends_fail_fast_and_be_counted() -> None:
    """Tiny HWM, a subscriber that never reads: publish() does not block and sent + dropped = all."""
    context = zmq.Context()
    peer = context.socket(zmq.XSUB)  # subscribes to everything, then never receives
    peer.setsockopt(zmq.RCVHWM, 1)
    peer.setsockopt(zmq.RCVBUF, 4096)
    peer.setsockopt(zmq.LINGER, 0)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    peer.bind(endpoint)
    peer.send(b"\x01")
    pub = Publisher(endpoint, run="full", hwm=1, connect_timeout=0, heartbeat_interval=1e9, linger=0.1)
    try:
        # An unused socket handles no I/O commands: poll it (never recv) so the subscription goes out.
        wait_until(lambda: peer.poll(1, zmq.POLLOUT) and pub.connected, 10, "the peer's subscription")
        for i in range(3000):  # 30 MB: far more than the socket and kernel buffers hold
            pub.metrics({"pad": "x" * 10_000}, step=i)  # a blocking send would hang here
        assert pub.dropped > 0
        assert pub.sent + pub.dropped == 3000
    finally:
        pub.close()
        peer.close()
        context.term()


def test_two_threads_publishing_share_one_seq_without_duplicates() -> None:
    """A training thread and a sampler thread on one publisher: every seq is used once, none is lost."""
    per_thread = 3000
    with inproc_bus() as (config, sink):
        pub = Publisher(config.frontend, run="mt", heartbeat_interval=0.001)  # heartbeats race too
        start = threading.Barrier(2)

        def work(kind: str) -> None:
            start.wait()
            for i in range(per_thread):
                pub.publish(kind, {"i": i})

        threads = [threading.Thread(target=work, args=(k,)) for k in ("metrics", "system")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        pub.close()
        total = pub.sent
        wait_until(lambda: len(sink.sink.messages) >= total, 20, f"{total} messages")
        gaps = sink.runner.stats.gaps
    seqs = sorted(m.seq for m in sink.sink.messages)
    assert seqs == list(range(total))
    assert pub.dropped == 0 and gaps == 0
    for kind in ("metrics", "system"):
        assert [m.data["i"] for m in sink.sink.of_kind(kind)] == list(range(per_thread))


def test_an_unencodable_value_raises_and_spends_no_seq() -> None:
    """EncodeError reaches the caller; the next message still gets the next seq (no false gap)."""
    with inproc_bus() as (config, sink):
        with Publisher(config.frontend, run="enc", heartbeat_interval=1e9) as pub:
            pub.metrics({"ok": 1})
            with pytest.raises(EncodeError):
                pub.metrics({"bad": object()})
            pub.metrics({"ok": 2})
        wait_until(lambda: len(sink.sink.of_kind("metrics")) >= 2, 10, "both good messages")
    assert [m.seq for m in sink.sink.of_kind("metrics")] == [0, 1]


def test_publish_after_close_is_an_error() -> None:
    """A closed publisher refuses to publish rather than silently dropping."""
    pub = Publisher(f"tcp://127.0.0.1:{free_port()}", run="c", connect_timeout=0, linger=0)
    pub.close()
    pub.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        pub.metrics({"x": 1})


def test_forward_keeps_the_recorded_identity() -> None:
    """forward() sends a recorded payload with its own run, node, pub and seq (for replay)."""
    with inproc_bus() as (config, sink):
        with Publisher(config.frontend, heartbeat_interval=1e9) as pub:
            pub.forward(
                {
                    "v": 1,
                    "kind": "metrics",
                    "run": "old",
                    "node": "elsewhere",
                    "pub": "elsewhere:9:abc",
                    "seq": 41,
                    "ts": 1.0,
                    "step": 5,
                    "data": {"loss": 0.1},
                }
            )
        rows = wait_until(lambda: sink.sink.of_kind("metrics"), 10)
    assert (rows[0].run, rows[0].node, rows[0].pub, rows[0].seq, rows[0].step) == (
        "old",
        "elsewhere",
        "elsewhere:9:abc",
        41,
        5,
    )


def test_endpoint_defaults_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an endpoint argument, METRICBUS_ENDPOINT says where to connect."""
    with inproc_bus() as (config, sink):
        monkeypatch.setenv("METRICBUS_ENDPOINT", config.frontend)
        with Publisher(run="env", heartbeat_interval=1e9) as pub:
            assert pub.endpoint == config.frontend
            pub.metrics({"x": 1})
        wait_until(lambda: sink.sink.of_kind("metrics"), 10)


def test_wire_payload_of_publish_is_v1() -> None:
    """What publish() puts on the socket is [topic, msgpack map] with the documented keys."""
    context = zmq.Context()
    peer = context.socket(zmq.XSUB)
    peer.setsockopt(zmq.LINGER, 0)
    peer.setsockopt(zmq.RCVTIMEO, 5000)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    peer.bind(endpoint)
    peer.send(b"\x01")
    try:
        pub = Publisher(endpoint, run="w", node="nd", connect_timeout=0, heartbeat_interval=1e9, linger=0)
        wait_until(lambda: peer.poll(1, zmq.POLLOUT) and pub.connected, 10, "the peer's subscription")
        pub.metrics({"a": 1.5}, step=3)
        topic, body = peer.recv_multipart()
        pub.close()
    finally:
        peer.close()
        context.term()
    obj = msgpack.unpackb(body, raw=False)
    assert topic == b"metrics/w"
    assert set(obj) == {"v", "kind", "run", "node", "pub", "seq", "ts", "step", "data"}
    assert (obj["v"], obj["kind"], obj["run"], obj["node"], obj["seq"], obj["step"], obj["data"]) == (
        1,
        "metrics",
        "w",
        "nd",
        0,
        3,
        {"a": 1.5},
    )
    assert abs(obj["ts"] - time.time()) < 60

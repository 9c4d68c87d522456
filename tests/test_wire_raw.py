"""A client that knows only DESIGN.md's wire format (raw pyzmq + msgpack, no ``bus`` import)
can publish to the broker and subscribe from it: the documented format is the real one."""

from __future__ import annotations

import math
import os
import time
from typing import Any

import msgpack
import zmq
from support import Stack, wait_until

# What DESIGN.md's "Wire format, version 1" table says, and nothing from bus.message.
V1_KEYS = {"v", "kind", "run", "node", "pub", "seq", "ts", "step", "data"}


def design_message(seq: int, **data: Any) -> list[bytes]:
    """A v1 message built by hand from the table: topic "<kind>/<run>", payload one msgpack map."""
    payload = {
        "v": 1,
        "kind": "metrics",
        "run": "raw-run",
        "node": "raw-node",
        "pub": f"raw-node:{os.getpid()}:handmade",
        "seq": seq,
        "ts": time.time(),
        "step": seq * 10,
        "data": {"loss": 1.0 / (seq + 1), **data},
    }
    return [b"metrics/raw-run", msgpack.packb(payload)]


def test_a_raw_client_publishes_and_subscribes_with_the_documented_format(stack: Stack) -> None:
    """Hand-built [topic, msgpack map] frames reach the JSONL sink and a raw SUB, unchanged, in order."""
    context = zmq.Context()
    pub = context.socket(zmq.PUB)
    sub = context.socket(zmq.SUB)
    for sock in (pub, sub):
        sock.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVTIMEO, 10_000)
    sub.setsockopt(zmq.SUBSCRIBE, b"metrics/raw-run")
    pub.connect(stack.frontend)
    sub.connect(stack.backend)
    try:
        # A bare PUB cannot tell when the path is open: send (consecutive seqs, as a real client
        # would) until the first one comes back through the broker, then the path is live.
        seq = 0
        deadline = time.monotonic() + 15
        while True:
            pub.send_multipart(design_message(seq))
            seq += 1
            if sub.poll(50, zmq.POLLIN):
                break
            assert time.monotonic() < deadline, "nothing came back through the broker"
        while sub.poll(100, zmq.POLLIN):  # drain the warm-up messages
            sub.recv_multipart()
        first = seq
        sent = [design_message(s, nan=math.nan, inf=-math.inf, text="ok", flag=True) for s in range(first, first + 100)]
        for frames in sent:
            pub.send_multipart(frames)
        received: list[list[bytes]] = []
        while len(received) < len(sent):  # by content, not timing: a late warm-up message is skipped
            frames = sub.recv_multipart()
            if msgpack.unpackb(frames[1])["seq"] >= first:
                received.append(frames)
    finally:
        pub.close()
        sub.close()
        context.term()

    assert [f[0] for f in received] == [b"metrics/raw-run"] * 100
    expected = [msgpack.unpackb(f[1]) for f in sent]
    assert [msgpack.unpackb(f[1])["seq"] for f in received] == list(range(first, first + 100))

    def on_disk() -> list[dict[str, Any]]:
        return [r for r in stack.records("raw-run", "metrics") if r["seq"] >= first]

    rows = wait_until(lambda: len(on_disk()) >= 100 and on_disk(), 15, "the hand-built messages on disk")
    for row, want in zip(rows, expected, strict=True):
        assert math.isnan(row["data"].pop("nan")) and math.isnan(want["data"].pop("nan"))
        assert row == want
    assert stack.records("raw-run", "bus") == [], "consecutive seqs from a raw client are not a gap"


def test_a_raw_subscriber_reads_what_the_publisher_sends(stack: Stack) -> None:
    """A raw SUB decodes bus.Publisher's frames with plain msgpack: topic "<kind>/<source>", the v1 keys and types."""
    from bus.publisher import Publisher  # the sending side is the project's; the reading side is raw

    context = zmq.Context()
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVTIMEO, 10_000)
    for prefix in (b"episode/raw-sub", b"system/", b"event/raw-sub"):
        sub.setsockopt(zmq.SUBSCRIBE, prefix)
    sub.connect(stack.backend)
    try:
        with Publisher(stack.frontend, run="raw-sub", node="node-7", heartbeat_interval=1e9) as pub:
            # our SUB's subscription must reach the broker first: resend until one arrives
            deadline = time.monotonic() + 15
            while not sub.poll(50, zmq.POLLIN):
                pub.event("hello")
                assert time.monotonic() < deadline, "the raw SUB never got a message"
            while sub.poll(100, zmq.POLLIN):
                sub.recv_multipart()
            pub.episode({"reward": 12.5, "length": 200, "success": True}, step=4096)
            pub.system({"cpu/percent": 42.0})
            got: list[list[bytes]] = []
            while len(got) < 2:  # a late "hello" from the warm-up is skipped, by content
                frames = sub.recv_multipart()
                if frames[0] != b"event/raw-sub":
                    got.append(frames)
            (topic_e, body_e), (topic_s, body_s) = got
    finally:
        sub.close()
        context.term()
    episode, system = msgpack.unpackb(body_e), msgpack.unpackb(body_s)
    assert (topic_e, topic_s) == (b"episode/raw-sub", b"system/node-7")
    for payload in (episode, system):
        assert set(payload) == V1_KEYS
        assert payload["v"] == 1 and payload["node"] == "node-7" and payload["run"] == "raw-sub"
        assert isinstance(payload["pub"], str) and isinstance(payload["seq"], int) and isinstance(payload["ts"], float)
        assert abs(payload["ts"] - time.time()) < 60
    assert episode["kind"] == "episode" and episode["step"] == 4096
    assert episode["data"] == {"reward": 12.5, "length": 200, "success": True}
    assert system["kind"] == "system" and system["step"] is None and system["data"] == {"cpu/percent": 42.0}
    assert system["seq"] == episode["seq"] + 1

"""The training-side end of the bus: a non-blocking, thread-safe publisher.

Why an XPUB socket and not a PUB: a PUB socket silently drops everything it is given
before the broker's subscription has arrived over the new connection (ZeroMQ's
"slow joiner"), and silently drops at its high-water mark. An XPUB socket *receives*
the subscription, so the publisher knows when the path is open, and with
``XPUB_NODROP`` a full queue refuses the send (EAGAIN) so that we can count it.
The broker subscribes to everything on its frontend, so one subscription arrives per
connection. Until it has, messages wait in a bounded local backlog instead of vanishing.

When the broker dies and comes back (``metricbus up`` restarts it), nothing is needed
here: ZeroMQ keeps a connecting socket's pipe across reconnects, so what is published while
the broker is down waits in that pipe (bounded by the HWM; past it ``publish()`` counts a
drop) and goes out when the new broker accepts the connection. The restarted broker holds
it until its sinks have subscribed again (``--await-subscribers``), so it reaches them. A
restart costs what was inside the dying broker and its socket buffers, which the sinks see
as a seq gap; the issue-12 test measures it.
"""

from __future__ import annotations

import collections
import os
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any, Final

import zmq
import zmq.backend

from bus import defaults
from bus.config import publisher_endpoint
from bus.curve import CurveKeys, client_keys
from bus.message import check_node, check_run_id, default_node, message_packer, pack, topic_source
from bus.security import default_client_curve

#: Messages held while the broker's subscription has not yet arrived.
DEFAULT_BACKLOG: Final = 100_000
# Plain ints: OR-ing pyzmq's Flag enums costs ~0.4 µs, a sixth of a whole publish().
_MORE_NOBLOCK: Final = int(zmq.SNDMORE | zmq.NOBLOCK)
_NOBLOCK: Final = int(zmq.NOBLOCK)
#: The socket's own send, without pyzmq's Python wrapper around it (``zmq.Socket.send`` adds a
#: frame for its ``routing_id``/``group`` options, which PUB sockets have no use for): the
#: wrapper is 0.2 µs of a send, and a message is two sends.
_socket_send: Final = zmq.backend.Socket.send


class Publisher:
    """Publishes v1 messages for one run (or for a node when ``run`` is None).

    ``publish`` never blocks: a message the socket cannot take is counted in
    ``dropped``. Safe to share between threads (one lock around the socket).
    """

    def __init__(
        self,
        endpoint: str | None = None,
        run: str | None = None,
        node: str | None = None,
        *,
        heartbeat_interval: float = 10.0,
        hwm: int = defaults.PUBLISHER_HWM,
        connect_timeout: float = 2.0,
        linger: float = 2.0,
        backlog: int = DEFAULT_BACKLOG,
        curve: CurveKeys | Mapping[str, bytes] | None = None,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
    ) -> None:
        self.endpoint = endpoint or publisher_endpoint()
        self.run = check_run_id(run) if run is not None else None
        self.node = check_node(node) if node else default_node()
        self.pub = f"{self.node}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.heartbeat_interval = heartbeat_interval
        self.linger = linger
        self.sent = 0
        self.dropped = 0
        self._next_seq = 0
        self._topics: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._backlog: collections.deque[tuple[bytes, bytes]] = collections.deque()
        self._backlog_max = backlog
        self._next_heartbeat = time.time() + heartbeat_interval
        self._closed = False
        self._pack = message_packer()  # used under the lock only
        if curve is None:
            # Keys from METRICBUS_CURVE_* or METRICBUS_CONFIG: a training script on a worker
            # node connects securely with no code change. ``curve={}`` means plain, on purpose.
            curve = default_client_curve()
        self._own_context = context is None
        self._context = context or zmq.Context()
        sock = self._context.socket(zmq.XPUB)
        sock.setsockopt(zmq.XPUB_NODROP, 1)
        sock.setsockopt(zmq.SNDHWM, hwm)
        sock.setsockopt(zmq.LINGER, int(linger * 1000))
        keys = client_keys(curve)
        if keys is not None:
            keys.apply(sock)
        sock.connect(self.endpoint)
        self._socket = sock
        self._open = self._await_subscription(connect_timeout)

    # -- public API ---------------------------------------------------------------------

    def publish(self, kind: str, data: Mapping[str, Any], step: int | None = None) -> None:
        """Send one message of ``kind``; never blocks, never raises for a full queue."""
        ts = time.time()
        run = self.run
        topic = self._topics.get(kind) or self._topic(kind)
        with self._lock:
            if self._closed:
                raise RuntimeError("publish() on a closed Publisher")
            # raises EncodeError before the seq is spent
            packed = self._pack(kind, run, self.node, self.pub, self._next_seq, ts, step, data)
            self._next_seq += 1
            self._send(topic, packed)
            if ts >= self._next_heartbeat:
                self._heartbeat(ts)

    def metrics(self, data: Mapping[str, Any], step: int | None = None) -> None:
        self.publish("metrics", data, step)

    def episode(self, data: Mapping[str, Any], step: int | None = None) -> None:
        self.publish("episode", data, step)

    def system(self, data: Mapping[str, Any], step: int | None = None) -> None:
        self.publish("system", data, step)

    def event(self, event: str, step: int | None = None, **fields: Any) -> None:
        self.publish("event", {"event": event, **fields}, step)

    def alert(self, data: Mapping[str, Any], step: int | None = None) -> None:
        self.publish("alert", data, step)

    def forward(self, record: Mapping[str, Any]) -> None:
        """Send a recorded payload unchanged (its own run, node, pub and seq): for replay."""
        topic = f"{record['kind']}/{topic_source(record['kind'], record['run'], record['node'])}".encode()
        packed = pack(record)
        with self._lock:
            self._send(topic, packed)

    @property
    def connected(self) -> bool:
        """True once the broker's subscription has arrived on the current connection."""
        with self._lock:
            self._poll_subscriptions()
            return self._open

    def flush(self, timeout: float | None = None) -> bool:
        """Wait (bounded) until the start-up backlog has gone to the socket; True if it has."""
        deadline = time.monotonic() + (self.linger if timeout is None else timeout)
        while True:
            with self._lock:
                self._poll_subscriptions()
                if not self._backlog:
                    return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._socket.poll(int(min(remaining, 0.05) * 1000) + 1, zmq.POLLIN)

    def close(self) -> None:
        """Send a last heartbeat and deliver what is queued (bounded by ``linger``)."""
        with self._lock:
            if self._closed:
                return
            self._heartbeat(time.time())
        self.flush()
        with self._lock:
            self._closed = True
            self.dropped += len(self._backlog)
            self._backlog.clear()
            self._socket.close()  # LINGER bounds how long queued frames may take
        if self._own_context:
            self._context.term()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals (called with the lock held) --------------------------------------------

    def _topic(self, kind: str) -> bytes:
        topic = self._topics[kind] = f"{kind}/{topic_source(kind, self.run, self.node)}".encode()
        return topic

    def _send(self, topic: bytes, payload: bytes) -> None:
        if not self._open:
            self._poll_subscriptions()
            if not self._open:
                self._hold(topic, payload)
                return
        try:
            _socket_send(self._socket, topic, _MORE_NOBLOCK)
            _socket_send(self._socket, payload, _NOBLOCK)
            self.sent += 1
        except zmq.Again:
            # XPUB_NODROP refuses at the HWM; counting is the whole point of using it.
            self.dropped += 1

    def _hold(self, topic: bytes, payload: bytes) -> None:
        if len(self._backlog) >= self._backlog_max:
            self.dropped += 1
            return
        self._backlog.append((topic, payload))

    def _poll_subscriptions(self) -> None:
        # Subscription frames are queued for us to read; each one is a (re)connection.
        while True:
            try:
                frame = self._socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            if frame[:1] == b"\x01":
                self._open = True
        if self._open and self._backlog:
            backlog, self._backlog = self._backlog, collections.deque()
            for topic, payload in backlog:
                self._send(topic, payload)

    def _await_subscription(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._socket.poll(int(remaining * 1000) + 1, zmq.POLLIN):
                return False
            frame = self._socket.recv()
            if frame[:1] == b"\x01":
                return True

    def _heartbeat(self, ts: float) -> None:
        self._next_heartbeat = ts + self.heartbeat_interval
        data = {"event": "heartbeat", "sent": self.sent, "dropped": self.dropped}
        packed = self._pack("event", self.run, self.node, self.pub, self._next_seq, ts, None, data)
        self._next_seq += 1
        self._send(self._topics.get("event") or self._topic("event"), packed)

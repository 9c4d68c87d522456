"""The broker: libzmq's own XSUB -> XPUB proxy, so forwarding costs no Python per message.

The proxy runs in a thread (``zmq.proxy_steerable``) so the main thread can take
signals, ask the proxy for its counters and publish them as ``bus`` messages, and stop it
cleanly: on SIGINT/SIGTERM it keeps forwarding until the frontend has been quiet for a
moment, then terminates, so that what publishers handed over reaches the sinks.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zmq

from bus.config import BrokerConfig
from bus.message import default_node
from bus.publisher import Publisher  # a publisher on our own frontend carries our counters
from bus.security import BrokerCurve

log = logging.getLogger("metricbus.broker")

#: libzmq refuses (and disconnects the sender of) frames above this multiple of the decode
#: cap: a hard bound on memory. Frames between the two caps reach sinks, which count them.
TRANSPORT_CAP_FACTOR = 16
_QUIET_BEFORE_STOP = 0.3
_STOP_DEADLINE = 5.0
#: After the first sink subscribes, how long the others get (they reconnect within ~0.1 s).
_SUBSCRIBER_GRACE = 0.5
_MAX_HELD = 10_000


@dataclass(frozen=True)
class ProxyStats:
    """The eight counters libzmq's STATISTICS command returns."""

    frontend_in_msgs: int
    frontend_in_bytes: int
    frontend_out_msgs: int
    frontend_out_bytes: int
    backend_in_msgs: int
    backend_in_bytes: int
    backend_out_msgs: int
    backend_out_bytes: int


class Broker:
    """Binds the frontend (publishers connect) and backend (sinks connect) and forwards."""

    def __init__(self, config: BrokerConfig, curve: BrokerCurve | None = None, await_subscribers: float = 0.0) -> None:
        self.config = config
        self.await_subscribers = await_subscribers
        self.curve = curve
        self._context = zmq.Context()
        # ZAP runs in the sockets' own context, and before any bind: a CURVE socket with no
        # handler in its context would let every key in.
        self._authenticator = curve.gate if curve is not None else None
        #: CURVE handshakes that failed before any key was shown (a client speaking no CURVE)
        self.handshake_failed = 0
        self._monitors: list[zmq.Socket[Any]] = []
        if self._authenticator is not None:
            self._authenticator.start(self._context)
        self._control_url = f"inproc://broker-control-{id(self)}"
        self._control = self._context.socket(zmq.PAIR)
        self._control.bind(self._control_url)
        self._stop = threading.Event()
        self._bound = threading.Event()
        self._proxying = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._proxy, name="metricbus-proxy", daemon=True)

    def start(self, timeout: float = 10.0) -> None:
        """Bind and start forwarding; raises if the endpoints cannot be bound."""
        self._thread.start()
        if not self._bound.wait(timeout):
            raise RuntimeError("broker did not bind in time")
        if self._error is not None:
            raise self._error

    def stats(self, timeout: float = 1.0) -> ProxyStats | None:
        """The proxy's counters, or None if it did not answer in time."""
        if not self._proxying.is_set():
            return None  # still waiting for subscribers: no proxy to ask
        self._control.send(b"STATISTICS")
        if not self._control.poll(int(timeout * 1000), zmq.POLLIN):
            return None
        frames = self._control.recv_multipart()
        values = [int.from_bytes(f, "little") for f in frames]
        return ProxyStats(*values[:8])

    def stop(self) -> None:
        """Forward until the frontend is quiet (bounded), then stop the proxy and unbind."""
        self._stop.set()
        if not self._thread.is_alive():
            self._close()
            return
        deadline = time.monotonic() + _STOP_DEADLINE
        last = self.stats()
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.05)  # polling libzmq's counters: there is no event for "queue empty"
            now = self.stats()
            if now is None or last is None or now.frontend_in_msgs != last.frontend_in_msgs:
                quiet_since = time.monotonic()
                last = now
            elif time.monotonic() - quiet_since >= _QUIET_BEFORE_STOP:
                break
        self._control.send(b"TERMINATE")
        self._thread.join(timeout=_STOP_DEADLINE)
        self._close()

    def handshake_failures(self) -> int:
        """Count the handshake failures reported since the last call; returns the total.

        The KeyGate counts the keys it refuses; a plain client never gets that far (its
        mechanism does not match), so only the sockets' own monitor events show it.
        """
        for monitor in self._monitors:
            while monitor.poll(0, zmq.POLLIN):
                monitor.recv_multipart()
                self.handshake_failed += 1
        return self.handshake_failed

    def _close(self) -> None:
        for monitor in self._monitors:
            monitor.close(linger=0)
        self._control.close(linger=0)
        if self._authenticator is not None:
            self._authenticator.stop()
        self._context.term()

    def _apply_curve(self, sock: zmq.Socket[Any]) -> None:
        if self.curve is not None:
            self.curve.keys.apply(sock)

    def _proxy(self) -> None:
        # Sockets live in the thread that uses them (ZeroMQ sockets are not thread-safe).
        cfg = self.config
        frontend = self._context.socket(zmq.XSUB)
        backend = self._context.socket(zmq.XPUB)
        control = self._context.socket(zmq.PAIR)
        try:
            for sock in (frontend, backend):
                sock.setsockopt(zmq.LINGER, 2000)
                self._apply_curve(sock)
            frontend.setsockopt(zmq.RCVHWM, cfg.hwm)
            frontend.setsockopt(zmq.MAXMSGSIZE, cfg.max_message_bytes * TRANSPORT_CAP_FACTOR)
            backend.setsockopt(zmq.SNDHWM, cfg.hwm)
            frontend.bind(cfg.frontend)
            backend.bind(cfg.backend)
            control.connect(self._control_url)
            if self.curve is not None:
                # read by the main thread (handshake_failures) only; handed over before _bound is set
                events = zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
                self._monitors = [sock.get_monitor_socket(events) for sock in (frontend, backend)]
        except zmq.ZMQError as exc:
            self._error = RuntimeError(f"broker cannot bind {cfg.frontend} / {cfg.backend}: {exc}")
            for sock in (frontend, backend, control):
                sock.close(linger=0)
            self._bound.set()
            return
        self._bound.set()
        try:
            held = self._await_subscribers(backend) if self.await_subscribers > 0 else []
            # Subscribe to everything upstream: every publisher then gets one subscription as
            # soon as it connects (that is what it waits for), and filtering happens here.
            frontend.send(b"\x01")
            for frame in held:
                frontend.send(frame)  # what the proxy would have passed upstream meanwhile
            self._proxying.set()
            zmq.proxy_steerable(frontend, backend, None, control)
        except zmq.ContextTerminated:
            pass
        finally:
            for sock in (frontend, backend, control):
                sock.close()

    def _await_subscribers(self, backend: zmq.Socket[Any]) -> list[bytes]:
        """Hold publishers (they keep messages in their backlog) until sinks have subscribed.

        Publishers send as soon as our upstream subscription reaches them, and what reaches
        the backend before a sink has subscribed is gone. After a broker restart every sink
        reconnects within a few reconnect intervals of the first, so wait for the first and
        a short grace, bounded by ``await_subscribers`` seconds in all. The subscriptions
        are held, not passed upstream yet: any subscription opens a publisher.
        """
        deadline = time.monotonic() + self.await_subscribers
        first: float | None = None
        held: list[bytes] = []
        while not self._stop.is_set():
            now = time.monotonic()
            end = deadline if first is None else min(deadline, first + _SUBSCRIBER_GRACE)
            if now >= end:
                break
            if backend.poll(int(min(end - now, 0.05) * 1000) + 1, zmq.POLLIN):
                frame = backend.recv()
                if len(held) < _MAX_HELD:
                    held.append(frame)
                if first is None and frame[:1] == b"\x01":
                    first = time.monotonic()
        return held


def run_broker(
    config: BrokerConfig,
    stop: threading.Event,
    curve: BrokerCurve | None = None,
    on_ready: Callable[[], None] | None = None,
    await_subscribers: float = 0.0,
) -> None:
    """Run until ``stop`` is set, publishing the proxy's counters as ``bus`` messages."""
    broker = Broker(config, curve, await_subscribers)
    broker.start()
    if on_ready:
        on_ready()
    log.info("broker: publishers connect to %s, sinks to %s", config.frontend, config.backend)
    node = default_node()
    publisher: Publisher | None = None
    try:
        own_keys = curve.keys.as_client() if curve is not None else None
        publisher = Publisher(config.connect_frontend, None, node, heartbeat_interval=3600.0, curve=own_keys)
        while not stop.wait(config.stats_interval):
            stats = broker.stats()
            if stats is not None:
                extra = {**curve.gate.counts(), "handshake_failed": broker.handshake_failures()} if curve else {}
                publisher.publish("bus", {"event": "broker_stats", **stats.__dict__, **extra})
    finally:
        if publisher is not None:
            publisher.close()
        broker.stop()
        log.info("broker: stopped")

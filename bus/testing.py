"""Test helpers for sink and rule authors (and metricbus's own tests), like ``structlog.testing``.

:func:`inproc_bus` is a real :class:`~bus.broker.Broker` on random loopback ports and a real
:class:`~bus.subscriber.SinkRunner` in a thread, feeding your sink (or a :class:`ListSink`).
Real sockets, no subprocess and no mock, so a test starts in milliseconds::

    from bus import Publisher
    from bus.testing import inproc_bus, wait_until

    def test_my_sink_sees_losses():
        sink = MySink()
        with inproc_bus(topics=["metrics/"], sink=sink) as (config, running):
            with Publisher(config.frontend, run="r1", curve={}) as publisher:
                publisher.metrics({"train/loss": 0.5}, step=1)
            wait_until(lambda: sink.seen, 10, "the loss to arrive")

:func:`wait_until` waits on a condition with a deadline, never a bare sleep.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import zmq

from bus.broker import Broker
from bus.config import BrokerConfig
from bus.message import Message
from bus.subscriber import Sink, SinkRunner

__all__ = [
    "ListSink",
    "RunningSink",
    "broker_config",
    "free_port",
    "inproc_bus",
    "raw_frontend_socket",
    "running_broker",
    "running_sink",
    "wait_until",
]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition", interval: float = 0.02
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


class ListSink:
    """Keeps every message it is handed; counts flushes and closes."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.flushes = 0
        self.closed = False

    def handle(self, batch: Sequence[Message]) -> None:
        self.messages.extend(batch)

    def flush(self) -> None:
        self.flushes += 1

    def close(self) -> None:
        self.closed = True

    def of_kind(self, kind: str) -> list[Message]:
        return [m for m in list(self.messages) if m.kind == kind]

    def notes(self, event: str) -> list[Message]:
        return [m for m in self.of_kind("bus") if m.data.get("event") == event]


def broker_config(max_message_bytes: int | None = None) -> BrokerConfig:
    config = BrokerConfig(frontend=f"tcp://127.0.0.1:{free_port()}", backend=f"tcp://127.0.0.1:{free_port()}")
    if max_message_bytes is not None:
        config = BrokerConfig(config.frontend, config.backend, max_message_bytes=max_message_bytes)
    return config


@contextmanager
def running_broker(config: BrokerConfig) -> Iterator[Broker]:
    broker = Broker(config)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@dataclass
class RunningSink:
    runner: SinkRunner
    sink: Any  # the sink given, or a ListSink
    thread: threading.Thread
    stats: list[object] = field(default_factory=list)

    def stop(self) -> None:
        self.runner.stop()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "sink runner did not stop"


@contextmanager
def running_sink(
    config: BrokerConfig, topics: Sequence[str] = ("",), sink: Sink | None = None, **runner_options: object
) -> Iterator[RunningSink]:
    """A SinkRunner (catch off, so a bug fails loudly) whose subscription is live when this yields."""
    sink = sink if sink is not None else ListSink()
    runner = SinkRunner(
        sink,
        name="test",
        backend=config.backend,
        frontend=config.frontend,
        topics=topics,
        catch=False,
        max_bytes=config.max_message_bytes,
        node="test-node",
        **runner_options,  # type: ignore[arg-type]
    )
    running = RunningSink(runner, sink, threading.Thread(target=runner.run, name="sink-runner", daemon=True))
    running.thread.start()
    try:
        wait_until(lambda: runner.ready.is_set() or not running.thread.is_alive(), 15, "the sink runner's probe")
        assert running.thread.is_alive(), "sink runner died at start"
        yield running
    finally:
        running.stop()


@contextmanager
def inproc_bus(
    topics: Sequence[str] = ("",),
    max_message_bytes: int | None = None,
    sink: Sink | None = None,
    **runner_options: object,
) -> Iterator[tuple[BrokerConfig, RunningSink]]:
    """A broker and ``sink`` (default: a new :class:`ListSink`) behind a live subscription to ``topics``.

    Yields the broker's config (publish to ``config.frontend``) and the running sink.
    """
    config = broker_config(max_message_bytes)
    with running_broker(config), running_sink(config, topics, sink, **runner_options) as running:
        yield config, running


@contextmanager
def raw_frontend_socket(frontend: str) -> Iterator[zmq.Socket[bytes]]:
    """A bare XPUB on the broker's frontend, yielded once the broker's subscription arrived,
    so nothing sent on it is lost to the slow-joiner window."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = context.socket(zmq.XPUB)
    sock.setsockopt(zmq.LINGER, 2000)
    sock.setsockopt(zmq.RCVTIMEO, 10_000)
    try:
        sock.connect(frontend)
        assert sock.recv()[:1] == b"\x01", "the broker did not subscribe"
        yield sock
    finally:
        sock.close()
        context.term()

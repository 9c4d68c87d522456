"""What the bus benchmarks share of their raw reference: the message they publish and a bare proxy.

Imports nothing of the project, so a bench that measures another checkout (``--tree``) can
use it without loading this tree's ``bus``.
"""

from __future__ import annotations

from contextlib import suppress
from typing import Any

import zmq

#: An SB3-like metrics dump: what a training loop publishes most.
DATA: dict[str, Any] = {
    "train/value_loss": 0.4123,
    "train/policy_gradient_loss": -0.0123,
    "train/entropy_loss": -0.6812,
    "train/approx_kl": 0.0042,
    "train/clip_fraction": 0.083,
    "train/learning_rate": 0.0003,
    "rollout/ep_rew_mean": 187.5,
    "time/fps": 2011,
}


def raw_sub(
    context: zmq.Context[zmq.Socket[bytes]], backend: str, topic: bytes, hwm: int, timeout_ms: int = -1
) -> zmq.Socket[bytes]:
    """The raw reference's SUB: subscribed to ``topic`` on ``backend``, a ``hwm``-deep queue, and
    ``recv`` raising ``zmq.Again`` after ``timeout_ms`` (-1: waits) so a stalled path fails the bench."""
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, hwm)
    sub.setsockopt(zmq.SUBSCRIBE, topic)
    sub.setsockopt(zmq.RCVTIMEO, timeout_ms)
    sub.connect(backend)
    return sub


def raw_proxy(frontend: str, backend: str, ready: Any, hwm: int) -> None:
    """``zmq.proxy`` between a bound XSUB and XPUB (a process's target); sets ``ready`` once bound."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    xsub, xpub = context.socket(zmq.XSUB), context.socket(zmq.XPUB)
    xsub.setsockopt(zmq.RCVHWM, hwm)
    xpub.setsockopt(zmq.SNDHWM, hwm)
    xsub.bind(frontend)
    xpub.bind(backend)
    ready.set()
    with suppress(zmq.ContextTerminated, KeyboardInterrupt):
        zmq.proxy(xsub, xpub)

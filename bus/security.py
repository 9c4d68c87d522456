"""CURVE keys for the broker and its clients (ZeroMQ's "Ironhouse" pattern)."""

from __future__ import annotations

from typing import Any

from bus.config import Config


def broker_curve(config: Config) -> dict[str, Any] | None:
    """The broker's CURVE server keys, or None when the config enables no CURVE."""
    if config.broker.curve is None:
        return None
    raise NotImplementedError("CURVE support lands with the security issue")


def client_curve(config: Config) -> dict[str, bytes] | None:
    """A client's CURVE keys (own pair and the server's public key), or None."""
    if config.broker.curve is None:
        return None
    raise NotImplementedError("CURVE support lands with the security issue")

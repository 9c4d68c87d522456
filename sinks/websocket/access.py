"""Who may open the stream: browser ``Origin`` allow-list, and a token off loopback.

**Origin.** A page on any web site can open ``ws://127.0.0.1:8765`` from the user's browser
(WebSockets are not bound by the same-origin policy), so the browser's ``Origin`` header is
checked against an allow-list; by default only pages served from this host's loopback
(``http://127.0.0.1:*``, ``http://localhost:*``, ``http://[::1]:*``, and ``https`` alike), which
covers the dashboard. A request without ``Origin`` is not from a browser page (the Python
client, ``curl``) and is let through: it could read the port directly anyway.

``null`` — the origin of a ``file://`` page, and also of any sandboxed ``<iframe>`` on any
site — is refused unless listed: allowing it would let every web site in. Serve
``examples/live.html`` over loopback HTTP instead (the README shows how).

**Token.** Bound to a non-loopback address, anyone who can reach the port could read every
metric, so a token is then required — the same rail as the broker's refusal of a
non-loopback endpoint without CURVE. The token is read from the environment variable
``token_env`` names (never from the config file), and a client sends it as
``Authorization: Bearer <token>`` or, from a browser, as ``?token=<token>`` in the URL.
"""

from __future__ import annotations

import hmac
import os
import re
from collections.abc import Sequence
from typing import Final
from urllib.parse import parse_qs, urlsplit

from bus.curve import is_local

DEFAULT_ORIGINS: Final = (
    "http://127.0.0.1:*",
    "http://localhost:*",
    "http://[::1]:*",
    "https://127.0.0.1:*",
    "https://localhost:*",
    "https://[::1]:*",
)
_ORIGIN: Final = re.compile(r"https?://[^/?#\s]+")


class OriginPolicy:
    """Matches a request's ``Origin`` against ``allowed``: exact origins, ``scheme://host:*``
    (any port, or none) or ``null``."""

    def __init__(self, allowed: Sequence[str]) -> None:
        parts: list[str] = []
        for index, entry in enumerate(allowed):
            if not isinstance(entry, str) or not (entry == "null" or _ORIGIN.fullmatch(entry)):
                raise ValueError(
                    f"websocket: allowed_origins[{index}]: expected 'null' or scheme://host[:port] "
                    f"(port '*' for any), got {entry!r}"
                )
            if entry.endswith(":*"):
                parts.append(re.escape(entry[:-2]) + r"(?::[0-9]{1,5})?")
            else:
                parts.append(re.escape(entry))
        self.allowed = tuple(allowed)
        self._pattern = re.compile("|".join(parts)) if parts else None

    def allows(self, origin: str | None) -> bool:
        if origin is None:
            return True
        return self._pattern is not None and self._pattern.fullmatch(origin) is not None


def required_token(host: str, token_env: str | None) -> str | None:
    """The token clients must send, or None; refuses a non-loopback ``host`` without one."""
    token = None
    if token_env is not None:
        token = os.environ.get(token_env) or None
        if token is None:
            raise ValueError(
                f"websocket: token_env names {token_env!r}, but that environment variable is unset or empty"
            )
    if token is None and not is_local(f"tcp://{host}:0"):
        raise ValueError(
            f"websocket: host {host!r} is not a loopback address: set token_env to the name of an environment "
            "variable holding a token that clients must send (anyone who can reach the port could read every "
            "metric otherwise), or bind 127.0.0.1"
        )
    return token


def presented_token(path: str, authorization: str | None) -> str | None:
    """The token a handshake carries: ``Authorization: Bearer …``, else ``?token=…``."""
    if authorization is not None:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    values = parse_qs(urlsplit(path).query).get("token")
    return values[0] if values else None


def token_matches(expected: str, presented: str | None) -> bool:
    return presented is not None and hmac.compare_digest(expected.encode(), presented.encode())

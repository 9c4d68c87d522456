"""CURVE keys: the one type that configures a socket, the key files, and the ``broker.curve``
section of a config.

Key files are the certificate files ``zmq.auth`` writes and reads (``metricbus keys NAME``
makes a pair). A client holds its own pair and the broker's public key; the broker holds
its pair. :mod:`bus.security` finds the keys a process uses (config or environment) and
runs the broker's authenticator; this module is below :mod:`bus.config`, which uses it to
check the config's key files at load.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import zmq
import zmq.auth

from bus.options import Where

CURVE_KEYS: Final = ("server_secret_file", "authorized_dir", "client_secret_file", "server_public_file")
_LOCAL_HOSTS: Final = frozenset({"localhost", "lo", "ip6-localhost"})


@dataclass(frozen=True)
class CurveKeys:
    """One end's CURVE keys: its own pair and, for a client, the broker's public key.

    ``server`` None means these are the broker's own keys (a CURVE server).
    """

    secret: bytes
    public: bytes
    server: bytes | None = None

    def apply(self, sock: zmq.Socket[Any]) -> None:
        """Make ``sock`` a CURVE client of ``server``, or a CURVE server; before connect/bind."""
        if self.server is None:
            sock.curve_server = True
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        if self.server is not None:
            sock.curve_serverkey = self.server

    def as_client(self) -> CurveKeys:
        """The broker's own pair as a client of itself (the broker always lets its own key in)."""
        return CurveKeys(self.secret, self.public, self.public)


def client_keys(curve: CurveKeys | Mapping[str, bytes] | None) -> CurveKeys | None:
    """Keys from a :class:`CurveKeys` or a mapping with ``secret``, ``public``, ``server``.

    An empty mapping (``curve={}``) means plain, on purpose.
    """
    if curve is None or isinstance(curve, CurveKeys):
        return curve
    if not curve:
        return None
    return CurveKeys(curve["secret"], curve["public"], curve["server"])


@dataclass(frozen=True)
class CurveConfig:
    """CURVE key files (absolute paths), for either end of the bus.

    The broker needs ``server_secret_file`` and ``authorized_dir`` (the clients' public
    keys it lets in). A client (publisher, sampler, sink) needs its own
    ``client_secret_file`` and the broker's ``server_public_file``; on the broker's own
    node, clients without a pair of their own use the server's pair.
    """

    server_secret_file: str | None = None
    authorized_dir: str | None = None
    client_secret_file: str | None = None
    server_public_file: str | None = None


# -- key files ------------------------------------------------------------------------------------


def load_pair(path: str, what: str) -> tuple[bytes, bytes]:
    """(public, secret) from a ``.key_secret`` file; ``what`` names who needs it, for the error."""
    public, secret = zmq.auth.load_certificate(path)
    if secret is None:
        raise ValueError(f"{path} holds no secret key; {what} needs the .key_secret file")
    return public, secret


def load_public(path: str) -> bytes:
    public, _ = zmq.auth.load_certificate(path)
    return public


def parse_curve(section: Mapping[str, Any], where: Where, base: Path) -> CurveConfig:
    """The ``broker.curve`` section, with every path resolved and every key file read once."""
    for key in section:
        if key not in CURVE_KEYS:
            raise (where / key).expected(f"one of the keys {', '.join(CURVE_KEYS)} (unknown key)")
    paths: dict[str, str | None] = {}
    for key in CURVE_KEYS:
        value = section.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            raise (where / key).expected("a file path", value)
        paths[key] = str((base / Path(value).expanduser()).resolve()) if value else None
    server = paths["server_secret_file"], paths["authorized_dir"]
    client = paths["client_secret_file"], paths["server_public_file"]
    for (a, b), names in ((server, CURVE_KEYS[:2]), (client, CURVE_KEYS[2:])):
        if (a is None) != (b is None):
            missing = names[1] if b is None else names[0]
            raise (where / missing).expected(f"a path: {names[0]} and {names[1]} go together")
    if server == (None, None) and client == (None, None):
        raise where.expected(
            "server_secret_file and authorized_dir (the broker's node) "
            "or client_secret_file and server_public_file (other nodes)"
        )
    checks: list[tuple[str, str, str]] = [
        ("server_secret_file", "pair", "the broker"),
        ("client_secret_file", "pair", "a client"),
        ("server_public_file", "public", ""),
    ]
    for key, kind, who in checks:
        path = paths[key]
        if path is None:
            continue
        try:
            load_pair(path, who) if kind == "pair" else load_public(path)
        except (OSError, ValueError) as exc:
            made_by = "`metricbus keys NAME`"
            raise (where / key).expected(f"a CURVE key file made by {made_by} ({exc})", section[key]) from None
    authorized = paths["authorized_dir"]
    if authorized is not None and not Path(authorized).is_dir():
        raise (where / "authorized_dir").expected(
            "a directory holding the clients' public .key files", section["authorized_dir"]
        )
    return CurveConfig(**paths)


# -- exposure -------------------------------------------------------------------------------------


def is_local(endpoint: str) -> bool:
    """True for an endpoint only this host can reach: loopback TCP, ipc, inproc."""
    transport, _, rest = endpoint.partition("://")
    if transport != "tcp":
        return True
    host = rest.rsplit(":", 1)[0].strip("[]")
    if host in _LOCAL_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # "*", an interface name or a host name: assume reachable from elsewhere
        return False


def check_exposure(endpoints: Mapping[str, str], where: Where) -> None:
    """Refuse a non-loopback endpoint (``{key: endpoint}``) of a broker without CURVE.

    The caller skips this when CURVE is configured or ``insecure: true`` says it is meant.
    """
    for key, endpoint in endpoints.items():
        if not is_local(endpoint):
            raise (where / key).expected(
                "a loopback address unless CURVE is configured: set broker.curve (see `metricbus keys`) "
                "or, to send metrics unencrypted and unauthenticated on purpose, broker.insecure: true",
                endpoint,
            )

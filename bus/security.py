"""CURVE encryption and authentication for a bus that spans nodes (ZeroMQ's "Ironhouse").

The broker holds a server key pair and a directory of the client public keys it lets in;
ZeroMQ's own ZAP authenticator (``zmq.auth``) runs in the broker's context and checks
every connection, on the frontend (publishers) and the backend (sinks) alike. A client
holds its own key pair and the broker's public key, from the config or from the
environment, so a training script on a worker node needs no code change:

``METRICBUS_CURVE_SECRET_FILE``  the client's secret key file (``NAME.key_secret``)
``METRICBUS_CURVE_SERVER_KEY``   the broker's public key file (``broker.key``)

The keys themselves, the key files and the config section are :mod:`bus.curve`;
``metricbus keys NAME`` (:mod:`metricbus.keys`) makes a pair. Nothing here is needed on
loopback, where the default config lives.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import Any, Final

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from bus import defaults
from bus.config import Config, load_config
from bus.curve import CurveKeys, is_local, load_pair, load_public
from bus.options import ConfigError

log = logging.getLogger("metricbus.security")

ENV_SECRET_FILE: Final = "METRICBUS_CURVE_SECRET_FILE"
ENV_SERVER_KEY: Final = "METRICBUS_CURVE_SERVER_KEY"


# -- the broker side ------------------------------------------------------------------------


class KeyGate:
    """Decides, per connection, whether a client's public key may in; counts the answers.

    ZeroMQ's authenticator calls :meth:`callback` once per handshake (not per message),
    so the directory is re-read whenever it changes: a key copied into ``authorized_dir``
    lets its client in on the next connection, with no restart.
    """

    def __init__(self, authorized_dir: str, server_public: bytes) -> None:
        self.authorized_dir = authorized_dir
        self.allowed = 0
        self.denied = 0
        self._own = z85.encode(server_public) if len(server_public) == 32 else server_public
        self._keys: dict[bytes, bool] = {}
        self._stamp: tuple[Any, ...] | None = None
        self._lock = threading.Lock()
        self._logged: set[bytes] = set()
        self._auth: ThreadAuthenticator | None = None

    def callback(self, domain: str, client_key: bytes) -> bool:
        with self._lock:
            ok = client_key == self._own or client_key in self._current_keys()
            if ok:
                self.allowed += 1
            else:
                self.denied += 1
                if client_key not in self._logged and len(self._logged) < 1000:
                    self._logged.add(client_key)  # once per key: a client retrying must not flood the log
                    log.warning(
                        "refused a client whose public key %s is not in %s", client_key.decode(), self.authorized_dir
                    )
            return ok

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {"auth_allowed": self.allowed, "auth_denied": self.denied}

    def start(self, context: zmq.Context[Any]) -> None:
        """Run ZeroMQ's ZAP handler in ``context`` (it must be the server sockets' context)."""
        auth = ThreadAuthenticator(context, log=logging.getLogger("metricbus.zap"))
        auth.start()
        auth.configure_curve_callback("*", credentials_provider=self)
        self._auth = auth

    def stop(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None

    def _current_keys(self) -> dict[bytes, bool]:
        # Each file's identity, not just the directory's: a key replaced by overwriting its
        # file in place changes the file, not the directory, and must be noticed all the same.
        try:
            with os.scandir(self.authorized_dir) as entries:
                stamp: tuple[Any, ...] | None = tuple(
                    sorted((e.name, e.inode(), st.st_mtime_ns, st.st_size) for e in entries for st in [e.stat()])
                )
        except OSError:
            stamp = None
        if stamp != self._stamp or stamp is None:
            try:
                self._keys = zmq.auth.load_certificates(self.authorized_dir)
            except OSError as exc:
                log.error("cannot read authorised keys from %s: %s; letting no client in", self.authorized_dir, exc)
                self._keys = {}
            self._stamp = stamp
        return self._keys


@dataclass(frozen=True)
class BrokerCurve:
    """What a CURVE broker needs: its own keys and the gate that lets clients in."""

    keys: CurveKeys
    gate: KeyGate


def broker_curve(config: Config) -> BrokerCurve | None:
    """The broker's CURVE keys and its :class:`KeyGate`, or None when CURVE is off.

    Also where an insecure non-loopback broker is announced, since every broker start
    passes here.
    """
    broker = config.broker
    curve = broker.curve
    if curve is None:
        exposed = [e for e in (broker.frontend, broker.backend) if not is_local(e)]
        if exposed:
            log.warning(
                "broker.insecure: true: binding %s WITHOUT encryption or authentication; anyone who can reach "
                "it can read and inject metrics (see `metricbus keys` and the README's 'Several nodes')",
                " and ".join(exposed),
            )
        return None
    if curve.server_secret_file is None or curve.authorized_dir is None:
        where = f"{config.path or '<config>'}: broker.curve"
        raise ConfigError(
            f"{where}: expected server_secret_file and authorized_dir to run the broker "
            "(this config only has a client's keys)"
        )
    public, secret = load_pair(curve.server_secret_file, "the broker")
    return BrokerCurve(CurveKeys(secret, public), KeyGate(curve.authorized_dir, public))


# -- the client side ------------------------------------------------------------------------


def client_curve(config: Config) -> CurveKeys | None:
    """A client's keys from ``config`` (its own pair and the server's public key), or None.

    On the broker's node a config may name only the server's pair: its clients then use
    it (the broker always lets its own key in).
    """
    curve = config.broker.curve
    if curve is None:
        return None
    if curve.client_secret_file is not None and curve.server_public_file is not None:
        public, secret = load_pair(curve.client_secret_file, "a client")
        return CurveKeys(secret, public, load_public(curve.server_public_file))
    assert curve.server_secret_file is not None  # parse_curve guarantees one pair or the other
    public, secret = load_pair(curve.server_secret_file, "the broker")
    return CurveKeys(secret, public).as_client()


def env_curve() -> CurveKeys | None:
    """A client's keys from ``METRICBUS_CURVE_SECRET_FILE`` and ``METRICBUS_CURVE_SERVER_KEY``."""
    secret_file = os.environ.get(ENV_SECRET_FILE)
    server_file = os.environ.get(ENV_SERVER_KEY)
    if not secret_file and not server_file:
        return None
    if not secret_file or not server_file:
        missing = ENV_SERVER_KEY if secret_file else ENV_SECRET_FILE
        given = ENV_SECRET_FILE if secret_file else ENV_SERVER_KEY
        raise ConfigError(f"{given} is set but {missing} is not; CURVE needs both")
    try:
        public, secret = load_pair(secret_file, "a client")
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{ENV_SECRET_FILE}={secret_file}: not a CURVE secret key file ({exc})") from None
    try:
        server = load_public(server_file)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{ENV_SERVER_KEY}={server_file}: not a CURVE public key file ({exc})") from None
    return CurveKeys(secret, public, server)


def default_client_curve() -> CurveKeys | None:
    """What a publisher given no keys uses: the environment's, else ``METRICBUS_CONFIG``'s."""
    keys = env_curve()
    if keys is not None:
        return keys
    path = os.environ.get(defaults.ENV_CONFIG)
    if path:
        return client_curve(load_config(path))
    return None

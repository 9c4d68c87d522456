"""``metricbus keys NAME [--dir DIR]``: a CURVE key pair for the broker or a client.

The files are the certificate files ``zmq.auth`` writes and reads; :mod:`bus.security`
loads them.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import zmq.auth


def cmd_keys(args: argparse.Namespace) -> int:
    """``metricbus keys NAME [--dir DIR]``: write ``DIR/NAME.key`` and ``DIR/NAME.key_secret``."""
    directory = Path(args.dir)
    name = str(args.name)
    if not name or "/" in name or name.startswith("."):
        print(f"metricbus: keys: {name!r} is not a usable key name (no '/', no leading '.')", flush=True)
        return 2
    public_file = directory / f"{name}.key"
    secret_file = directory / f"{name}.key_secret"
    for existing in (public_file, secret_file):
        if existing.exists():
            print(f"metricbus: keys: {existing} exists; remove it first to make a new pair", flush=True)
            return 1
    directory.mkdir(parents=True, exist_ok=True)
    old_umask = os.umask(0o077)  # the secret file must never be readable by others, not even briefly
    try:
        zmq.auth.create_certificates(directory, name)
    finally:
        os.umask(old_umask)
    public_file.chmod(0o644)
    print(f"public key  {public_file}  (copy this one; it is not a secret)")
    print(f"secret key  {secret_file}  (stays on the node that uses it)")
    print(
        "broker: name its pair as broker.curve.server_secret_file, and copy each client's .key "
        "into broker.curve.authorized_dir;\nclient: set METRICBUS_CURVE_SECRET_FILE to its .key_secret "
        "and METRICBUS_CURVE_SERVER_KEY to the broker's .key"
    )
    return 0

"""CURVE's cost: throughput and publish() cost with and without encryption, in one run.

Four paths, each carrying the same SB3-like metrics message ``--count`` times:

- metricbus plain:  ``Publisher`` -> ``Broker`` (XSUB/XPUB proxy) -> SUB, on loopback
- metricbus CURVE:  the same with the broker's CURVE keys and ZAP authenticator, clients keyed
- raw plain:        a bare pyzmq PUB -> SUB with pre-packed frames (the reference)
- raw CURVE:        the same bare pair with CURVE keys

Throughput is messages received per second, first send to last receive; publish cost is the
time the sending loop spends per call. The ratios that count are CURVE / plain, for
metricbus and for raw pyzmq side by side: the first should be no worse than the second.

    .venv/bin/python bench/bench_curve.py            # 200k messages, best of 3
    .venv/bin/python bench/bench_curve.py --quick    # 20k messages, 1 round
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import zmq
import zmq.auth

from bus.broker import Broker
from bus.config import BrokerConfig
from bus.curve import CurveKeys
from bus.message import Message, encode
from bus.publisher import Publisher
from bus.security import BrokerCurve, KeyGate
from bus.testing import free_port

DATA: dict[str, Any] = {
    "train/value_loss": 0.12,
    "train/policy_gradient_loss": -0.01,
    "train/entropy_loss": -0.68,
    "train/approx_kl": 0.004,
    "train/clip_fraction": 0.1,
    "train/learning_rate": 3e-4,
    "rollout/ep_rew_mean": 150.0,
    "time/fps": 1500,
}


class Keys:
    """A server pair and one authorised client pair, made with zmq.auth as `metricbus keys` does."""

    def __init__(self, directory: Path) -> None:
        authorized = directory / "authorized"
        authorized.mkdir()
        zmq.auth.create_certificates(directory, "server")
        client_public_file, _ = zmq.auth.create_certificates(directory, "client")
        Path(client_public_file).rename(authorized / "client.key")
        self.authorized = str(authorized)
        self.server_public, server_secret = zmq.auth.load_certificate(directory / "server.key_secret")
        client_public, client_secret = zmq.auth.load_certificate(directory / "client.key_secret")
        assert server_secret is not None and client_secret is not None
        self.server_secret = server_secret
        self.client = {"secret": client_secret, "public": client_public, "server": self.server_public}


def _start_counter(sub: zmq.Socket[Any], count: int) -> tuple[threading.Thread, list[float]]:
    """A thread counting ``count`` messages on ``sub``; ``done`` gets the time the last one came."""
    done: list[float] = []
    started = threading.Event()
    thread = threading.Thread(target=_counter, args=(sub, count, done, started))
    thread.start()
    started.wait()
    return thread, done


def _counter(sock: zmq.Socket[Any], count: int, done: list[float], started: threading.Event) -> None:
    started.set()
    for _ in range(count):
        sock.recv_multipart()
    done.append(time.perf_counter())


def _sub(context: zmq.Context[Any], endpoint: str, curve: dict[str, bytes] | None) -> zmq.Socket[Any]:
    sub: zmq.Socket[Any] = context.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVTIMEO, 30_000)  # a stalled path fails the bench instead of hanging it
    if curve:
        sub.curve_secretkey, sub.curve_publickey, sub.curve_serverkey = (
            curve["secret"],
            curve["public"],
            curve["server"],
        )
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(endpoint)
    return sub


def _wait_path(send: Callable[[], None], sub: zmq.Socket[Any]) -> None:
    """Send probes until one arrives, then drain: the subscription is live end to end."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        send()
        if sub.poll(50, zmq.POLLIN):
            while sub.poll(100, zmq.POLLIN):
                sub.recv_multipart()
            return
    raise RuntimeError("the path never opened")


def metricbus_path(keys: Keys | None, count: int) -> tuple[float, float]:
    """(messages/s, µs per publish call) through Publisher -> Broker -> SUB."""
    config = BrokerConfig(frontend=f"tcp://127.0.0.1:{free_port()}", backend=f"tcp://127.0.0.1:{free_port()}")
    curve: BrokerCurve | None = None
    client: dict[str, bytes] = {}
    if keys is not None:
        curve = BrokerCurve(
            CurveKeys(keys.server_secret, keys.server_public), KeyGate(keys.authorized, keys.server_public)
        )
        client = keys.client
    broker = Broker(config, curve)
    broker.start()
    context: zmq.Context[Any] = zmq.Context()
    try:
        sub = _sub(context, config.backend, client or None)
        pub = Publisher(
            config.frontend, run="bench", node="bench", curve=client, heartbeat_interval=1e9, hwm=count + 10_000
        )
        _wait_path(lambda: pub.metrics({"probe": 1}), sub)
        thread, done = _start_counter(sub, count)
        t0 = time.perf_counter()
        for step in range(count):
            pub.metrics(DATA, step=step)
        sent = time.perf_counter()
        thread.join(60)
        assert done and pub.dropped == 0, "messages were lost; raise the HWMs"
        pub.close()
        sub.close()
        return count / (done[0] - t0), (sent - t0) / count * 1e6
    finally:
        context.term()
        broker.stop()


def raw_path(keys: Keys | None, count: int) -> tuple[float, float]:
    """(messages/s, µs per send) through a bare PUB -> SUB with pre-packed frames."""
    frames = encode(Message("metrics", "bench", "bench", "raw", 0, time.time(), 0, DATA))
    # One context per end, as a training process and a sink process each have their own
    # (so each end has its own I/O thread doing its half of the encryption).
    context: zmq.Context[Any] = zmq.Context()
    sub_context: zmq.Context[Any] = zmq.Context()
    auth = None
    try:
        endpoint = f"tcp://127.0.0.1:{free_port()}"
        pub = context.socket(zmq.PUB)
        pub.setsockopt(zmq.SNDHWM, 0)
        pub.setsockopt(zmq.LINGER, 0)
        client = None
        if keys is not None:
            auth = KeyGate(keys.authorized, keys.server_public)
            auth.start(context)
            pub.curve_server = True
            pub.curve_secretkey, pub.curve_publickey = keys.server_secret, keys.server_public
            client = keys.client
        pub.bind(endpoint)
        sub = _sub(sub_context, endpoint, client)
        _wait_path(lambda: pub.send_multipart(frames), sub)
        thread, done = _start_counter(sub, count)
        t0 = time.perf_counter()
        for _ in range(count):
            pub.send_multipart(frames)
        sent = time.perf_counter()
        thread.join(60)
        assert done, "raw messages were lost"
        pub.close()
        sub.close()
        return count / (done[0] - t0), (sent - t0) / count * 1e6
    finally:
        if auth is not None:
            auth.stop()
        context.term()
        sub_context.term()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3, help="best of this many rounds")
    parser.add_argument("--quick", action="store_true", help="20k messages, 1 round")
    args = parser.parse_args()
    if args.quick:
        args.count, args.rounds = 20_000, 1
    with tempfile.TemporaryDirectory() as tmp:
        keys = Keys(Path(tmp))
        paths: dict[str, Callable[[], tuple[float, float]]] = {
            "metricbus plain": lambda: metricbus_path(None, args.count),
            "metricbus CURVE": lambda: metricbus_path(keys, args.count),
            "raw pyzmq plain": lambda: raw_path(None, args.count),
            "raw pyzmq CURVE": lambda: raw_path(keys, args.count),
        }
        for name in paths:  # warm-up: imports, first connections and CPU caches, untimed
            (metricbus_path if name.startswith("metricbus") else raw_path)(keys if "CURVE" in name else None, 2000)
        best: dict[str, tuple[float, float]] = {}
        for _ in range(args.rounds):
            for name, measure in paths.items():  # interleaved, so drift hits every path alike
                rate, cost = measure()
                old = best.get(name)
                best[name] = (max(rate, old[0]), min(cost, old[1])) if old else (rate, cost)
    print(f"{args.count} messages of {len(DATA)} scalars, best of {args.rounds}\n")
    print("| path | msg/s | publish µs/call |")
    print("|---|---:|---:|")
    for name, (rate, cost) in best.items():
        print(f"| {name} | {rate:,.0f} | {cost:.2f} |")
    print()
    for who in ("metricbus", "raw pyzmq"):
        plain, curve = best[f"{who} plain"], best[f"{who} CURVE"]
        print(f"{who}: CURVE/plain throughput {curve[0] / plain[0]:.2f}x, publish cost {curve[1] / plain[1]:.2f}x")
    mb, raw = best["metricbus CURVE"], best["raw pyzmq CURVE"]
    print(f"metricbus CURVE vs raw CURVE: throughput {mb[0] / raw[0]:.2f}x, publish cost {mb[1] / raw[1]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

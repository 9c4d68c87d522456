"""The ``websocket`` sink: latency to a client, fan-out cost, and the dashboard pushed to.

Each figure is beside its raw reference in the same run: a bare pyzmq SUB socket on the
broker's backend receiving the same messages (what any client of the bus could do without
the sink). The stack is real: ``metricbus up`` with the broker and the sink as processes.

1. publish → received by one WebSocket client, p50/p99, at 1,000 msg/s (target p99 ≤ 20 ms).
2. 50 clients at 5,000 msg/s: messages delivered and dropped, the sink process's CPU per
   message beside a bare SUB process's CPU per message (recv + msgpack decode), and the
   latency one of the 50 sees.
3. publish → visible in the dashboard in Chromium (p50/p95), pushed by the websocket sink,
   beside the same page polling once a second (bench/bench_dashboard.py's measure), same run.

    .venv/bin/python bench/bench_websocket.py            # 10 s at each rate, 30 dashboard points
    .venv/bin/python bench/bench_websocket.py --quick    # 3 s at each rate, 10 dashboard points
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import psutil
import zmq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_raw import DATA, raw_sub  # noqa: E402

from bus.publisher import Publisher  # noqa: E402


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def publish_paced(pub: Publisher, rate: float, count: int) -> float:
    """``count`` messages at ``rate`` per second (a schedule, so a late one does not slow the rest)."""
    started = time.perf_counter()
    for i in range(count):
        due = started + i / rate
        pause = due - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        pub.metrics(DATA, step=i)
    return time.perf_counter() - started


class RawSub(threading.Thread):
    """The reference: a bare SUB on the backend; latency = receipt time - the message's ts."""

    def __init__(self, backend: str, topic: bytes, count: int) -> None:
        super().__init__(daemon=True)
        self.context = zmq.Context()
        self.sub = self.context.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.RCVHWM, 1_000_000)
        self.sub.setsockopt(zmq.SUBSCRIBE, topic)
        self.sub.connect(backend)
        self.count = count
        self.latency: list[float] = []

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sub, zmq.POLLIN)
        deadline = time.monotonic() + 120
        while len(self.latency) < self.count and time.monotonic() < deadline:
            if poller.poll(200):
                _, payload = self.sub.recv_multipart()
                now = time.time()
                self.latency.append(now - msgpack.unpackb(payload)["ts"])
        self.sub.close()
        self.context.term()


class WsClient(threading.Thread):
    """One websockets client (sync API); latency = receipt time - the message's ts."""

    def __init__(self, url: str, topics: list[str], count: int) -> None:
        super().__init__(daemon=True)
        from websockets.sync.client import connect

        self._exit = contextlib.ExitStack()
        self.ws = self._exit.enter_context(connect(url, open_timeout=10, max_size=None))
        self.ws.send(json.dumps({"type": "subscribe", "topics": topics}))
        assert json.loads(self.ws.recv(timeout=10))["type"] == "snapshot"
        self.count = count
        self.latency: list[float] = []
        self.dropped = 0

    def run(self) -> None:
        deadline = time.monotonic() + 120
        while len(self.latency) + self.dropped < self.count and time.monotonic() < deadline:
            try:
                raw = self.ws.recv(timeout=1)
            except TimeoutError:
                continue
            now = time.time()
            frame = json.loads(raw)
            if frame["type"] == "messages":
                self.latency += [now - m["ts"] for m in frame["messages"]]
            elif frame["type"] == "dropped":
                self.dropped += frame["count"]
        self._exit.close()


def stack(tmp: Path, port: int, extra_sinks: dict[str, Any] | None = None) -> Any:
    from support import Stack

    sinks = {"ws": {"type": "websocket", "port": port, "topics": ["metrics/"], "client_queue": 100_000}}
    return Stack(tmp, sinks={**sinks, **(extra_sinks or {})}).start()


def part_latency(rate: float, seconds: float) -> dict[str, Any]:
    from support import free_port

    count = int(rate * seconds)
    with tempfile.TemporaryDirectory(prefix="bench-ws-") as tmp:
        port = free_port()
        s = stack(Path(tmp), port)
        try:
            raw = RawSub(s.backend, b"metrics/lat", count)
            client = WsClient(f"ws://127.0.0.1:{port}", ["metrics/lat"], count)
            raw.start()
            client.start()
            with Publisher(s.frontend, run="lat") as pub:
                time.sleep(0.5)  # the SUB's subscription reaches the broker (the ws client's is the sink's)
                publish_paced(pub, rate, count)
                raw.join(60)
                client.join(60)
        finally:
            s.stop()
    return {"count": count, "raw": raw.latency, "ws": client.latency, "dropped": client.dropped}


# -- fan-out: the clients live in a process of their own, so the sink is measured, not them ---------


def _fanout_clients(url: str, clients: int, count: int, ready: Any, out: Any, timed: bool) -> None:
    import websockets
    from websockets.asyncio.client import connect

    async def one(index: int, counts: list[int], dropped: list[int], latency: list[float]) -> None:
        async with connect(url, open_timeout=30, max_size=None) as ws:
            await ws.send(json.dumps({"type": "subscribe", "topics": ["metrics/fan"]}))
            await ws.recv()
            counts[index] = 0
            try:
                while counts[index] + dropped[index] < count:
                    raw = await asyncio.wait_for(ws.recv(), 30)
                    now = time.time()
                    if index == 0 and timed:  # one client decodes, to time what a client sees
                        frame = json.loads(raw)
                        if frame["type"] == "messages":
                            latency += [now - m["ts"] for m in frame["messages"]]
                            counts[0] += len(frame["messages"])
                        elif frame["type"] == "dropped":
                            dropped[0] += frame["count"]
                    elif raw.startswith('{"type":"messages"'):
                        counts[index] += raw.count('{"v":1,')  # each message's payload starts so
                    elif raw.startswith('{"type":"dropped"'):
                        dropped[index] += json.loads(raw)["count"]
            except (TimeoutError, websockets.ConnectionClosed):
                pass

    async def main() -> None:
        counts, dropped, latency = [-1] * clients, [0] * clients, []
        tasks = [asyncio.create_task(one(i, counts, dropped, latency)) for i in range(clients)]
        while min(counts) < 0:
            await asyncio.sleep(0.05)
        ready.set()
        cpu0 = time.process_time()
        await asyncio.gather(*tasks)
        out.put({"counts": counts, "dropped": dropped, "latency": latency, "client_cpu": [time.process_time() - cpu0]})

    asyncio.run(main())


def _raw_sub_cpu(backend: str, count: int, ready: Any, out: Any) -> None:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sub = raw_sub(context, backend, b"metrics/fan", 1_000_000)
    time.sleep(0.5)
    ready.set()
    received = 0
    sub.setsockopt(zmq.RCVTIMEO, 30_000)
    cpu0 = None
    try:
        while received < count:
            _, payload = sub.recv_multipart()
            if cpu0 is None:
                cpu0 = time.process_time()
            msgpack.unpackb(payload)
            received += 1
    except zmq.Again:
        pass
    out.put({"received": received, "cpu": time.process_time() - (cpu0 or time.process_time())})
    sub.close(linger=0)
    context.term()


def part_fanout(clients: int, rate: float, seconds: float, processes: int = 5) -> dict[str, Any]:
    from support import free_port

    count = int(rate * seconds)
    spawn = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="bench-ws-") as tmp:
        port = free_port()
        s = stack(Path(tmp), port)
        try:
            sink = psutil.Process(s.child_pid("sink ws"))
            # 5 processes of 10 clients: the clients' own parsing must not be what is measured
            url, out = f"ws://127.0.0.1:{port}", spawn.Queue()
            readies = [spawn.Event() for _ in range(processes)]
            procs = [
                spawn.Process(target=_fanout_clients, args=(url, clients // processes, count, r, out, i == 0))
                for i, r in enumerate(readies)
            ]
            for proc in procs:
                proc.start()
            raw_ready, raw_out = spawn.Event(), spawn.Queue()
            raw = spawn.Process(target=_raw_sub_cpu, args=(s.backend, count, raw_ready, raw_out))
            raw.start()
            assert all(r.wait(60) for r in readies) and raw_ready.wait(60), "clients did not connect"
            with Publisher(s.frontend, run="fan") as pub:
                cpu0 = sum(sink.cpu_times()[:2])
                took = publish_paced(pub, rate, count)
                parts = [out.get(timeout=120) for _ in procs]
                cpu = sum(sink.cpu_times()[:2]) - cpu0
            result = {key: [v for p in parts for v in p[key]] for key in ("counts", "dropped", "latency", "client_cpu")}
            raw_result = raw_out.get(timeout=60)
            for proc in procs:
                proc.join(30)
            raw.join(30)
        finally:
            s.stop()
    return {"count": count, "took": took, "cpu": cpu, **result, "raw": raw_result}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 s at each rate, 10 dashboard points")
    args = parser.parse_args()
    seconds = 3.0 if args.quick else 10.0
    points = 10 if args.quick else 30

    lat = part_latency(1000, seconds)
    ws = [1000 * v for v in lat["ws"]]
    raw = [1000 * v for v in lat["raw"]]
    print(f"publish → received, {lat['count']} messages at 1,000 msg/s:")
    print(
        f"  websocket client: p50 {pct(ws, 50):.2f} ms, p99 {pct(ws, 99):.2f} ms"
        f" ({len(ws)} received, {lat['dropped']} dropped)"
    )
    print(f"  raw pyzmq SUB on the backend: p50 {pct(raw, 50):.2f} ms, p99 {pct(raw, 99):.2f} ms")
    print(f"  ratio: p50 {pct(ws, 50) / pct(raw, 50):.1f}×, p99 {pct(ws, 99) / pct(raw, 99):.1f}×")

    fan = part_fanout(50, 5000, seconds)
    got, dropped = sum(fan["counts"]), sum(fan["dropped"])
    per_msg = 1e6 * fan["cpu"] / fan["count"]
    raw_per_msg = 1e6 * fan["raw"]["cpu"] / max(1, fan["raw"]["received"])
    lat50 = [1000 * v for v in fan["latency"]]
    print(f"50 clients at 5,000 msg/s ({fan['count']} messages published in {fan['took']:.1f} s):")
    print(f"  delivered {got} of {50 * fan['count']} ({100 * got / (50 * fan['count']):.2f} %), dropped {dropped}")
    print(f"  sink CPU {fan['cpu']:.2f} s = {per_msg:.0f} µs per message ({per_msg / 50:.1f} µs per message, client)")
    print(f"  raw pyzmq SUB process (recv + msgpack decode): {raw_per_msg:.1f} µs per message"
          f" ({fan['raw']['received']} received); ratio {per_msg / raw_per_msg:.0f}×")  # fmt: skip
    print(
        f"  latency seen by one of the 50: p50 {pct(lat50, 50):.1f} ms, p99 {pct(lat50, 99):.1f} ms"
        f" (the 50 clients' own processes used {sum(fan['client_cpu']):.2f} s CPU, competing with the sink for 2 cores)"
    )

    from bench_dashboard import part_latency as dashboard_latency

    pushed = dashboard_latency(points, websocket=True)
    polled = dashboard_latency(points, websocket=False)
    for name, result in (("pushed (websocket sink)", pushed), ("polled every 1 s", polled)):
        vis = [1000 * v for v in result["visible"]]
        raw = [1000 * v for v in result["raw"]]
        print(f"publish → visible in the dashboard in Chromium, {name}, {points} points:")
        print(f"  dashboard: median {statistics.median(vis):.0f} ms, p95 {pct(vis, 95):.0f} ms")
        print(f"  raw pyzmq SUB on the backend: median {statistics.median(raw):.2f} ms, p95 {pct(raw, 95):.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())

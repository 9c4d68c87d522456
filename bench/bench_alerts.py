"""What the alert engine costs per message, and whether it keeps up with a busy bus.

    .venv/bin/python bench/bench_alerts.py [--quick] [--rates 25000,50000,100000] [--seconds S]

Two figures, each beside its reference in the same invocation:

1. cost per message (in process): ``AlertEngine.handle`` with the default rule set
   (``configs/alerts.yaml``) on a realistic mix — 8 runs on 2 nodes: SB3 metric dumps
   (16 scalars incl. grad/*), episodes (reward, length, time, is_success), system samples
   (cpu, mem, 2 GPUs), heartbeats — against ``bus.message.decode`` of the same messages,
   the least any sink pays per message. Median of repeats, µs/msg and the ratio;
2. keeping up (live): a broker and publisher processes on loopback send the same mix at a
   fixed rate; a ``SinkRunner`` runs the engine (and, as the reference, a sink that does
   nothing) and records the lag (receive time − message ``ts``) over time. The engine keeps
   up when every message arrives and the lag in the last second is not above the first
   second's by more than 0.25 s; otherwise it says where it stopped.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from alerts.engine import AlertEngine  # noqa: E402  (after the path tweak, to run from a checkout)
from bus.message import Message, decode, encode  # noqa: E402
from bus.subscriber import SinkRunner  # noqa: E402
from bus.testing import free_port  # noqa: E402  (after the path tweak)

RUNS = [f"ppo-{i}" for i in range(8)]
NODES = ["gpu-a", "gpu-b"]


def mix(count: int, start_ts: float = 1.7e9) -> list[Message]:
    """``count`` messages: per 100, 80 episodes, 10 metric dumps, 5 system samples, 5 heartbeats."""
    out: list[Message] = []
    for i in range(count):
        run = RUNS[i % len(RUNS)]
        node = NODES[i % len(NODES)]
        slot = i % 100
        ts = start_ts + i * 1e-4
        step = i * 8
        data: dict[str, Any]
        if slot < 80:
            kind, data = "episode", {"reward": 100.0 + (i % 37), "length": 200, "time": 1.5, "is_success": i % 3 != 0}
        elif slot < 90:
            kind = "metrics"
            data = {
                "train/loss": 0.5 + (i % 11) * 0.01, "train/value_loss": 1.0 + (i % 7) * 0.02,
                "train/policy_gradient_loss": -0.01, "train/entropy_loss": -0.6, "train/approx_kl": 0.01,
                "train/clip_fraction": 0.1, "train/learning_rate": 3e-4, "train/explained_variance": 0.8,
                "train/n_updates": i, "rollout/ep_rew_mean": 150.0 + (i % 13), "rollout/ep_len_mean": 180.0,
                "time/fps": 1500, "grad/global_norm": 0.8, "grad/zeros_ratio": 0.01, "grad/nonfinite": 0,
                "grad/layer/pi.0/norm": 0.3,
            }  # fmt: skip
        elif slot < 95:
            kind, run = "system", None  # type: ignore[assignment]
            data = {
                "cpu/percent": 55.0, "mem/percent": 40.0, "gpu/0/mem_used_bytes": 4e9, "gpu/0/mem_total_bytes": 8e10,
                "gpu/0/temp_c": 60, "gpu/1/mem_used_bytes": 3e9, "gpu/1/mem_total_bytes": 8e10, "gpu/1/temp_c": 58,
            }  # fmt: skip
        else:
            kind, data = "event", {"event": "heartbeat", "sent": i, "dropped": 0}
        out.append(Message(kind, run, node, f"{node}:1:{run}", i, ts, step, data))
    return out


def _median_us(fn: Any, count: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) / count * 1e6)
    return statistics.median(times)


def bench_cost(count: int, repeats: int) -> tuple[float, float]:
    messages = mix(count)
    frames = [encode(m) for m in messages]
    decode_us = _median_us(lambda: [decode(f) for f in frames], count, repeats)
    engine = AlertEngine(rules=None, restore=False)
    try:
        engine.handle(messages)  # warm: plans and series built once, as in a long run
        batches = [messages[i : i + 1000] for i in range(0, count, 1000)]

        def run() -> None:
            for batch in batches:
                engine.handle(batch)

        engine_us = _median_us(run, count, repeats)
    finally:
        engine.close()
    return decode_us, engine_us


# -- live ------------------------------------------------------------------------------------


class Lagging:
    """Wraps a sink; records (receive time, lag of the batch's last message) per batch."""

    def __init__(self, inner: Any | None) -> None:
        self.inner = inner
        self.samples: list[tuple[float, float]] = []
        self.count = 0

    def handle(self, batch: Sequence[Message]) -> None:
        if self.inner is not None:
            self.inner.handle(batch)
        now = time.time()
        self.count += len(batch)
        self.samples.append((now, now - batch[-1].ts))

    def flush(self) -> None:
        if self.inner is not None:
            self.inner.flush()

    def close(self) -> None:
        if self.inner is not None:
            self.inner.close()


PUBLISHER = r"""
import sys, time
sys.path.insert(0, sys.argv[5])
from bench.bench_alerts import mix
from bus.publisher import Publisher
endpoint, rate, seconds, offset = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
templates = mix(1000)
pub = Publisher(endpoint, run=None, node="bench", heartbeat_interval=1e9)
print("ready", flush=True)
sys.stdin.readline()
start = time.monotonic()
sent = 0
total = int(rate * seconds)
while sent < total:
    due = int((time.monotonic() - start) * rate)
    if due <= sent:
        time.sleep(0.001)
        continue
    for i in range(sent, min(due, total)):
        m = templates[(i + offset) % 1000]
        pub.forward({"v": 1, "kind": m.kind, "run": m.run, "node": m.node, "pub": pub.pub, "seq": i,
                     "ts": time.time(), "step": m.step, "data": m.data})
    sent = min(due, total)
elapsed = time.monotonic() - start
pub.close()
print(pub.sent, pub.dropped, elapsed, flush=True)
"""


def live(rate: float, seconds: float, with_engine: bool, workdir: Path) -> dict[str, Any]:
    frontend, backend = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    config = workdir / f"bus-{os.getpid()}-{int(rate)}-{int(with_engine)}.yaml"
    config.write_text(f"broker: {{frontend: '{frontend}', backend: '{backend}', stats_interval: 3600}}\nsinks: {{}}\n")
    ready = workdir / "broker.ready"
    ready.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    broker = subprocess.Popen(
        [sys.executable, "-m", "metricbus", "broker", "--config", str(config), "--ready-file", str(ready)],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    publisher: subprocess.Popen[str] | None = None
    try:
        while not ready.exists():
            if broker.poll() is not None:
                raise RuntimeError("broker did not start")
            time.sleep(0.05)
        inner = AlertEngine(rules=None, restore=False) if with_engine else None
        sink = Lagging(inner)
        runner = SinkRunner(sink, name="bench", backend=backend, frontend=frontend, topics=[""], catch=False)
        thread = threading.Thread(target=runner.run, daemon=True)
        thread.start()
        runner.ready.wait(30)
        publisher = subprocess.Popen(
            [sys.executable, "-c", PUBLISHER, frontend, str(rate), str(seconds), "0", str(REPO)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        assert publisher.stdin is not None and publisher.stdout is not None
        assert publisher.stdout.readline().strip() == "ready"
        publisher.stdin.write("go\n")
        publisher.stdin.flush()
        words = publisher.stdout.readline().split()
        sent, dropped, elapsed = int(words[0]), int(words[1]), float(words[2])
        publisher.wait(30)
        end = time.time()
        expected = sent
        while sink.count < expected and time.time() < end + 10:
            time.sleep(0.05)  # the sink drains what is queued; bounded
        drained_after = time.time() - end
        runner.stop()
        thread.join(30)
    finally:
        if publisher is not None and publisher.poll() is None:
            publisher.kill()
            publisher.wait()
        broker.terminate()
        broker.wait(30)
    samples = sink.samples
    t0 = samples[0][0] if samples else 0.0
    first = [lag for t, lag in samples if t - t0 <= 1.0]
    last = [lag for t, lag in samples if t >= samples[-1][0] - 1.0] if samples else []
    lag_first = statistics.median(first) if first else math.nan
    lag_last = statistics.median(last) if last else math.nan
    kept_up = sink.count >= sent and lag_last <= lag_first + 0.25
    return {
        "sent": sent,
        "achieved": sent / elapsed if elapsed > 0 else math.nan,
        "dropped": dropped,
        "received": sink.count,
        "lag_first": lag_first,
        "lag_last": lag_last,
        "lag_max": max((lag for _, lag in samples), default=math.nan),
        "drain_s": drained_after,
        "kept_up": kept_up,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small counts, one rate (50k msg/s), 2 s")
    parser.add_argument("--rates", default="25000,50000,100000", help="msg/s to try, comma-separated")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per live rate")
    args = parser.parse_args(argv)
    count, repeats = (20_000, 3) if args.quick else (100_000, 7)
    rates = [50_000.0] if args.quick else [float(r) for r in args.rates.split(",")]
    seconds = 2.0 if args.quick else args.seconds

    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}; load {os.getloadavg()[0]:.1f}")
    decode_us, engine_us = bench_cost(count, repeats)
    print(f"\n1. cost per message, default rules ({count} messages, median of {repeats}):")
    print(f"   decode (reference)      {decode_us:7.2f} µs/msg")
    print(f"   AlertEngine.handle      {engine_us:7.2f} µs/msg   ratio {engine_us / decode_us:.2f}× decode")
    ceiling = 1e6 / (decode_us + engine_us)
    print(f"   decode + engine: one core's ceiling ≈ {ceiling / 1000:.0f}k msg/s")

    print(f"\n2. keeping up, live over loopback ({seconds:g} s per rate; lag = receive time − ts):")
    print("   rate  sink          sent  achieved  dropped  received   lag@1s  lag@end  lag max  keeps up")
    with tempfile.TemporaryDirectory() as tmp:
        for rate in rates:
            for with_engine in (False, True):
                r = live(rate, seconds, with_engine, Path(tmp))
                name = "alerts" if with_engine else "null (ref)"
                print(
                    f"   {rate / 1000:4.0f}k {name:10s} {r['sent']:8d} {r['achieved'] / 1000:7.1f}k {r['dropped']:8d}"
                    f" {r['received']:9d}"
                    f"  {r['lag_first'] * 1000:6.0f}ms {r['lag_last'] * 1000:7.0f}ms {r['lag_max'] * 1000:7.0f}ms"
                    f"  {'yes' if r['kept_up'] else 'NO'}"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())

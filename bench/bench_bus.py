"""Bus core benchmarks, each figure beside its raw pyzmq reference from the same run.

1. ``Publisher.publish()`` median cost vs a bare ``send_multipart([topic, msgpack.packb(msg)],
   NOBLOCK)`` of the same message on a PUB socket (target ≤ 1.5×).
2. Sustained throughput Publisher → broker → JSONL sink (lines on disk) vs PUB → zmq.proxy →
   SUB over TCP loopback, each hop a separate process (target ≥ 1.0×, issue 15), and the JSONL
   sink process's CPU per message (target ≤ 6 µs).
3. Zero loss for a steady run at half the measured throughput (every seq on disk, no gap),
   with the sink process's RSS at its start and end (flat).
4. p99 latency publish → line written (seen through inotify) at 1,000 msg/s (target ≤ 1 ms),
   beside the raw PUB → proxy → SUB latency at the same rate.

    .venv/bin/python bench/bench_bus.py            # the full run (~2 min)
    .venv/bin/python bench/bench_bus.py --quick    # a smaller, shorter run (~30 s)
"""

from __future__ import annotations

import argparse
import ctypes
import json
import multiprocessing as mp
import os
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import yaml
import zmq

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench_raw import DATA, raw_proxy, raw_sub  # noqa: E402  (bench/ is the script's own folder)

from bus.broker import Broker  # noqa: E402 - after the path fix, so the bench runs from a checkout
from bus.config import BrokerConfig  # noqa: E402
from bus.publisher import Publisher  # noqa: E402
from bus.testing import free_port  # noqa: E402  (after the path tweak)
from sinks.jsonl_files import read_records  # noqa: E402

HWM = 1_000_000


def endpoints() -> tuple[str, str]:
    return f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"


def raw_payload(seq: int, **extra: Any) -> dict[str, Any]:
    return {
        "v": 1,
        "kind": "metrics",
        "run": "bench",
        "node": socket.gethostname(),
        "pub": "bench:1:raw",
        "seq": seq,
        "ts": time.time(),
        "step": seq,
        "data": {**DATA, **extra},
    }


def say(text: str) -> None:
    print(text, flush=True)


# -- 1. publish() cost ----------------------------------------------------------------------


def bench_publish_cost(calls: int, rounds: int) -> tuple[float, float]:
    """Median ns per call, (raw, publisher); rounds alternate so drift hits both alike."""
    config = BrokerConfig(*endpoints(), hwm=HWM)
    broker = Broker(config)
    broker.start()
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    raw = context.socket(zmq.PUB)
    raw.setsockopt(zmq.SNDHWM, HWM)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(config.frontend)
    pub = Publisher(config.frontend, run="bench", heartbeat_interval=1e9, hwm=HWM)
    topic = b"metrics/bench"
    message = raw_payload(0)
    packb, send, noblock, clock = msgpack.packb, raw.send_multipart, zmq.NOBLOCK, time.perf_counter_ns
    publish = pub.publish
    raw_times: list[int] = []
    pub_times: list[int] = []
    try:
        time.sleep(0.2)  # let the raw PUB's connection come up (a bare PUB has no way to know)
        for _ in range(rounds):
            for _ in range(calls):
                t0 = clock()
                send([topic, packb(message)], noblock)
                raw_times.append(clock() - t0)
            for i in range(calls):
                t0 = clock()
                publish("metrics", DATA, i)
                pub_times.append(clock() - t0)
    finally:
        pub.close()
        raw.close()
        context.term()
        broker.stop()
    assert pub.dropped == 0, f"the publisher dropped {pub.dropped}"
    return statistics.median(raw_times), statistics.median(pub_times)


# -- 2. raw reference: PUB -> zmq.proxy -> SUB, one process each ----------------------------------


def _raw_sub(backend: str, expected: int, warmed: Any, out: Any, latency: bool) -> None:
    """Receive ``expected`` messages (or until ``metrics/stop``); report (count, ns of the last, latencies,
    this process's CPU seconds while receiving, all threads as for the sink)."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sub = raw_sub(context, backend, b"metrics/", HWM, timeout_ms=30_000)
    count, last, lat = 0, 0, []
    cpu = time.process_time()
    try:
        while count < expected:
            frames = sub.recv_multipart()
            last = time.monotonic_ns()
            if frames[0] == b"metrics/warmup":
                warmed.set()  # our subscription is live at the proxy: the measured part can start
                continue
            if frames[0] == b"metrics/stop":
                break
            count += 1
            if latency:
                lat.append(last - msgpack.unpackb(frames[1])["data"]["t0"])
    except zmq.Again:
        pass
    out.put((count, last, lat, time.process_time() - cpu))
    sub.close(linger=0)
    context.term()


@contextmanager
def raw_path(expected: int, latency: bool = False) -> Iterator[tuple[zmq.Socket[bytes], Any]]:
    """A PUB (here) connected through a proxy process to a SUB process, the path proven open."""
    spawn = mp.get_context("spawn")
    frontend, backend = endpoints()
    proxy_ready, warmed, out = spawn.Event(), spawn.Event(), spawn.Queue()
    proxy = spawn.Process(target=raw_proxy, args=(frontend, backend, proxy_ready, HWM), daemon=True)
    proxy.start()
    proxy_ready.wait(30)
    sub = spawn.Process(target=_raw_sub, args=(backend, expected, warmed, out, latency), daemon=True)
    sub.start()
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    pub = context.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, HWM)
    pub.setsockopt(zmq.LINGER, 5000)
    pub.connect(frontend)
    deadline = time.monotonic() + 60
    while not warmed.wait(0.02):  # warm-up frames until the SUB process has seen one
        pub.send_multipart([b"metrics/warmup", b""])
        if time.monotonic() > deadline:
            raise RuntimeError("the raw path did not open")
    try:
        yield pub, out
    finally:
        pub.close()
        context.term()
        sub.join(30)
        proxy.kill()
        proxy.join()


def bench_raw_throughput(n: int) -> tuple[float, int, float]:
    """(msg/s from first send to last receive, received, the SUB process's CPU µs per message)."""
    with raw_path(n) as (pub, out):
        topic, packb, send, noblock = b"metrics/bench", msgpack.packb, pub.send_multipart, zmq.NOBLOCK
        node, clock = socket.gethostname(), time.time
        start = time.monotonic_ns()
        for i in range(n):
            # what any client does per message, as Publisher.publish does: build, pack, send
            payload = {
                "v": 1,
                "kind": "metrics",
                "run": "bench",
                "node": node,
                "pub": "bench:1:raw",
                "seq": i,
                "ts": clock(),
                "step": i,
                "data": DATA,
            }
            send([topic, packb(payload)], noblock)
        count, last, _, cpu = out.get(timeout=120)
    return count / ((last - start) / 1e9), count, cpu / max(count, 1) * 1e6


# -- the project's stack: `metricbus up` with a JSONL sink ----------------------------------------


@dataclass
class Stack:
    workdir: Path
    frontend: str
    backend: str
    root: Path
    proc: subprocess.Popen[bytes]

    def sink_pid(self) -> int:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == self.proc.pid and b"sink" in argv:
                return int(entry.name)
        raise LookupError("no sink child")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)


@contextmanager
def stack() -> Iterator[Stack]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-bus-"))
    frontend, backend = endpoints()
    root = workdir / "logs"
    config = {
        "broker": {"frontend": frontend, "backend": backend, "hwm": HWM, "stats_interval": 60.0},
        # no rotation during a run: the line counters below read one file
        "sinks": {"jsonl": {"type": "jsonl", "root": str(root), "rotate_bytes": 1 << 40}},
        "sampler": {"enabled": False},
    }
    (workdir / "bench.yaml").write_text(yaml.safe_dump(config))
    log = (workdir / "up.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "metricbus",
            "up",
            str(workdir / "bench.yaml"),
            "--ready-file",
            str(workdir / "up.ready"),
        ],
        cwd=REPO,
        stdout=log,
        stderr=log,
    )
    try:
        deadline = time.monotonic() + 60
        while not (workdir / "up.ready").exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((workdir / "up.log").read_text())
            time.sleep(0.05)
        yield Stack(workdir, frontend, backend, root, proc)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class LineCounter:
    """Counts complete lines of a file as it grows (reading only what is new)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines = 0
        self._offset = 0

    def poll(self) -> int:
        try:
            with self.path.open("rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except FileNotFoundError:
            return self.lines
        end = chunk.rfind(b"\n") + 1
        self.lines += chunk.count(b"\n", 0, end)
        self._offset += end
        return self.lines


def last_seq(path: Path) -> int:
    """The ``seq`` of the last complete line of ``path`` (-1 if none): read from its tail only,
    so that watching for the end of a burst costs the machine nothing next to the burst
    (counting every line as it grew cost ~40 ms of CPU per 300,000 lines)."""
    try:
        with path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - 4096))
            tail = f.read()
    except FileNotFoundError:
        return -1
    lines = tail.split(b"\n")
    if len(lines) < 2:
        return -1
    seq: int = json.loads(lines[-2])["seq"]  # lines[-1] is the partial line after the last newline
    return seq


def bench_stack_throughput(s: Stack, n: int, run: str = "burst") -> tuple[float, float]:
    """(msg/s from the first publish to the n-th line on disk, the sink process's CPU µs per message)."""
    path = s.root / run / "metrics.jsonl"
    sink_pid = s.sink_pid()
    cpu_before = cpu_seconds(sink_pid)
    with Publisher(s.frontend, run=run, heartbeat_interval=1e9, hwm=HWM) as pub:
        start = time.monotonic_ns()
        for i in range(n):
            pub.publish("metrics", DATA, i)
        # one publisher, so its lines are on disk in seq order: the last one's seq says all are there
        deadline = time.monotonic() + 300
        while last_seq(path) < n - 1 and time.monotonic() < deadline:
            time.sleep(0.002)
        end = time.monotonic_ns()
    cpu = cpu_seconds(sink_pid) - cpu_before
    lines = LineCounter(path).poll()
    assert lines == n, f"{lines} of {n} lines on disk"
    assert pub.dropped == 0
    return n / ((end - start) / 1e9), cpu / n * 1e6


def paced(rate: float, duration: float, send: Callable[[int], object]) -> int:
    """Call ``send(i)`` ``rate`` times a second for ``duration`` s (in 1 ms slices); returns the count."""
    start = time.monotonic()
    i = 0
    while True:
        now = time.monotonic()
        if now - start >= duration:
            return i
        due = int((now - start) * rate) + 1
        while i < due:
            send(i)
            i += 1
        time.sleep(0.001)


def bench_steady(s: Stack, rate: float, duration: float) -> dict[str, Any]:
    """A steady run: every seq on disk, no gap note, and the sink's RSS at start and end."""
    sink_pid = s.sink_pid()
    rss_before = rss_mib(sink_pid)
    samples: list[float] = []
    done = threading.Event()

    def sample() -> None:  # the sink's RSS every 0.5 s while the run lasts
        while not done.wait(0.5):
            samples.append(rss_mib(sink_pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    pub = Publisher(s.frontend, run="steady", heartbeat_interval=1e9, hwm=HWM)
    sent = paced(rate, duration, lambda i: pub.publish("metrics", DATA, i))
    pub.close()
    done.set()
    sampler.join()
    counter = LineCounter(s.root / "steady" / "metrics.jsonl")
    deadline = time.monotonic() + 60
    while counter.poll() < sent and time.monotonic() < deadline:
        time.sleep(0.05)
    rss_end = rss_mib(sink_pid)
    seqs = [record["seq"] for record in read_records(s.root / "steady", ["metrics"])]
    gaps = (s.root / "steady" / "bus.jsonl").exists()
    return {
        "sent": sent,
        "achieved_rate": sent / duration,
        "on_disk": len(seqs),
        "in_order_complete": seqs == list(range(sent)),
        "gap_noted": gaps,
        "dropped": pub.dropped,
        "rss_before_mib": rss_before,
        "rss_first_s_mib": samples[1] if len(samples) > 1 else float("nan"),
        "rss_max_mib": max(samples, default=float("nan")),
        "rss_end_mib": rss_end,
    }


# -- 4. latency ---------------------------------------------------------------------------------

_IN_MODIFY, _IN_CREATE = 0x2, 0x100


class FileWatch:
    """Times each line of ``directory/name`` as it is written, woken by inotify (no polling lag)."""

    def __init__(self, directory: Path, name: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / name
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._fd = self._libc.inotify_init1(os.O_CLOEXEC)
        if self._fd < 0 or self._libc.inotify_add_watch(self._fd, str(directory).encode(), _IN_MODIFY | _IN_CREATE) < 0:
            raise OSError(ctypes.get_errno(), "inotify")
        self.latencies: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        buffer, offset = b"", 0
        while not self._stop.is_set():
            if not select.select([self._fd], [], [], 0.2)[0]:
                continue
            os.read(self._fd, 65536)
            now = time.monotonic_ns()
            try:
                with self.path.open("rb") as f:
                    f.seek(offset)
                    chunk = f.read()
            except FileNotFoundError:
                continue
            offset += len(chunk)
            *lines, buffer = (buffer + chunk).split(b"\n")
            for line in lines:
                self.latencies.append(now - json.loads(line)["data"]["t0"])

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        os.close(self._fd)


def p99(values: list[int]) -> float:
    return statistics.quantiles(values, n=100)[98] / 1e6 if len(values) >= 100 else float("nan")


def bench_latency_stack(s: Stack, duration: float, warmup: int = 100) -> list[int]:
    watch = FileWatch(s.root / "latency", "metrics.jsonl")
    pub = Publisher(s.frontend, run="latency", heartbeat_interval=1e9)
    sent = paced(1000, duration, lambda i: pub.publish("metrics", {**DATA, "t0": time.monotonic_ns()}, i))
    pub.close()
    deadline = time.monotonic() + 30
    while len(watch.latencies) < sent and time.monotonic() < deadline:
        time.sleep(0.05)
    watch.close()
    assert len(watch.latencies) == sent, f"{sent} sent, {len(watch.latencies)} lines written"
    return watch.latencies[warmup:]


def bench_latency_raw(duration: float, warmup: int = 100) -> list[int]:
    with raw_path(10**9, latency=True) as (pub, out):
        topic, packb, send = b"metrics/bench", msgpack.packb, pub.send_multipart
        paced(1000, duration, lambda i: send([topic, packb(raw_payload(i, t0=time.monotonic_ns()))]))
        send([b"metrics/stop", b""])
        _, _, latencies, _ = out.get(timeout=60)
    return list(latencies)[warmup:]


# -- main -------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller counts and shorter runs (about 30 s)")
    parser.add_argument("--pairs", type=int, help="throughput pairs, raw and stack in turns (default 5; 2 quick)")
    args = parser.parse_args()
    quick = args.quick
    calls, rounds = (20_000, 3) if quick else (50_000, 5)
    burst = 50_000 if quick else 300_000
    steady_s = 5.0 if quick else 30.0
    latency_s = 3.0 if quick else 10.0
    say(
        f"metricbus bus-core bench ({'quick' if quick else 'full'}), "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}"
    )

    raw_ns, pub_ns = bench_publish_cost(calls, rounds)
    say(f"\n1. publish cost, median of {calls * rounds:,} calls")
    say(f"   raw send_multipart([topic, packb(msg)], NOBLOCK): {raw_ns / 1000:6.2f} µs")
    say(f"   Publisher.publish():                             {pub_ns / 1000:6.2f} µs")
    say(f"   ratio {pub_ns / raw_ns:.2f}x  (target <= 1.5x)")

    pairs = args.pairs or (2 if quick else 5)
    with stack() as s:
        rss_boot = rss_mib(s.sink_pid())
        # One burst each is a coin toss on 2 shared cores (3 processes and their I/O threads
        # contend): pairs in turns, raw first and stack first alternately, and the median ratio.
        raws: list[tuple[float, int, float]] = []
        stacks: list[tuple[float, float]] = []
        for k in range(pairs):
            if k % 2:
                stacks.append(bench_stack_throughput(s, burst, run=f"burst-{k}"))
                raws.append(bench_raw_throughput(burst))
            else:
                raws.append(bench_raw_throughput(burst))
                stacks.append(bench_stack_throughput(s, burst, run=f"burst-{k}"))
        ratios = [st[0] / raw[0] for st, raw in zip(stacks, raws, strict=True)]
        raw_rate = statistics.median(r[0] for r in raws)
        raw_received = min(r[1] for r in raws)
        raw_sub_cpu = statistics.median(r[2] for r in raws)
        stack_rate = statistics.median(st[0] for st in stacks)
        sink_cpu = statistics.median(st[1] for st in stacks)
        say(f"\n2. sustained throughput, {burst:,} messages, {pairs} pairs in turns (medians)")
        say(f"   raw PUB -> zmq.proxy -> SUB (3 processes):   {raw_rate:9,.0f} msg/s ({raw_received:,} received)")
        say(f"   Publisher -> broker -> JSONL lines on disk:  {stack_rate:9,.0f} msg/s")
        say(f"   pair ratios: {', '.join(f'{r:.2f}' for r in ratios)}")
        say(f"   ratio {statistics.median(ratios):.2f}x, median of the pairs  (target >= 1.0x)")
        say(
            f"   the JSONL sink process used {sink_cpu:.1f} µs CPU per message "
            f"(one core's ceiling: {1e6 / sink_cpu:,.0f} msg/s; target <= 6 µs)"
        )
        say(
            f"   the raw SUB process used {raw_sub_cpu:.1f} µs CPU per message (recv_multipart only); "
            f"sink / raw SUB {sink_cpu / raw_sub_cpu:.2f}x"
        )

        rate = stack_rate / 2
        steady = bench_steady(s, rate, steady_s)
        say(f"\n3. steady run at half that rate ({rate:,.0f} msg/s asked) for {steady_s:g} s")
        say(
            f"   sent {steady['sent']:,} ({steady['achieved_rate']:,.0f} msg/s), on disk {steady['on_disk']:,}, "
            f"complete and in order: {steady['in_order_complete']}, gap noted: {steady['gap_noted']}, "
            f"dropped: {steady['dropped']}"
        )
        say(
            f"   sink RSS: {rss_boot:.1f} MiB at its start; {steady['rss_before_mib']:.1f} MiB after the burst; "
            f"during the steady run {steady['rss_first_s_mib']:.1f} MiB at 1 s, "
            f"{steady['rss_max_mib']:.1f} MiB at most, "
            f"{steady['rss_end_mib']:.1f} MiB at the end"
        )

        stack_lat = bench_latency_stack(s, latency_s)
    raw_lat = bench_latency_raw(latency_s)
    say(f"\n4. latency at 1,000 msg/s for {latency_s:g} s (first 100 dropped as warm-up)")
    say(
        f"   raw PUB -> proxy -> SUB receive:     p50 {statistics.median(raw_lat) / 1e6:6.3f} ms  "
        f"p99 {p99(raw_lat):6.3f} ms  ({len(raw_lat)} msgs)"
    )
    say(
        f"   publish -> JSONL line written:        p50 {statistics.median(stack_lat) / 1e6:6.3f} ms  "
        f"p99 {p99(stack_lat):6.3f} ms  ({len(stack_lat)} msgs)"
    )
    say(f"   p99 ratio {p99(stack_lat) / p99(raw_lat):.2f}x; target p99 <= 1 ms")
    ok = steady["in_order_complete"] and not steady["gap_noted"] and steady["dropped"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

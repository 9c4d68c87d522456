"""Where the JSONL sink's CPU goes, stage by stage, per message (issue 15).

The same SB3-like metrics message as ``bench_bus.py`` (``DATA``), ``--n`` of them (50,000 by
default) from one publisher, CPU time (all threads of this process) per message, the minimum
of ``--repeat`` rounds:

- receive: a bare SUB loop as the runner's (``recv(copy=False)``, ``.bytes``) fed through a
  proxy process by a publisher process; the zmq I/O thread's share is in it.
- decode: ``bus.message.decode`` of the received frames (its name caches warm, as in a sink).
- track: the runner's per-publisher ``seq`` bookkeeping over those messages.
- handle: ``JsonlSink.handle`` in batches of 1,000 (encode + ``os.write``), and the same for
  messages that each hold a NaN (the exact path).
- whole runner: a real ``SinkRunner`` running a ``JsonlSink`` fed like ``receive`` (what the
  bench's sink process does, less the supervisor's thread). The stages do not add up to it
  exactly: ``receive`` blocks in ``recv`` per message where the runner polls and drains.

``--tree DIR`` measures another checkout's ``bus``/``sinks`` with this same script (e.g. the
tree before a change, from ``git archive``), so before and after can be interleaved::

    .venv-test/bin/python bench/bench_sink_stages.py
    .venv-test/bin/python bench/bench_sink_stages.py --tree /tmp/base
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench_raw import DATA, raw_proxy, raw_sub  # bench/ is the script's own folder; it imports nothing of the project

HWM = 1_000_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _publish(tree: str, frontend: str, n: int, nan: bool) -> None:
    sys.path.insert(0, tree)
    from bus.publisher import Publisher

    data = {**DATA, "x": math.nan} if nan else DATA
    with Publisher(frontend, run="burst", heartbeat_interval=1e9, hwm=HWM, connect_timeout=30.0, curve={}) as pub:
        for i in range(n):
            pub.publish("metrics", data, i)


_FRONTENDS: dict[str, str] = {}


def _fed(tree: str, n: int, consume: Callable[[str], float]) -> float:
    """CPU µs per message of ``consume(backend)`` while a publisher process sends ``n`` messages."""
    spawn = mp.get_context("spawn")
    frontend, backend = f"tcp://127.0.0.1:{_free_port()}", f"tcp://127.0.0.1:{_free_port()}"
    _FRONTENDS[backend] = frontend  # where the publisher process connects
    ready = spawn.Event()
    proxy = spawn.Process(target=raw_proxy, args=(frontend, backend, ready, HWM), daemon=True)
    proxy.start()
    try:
        ready.wait(30)
        return consume(backend) / n * 1e6
    finally:
        proxy.kill()
        proxy.join()


def receive_stage(tree: str, n: int) -> tuple[float, list[list[bytes]]]:
    import zmq

    frames_out: list[list[bytes]] = []

    def consume(backend: str) -> float:
        context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        sub = raw_sub(context, backend, b"metrics/", HWM, timeout_ms=60_000)
        publisher = _start_publisher(tree, backend, n)
        recv = sub.recv
        cpu = time.process_time()
        try:
            for _ in range(n):
                frame = recv(0, copy=False)
                frames = [frame.bytes]
                while frame.more:
                    frame = recv(0, copy=False)
                    frames.append(frame.bytes)
                frames_out.append(frames)
            return time.process_time() - cpu
        finally:
            publisher.join(60)
            sub.close(linger=0)
            context.term()

    return _fed(tree, n, consume), frames_out


def _start_publisher(tree: str, backend: str, n: int, nan: bool = False) -> Any:
    spawn = mp.get_context("spawn")
    process = spawn.Process(target=_publish, args=(tree, _FRONTENDS[backend], n, nan), daemon=True)
    process.start()
    return process


def whole_stage(tree: str, n: int) -> float:
    from bus.subscriber import SinkRunner
    from sinks.jsonl import JsonlSink

    def consume(backend: str) -> float:
        root = Path(tempfile.mkdtemp(prefix="stages-"))
        sink = JsonlSink(str(root), rotate_bytes=1 << 40)
        runner = SinkRunner(sink, name="stages", backend=backend, topics=("",), catch=False, queue=HWM)
        thread = threading.Thread(target=runner.run, daemon=True)
        thread.start()
        runner.ready.wait(30)
        publisher = _start_publisher(tree, backend, n)
        cpu = time.process_time()
        deadline = time.monotonic() + 120
        while sink.lines_written < n and time.monotonic() < deadline:
            time.sleep(0.005)
        used = time.process_time() - cpu
        publisher.join(60)
        runner.stop()
        thread.join(60)
        shutil.rmtree(root, ignore_errors=True)
        assert runner.stats.gaps == 0 and sink.lines_written >= n, (runner.stats, sink.lines_written)
        return used

    return _fed(tree, n, consume)


def _cpu(fn: Callable[[], object], repeat: int, n: int) -> float:
    best = math.inf
    for _ in range(repeat):
        cpu = time.process_time()
        fn()
        best = min(best, time.process_time() - cpu)
    return best / n * 1e6


def _track(messages: list[Any]) -> Callable[[], object]:
    from bus import subscriber

    batches = [messages[i : i + 1000] for i in range(0, len(messages), 1000)]
    track_batch = getattr(subscriber.SeqTracker, "track", None)
    if track_batch is not None:  # this tree: once per batch

        def run() -> None:
            tracker = subscriber.SeqTracker()
            for batch in batches:
                tracker.track(batch)

        return run

    def run_each() -> None:  # the tree before: once per message
        observe = subscriber.SeqTracker().observe
        for m in messages:
            observe(m.pub, m.seq)

    return run_each


def _handle(messages: list[Any]) -> Callable[[], object]:
    from sinks.jsonl import JsonlSink

    batches = [messages[i : i + 1000] for i in range(0, len(messages), 1000)]

    def run() -> None:
        root = tempfile.mkdtemp(prefix="stages-")
        sink = JsonlSink(root, rotate_bytes=1 << 40, fsync_interval=1e9)
        try:
            for batch in batches:
                sink.handle(batch)
        finally:
            sink.close()
            shutil.rmtree(root, ignore_errors=True)

    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", default=str(Path(__file__).resolve().parent.parent))
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    tree, n, repeat = str(Path(args.tree).resolve()), args.n, args.repeat
    sys.path.insert(0, tree)
    from bus.message import decode, packer, payload

    print(f"sink stages of {tree}, {n:,} messages, min of {repeat}; load {os.getloadavg()[0]:.1f}", flush=True)

    receive = [receive_stage(tree, n) for _ in range(repeat)]
    receive_us = min(r[0] for r in receive)
    frames = receive[0][1]
    pack = packer()
    node = socket.gethostname()
    nan_frames = [
        [
            b"metrics/burst",
            pack(payload("metrics", "burst", node, "p:1:nan", i, time.time(), i, {**DATA, "x": math.nan})),
        ]
        for i in range(n)
    ]
    messages = [decode(f) for f in frames]
    nan_messages = [decode(f) for f in nan_frames]
    decode_us = _cpu(lambda: [decode(f) for f in frames], repeat, n)
    track_us = _cpu(_track(messages), repeat, n)
    handle_us = _cpu(_handle(messages), repeat, n)
    handle_nan_us = _cpu(_handle(nan_messages), repeat, n)
    whole_us = min(whole_stage(tree, n) for _ in range(repeat))
    print(f"  receive (pyzmq, 2 frames, I/O thread)   {receive_us:5.2f} µs")
    print(f"  decode                                 {decode_us:5.2f} µs")
    print(f"  track (seq per publisher)              {track_us:5.2f} µs")
    print(f"  JSONL handle (encode + write)          {handle_us:5.2f} µs")
    print(f"  JSONL handle, a NaN in every message   {handle_nan_us:5.2f} µs")
    print(f"  whole runner + JSONL sink              {whole_us:5.2f} µs")
    print(f"  load at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

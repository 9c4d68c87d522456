"""Memory per sink after a flood of distinct names (issue 12), this tree beside an older one.

Each sink (and the sink runner's seq tracker) is built in a fresh child process and handed
``--count`` messages that each carry a name it has not seen before: a metric name for the
alert engine, prometheus and csv, a publisher id for the dashboard's store and the seq tracker.
The child prints its resident memory before and after (and the peak); the parent runs every
child once against this tree and once against ``--base`` (a checkout of the commit before the
bounds, made with ``git worktree add /tmp/base 7318d66``), in the same run, and prints the
growth of each and their ratio.

    .venv/bin/python bench/bench_flood.py --base /tmp/base              # 1M names
    .venv/bin/python bench/bench_flood.py --base /tmp/base --count 100000
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SINKS = ("alerts", "prometheus", "csv", "dashboard", "seq-tracker")
BATCH = 1000  # names per handle() call
NAMES = 100  # metric names per message (the dashboard and seq tracker get one publisher id each)
MIB = 1024 * 1024


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _child(sink: str, count: int, root: str) -> dict[str, Any]:
    """Build ``sink`` from the tree at ``root``, flood it, and measure."""
    sys.path.insert(0, root)
    logging.disable(logging.CRITICAL)  # the old csv sink logs one line per refused name
    from bus.message import Message

    def messages(start: int) -> list[Message]:
        now = time.time()
        if sink in ("dashboard", "seq-tracker"):  # a new publisher id each, one run
            return [
                Message("event", "flood", "node", f"pub-{i}", 0, now, None, {"event": "heartbeat", "dropped": 0})
                for i in range(start, start + BATCH)
            ]
        # NAMES names per message (a csv row is as wide as its header: one name a row would
        # write a 2 GB file); the ``count`` names are spread over count / NAMES messages
        return [
            Message("metrics", "flood", "node", "pub", i, now, i, {f"train/m{i}/{j}": 1.0 for j in range(NAMES)})
            for i in range(start // NAMES, (start + BATCH) // NAMES)
        ]

    tmp = tempfile.mkdtemp(prefix="bench-flood-")
    handle: Any
    closer: Any = None
    if sink == "alerts":
        from alerts.engine import AlertEngine

        engine = AlertEngine(restore=False)  # the embedded default rules
        handle, closer = engine.handle, engine.close
    elif sink == "prometheus":
        from sinks.prometheus import PrometheusSink

        prom = PrometheusSink(port=0)
        handle, closer = prom.handle, prom.close
    elif sink == "csv":
        from sinks.csvfile import CsvSink

        csv_sink = CsvSink(tmp, kinds=["metrics"])
        handle, closer = csv_sink.handle, csv_sink.close
    elif sink == "dashboard":
        from sinks.dashboard.store import Store

        store = Store()
        handle = store.add_live
    else:
        from bus.subscriber import SeqTracker

        tracker = SeqTracker()

        def handle(batch: list[Message]) -> None:
            for m in batch:
                tracker.observe(m.pub, 0)

    handle(messages(0))  # warm up: imports, first allocations
    before = _rss()
    started = time.perf_counter()
    for start in range(BATCH, count, BATCH):
        handle(messages(start))
    seconds = time.perf_counter() - started
    after = _rss()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if closer is not None:
        closer()
    return {"before": before, "after": after, "peak": peak, "seconds": seconds}


def _run(sink: str, count: int, root: Path) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", sink, "--count", str(count), "--root", str(root)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(root)},
        cwd=tempfile.gettempdir(),
    )
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1_000_000, help="distinct names per sink")
    parser.add_argument("--base", type=Path, help="a checkout of the tree to compare with")
    parser.add_argument("--sinks", default=",".join(SINKS))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--root", default=str(REPO), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.count, args.root)))
        return
    print(f"{args.count:,} distinct names per sink; RSS growth from after warm-up to the end of the flood")
    print(f"{'sink':12} {'this tree':>22} {'base':>22} {'growth ratio':>13}")
    for sink in args.sinks.split(","):
        now = _run(sink, args.count, REPO)
        base = _run(sink, args.count, args.base) if args.base else None

        def cell(r: dict[str, Any] | None) -> str:
            if r is None:
                return "-"
            if "error" in r:
                return r["error"][:22]
            return f"+{(r['after'] - r['before']) / MIB:.1f} MiB ({r['seconds']:.0f} s)"

        ratio = "-"
        if base and "error" not in base and "error" not in now:
            grown_base = max(base["after"] - base["before"], 1)
            ratio = f"{(now['after'] - now['before']) / grown_base:.3f}"
        print(f"{sink:12} {cell(now):>22} {cell(base):>22} {ratio:>13}", flush=True)


if __name__ == "__main__":
    main()

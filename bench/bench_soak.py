"""Soak: ``metricbus up`` with JSONL, alerts and dashboard, fed 5,000 msg/s from 4 publishers.

Measures what a long training needs from the bus: messages lost (by ``seq``: every seq each
publisher handed out, against what the JSONL sink recorded), each process's RSS at start,
after warm-up and at the end (target: 0 lost, growth <= 10% after warm-up), and the alerts
engine's lag (an alert's ``ts`` minus the ``ts`` of the sample that fired it, on a rule
that each publisher trips twice a second). The reference is the target itself: the rate
asked for against the rate the publishers achieved, and 0 lost.

Sinks come from ``--sinks`` (default ``jsonl,alerts,dashboard``); a type that is not
installed (or not written yet) is reported and left out, so the bench runs with what exists.

    .venv/bin/python bench/bench_soak.py                 # 10 minutes
    .venv/bin/python bench/bench_soak.py --quick         # 30 s
    .venv/bin/python bench/bench_soak.py --duration 120 --rate 5000 --publishers 4
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil
import yaml

from bus.testing import free_port
from sinks.jsonl_files import read_records, run_dir

TRIGGER = "soak/trigger"
RULE = {
    "name": "soak-trigger",
    "kind": "threshold",
    "severity": "info",
    "select": {"kind": "metrics", "metric": TRIGGER},
    "op": ">",
    "threshold": 0.5,
    "repeat": "never",
}


# -- one publisher process ---------------------------------------------------------------------


def worker(run: str, rate: float, duration: float, endpoint: str) -> None:
    """Publish SB3-like metrics at ``rate`` msg/s for ``duration`` s; print what was handed out."""
    from bus.publisher import Publisher

    pub = Publisher(endpoint, run=run)
    start = time.monotonic()
    step = 0
    longest = 0.0
    next_trigger = start
    trigger = 0.0
    while (now := time.monotonic()) - start < duration:
        due = int((now - start) * rate)  # messages owed by now at a steady ``rate``
        while step < due:
            data: dict[str, Any] = {
                "train/value_loss": 0.5 / (1 + step % 97),
                "train/entropy_loss": -0.69 + 0.001 * (step % 50),
                "train/approx_kl": 0.002 * (step % 11),
                "train/clip_fraction": 0.1,
                "train/learning_rate": 3e-4,
                "rollout/ep_rew_mean": 150.0 + step % 30,
                "time/fps": 1500,
                "grad/global_norm": 0.7 + 0.01 * (step % 7),
            }
            if now >= next_trigger:  # every 0.25 s the alert rule fires or resolves
                trigger = 1.0 - trigger
                data[TRIGGER] = trigger
                next_trigger += 0.25
            t0 = time.perf_counter()
            pub.metrics(data, step=step)
            longest = max(longest, time.perf_counter() - t0)
            step += 1
        time.sleep(0.005)  # the training's own rhythm between bursts, not a wait for the bus
    elapsed = time.monotonic() - start
    pub.close()
    result = {
        "run": run,
        "pub": pub.pub,
        "published": step,
        "seqs": pub._next_seq,
        "dropped": pub.dropped,
        "rate": step / elapsed,
        "longest_call_ms": longest * 1000,
    }
    print(json.dumps(result), flush=True)


# -- the soak ------------------------------------------------------------------------------------


def sink_entries(names: list[str], root: Path) -> tuple[dict[str, Any], list[str]]:
    """Config entries for the requested sinks that exist here, and notes on the ones left out."""
    from bus.registry import check_options, resolve

    entries: dict[str, Any] = {}
    notes: list[str] = []
    for name in names:
        options: dict[str, Any]
        if name == "jsonl":
            options = {"type": "jsonl", "root": str(root)}
        elif name == "alerts":
            options = {"type": "alerts", "topics": ["metrics/", "event/", "bus/"], "rules": [RULE], "restore": False}
        elif name == "dashboard":
            options = {"type": "dashboard", "port": free_port(), "history_root": str(root)}
        else:
            options = {"type": name}
        try:
            cls = resolve(options["type"])
        except LookupError as exc:
            notes.append(f"{name}: left out ({exc})")
            continue
        problem = check_options(cls, {k: v for k, v in options.items() if k not in ("type", "topics")})
        if problem:
            notes.append(f"{name}: left out ({problem})")
            continue
        entries[name] = options
    return entries, notes


def rss_of(up: psutil.Process) -> dict[str, int]:
    """RSS per child of ``up`` (broker, each sink), keyed by its role."""
    out: dict[str, int] = {}
    for child in up.children():
        try:
            argv = child.cmdline()
            rest = argv[argv.index("bus") + 1 :] if "bus" in argv else argv
            role = " ".join(rest[:2]) if rest[:1] == ["sink"] else rest[0]
            out[role] = child.memory_info().rss
        except (psutil.Error, IndexError):
            continue
    out["supervisor"] = up.memory_info().rss
    return out


def lost_by_seq(root: Path, result: dict[str, Any]) -> tuple[int, int]:
    """(messages lost, gap records) for one publisher, from what the JSONL sink wrote."""
    seen: set[int] = set()
    gaps = 0
    for record in read_records(run_dir(root, result["run"]), ["metrics", "event", "bus"]):
        if record["pub"] == result["pub"]:
            seen.add(record["seq"])
        elif record["kind"] == "bus" and record["data"].get("of_pub") == result["pub"]:
            gaps += 1
    return result["seqs"] - len(seen), gaps


def alert_lags(root: Path, runs: list[str]) -> list[float]:
    lags = []
    for run in runs:
        for record in read_records(run_dir(root, run), ["alert"]):
            data = record["data"]
            if data.get("rule") == RULE["name"] and data.get("state") == "firing" and data.get("since"):
                lags.append(record["ts"] - float(data["since"]))
    return lags


def soak(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="metricbus-soak-"))
    root = work / "logs"
    sinks, notes = sink_entries(args.sinks.split(","), root)
    frontend, backend = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    config = {
        "broker": {"frontend": frontend, "backend": backend, "stats_interval": 5.0},
        "sinks": sinks,
        "sampler": {"enabled": False},
    }
    path = work / "soak.yaml"
    path.write_text(yaml.safe_dump(config))
    print(f"soak: {args.duration:g} s at {args.rate:g} msg/s from {args.publishers} publishers; sinks {list(sinks)}")
    for note in notes:
        print(f"soak: {note}")
    out = (work / "up.out").open("wb")
    up_proc = subprocess.Popen(
        [sys.executable, "-m", "metricbus", "up", str(path), "--ready-file", str(work / "up.ready")],
        cwd=work,
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while not (work / "up.ready").exists():
            if up_proc.poll() is not None or time.monotonic() > deadline:
                print((work / "up.out").read_text(), file=sys.stderr)
                return 1
            time.sleep(0.2)
        up = psutil.Process(up_proc.pid)
        rss_start = rss_of(up)
        runs = [f"soak-{i}" for i in range(args.publishers)]
        rate = args.rate / args.publishers
        workers = [
            subprocess.Popen(
                [sys.executable, __file__, "--worker", run, str(rate), str(args.duration), frontend],
                stdout=subprocess.PIPE,
                text=True,
            )
            for run in runs
        ]
        warm_up = min(max(5.0, args.duration * 0.2), args.duration / 2)
        time.sleep(warm_up)
        rss_warm = rss_of(up)
        results = []
        for w in workers:
            stdout, _ = w.communicate(timeout=args.duration + 120)
            results.append(json.loads(stdout.strip().splitlines()[-1]))
        rss_end = rss_of(up)
    finally:
        up_proc.send_signal(signal.SIGTERM)
        try:
            up_proc.wait(120)
        except subprocess.TimeoutExpired:
            up_proc.kill()
        out.close()

    print()
    print("| publisher | published | achieved msg/s | dropped at publisher | lost (by seq) | gap records |")
    print("|---|---:|---:|---:|---:|---:|")
    total_lost = total_pub = 0
    for r in results:
        lost, gaps = lost_by_seq(root, r)
        total_lost += lost
        total_pub += r["published"]
        print(f"| {r['run']} | {r['published']} | {r['rate']:.0f} | {r['dropped']} | {lost} | {gaps} |")
    achieved = sum(r["rate"] for r in results)
    print(f"\ntotal: {total_pub} messages, {achieved:.0f} msg/s achieved of {args.rate:g} asked "
          f"(ratio {achieved / args.rate:.3f}); lost {total_lost} (target 0); "
          f"longest publish() call {max(r['longest_call_ms'] for r in results):.1f} ms")  # fmt: skip
    print("\n| process | RSS start MiB | after warm-up MiB | end MiB | growth after warm-up |")
    print("|---|---:|---:|---:|---:|")
    worst = 0.0
    for role in rss_start:
        warm, end = rss_warm.get(role, 0), rss_end.get(role, 0)
        growth = (end - warm) / warm if warm else 0.0
        worst = max(worst, growth)
        print(f"| {role} | {rss_start[role] / 2**20:.1f} | {warm / 2**20:.1f} | {end / 2**20:.1f} | {growth:+.1%} |")
    print(f"\nworst RSS growth after warm-up: {worst:+.1%} (target <= +10%)")
    if "alerts" in sinks:
        lags = sorted(alert_lags(root, runs))
        if lags:
            p99 = lags[min(len(lags) - 1, int(len(lags) * 0.99))]
            print(
                f"alerts engine lag (alert ts - sample ts), {len(lags)} alerts: median "
                f"{statistics.median(lags) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, max {lags[-1] * 1000:.1f} ms"
            )
        else:
            print("alerts engine lag: no soak-trigger alerts were recorded")
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"kept {work}")
    return 0 if total_lost == 0 else 1


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        run, rate, duration, endpoint = sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
        worker(run, rate, duration, endpoint)
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of publishing (default 600)")
    parser.add_argument("--quick", action="store_true", help="30 s instead of the duration")
    parser.add_argument("--rate", type=float, default=5000.0, help="messages per second, all publishers (5000)")
    parser.add_argument("--publishers", type=int, default=4, help="publisher processes (4)")
    parser.add_argument("--sinks", default="jsonl,alerts,dashboard", help="comma-separated sink types")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, config)")
    args = parser.parse_args()
    if args.quick:
        args.duration = 30.0
    if "jsonl" not in args.sinks.split(","):
        parser.error("--sinks must include jsonl: losses are counted from its files")
    return soak(args)


if __name__ == "__main__":
    sys.exit(main())

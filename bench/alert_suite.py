"""The labelled alert suite: real trainings, healthy and faulty, judged by the real alert engine.

    .venv/bin/python bench/alert_suite.py [--quick] [--jobs 2] [--only NAME[,NAME]] [--rules FILE]
                                          [--json OUT] [--keep DIR] [--rejudge DIR]

Each training (``bench/alert_cases.py``) is a subprocess publishing through a real broker
(``metricbus up`` on random loopback ports, with the JSONL sink and the alert engine on the
rules under test, by default ``configs/alerts.yaml``). Faulty runs publish
``fault_injected`` at their fault step. Afterwards the JSONL files say, per rule, how often
it fired on healthy runs, and per fault which rule caught it first, at what severity, and
how late: in seconds, in training updates (metric dumps with ``train/*``), in episodes and
in steps after the fault.

Absence rules (``after``/``grace``) are scaled down to ``--absence-after`` seconds (10 by
default) so that freeze and kill are judged in seconds, not minutes; their delay is
reported against that ``after``.

``--quick`` is the short suite the tests run (``tests/test_alert_suite.py``): fixed seeds,
few runs, small step counts. The default is the benchmark whose table is in
``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bus.testing import free_port  # noqa: E402  (after the path tweak)
from sinks.jsonl_files import message_of, read_records, run_dir  # noqa: E402  (after the path tweak)

SEVERITY_RANK: Final = {"info": 0, "warning": 1, "error": 2, "critical": 3}
#: The least severity that "catches" each fault: a NaN or a dead process is critical, a run
#: that blew up or lost its reward is an error, a slow problem is worth a warning.
FAULT_SEVERITY: Final = {
    "nan": "critical",
    "nan-loss": "critical",
    "kill": "critical",
    "explode": "error",
    "collapse": "error",
    "freeze": "error",
    "dead": "warning",
    "stagnate": "warning",
}


@dataclass(frozen=True)
class Case:
    case: str
    seed: int
    steps: int
    fault: str | None = None
    fault_at: int = 0

    @property
    def run(self) -> str:
        base = f"{self.case}-s{self.seed}"
        return f"{base}-{self.fault}" if self.fault else base


# The short suite: what the tests run (about a minute and a half of CPU, on 2 cores).
QUICK: Final = [
    Case("ppo-cartpole", 0, 10_000),
    Case("a2c-cartpole", 0, 10_000),
    Case("dqn-cartpole", 0, 8000),
    Case("supervised", 0, 1500),
    Case("ppo-cartpole", 1, 8000, "nan", 5000),
    Case("ppo-cartpole", 1, 10_000, "explode", 5000),
    Case("ppo-cartpole", 1, 14_000, "collapse", 7000),
    Case("supervised", 1, 1500, "nan-loss", 700),
    Case("supervised", 1, 1500, "dead", 700),
    Case("supervised", 1, 100_000, "freeze", 700),
    Case("supervised", 2, 100_000, "kill", 700),
]

_SEEDS = (0, 1, 2)
BENCH: Final = [
    *(Case("ppo-cartpole", s, 30_000) for s in _SEEDS),
    *(Case("a2c-cartpole", s, 30_000) for s in _SEEDS[:2]),
    *(Case("dqn-cartpole", s, 20_000) for s in _SEEDS[:2]),
    Case("ppo-acrobot", 0, 150_000),  # long enough to learn: a 20-episode mean near -100 from ~90k steps
    Case("a2c-acrobot", 0, 30_000),
    Case("dqn-acrobot", 0, 10_000),
    Case("ppo-pendulum", 0, 30_000),
    Case("sac-pendulum", 0, 4000),
    Case("td3-pendulum", 0, 4000),
    *(Case("supervised", s, 3000) for s in _SEEDS[:2]),
    *(Case("ppo-cartpole", 5, 20_000, f, 10_000) for f in ("nan", "nan-loss", "explode", "collapse")),
    # stagnation is slow by nature: reward-stagnation waits 300 episodes (of ~115 steps after
    # this fault) past the run's best 50-episode mean, ~37k steps; the run goes on 50k after it
    Case("ppo-cartpole", 5, 60_000, "stagnate", 10_000),
    Case("a2c-cartpole", 5, 20_000, "explode", 10_000),
    Case("dqn-cartpole", 5, 16_000, "nan", 8000),
    Case("dqn-cartpole", 5, 16_000, "explode", 8000),
    # after learning (seed 5's 20-episode mean is about -100 by 90k steps, -490 before 30k), and
    # 40k steps on: 80 collapsed episodes of 500 steps, past the rule's 50-episode promise
    Case("ppo-acrobot", 5, 140_000, "collapse", 100_000),
    Case("sac-pendulum", 5, 4000, "nan-loss", 2000),
    Case("sac-pendulum", 5, 4000, "explode", 2000),
    Case("ppo-cartpole", 6, 1_000_000, "freeze", 5000),
    Case("ppo-cartpole", 6, 1_000_000, "kill", 5000),
    *(Case("supervised", 5, 3000, f, 1500) for f in ("nan", "nan-loss", "explode", "dead")),
]


@dataclass
class Outcome:
    run: str
    case: str
    seed: int
    fault: str | None
    status: str
    firings: list[dict[str, Any]] = field(default_factory=list)
    caught_by: str | None = None
    severity: str | None = None
    delay_s: float | None = None
    delay_updates: int | None = None
    delay_episodes: int | None = None
    delay_steps: int | None = None
    hint: str | None = None


# -- running ----------------------------------------------------------------------------------------


def scaled_rules(source: Path, after: float) -> dict[str, Any]:
    """The rules of ``source`` with every absence rule's ``after`` (and ``grace``) at most ``after`` s."""
    data = yaml.safe_load(source.read_text())
    rules = data["rules"] if isinstance(data, dict) else data
    for rule in rules:
        if isinstance(rule, dict) and rule.get("kind") == "absence":
            rule["after"] = f"{after:g}s"
            rule["grace"] = "1s"
    return {"rules": rules}


class SuiteStack:
    """``metricbus up`` with the JSONL sink and the alert engine, in ``workdir``."""

    def __init__(self, workdir: Path, rules: Path, absence_after: float) -> None:
        self.workdir = workdir
        self.root = workdir / "logs"
        self.frontend = f"tcp://127.0.0.1:{free_port()}"
        rules_path = workdir / "rules.yaml"
        rules_path.write_text(yaml.safe_dump(scaled_rules(rules, absence_after), sort_keys=False))
        config = {
            "broker": {"frontend": self.frontend, "backend": f"tcp://127.0.0.1:{free_port()}", "stats_interval": 1.0},
            "sinks": {
                "jsonl": {"type": "jsonl", "root": str(self.root)},
                "alerts": {
                    "type": "alerts",
                    "topics": ["metrics/", "episode/", "event/", "bus/"],
                    "rules": str(rules_path),
                    "notify": [],
                    "restore": False,
                },
            },
            "sampler": {"enabled": False},
        }
        self.config_path = workdir / "metricbus.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.out = (workdir / "up.out").open("wb")
        ready = workdir / "up.ready"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "metricbus", "up", str(self.config_path), "--ready-file", str(ready)],
            cwd=workdir,
            stdout=self.out,
            stderr=subprocess.STDOUT,
            # this checkout's code (PYTHONPATH), and it stops by itself if we die
            env={**os.environ, "PYTHONPATH": str(REPO), "METRICBUS_PARENT_PID": str(os.getpid())},
        )
        deadline = time.monotonic() + 90
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"metricbus up did not start:\n{(workdir / 'up.out').read_text()}")
            time.sleep(0.1)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.out.close()


def _records(root: Path, run: str, kind: str) -> list[dict[str, Any]]:
    return list(read_records(run_dir(root, run), [kind]))


def _fired(root: Path, run: str) -> bool:
    return any(r["data"].get("state") == "firing" for r in _records(root, run, "alert"))


def run_cases(cases: list[Case], workdir: Path, rules: Path, jobs: int, absence_after: float) -> Path:
    """Trains every case on one stack (``jobs`` at a time); returns the JSONL root."""
    stack = SuiteStack(workdir, rules, absence_after)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "METRICBUS_PARENT_PID": str(os.getpid())}
    pending = list(cases)
    running: list[tuple[Case, subprocess.Popen[bytes], float]] = []
    try:
        while pending or running:
            while pending and len(running) < jobs:
                case = pending.pop(0)
                argv = [sys.executable, str(REPO / "bench" / "alert_cases.py"), "--case", case.case]
                argv += ["--seed", str(case.seed), "--steps", str(case.steps), "--run", case.run]
                argv += ["--endpoint", stack.frontend]
                if case.fault:
                    argv += ["--fault", case.fault, "--fault-at", str(case.fault_at)]
                log = (workdir / f"{case.run}.out").open("wb")
                running.append((case, subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env), 0.0))
                log.close()
            time.sleep(0.2)
            still = []
            for case, proc, since in running:
                if proc.poll() is not None:
                    continue
                if case.fault == "freeze":
                    # alive for ever by design: end it once something fired, or after a deadline
                    injected = since or (time.monotonic() if _injected(stack.root, case.run) else 0.0)
                    if injected and (_fired(stack.root, case.run) or time.monotonic() - injected > absence_after + 60):
                        proc.kill()
                        proc.wait()
                        continue
                    since = injected
                still.append((case, proc, since))
            running = still
        # the last alerts (absence ones come on the engine's timer) need a moment to land
        deadline = time.monotonic() + absence_after + 15
        while time.monotonic() < deadline:
            if all(_fired(stack.root, c.run) for c in cases if c.fault in ("kill", "freeze")):
                break
            time.sleep(0.5)
        time.sleep(3.0)  # alerts go engine -> broker -> JSONL; the sink flushes on its interval
    finally:
        for _, proc, _ in running:
            proc.kill()
            proc.wait()
        stack.stop()
    return stack.root


def _injected(root: Path, run: str) -> dict[str, Any] | None:
    for record in _records(root, run, "event"):
        if record["data"].get("event") == "fault_injected":
            return record
    return None


# -- judging ----------------------------------------------------------------------------------------


def _gap_alerts(records: list[dict[str, Any]], rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Absence judged on the recorded gaps with the rules' own ``after`` (not the scaled one).

    A run's silence fires when the gap between two of its messages (of the kinds the rule
    selects) reaches ``after``, at the earlier one's time + ``after``; a run that ended
    completed is finished. The live suite scales ``after`` down to seconds; on a machine
    running a dozen trainings on 2 cores that fires on healthy runs whose updates take
    longer, which says nothing about the 60 s / 2 min defaults. This says what they would do.
    """
    from alerts.rules import parse_duration

    out = []
    for rule in rules:
        kinds = (rule.get("select") or {}).get("kind") or ["metrics", "episode", "system", "event"]
        kinds = [kinds] if isinstance(kinds, str) else kinds
        after = parse_duration(rule.get("after", 60), "after")
        times = [r["ts"] for r in records if r["kind"] in kinds]
        for earlier, later in itertools.pairwise(times):
            if later - earlier >= after:
                data = {"rule": rule["name"], "severity": rule.get("severity", "warning"), "state": "firing"}
                out.append({"ts": earlier + after, "step": None, "data": data})
    return out


def replayed_alerts(root: Path, run: str, rules: Path, live_absence: bool) -> list[dict[str, Any]]:
    """``--rejudge``: the run's records fed again, one by one, to an engine on ``rules``.

    Each alert gets the time of the message that raised it. Absence rules need live time:
    for ``live_absence`` runs (a freeze, a kill) their alerts are the live engine's; for
    the others they are judged on the recorded gaps with the rules' real ``after``.
    """
    from alerts.engine import AlertEngine

    rule_list = yaml.safe_load(rules.read_text())
    rule_list = rule_list["rules"] if isinstance(rule_list, dict) else rule_list
    absence = [r for r in rule_list if r.get("kind") == "absence"]
    live = [r for r in rule_list if r.get("kind") != "absence"]
    engine = AlertEngine(rules=live, restore=False)
    records = sorted(read_records(run_dir(root, run)), key=lambda r: (r["ts"], r.get("seq", 0)))
    if live_absence:
        names = {r["name"] for r in absence}
        out = [r for r in _records(root, run, "alert") if r["data"].get("rule") in names]
    else:
        out = _gap_alerts(records, absence)
    for r in records:
        if r["kind"] == "alert":
            continue
        message = message_of(r)
        if message is None:
            continue
        before = len(engine.recent)
        engine.handle([message])
        for alert in list(engine.recent)[before:]:
            out.append({**alert, "ts": r["ts"]})
    engine.close()
    return sorted(out, key=lambda a: a["ts"])


def judge(root: Path, cases: list[Case], rejudge: Path | None = None) -> list[Outcome]:
    outcomes = []
    for case in cases:
        if rejudge:
            recorded = replayed_alerts(root, case.run, rejudge, case.fault in ("freeze", "kill"))
        else:
            recorded = _records(root, case.run, "alert")
        alerts = [r for r in recorded if r["data"].get("state") == "firing"]
        events = _records(root, case.run, "event")
        ended = [e["data"] for e in events if e["data"].get("event") == "run_ended"]
        status = str(ended[-1].get("status")) if ended else "no run_ended"
        out = Outcome(case.run, case.case, case.seed, case.fault, status)
        out.firings = [
            {"rule": a["data"]["rule"], "severity": a["data"]["severity"], "ts": a["ts"], "step": a.get("step")}
            for a in alerts
        ]
        injected = _injected(root, case.run)
        if case.fault is not None and injected is not None:
            fault_ts, fault_step = float(injected["ts"]), injected.get("step")
            need = SEVERITY_RANK[FAULT_SEVERITY[case.fault]]
            caught = [a for a in alerts if a["ts"] >= fault_ts and SEVERITY_RANK[a["data"]["severity"]] >= need]
            if caught:
                first = caught[0]
                out.caught_by, out.severity = first["data"]["rule"], first["data"]["severity"]
                out.hint = first["data"].get("hint")
                out.delay_s = round(float(first["ts"]) - fault_ts, 2)
                step = first.get("step")
                by_step = isinstance(step, int) and isinstance(fault_step, int)

                span = (fault_step, step) if by_step else None
                window = (fault_ts, float(first["ts"]))

                metrics = _records(root, case.run, "metrics")
                out.delay_updates = sum(
                    1 for m in metrics if any(k.startswith("train/") for k in m["data"]) and _between(m, span, window)
                )
                out.delay_episodes = sum(1 for e in _records(root, case.run, "episode") if _between(e, span, window))
                if by_step:
                    out.delay_steps = step - fault_step
        outcomes.append(out)
    return outcomes


def _between(record: dict[str, Any], span: tuple[Any, Any] | None, window: tuple[float, float]) -> bool:
    """After the fault, up to the alert: by training step where the alert has one (the engine's
    own lag, in its alert's ts, is not training time), else (absence) by wall-clock time."""
    if span is not None and isinstance(record.get("step"), int):
        return bool(span[0] < record["step"] <= span[1])
    return window[0] <= record["ts"] <= window[1]


def verdict(outcomes: list[Outcome]) -> list[str]:
    """What breaks the property the default rules promise; empty when it holds."""
    problems = []
    for o in outcomes:
        if o.fault is None:
            severe = [f for f in o.firings if SEVERITY_RANK[f["severity"]] >= SEVERITY_RANK["error"]]
            warnings = [f for f in o.firings if f["severity"] == "warning"]
            if severe:
                problems.append(f"{o.run}: healthy run raised {[(f['rule'], f['severity']) for f in severe]}")
            if len(warnings) > 1:
                problems.append(f"{o.run}: healthy run raised {len(warnings)} warnings {[f['rule'] for f in warnings]}")
        elif o.caught_by is None:
            problems.append(f"{o.run}: fault {o.fault} not caught at {FAULT_SEVERITY[o.fault]} or above")
    return problems


def table(outcomes: list[Outcome], rule_names: list[str]) -> str:
    healthy = [o for o in outcomes if o.fault is None]
    lines = [f"Healthy runs: {len(healthy)} ({', '.join(sorted({o.case for o in healthy}))})", ""]
    lines += ["| rule | false firings on healthy runs | runs it fired on |", "|---|---|---|"]
    for name in rule_names:
        hits = [(o.run, f["severity"]) for o in healthy for f in o.firings if f["rule"] == name]
        runs = sorted({r for r, _ in hits})
        severities = Counter(s for _, s in hits)
        count = ", ".join(f"{n} {s}" for s, n in sorted(severities.items())) if hits else "0"
        lines.append(f"| {name} | {count} | {', '.join(runs) or '–'} |")
    lines += ["", "| faulty run | fault | caught by (severity) | delay s | updates | episodes | steps | run ended |"]
    lines += ["|---|---|---|---|---|---|---|---|"]
    for o in outcomes:
        if o.fault is None:
            continue
        caught = f"{o.caught_by} ({o.severity})" if o.caught_by else "**not caught**"

        def cell(v: object) -> str:
            return "–" if v is None else str(v)

        lines.append(
            f"| {o.run} | {o.fault} | {caught} | {cell(o.delay_s)} | {cell(o.delay_updates)} | "
            f"{cell(o.delay_episodes)} | {cell(o.delay_steps)} | {o.status} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the short suite the tests run")
    parser.add_argument("--jobs", type=int, default=2, help="trainings at a time (default 2)")
    parser.add_argument("--rules", type=Path, default=REPO / "configs" / "alerts.yaml")
    parser.add_argument("--absence-after", type=float, default=10.0)
    parser.add_argument(
        "--only", metavar="NAME[,NAME]", help="run only the cases whose run id contains one of these texts"
    )
    parser.add_argument("--json", type=Path, help="write the outcomes here")
    parser.add_argument("--keep", type=Path, help="work (and leave the JSONL files) in this directory")
    parser.add_argument(
        "--rejudge",
        type=Path,
        metavar="DIR",
        help="train nothing: judge the runs a --keep DIR run left with --rules (absence on the recorded gaps)",
    )
    args = parser.parse_args(argv)
    cases = QUICK if args.quick else BENCH
    if args.only:
        wanted = [name.strip() for name in args.only.split(",") if name.strip()]
        unknown = [name for name in wanted if not any(name in c.run for c in cases)]
        if unknown:
            parser.error(f"--only: no {'quick ' if args.quick else ''}case matches {', '.join(unknown)}")
        cases = [c for c in cases if any(name in c.run for name in wanted)]
    started = time.monotonic()
    if args.rejudge:
        outcomes = judge(args.rejudge / "logs", cases, rejudge=args.rules)
    else:
        with tempfile.TemporaryDirectory(prefix="alert-suite-") as tmp:
            workdir = args.keep or Path(tmp)
            workdir.mkdir(parents=True, exist_ok=True)
            root = run_cases(cases, workdir, args.rules, args.jobs, args.absence_after)
            outcomes = judge(root, cases)
    rules = scaled_rules(args.rules, args.absence_after)["rules"]
    print(table(outcomes, [r["name"] for r in rules]))
    problems = verdict(outcomes)
    print(f"\n{len(cases)} trainings in {time.monotonic() - started:.0f} s; " + ("all good" if not problems else ""))
    for p in problems:
        print(f"PROBLEM: {p}")
    if args.json:
        args.json.write_text(json.dumps({"outcomes": [asdict(o) for o in outcomes], "problems": problems}, indent=1))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

"""The alert engine end to end: `metricbus up` with jsonl + alerts sinks, real publishers.

Every rule kind is fed real messages through the broker; the alerts it publishes back onto
the bus are read from what the JSONL sink wrote (logs/<run>/alerts.jsonl).
"""

from __future__ import annotations

import itertools
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support import Stack, free_port, wait_until
from test_alerts_notifiers import Hook

from bus.config import default_config_path, load_config
from bus.publisher import Publisher

AFTER = 2.0  # absence: silence that fires
GRACE = 1.0  # absence: grace after the engine starts / the broker restarts
REPEAT = 1.0

RULES: list[dict[str, Any]] = [
    {"name": "too-high", "kind": "threshold", "select": {"metric": "t/x"}, "threshold": 10, "for": 3,
     "repeat": REPEAT, "severity": "error"},
    {"name": "nan", "kind": "nonfinite", "select": {"metric": ["train/*", "grad/*"]}, "severity": "critical"},
    {"name": "diverging", "kind": "divergence", "select": {"metric": "d/loss"}, "window": 10, "min_rise": 0.5},
    {"name": "stagnant", "kind": "stagnation", "select": {"kind": "episode", "metric": "reward"}, "patience": 3},
    {"name": "dropped", "kind": "drop", "select": {"metric": "q/r"}, "relative": 0.1, "window": 2},
    {"name": "failing", "kind": "streak", "select": {"metric": "is_success"}, "length": 3},
    {"name": "sticky", "kind": "threshold", "select": {"metric": "s/x"}, "threshold": 10, "repeat": "never"},
    {"name": "silent", "kind": "absence", "select": {"run": "silent-.*"}, "after": AFTER, "grace": GRACE,
     "severity": "critical"},
]  # fmt: skip


@pytest.fixture(scope="module")
def hooks() -> Iterator[tuple[Hook, str]]:
    """A live webhook receiver, and the URL of one that is down."""
    live = Hook()
    yield live, f"http://127.0.0.1:{free_port()}/down"
    live.close()


@pytest.fixture(scope="module")
def alert_stack(tmp_path_factory: pytest.TempPathFactory, hooks: tuple[Hook, str]) -> Iterator[Stack]:
    """One stack for the module: jsonl + alerts (live and dead webhooks), random ports."""
    workdir = tmp_path_factory.mktemp("alerts")
    live, dead = hooks
    root = workdir / "logs"
    sinks = {
        "jsonl": {"type": "jsonl", "root": str(root), "flush_interval": 0.05},
        "alerts": {
            "type": "alerts",
            "topics": ["metrics/", "episode/", "system/", "event/", "bus/"],
            "flush_interval": 0.1,
            "rules": RULES,
            "notify": [
                {"type": "log"},
                {"type": "webhook", "url": live.url},
                {"type": "webhook", "url": dead, "retries": 1, "backoff": 0.1},
            ],
        },
    }
    stack = Stack(workdir, sinks=sinks)
    stack.start()
    yield stack
    stack.stop()


def alerts_of(stack: Stack, run: str) -> list[tuple[str, str, int | None]]:
    """(rule, state, step) of every alert the JSONL sink stored for ``run``."""
    return [(r["data"]["rule"], r["data"]["state"], r["step"]) for r in stack.records(run, "alert")]


def publish(stack: Stack, run: str, kind: str, metric: str, values: list[Any]) -> None:
    with Publisher(stack.frontend, run=run) as pub:
        for step, value in enumerate(values, start=1):
            pub.publish(kind, {metric: value}, step=step)


CLIMB = [1.0 + 0.2 * i for i in range(12)] + [1.0] * 10
CASES = [
    # run, message kind, metric, values (step = index + 1), the alerts expected: (rule, state, step)
    ("e2e-threshold", "metrics", "t/x", [11, 12, 1, 11, 12, 13, 5],
     [("too-high", "firing", 6), ("too-high", "resolved", 7)]),
    ("e2e-nonfinite", "metrics", "grad/global_norm", [1.0, math.nan, math.inf, 2.0],
     [("nan", "firing", 2), ("nan", "resolved", 4)]),
    ("e2e-divergence", "metrics", "d/loss", CLIMB, [("diverging", "firing", 10), ("diverging", "resolved", None)]),
    ("e2e-stagnation", "episode", "reward", [10, 9, 8, 7, 12],
     [("stagnant", "firing", 4), ("stagnant", "resolved", 5)]),
    ("e2e-drop", "metrics", "q/r", [100, 100, 95, 89, 91], [("dropped", "firing", 4), ("dropped", "resolved", 5)]),
    ("e2e-streak", "episode", "is_success", [False, True, False, False, False, True],
     [("failing", "firing", 5), ("failing", "resolved", 6)]),
]  # fmt: skip


@pytest.mark.parametrize(("run", "kind", "metric", "values", "expected"), CASES, ids=[c[0] for c in CASES])
def test_rule_kind_fires_and_resolves_at_the_exact_message(
    alert_stack: Stack, run: str, kind: str, metric: str, values: list[Any], expected: list[tuple[str, str, int]]
) -> None:
    """Each kind fires at the message where its condition and `for` are met and resolves when it clears."""
    publish(alert_stack, run, kind, metric, values)
    got = wait_until(
        lambda: len(alerts_of(alert_stack, run)) >= 2 and alerts_of(alert_stack, run), 20, f"{run}'s alerts"
    )
    if expected[1][2] is None:  # where exactly a trend stops counting as one is the rule's arithmetic
        got = [g if g[1] == "firing" else (g[0], g[1], None) for g in got]
    assert got == expected
    record = alert_stack.records(run, "alert")[0]
    assert record["kind"] == "alert" and record["run"] == run
    assert record["data"]["severity"] and record["data"]["message"]


def test_repeat_no_sooner_than_its_interval(alert_stack: Stack) -> None:
    """A breach that lasts re-notifies at the first sample `repeat` after the last notice, never sooner."""
    run = "e2e-repeat"
    with Publisher(alert_stack.frontend, run=run) as pub:
        for step in range(1, 13):
            due = time.time() + 0.3
            pub.metrics({"t/x": 50}, step=step)
            wait_until(_past(due), 2, "the next sample time")  # pace the samples
        pub.metrics({"t/x": 0}, step=13)
    wait_until(lambda: any(a[1] == "resolved" for a in alerts_of(alert_stack, run)), 20, "the resolve")
    got = alerts_of(alert_stack, run)
    sent_at = {r["step"]: r["ts"] for r in alert_stack.records(run, "metrics")}
    fired = [step for _, state, step in got if state == "firing" and step is not None]
    assert fired[0] == 3 and len(fired) >= 2 and got[-1] == ("too-high", "resolved", 13)
    for previous, step in itertools.pairwise(fired):
        assert sent_at[step] - sent_at[previous] >= REPEAT  # never sooner
        assert sent_at[step - 1] - sent_at[previous] < REPEAT  # and at the first sample allowed


def _past(moment: float) -> Callable[[], bool]:
    return lambda: time.time() >= moment


def test_alerts_reach_a_live_webhook_while_another_is_down(alert_stack: Stack, hooks: tuple[Hook, str]) -> None:
    """The live webhook gets the alerts; the dead one is retried and given up without stopping anything."""
    live, _ = hooks
    publish(alert_stack, "e2e-hooks", "metrics", "train/loss", [math.nan, 1.0])
    wait_until(lambda: len(alerts_of(alert_stack, "e2e-hooks")) == 2, 20, "both alerts in the JSONL")
    posted = wait_until(lambda: [b for b in live.bodies if b["run"] == "e2e-hooks"], 20, "the webhook POSTs")
    assert posted[0]["state"] == "firing" and posted[0]["text"].startswith("[critical] FIRING nan:")
    assert posted[0]["value"] == "nan"  # strict JSON: no bare NaN token
    wait_until(lambda: "gave up on alert nan/firing" in alert_stack.stderr() + alert_stack.stdout(), 20,
               "the dead webhook to be given up")  # fmt: skip


PUBLISH_FOREVER = """
import sys, time
from bus.publisher import Publisher
pub = Publisher(sys.argv[1], run=sys.argv[2], heartbeat_interval=0.5)
step = 0
while True:
    pub.metrics({"loop/i": step}, step=step)
    if step == 0:
        print("publishing", flush=True)
    step += 1
    time.sleep(0.05)
"""


def test_absence_fires_for_a_killed_publisher_not_for_a_completed_run(alert_stack: Stack) -> None:
    """A run whose publisher is SIGKILLed fires `silent` within after + grace; one that ended completed does not."""
    with Publisher(alert_stack.frontend, run="silent-done") as pub:
        pub.metrics({"loop/i": 1}, step=1)
        pub.event("run_ended", status="completed")
    proc = subprocess.Popen(
        [sys.executable, "-c", PUBLISH_FOREVER, alert_stack.frontend, "silent-killed"],
        stdout=subprocess.PIPE,
        env=alert_stack.env,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"publishing\n"
        wait_until(lambda: alert_stack.records("silent-killed", "metrics"), 20, "the publisher's metrics")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        killed_at = time.time()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    # The limit is the rule's promise (after + grace) plus the engine's tick and the JSONL write.
    alerts = wait_until(
        lambda: alert_stack.records("silent-killed", "alert"), AFTER + GRACE + 15, "the silent-run alert"
    )
    data = alerts[0]["data"]
    assert (data["rule"], data["state"], data["severity"]) == ("silent", "firing", "critical")
    # measured from the run's last message on disk, not from when this (maybe stalled) test saw the kill
    last = max(r["ts"] for kind in ("metrics", "event") for r in alert_stack.records("silent-killed", kind))
    assert last <= killed_at
    assert alerts[0]["ts"] - last >= AFTER - 0.05
    assert data["value"] >= AFTER
    assert alert_stack.records("silent-done", "alert") == []  # silent far longer than AFTER, but it completed
    with Publisher(alert_stack.frontend, run="silent-killed") as pub:  # the run comes back: resolved
        pub.metrics({"loop/i": 0}, step=0)
    wait_until(lambda: alerts_of(alert_stack, "silent-killed")[-1][1] == "resolved", 20, "the resolve")


def test_a_restarted_engine_keeps_firing_alerts_without_notifying_again(alert_stack: Stack) -> None:
    """After the alerts sink is SIGKILLed and restarted, a firing alert is not sent again; it still resolves."""
    run = "e2e-restart"
    publish(alert_stack, run, "metrics", "s/x", [20])
    wait_until(lambda: alerts_of(alert_stack, run) == [("sticky", "firing", 1)], 20, "the first alert")
    old = alert_stack.child_pid("sink alerts")
    os.kill(old, signal.SIGKILL)
    restarted = wait_until(lambda: _other_pid(alert_stack, old), 30, "the supervisor to restart the alerts sink")

    probes: list[str] = []

    def probe_alerted() -> bool:
        # A message sent before the new sink subscribed is not for it; probe until one is evaluated.
        # Every earlier probe still counts: on a loaded machine an alert can take longer than a probe.
        probe = f"e2e-probe-{time.monotonic_ns()}"
        probes.append(probe)
        publish(alert_stack, probe, "metrics", "train/loss", [math.nan])
        return any(alert_stack.records(p, "alert") for p in probes)

    wait_until(probe_alerted, 60, f"the restarted alerts sink (pid {restarted}) to evaluate", interval=0.5)
    publish(alert_stack, run, "metrics", "s/x", [30, 40])  # still breaching: restored as firing, no new notice
    publish(alert_stack, run, "metrics", "s/x", [0])
    wait_until(lambda: alerts_of(alert_stack, run)[-1][1] == "resolved", 20, "the resolve")
    assert [a[:2] for a in alerts_of(alert_stack, run)] == [("sticky", "firing"), ("sticky", "resolved")]


def _other_pid(stack: Stack, old: int) -> int | None:
    try:
        pid = stack.child_pid("sink alerts")
    except LookupError:
        return None
    return pid if pid != old else None


def test_the_default_config_alerts_sink_fires_its_default_rules(stack_factory: type[Stack], tmp_path: Path) -> None:
    """The alerts entry of configs/default.yaml, as shipped, runs and fires its default rules."""
    shipped = load_config(default_config_path()).sinks["alerts"]
    alerts = {"type": "alerts", "topics": list(shipped.topics), **shipped.options}
    alerts["rules"] = str(default_config_path().parent / shipped.options["rules"])
    stack = stack_factory(
        tmp_path, sinks={"jsonl": {"type": "jsonl", "root": str(tmp_path / "logs")}, "alerts": alerts}
    )
    stack.start()
    with Publisher(stack.frontend, run="defaults") as pub:
        # SB3's NaN explained_variance (returns without variance) is fine; the NaN loss beside it is not
        pub.metrics({"train/explained_variance": math.nan, "train/loss": math.nan}, step=7)
        pub.event("run_ended", 9, status="failed", error="ValueError: found invalid values")
    want = [("nonfinite", "firing", 7), ("nonfinite", "resolved", 7), ("run-failed", "firing", 9)]
    got = wait_until(lambda: len(alerts_of(stack, "defaults")) == 3 and alerts_of(stack, "defaults"), 20, "3 alerts")
    assert got == want
    records = {(r["data"]["rule"], r["data"]["state"]): r["data"] for r in stack.records("defaults", "alert")}
    failed = records[("run-failed", "firing")]
    assert failed["severity"] == "critical" and failed["detail"] == "ValueError: found invalid values"
    assert "ValueError: found invalid values" in failed["message"] and failed["hint"]
    assert records[("nonfinite", "firing")]["metric"] == "train/loss"
    wait_until(lambda: '"rule": "run-failed"' in stack.stderr(), 20, "the log notifier's line")

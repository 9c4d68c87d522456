"""The short labelled alert suite: real SB3 and PyTorch trainings in real processes, the default rules judging.

``bench/alert_suite.py --quick`` trains healthy runs (PPO, A2C, DQN on CartPole with RL Zoo's
hyper-parameters, a supervised MLP) and faulty ones (NaN weights, learning rate x1000, a
collapsed reward, a NaN loss, dead ReLUs, a frozen and a killed training) through a real
broker, with the alert engine on configs/alerts.yaml. The long version is a benchmark
(figures in bench/RESULTS.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
AFTER = 25.0  # absence rules' `after`, scaled down from 60 s / 2 min for the test
# about 2 minutes on 2 free cores; the margin is for a machine shared with other jobs
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("suite") / "suite.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "alert_suite.py"), "--quick", "--jobs", "3",
         "--absence-after", str(AFTER), "--json", str(out)],
        capture_output=True, text=True, timeout=840,
    )  # fmt: skip
    assert out.exists(), result.stdout + result.stderr
    report: dict[str, Any] = json.loads(out.read_text())
    report["stdout"] = result.stdout
    return report


def _runs(suite: dict[str, Any], fault: str | None) -> list[dict[str, Any]]:
    return [o for o in suite["outcomes"] if o["fault"] == fault]


@pytest.mark.slow
def test_healthy_runs_raise_no_error_and_at_most_one_warning(suite: dict[str, Any]) -> None:
    """Healthy PPO, A2C, DQN and a supervised MLP finish with no error/critical alert and at most one warning."""
    healthy = [o for o in suite["outcomes"] if o["fault"] is None]
    assert {o["case"] for o in healthy} == {"ppo-cartpole", "a2c-cartpole", "dqn-cartpole", "supervised"}
    for o in healthy:
        assert o["status"] == "completed", o
        assert not [f for f in o["firings"] if f["severity"] in ("error", "critical")], (o["run"], o["firings"])
        assert len(o["firings"]) <= 1, (o["run"], o["firings"])
    assert suite["problems"] == [], suite["stdout"]


@pytest.mark.slow
def test_every_fault_is_caught_at_a_fitting_severity_and_in_time(suite: dict[str, Any]) -> None:
    """NaN in the same update, explosion in 10 updates, collapse in 50 episodes, freeze/kill in after + 5 s."""
    by_fault = {o["fault"]: o for o in suite["outcomes"] if o["fault"]}
    assert set(by_fault) == {"nan", "explode", "collapse", "nan-loss", "dead", "freeze", "kill"}
    for fault, o in by_fault.items():
        assert o["caught_by"], (fault, suite["stdout"])
        assert o["hint"], (fault, o)  # every alert says what to check
    nan = by_fault["nan"]  # NaN weights: SB3's next rollout crashes; the failure itself is the alert
    assert (nan["caught_by"], nan["severity"], nan["status"]) == ("run-failed", "critical", "failed")
    assert nan["delay_updates"] <= 1
    nan_loss = by_fault["nan-loss"]
    assert (nan_loss["caught_by"], nan_loss["severity"]) == ("nonfinite", "critical")
    assert nan_loss["delay_updates"] <= 1
    assert by_fault["explode"]["severity"] in ("error", "critical") and by_fault["explode"]["delay_updates"] <= 10
    assert by_fault["collapse"]["caught_by"] == "reward-collapse" and by_fault["collapse"]["delay_episodes"] <= 50
    assert by_fault["dead"]["caught_by"] in ("grad-dead-units", "loss-spike", "grad-vanishing")
    assert by_fault["freeze"]["caught_by"] == "run-stalled" and by_fault["freeze"]["delay_s"] <= AFTER + 5
    assert by_fault["kill"]["caught_by"] == "run-silent" and by_fault["kill"]["delay_s"] <= AFTER + 5

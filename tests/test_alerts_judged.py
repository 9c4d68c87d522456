"""The rules that judge a value against the run's own history, the failed-run rule, hints (fast, in process).

What these rules are tuned on — real trainings, healthy and faulty — is test_alert_suite.py.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import pytest
import yaml

from alerts import load_rules
from alerts.diagnosis import diagnose
from alerts.loading import Where
from alerts.notifiers import alert_text
from bus.config import ConfigError

ANOMALY = {"name": "spike", "kind": "anomaly", "select": {"metric": "g"}, "window": 20, "min_samples": 10}


def test_anomaly_fires_on_a_spike_against_the_runs_own_scale(feed: Any) -> None:
    """A 20x jump fires on a series around 10 and on one around 0.01 alike; their own noise never does."""
    rng = random.Random(0)
    for scale in (10.0, 0.01):
        f = feed({**ANOMALY, "log": True, "z": 6, "min_ratio": 10})
        noise = [scale * math.exp(rng.gauss(0, 0.3)) for _ in range(60)]
        assert set(f.states(noise, metric="g")) == {"."}
        assert f.states([scale * 20], metric="g") == ["F"]


def test_anomaly_waits_for_min_samples_and_a_spike_is_not_its_own_yardstick(feed: Any) -> None:
    """Nothing is judged before min_samples values; the value is judged before it joins the window."""
    f = feed({**ANOMALY, "log": True, "min_ratio": 10})
    assert f.states([1.0] * 9 + [1000.0], metric="g") == ["."] * 10  # the 10th is still warming up
    g = feed({**ANOMALY, "log": True, "min_ratio": 10})
    assert g.states([1.0] * 10 + [1000.0, 1.0], metric="g") == ["."] * 10 + ["F", "R"]


def test_anomaly_down_catches_a_vanishing_gradient_and_min_change_a_jump_in_zeros(feed: Any) -> None:
    """direction: down fires on a norm falling 1000x (an exact 0 included); min_change bounds a linear series."""
    f = feed({**ANOMALY, "direction": "down", "log": True, "min_ratio": 100})
    assert f.states([1.0, 1.2] * 5 + [0.5, 0.0], metric="g") == ["."] * 11 + ["F"]
    g = feed({**ANOMALY, "min_change": 0.25})
    drifting = [0.75 + 0.005 * i for i in range(40)]  # a DQN's zeros ratio creeping up: not dead units
    assert set(g.states(drifting, metric="g")) == {"."}
    h = feed({**ANOMALY, "min_change": 0.25})
    assert h.states([0.05, 0.06] * 10 + [0.96], metric="g") == ["."] * 20 + ["F"]  # every ReLU died


def test_anomaly_ignores_nonfinite_values(feed: Any) -> None:
    """NaN and Inf are the nonfinite rule's: the anomaly rule neither fires on them nor learns them."""
    f = feed({**ANOMALY, "log": True, "min_ratio": 10})
    assert set(f.states([1.0] * 10 + [math.nan, math.inf, 1.0], metric="g")) == {"."}


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"z": 0}, "z"),
        ({"window": 3}, "window"),
        ({"min_samples": 50}, "min_samples"),
        ({"direction": "sideways"}, "direction"),
        ({"min_ratio": 10}, "min_ratio"),  # a ratio needs log: true
        ({"min_change": 0.5, "log": True}, "min_change"),
    ],
)
def test_bad_anomaly_options_fail_at_load_with_their_key(tmp_path: Path, options: dict[str, Any], key: str) -> None:
    """Each bad anomaly option is a ConfigError naming its key path."""
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"rules": [{**ANOMALY, **options}]}))
    with pytest.raises(ConfigError, match=rf"rules\[0\]\.{key}: expected"):
        load_rules(str(path), tmp_path, Where("cfg"))


def test_selector_exclude_keeps_explained_variance_nan_out_of_nonfinite(feed: Any) -> None:
    """exclude takes SB3's legitimate NaN explained_variance out; a NaN loss in the same update still fires."""
    f = feed(
        {"name": "nan", "kind": "nonfinite", "select": {"metric": "train/*", "exclude": "train/explained_variance"}}
    )
    assert f.send({"train/explained_variance": math.nan, "train/value_loss": 1.0}) == []
    fired = f.send({"train/explained_variance": math.nan, "train/value_loss": math.nan})
    assert [(a["data"]["rule"], a["data"]["metric"]) for a in fired] == [("nan", "train/value_loss")]


def test_ended_rule_fires_at_once_with_the_exception_and_stays(feed: Any) -> None:
    """run_ended failed fires a critical alert carrying the error text; completed or stopped does not; it stays."""
    select = {"kind": "event", "metric": "status"}
    rule = {"name": "run-failed", "kind": "ended", "severity": "critical", "select": select, "hint": "read it"}
    f = feed(rule)
    assert f.send({"event": "run_ended", "status": "completed"}, kind="event") == []
    stopped = {"event": "run_ended", "status": "stopped", "reason": "stopped early by Tune's scheduler or a stopper"}
    assert f.send(stopped, kind="event", run="asha-trial") == []  # a sweep's scheduler at work: no fault
    fired = f.send(
        {"event": "run_ended", "status": "failed", "error": "ValueError: nan logits"}, run="r2", kind="event"
    )
    assert len(fired) == 1
    data = fired[0]["data"]
    assert (data["rule"], data["severity"], data["state"]) == ("run-failed", "critical", "firing")
    assert data["detail"] == "ValueError: nan logits"
    assert "ValueError: nan logits" in data["message"]
    assert data["hint"] == "read it"
    assert f.send({"event": "heartbeat", "sent": 1, "dropped": 0}, run="r2", kind="event") == []


def test_stagnation_on_a_smoothed_mean_knows_a_plateau_at_its_best(feed: Any) -> None:
    """A run holding its best mean (CartPole's cap) never fires; one settled well below its best does."""
    rule = {"name": "stag", "kind": "stagnation", "select": {"kind": "episode", "metric": "reward"}, "patience": 10,
            "smooth": 5, "below_best": 0.25}  # fmt: skip
    f = feed(rule)
    at_cap = [100.0] * 10 + [500.0, 480.0, 500.0] * 20  # one lucky 500 is not a best the mean must beat
    assert set(f.states(at_cap, metric="reward", kind="episode")) == {"."}
    g = feed(rule)
    states = g.states([100.0] * 10 + [500.0] * 10 + [200.0] * 20, metric="reward", kind="episode")
    assert states.index("F") == 24  # best mean (500) at episode 15, then 10 episodes without a better one


def test_drop_of_gain_is_judged_on_what_the_run_learned(feed: Any) -> None:
    """of: gain fires when a negative-reward run loses 3/4 of its gain; an early wobble before any gain never does."""
    rule = {"name": "collapse", "kind": "drop", "select": {"kind": "episode", "metric": "r"}, "reference": "best",
            "of": "gain", "relative": 0.75, "window": 10, "smooth": 5, "min_gain": 3}  # fmt: skip
    rng = random.Random(1)
    f = feed(rule)
    start = [-500.0 + rng.uniform(-20, 20) for _ in range(30)]  # Acrobot, untrained: nothing learned, nothing lost
    assert set(f.states(start, metric="r", kind="episode")) == {"."}
    learned = [-100.0 + rng.uniform(-20, 20) for _ in range(30)]
    assert set(f.states(learned, metric="r", kind="episode")) == {"."}
    collapsed = f.states([-500.0] * 10, metric="r", kind="episode")
    assert "F" in collapsed  # bound: -100 - 0.75 * 400 = -400


def test_every_default_rule_has_a_hint_and_the_old_bounds_are_opt_in() -> None:
    """configs/alerts.yaml: each rule says what to check; alerts-optin.yaml loads and keeps the old bounds."""
    configs = Path(__file__).resolve().parent.parent / "configs"
    rules = load_rules(None, configs, Where("test"))
    assert all(r.spec.hint for r in rules), [r.name for r in rules if not r.spec.hint]
    optin = {r.name: r for r in load_rules("alerts-optin.yaml", configs, Where("test"))}
    assert set(optin) == {"grad-vanishing", "grad-norm-high", "grad-norm-tiny", "grad-zeros-high", "loss-divergence"}
    both = load_rules(["alerts.yaml", "alerts-optin.yaml"], configs, Where("test"))
    assert len(both) == len(rules) + len(optin)  # names do not clash


def test_hint_rides_in_the_notice_text_and_the_diagnosis() -> None:
    """A firing alert's one-line text ends with its hint; the diagnosis lists the worst first, with hints."""
    alert = {
        "rule": "grad-spike",
        "severity": "error",
        "state": "firing",
        "message": "norm 500",
        "hint": "lower the lr",
    }
    assert alert_text(alert) == "[error] FIRING grad-spike: norm 500 — check: lower the lr"
    assert "check" not in alert_text({**alert, "state": "resolved"})
    lines = diagnose(
        "failed",
        "ValueError: nan",
        [
            {**alert, "ts": 100.0, "step": 6400},
            {
                "rule": "run-failed",
                "severity": "critical",
                "state": "firing",
                "message": "crashed",
                "hint": "read it",
                "ts": 101.0,
                "step": 6500,
            },
        ],
    )
    assert lines[0] == "ended failed: ValueError: nan; 2 rule(s) fired, the worst critical (run-failed)."
    assert lines[1].startswith("critical run-failed") and lines[1].endswith("at step 6500: crashed")
    assert lines[2] == "  check: read it"
    assert lines[3].startswith("error grad-spike") and lines[4] == "  check: lower the lr"
    assert diagnose("completed", None, []) == ["ended completed; no alert fired."]

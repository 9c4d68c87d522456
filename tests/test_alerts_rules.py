"""Rule loading and validation, and each rule kind's evaluation fed straight to the engine (fast).

The end-to-end versions, through a real broker and sink processes, are in test_alerts_engine.py.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import wait_until

from alerts import AlertEngine, Rule, load_rules
from bus.config import ConfigError, default_config_path, load_config
from bus.message import Message
from bus.options import Where

# -- loading ---------------------------------------------------------------------------------


def test_default_rules_load() -> None:
    """configs/alerts.yaml loads and holds the rules the issue lists, and default.yaml uses it."""
    rules = load_rules(None, Path.cwd(), Where("test"))
    names = {r.name for r in rules}
    assert {
        "run-failed", "nonfinite", "grad-spike", "policy-jump", "loss-spike", "grad-dead-units",
        "reward-collapse", "reward-stagnation", "cpu-high", "memory-high", "gpu-memory-high", "gpu-hot",
        "run-silent", "run-stalled", "publisher-dropping", "failed-episodes",
    } <= names  # fmt: skip
    config = load_config(default_config_path())
    assert config.sinks["alerts"].type == "alerts"
    assert config.sinks["alerts"].options["rules"] == "alerts.yaml"


BAD_RULES = [
    ({"name": "a", "kind": "bogus", "select": {"metric": "x"}}, "rules[1].kind", "unknown kind 'bogus'"),
    ({"name": "a", "kind": "threshold", "select": {"metric": "x", "run": "(["}, "threshold": 1}, "rules[1].select.run",
     "regular expression"),
    ({"name": "a", "kind": "threshold", "select": {"metric": "x"}}, "rules[1].threshold", "required"),
    ({"name": "a", "kind": "threshold", "select": {"metric": "x"}, "threshold": "ten"}, "rules[1].threshold",
     "a number"),
    ({"name": "a", "kind": "threshold", "threshold": 1}, "rules[1].select.metric", "required"),
    ({"name": "a", "kind": "threshold", "select": {"metric": "x"}, "threshold": 1, "for": 2.5}, "rules[1].for",
     "count"),
    ({"name": "a", "kind": "absence", "after": "soon"}, "rules[1].after", "duration"),
    ({"name": "a", "kind": "nonfinite", "select": {"metric": "x"}, "severity": "loud"}, "rules[1].severity",
     "critical"),
    ({"name": "a", "kind": "streak", "select": {"metric": "ok"}, "length": 3, "lenght": 4}, "rules[1].lenght",
     "unknown key"),
    ({"name": "a", "kind": "nonfinite", "select": {"metric": "x"}, "message": "{vlaue}"}, "rules[1].message",
     "template"),
]  # fmt: skip


@pytest.mark.parametrize(("bad", "key_path", "expected"), BAD_RULES)
def test_bad_rule_in_a_rules_file_fails_at_load_naming_file_and_key(
    tmp_path: Path, bad: dict[str, Any], key_path: str, expected: str
) -> None:
    """A bad rule in a rules file fails load_config with the rules file's name and the key path."""
    good = {"name": "ok", "kind": "nonfinite", "select": {"metric": "train/*"}}
    (tmp_path / "my-rules.yaml").write_text(yaml.safe_dump({"rules": [good, bad]}))
    config = tmp_path / "bus.yaml"
    config.write_text(yaml.safe_dump({"sinks": {"alerts": {"type": "alerts", "rules": "my-rules.yaml"}}}))
    with pytest.raises(ConfigError) as error:
        load_config(config)
    text = str(error.value)
    assert text.startswith(f"{tmp_path / 'my-rules.yaml'}: {key_path}: "), text
    assert expected in text


def test_bad_inline_rule_names_the_config_key_path(tmp_path: Path) -> None:
    """An inline rule's error names the config file and sinks.<name>.rules[i].<key>."""
    config = tmp_path / "bus.yaml"
    rules = [{"name": "ok", "kind": "nonfinite", "select": {"metric": "x"}}, {"name": "b", "kind": "threshold"}]
    config.write_text(yaml.safe_dump({"sinks": {"watch": {"type": "alerts", "rules": rules}}}))
    with pytest.raises(ConfigError, match=r"bus\.yaml: sinks\.watch\.rules\[1\]\.select\.metric: expected"):
        load_config(config)


def test_bad_notifier_fails_at_load(tmp_path: Path) -> None:
    """A notifier with a missing or wrong option fails at load with its key path."""
    config = tmp_path / "bus.yaml"
    sink = {"type": "alerts", "rules": [], "notify": [{"type": "log"}, {"type": "command", "argv": "echo hi"}]}
    config.write_text(yaml.safe_dump({"sinks": {"alerts": sink}}))
    with pytest.raises(ConfigError, match=r"sinks\.alerts\.notify\[1\]\.argv: expected"):
        load_config(config)


def test_missing_rules_file_fails_at_load(tmp_path: Path) -> None:
    """A rules file that does not exist fails at load, naming the option."""
    config = tmp_path / "bus.yaml"
    config.write_text(yaml.safe_dump({"sinks": {"alerts": {"type": "alerts", "rules": "nope.yaml"}}}))
    with pytest.raises(ConfigError, match=r"sinks\.alerts\.rules: expected a readable rules file"):
        load_config(config)


# -- each kind ---------------------------------------------------------------------------------


def test_threshold_fires_at_the_for_count_and_resolves(feed: Any) -> None:
    """A threshold with for: 3 fires on the third consecutive breach, and resolves when it clears."""
    f = feed({"name": "hi", "kind": "threshold", "select": {"metric": "x"}, "threshold": 10, "for": 3})
    assert f.states([11, 12, 1, 11, 12, 13, 14, 5, 4]) == [".", ".", ".", ".", ".", "F", ".", "R", "."]


def test_threshold_for_a_duration_uses_the_samples_time(feed: Any) -> None:
    """for: 30s fires at the first breaching sample 30 s (message time) after the breach began."""
    f = feed({"name": "cpu", "kind": "threshold", "select": {"metric": "x"}, "threshold": 90, "for": "30s"})
    assert f.states([95] * 4, dt=10.0) == [".", ".", ".", "F"]


def test_clear_holds_a_firing_alert_through_short_dips(feed: Any) -> None:
    """With clear: 3 a firing alert resolves only after three samples in a row under the threshold."""
    f = feed({"name": "hi", "kind": "threshold", "select": {"metric": "x"}, "threshold": 10, "clear": 3})
    assert f.states([11, 5, 11, 5, 5, 5, 11]) == ["F", ".", ".", ".", ".", "R", "F"]


def test_clear_as_a_duration_uses_the_samples_time(feed: Any) -> None:
    """clear: 20s resolves at the first clear sample 20 s (message time) after the condition cleared."""
    f = feed({"name": "hi", "kind": "threshold", "select": {"metric": "x"}, "threshold": 10, "clear": "20s"})
    assert f.states([11, 5, 5, 5, 5], dt=10.0) == ["F", ".", ".", "R", "."]


def test_bad_clear_fails_at_load_with_its_key(tmp_path: Path) -> None:
    """A clear that is neither a count nor a duration fails at load naming rules[i].clear."""
    config = tmp_path / "bus.yaml"
    rules = [{"name": "hi", "kind": "threshold", "select": {"metric": "x"}, "threshold": 1, "clear": 0}]
    config.write_text(yaml.safe_dump({"sinks": {"watch": {"type": "alerts", "rules": rules}}}))
    with pytest.raises(ConfigError, match=r"sinks\.watch\.rules\[0\]\.clear: expected"):
        load_config(config)


def test_repeat_is_no_sooner_than_its_interval(feed: Any) -> None:
    """A firing alert repeats at the first breaching sample at least `repeat` after the last notice."""
    f = feed({"name": "hi", "kind": "threshold", "select": {"metric": "x"}, "threshold": 0, "repeat": "25s"})
    assert f.states([1] * 8, dt=10.0) == ["F", ".", ".", "F", ".", ".", "F", "."]


def test_repeat_never_notifies_once(feed: Any) -> None:
    """repeat: never sends one firing notice however long the breach lasts."""
    f = feed({"name": "hi", "kind": "threshold", "select": {"metric": "x"}, "threshold": 0, "repeat": "never"})
    assert f.states([1] * 5, dt=1e5) == ["F", ".", ".", ".", "."]


def test_nonfinite_fires_on_nan_and_inf_only(feed: Any) -> None:
    """NaN and ±Inf fire, a finite value resolves; bools and strings are not measurements."""
    f = feed({"name": "nan", "kind": "nonfinite", "select": {"metric": "train/*"}})
    values = [1.0, math.nan, math.inf, 2.0, -math.inf, True, "x", 0]
    assert f.states(values, metric="train/loss") == [".", "F", ".", "R", "F", ".", ".", "R"]
    assert f.send({"grad/norm": math.nan}) == []  # not selected


def test_divergence_fires_on_a_climbing_loss_not_on_noise(feed: Any) -> None:
    """A loss climbing over the window fires when the window first fills; flat noise never does."""
    f = feed({"name": "div", "kind": "divergence", "select": {"metric": "loss"}, "window": 10, "min_rise": 0.5})
    climbing = [1.0 + 0.2 * i for i in range(12)]  # fitted rise over 10 samples: 1.8 on a mean ~1.9-2.1
    assert f.states(climbing, metric="loss") == ["."] * 9 + ["F", ".", "."]
    assert "".join(f.states([1.0] * 10, metric="loss")).strip(".") == "R"  # the loss fell back: resolved once
    g = feed({"name": "div", "kind": "divergence", "select": {"metric": "loss"}, "window": 10, "min_rise": 0.5})
    noise = [1.0 + (0.3 if i % 2 else -0.3) for i in range(40)]
    assert set(g.states(noise, metric="loss")) == {"."}


def test_stagnation_fires_after_patience_without_improvement(feed: Any) -> None:
    """The best not beaten by min_delta for `patience` episodes fires; a new best resolves it."""
    rule = {"name": "stag", "kind": "stagnation", "select": {"kind": "episode", "metric": "reward"}, "patience": 3}
    f = feed({**rule, "min_delta": 0.5})
    rewards = [10, 10.4, 9, 8, 12, 11]  # 10.4 does not beat 10 by 0.5: the 3rd non-improvement is 8
    assert f.states(rewards, metric="reward", kind="episode") == [".", ".", ".", "F", "R", "."]


def test_drop_below_best_and_below_recent_mean(feed: Any) -> None:
    """drop fires when the value falls more than `relative` under its reference (best, or recent mean)."""
    f = feed({"name": "drop", "kind": "drop", "select": {"metric": "r"}, "relative": 0.1, "window": 2})
    assert f.states([100, 100, 95, 89, 91, 120, 107], metric="r") == [".", ".", ".", "F", "R", ".", "F"]
    g = feed({"name": "drop", "kind": "drop", "select": {"metric": "r"}, "relative": 0.1, "reference": "mean",
              "window": 2, "smooth": 2})  # fmt: skip
    # smoothed: -, 100, 100, 80 (< 0.9 * 100), 90 (not < 0.9 * 90)
    assert g.states([100, 100, 100, 60, 120], metric="r") == [".", ".", ".", "F", "R"]


def test_streak_of_failed_episodes(feed: Any) -> None:
    """N consecutive episodes with is_success false fire at the N-th; a success resolves."""
    f = feed({"name": "fail", "kind": "streak", "select": {"metric": "is_success"}, "length": 3})
    values = [False, False, True, False, False, False, False, True]
    assert f.states(values, metric="is_success", kind="episode") == [".", ".", ".", ".", ".", "F", ".", "R"]


def test_threshold_percent_of_a_sibling_metric(feed: Any) -> None:
    """percent_of compares 100 * gpu/<i>/mem_used_bytes / gpu/<i>/mem_total_bytes of the same message."""
    f = feed({"name": "gpu", "kind": "threshold", "select": {"kind": "system", "metric": "gpu/*/mem_used_bytes"},
              "percent_of": "mem_total_bytes", "threshold": 95})  # fmt: skip
    data = {"gpu/0/mem_used_bytes": 97, "gpu/0/mem_total_bytes": 100, "gpu/1/mem_used_bytes": 10,
            "gpu/1/mem_total_bytes": 100}  # fmt: skip
    alerts = f.send(data, kind="system", run=None)
    assert [(a["data"]["metric"], a["data"]["value"], a["run"]) for a in alerts] == [
        ("gpu/0/mem_used_bytes", 97.0, None)
    ]
    assert alerts[0]["data"]["source"] == "n1"


def test_threshold_delta_of_a_heartbeat_counter(feed: Any) -> None:
    """delta: true fires on new drops since the same publisher's previous heartbeat, not on the total."""
    f = feed({"name": "drops", "kind": "threshold", "select": {"kind": "event", "metric": "dropped"}, "delta": True,
              "threshold": 0})  # fmt: skip
    beats = [0, 0, 5, 5, 5]
    assert f.states(beats, metric="dropped", kind="event") == [".", ".", "F", "R", "."]


def test_selector_run_node_and_kind(feed: Any) -> None:
    """run/node regexes must match the whole name, and only the selected message kinds count."""
    f = feed({"name": "hi", "kind": "threshold", "threshold": 0,
              "select": {"kind": "metrics", "metric": "x", "run": "ppo-.*", "node": "gpu[0-9]+"}})  # fmt: skip
    assert f.send({"x": 1}, run="ppo-1", node="gpu1x") == []
    assert f.send({"x": 1}, run="a2c-1", node="gpu1") == []
    assert f.send({"x": 1}, run="ppo-1", node="gpu1", kind="episode") == []
    assert [a["run"] for a in f.send({"x": 1}, run="ppo-1", node="gpu1")] == ["ppo-1"]


def test_series_are_per_run_and_metric(feed: Any) -> None:
    """The same rule keeps separate state per run and per matched metric (deduplicated within each)."""
    f = feed({"name": "hi", "kind": "threshold", "select": {"metric": "grad/*"}, "threshold": 1})
    first = f.send({"grad/a": 2, "grad/b": 2}, run="r1")
    assert sorted(a["data"]["metric"] for a in first) == ["grad/a", "grad/b"]
    assert [a["run"] for a in f.send({"grad/a": 3}, run="r2")] == ["r2"]
    assert f.send({"grad/a": 3, "grad/b": 3}, run="r1") == []


class EveryThird(Rule):
    """A plug-in rule: fires on every third sample of its series."""

    kind = "every-third"

    def __init__(self, period: int = 3) -> None:
        self.period = period

    def new_state(self) -> list[int]:
        return [0]

    def check(self, state: list[int], metric: str, value: Any, message: Message) -> tuple[bool, float, float | None]:
        state[0] += 1
        return state[0] % self.period == 0, float(state[0]), None


class Broken(Rule):
    """A plug-in rule with a bug."""

    def check(self, state: Any, metric: str, value: Any, message: Message) -> None:
        raise ZeroDivisionError("oops")


def test_plugin_rule_class_and_a_broken_one(feed: Any) -> None:
    """kind: module:Class plugs in a Rule subclass; one that raises does not stop the other rules."""
    f = feed(
        {"name": "broken", "kind": "test_alerts_rules:Broken", "select": {"metric": "x"}},
        {"name": "third", "kind": "test_alerts_rules:EveryThird", "select": {"metric": "x"}, "period": 2},
    )
    assert f.states([1, 1, 1, 1]) == [".", "F", "R", "F"]
    assert f.engine.rule_errors == 4


def test_run_ended_resolves_the_runs_firing_alerts(feed: Any) -> None:
    """A run that ends has its firing alerts resolved (they could never clear otherwise)."""
    f = feed({"name": "hi", "kind": "threshold", "select": {"metric": "x"}, "threshold": 0})
    assert [a["data"]["state"] for a in f.send({"x": 1})] == ["firing"]
    alerts = f.send({"event": "run_ended", "status": "failed"}, kind="event")
    assert [(a["data"]["state"], a["data"]["rule"]) for a in alerts] == [("resolved", "hi")]
    assert alerts[0]["data"]["message"].endswith("(run ended)")


def test_absence_fires_on_the_timer_and_resolves_on_traffic(feed: Any) -> None:
    """A silent run fires after `after` on the engine's timer, not on a message; traffic resolves it."""
    f = feed({"name": "silent", "kind": "absence", "after": 0.3, "grace": 0})
    f.send({"x": 1}, run="quiet")
    f.send({"event": "run_ended", "status": "completed"}, kind="event", run="done")
    f.send({"x": 1}, run="done")  # a message after run_ended starts tracking again...
    f.send({"event": "run_ended", "status": "completed"}, kind="event", run="done")  # ...until it ends again
    f.send({"event": "heartbeat", "sent": 3, "dropped": 0}, kind="event", run="done")  # Publisher.close()'s
    f.send({"event": "run_ended", "status": "failed"}, kind="event", run="crashed")  # failed: still watched
    f.send({"event": "run_ended", "status": "stopped"}, kind="event", run="asha")  # a scheduler's stop: finished

    def fired() -> list[dict[str, Any]]:
        f.engine.flush()
        return [a for a in f.engine.recent if a["data"]["state"] == "firing"]

    alerts = wait_until(fired, 10, "the absence alert")
    assert sorted((a["run"], a["data"]["source"]) for a in alerts) == [("crashed", "crashed"), ("quiet", "quiet")]
    assert alerts[0]["data"]["value"] >= 0.3
    back = f.send({"x": 2}, run="quiet")
    assert [a["data"]["state"] for a in back] == ["resolved"]


def test_absence_grace_after_a_broker_restart(feed: Any) -> None:
    """A new broker (a new publisher of broker_stats) restarts every silence timer with the grace period."""
    f = feed({"name": "silent", "kind": "absence", "after": 0.2, "grace": 0.6})
    started = time.time()
    f.send({"event": "broker_stats"}, kind="bus", run=None, pub="broker-1")
    f.send({"x": 1}, run="r1")

    def fired(after: int) -> list[dict[str, Any]]:
        f.engine.flush()
        return [a for a in list(f.engine.recent)[after:] if a["data"]["state"] == "firing"]

    first = wait_until(lambda: fired(0), 10, "the first absence alert")
    assert first[0]["ts"] - started >= 0.55  # grace (0.6 s) after the engine started, just before `started`
    assert [a["data"]["state"] for a in f.send({"x": 2}, run="r1")] == ["resolved"]
    count = len(f.engine.recent)
    restarted = time.time()
    f.send({"event": "broker_stats"}, kind="bus", run=None, pub="broker-2")
    second = wait_until(lambda: fired(count), 10, "the absence alert after the restart")
    assert second[0]["ts"] - restarted >= 0.6  # not 0.2: the restart's grace held it


def test_restart_restores_firing_alerts_without_notifying_again(tmp_path: Path, feed: Any) -> None:
    """A firing alert found in alerts.jsonl comes back firing: no new notice, a resolve when it clears."""
    rule = {"name": "hi", "kind": "threshold", "select": {"metric": "x"}, "threshold": 0}
    first = feed(rule)
    fired = first.send({"x": 1})
    (tmp_path / "r1").mkdir()
    (tmp_path / "r1" / "alerts.jsonl").write_text("".join(json.dumps(a) + "\n" for a in fired))
    again = AlertEngine(rules=[rule], state_root=str(tmp_path))
    try:
        msg = Message("metrics", "r1", "n1", "p2", 0, fired[0]["ts"] + 1, 9, {"x": 5})
        again.handle([msg])
        assert list(again.recent) == []
        again.handle([Message("metrics", "r1", "n1", "p2", 1, fired[0]["ts"] + 2, 10, {"x": -1})])
        assert [(a["data"]["state"], a["step"]) for a in again.recent] == [("resolved", 10)]
    finally:
        again.close()

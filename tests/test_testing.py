"""bus.testing, the helpers plug-in authors get, used as a plug-in author would: on the example plug-in."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bus.publisher import Publisher
from bus.registry import resolve
from bus.testing import ListSink, inproc_bus, wait_until

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "metricbus-example-sink"


def _summary(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def _complete(summary: dict[str, Any]) -> dict[str, Any] | None:
    runs: dict[str, Any] = summary.get("runs", {})
    return runs if runs.get("ppo-a", {}).get("messages") == 4 and "ppo-b" in runs else None


def test_the_example_plugin_summarises_runs_on_an_in_process_bus(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RunSummarySink, fed by a real broker and runner, writes each run's count, last step and best reward."""
    monkeypatch.syspath_prepend(str(EXAMPLE))
    sink_class = resolve("metricbus_example_sink:RunSummarySink")
    summary = tmp_path / "summary.json"
    sink = sink_class(path=str(summary), metric="rollout/ep_rew_mean")
    with inproc_bus(topics=["metrics/"], sink=sink, flush_interval=0.05) as (config, _running):
        with Publisher(config.frontend, run="ppo-a", node="n1", curve={}) as publisher:
            for step, reward in enumerate([10.0, 30.0, 20.0, float("nan")]):
                publisher.metrics({"rollout/ep_rew_mean": reward}, step=step * 100)
        with Publisher(config.frontend, run="ppo-b", node="n1", curve={}) as publisher:
            publisher.metrics({"train/value_loss": 0.5}, step=7)
            publisher.episode({"reward": 1.0})  # not subscribed to: never reaches the sink
        runs = wait_until(lambda: _complete(_summary(summary)), 15, "both runs in the summary file")
    assert runs["ppo-a"] == {"messages": 4, "last_step": 300, "latest": 20.0, "best": 30.0}
    assert runs["ppo-b"] == {"messages": 1, "last_step": 7, "latest": None, "best": None}
    assert _summary(summary)["metric"] == "rollout/ep_rew_mean"


def test_list_sink_keeps_what_the_bus_delivered_in_order() -> None:
    """inproc_bus with its default ListSink delivers one publisher's messages whole and in seq order."""
    with inproc_bus(topics=["metrics/"]) as (config, running):
        with Publisher(config.frontend, run="r", node="n", curve={}) as publisher:
            for step in range(50):
                publisher.metrics({"x": float(step)}, step=step)
        sink: ListSink = running.sink
        wait_until(lambda: len(sink.of_kind("metrics")) == 50, 15, "50 metrics")
    assert [m.step for m in sink.of_kind("metrics")] == list(range(50))
    assert sink.closed and sink.flushes >= 1

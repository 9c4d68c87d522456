"""Runs at scale without a browser: group statistics and bands, group membership, run
colours, run configs as table columns, and the node overview's sparklines."""

from __future__ import annotations

import numpy as np

from bus.message import Message
from sinks.dashboard.groups import aggregate
from sinks.dashboard.nodes import sparkline
from sinks.dashboard.runs import Grouping, groups, hparams_figure, recent_runs, run_colour, table_rows
from sinks.dashboard.store import Store, flat_config


def seeds(offsets: list[float], steps: int = 50) -> list[tuple[np.ndarray, np.ndarray]]:
    x = np.arange(steps, dtype=np.float64) * 10
    return [(x, x / 10 + off) for off in offsets]


def test_band_is_min_max_std_or_ci_around_mean_or_median() -> None:
    """A group's centre is the members' mean or median at each x; its band min–max, ±std or a 95% CI."""
    members = {"g": seeds([0.0, 1.0, 5.0])}
    line = aggregate(members, stat="mean", band="minmax")["g"]
    assert line.members == 3
    assert np.allclose(line.centre - line.x / 10, 2.0)
    assert np.allclose(line.hi - line.lo, 5.0)
    median = aggregate(members, stat="median", band="std")["g"]
    assert np.allclose(median.centre - median.x / 10, 1.0)
    assert np.allclose(median.hi - median.lo, 2 * np.std([0.0, 1.0, 5.0]))
    ci = aggregate(members, band="ci95")["g"]
    assert np.allclose(ci.hi - ci.lo, 2 * 1.96 * np.std([0.0, 1.0, 5.0], ddof=1) / np.sqrt(3))


def test_members_count_only_where_they_have_data_and_smoothing_keeps_a_constant_offset() -> None:
    """A shorter member is not extended past its last point; smoothing applies to each member before the mean."""
    short = (np.arange(10, dtype=np.float64) * 10, np.full(10, 4.0))
    long = (np.arange(50, dtype=np.float64) * 10, np.full(50, 2.0))
    line = aggregate({"g": [short, long]}, smoothing=0.9)["g"]
    late = line.x > 100
    assert np.allclose(line.centre[late], 2.0)  # only the long member there
    assert np.allclose(line.centre[line.x < 90], 3.0)


def test_groups_by_regex_capture_or_hyperparameter_and_unmatched_runs_stand_alone() -> None:
    """``(.*)-seed\\d+`` groups seeds of one config; by a hyperparameter, runs sharing its value; others alone."""
    store = Store(max_runs=10)
    batch = []
    for seq, (run, lr) in enumerate((("a-seed0", 1e-3), ("a-seed1", 1e-3), ("b-seed0", 3e-4), ("other", None))):
        config = {"hyperparameters": {"learning_rate": lr}} if lr else {}
        batch.append(Message("event", run, "n", f"p{seq}", 0, 1.0 + seq, 0, {"event": "run_started", "config": config}))
    store.add_live(batch)
    by_id = groups(store, store.runs, Grouping("regex", r"(.*)-seed\d+"))
    assert by_id == {"a": ["a-seed0", "a-seed1"], "b": ["b-seed0"], "other": ["other"]}
    by_lr = groups(store, store.runs, Grouping("hparam", "learning_rate"))
    assert by_lr == {"learning_rate=0.001": ["a-seed0", "a-seed1"], "learning_rate=0.0003": ["b-seed0"],
                     "other": ["other"]}  # fmt: skip
    assert recent_runs(store, 2) == ["b-seed0", "other"]
    rows = table_rows(store, ["learning_rate"])
    assert [r["hp:learning_rate"] for r in rows] == [1e-3, 1e-3, 3e-4, None]


def test_run_colours_are_stable_and_seeds_of_a_sweep_differ() -> None:
    """A run's colour depends on its name only; 200 runs of a sweep get well over 100 distinct colours."""
    assert run_colour("ppo-1") == run_colour("ppo-1")
    colours = {run_colour(f"sweep-c{i // 5:02d}-seed{i % 5}") for i in range(200)}
    assert len(colours) > 150
    hue = [int(run_colour(f"x-seed{i}")[1:], 16) for i in range(3)]
    assert len(set(hue)) == 3


def test_flat_config_unwraps_hyperparameters_and_bounds_what_it_keeps() -> None:
    """``run_started``'s config becomes scalar columns; nested keys join with '.', long text is cut, size bounded."""
    config = {"algorithm": "PPO", "hyperparameters": {"learning_rate": 3e-4, "use_sde": False},
              "env": {"id": "CartPole-v1", "n": 4}, "note": "x" * 500, "bad": float("nan"), "list": [1, 2]}  # fmt: skip
    flat = flat_config(config)
    assert flat == {"algorithm": "PPO", "learning_rate": 3e-4, "use_sde": "false", "env.id": "CartPole-v1",
                    "env.n": 4.0, "note": "x" * 64}  # fmt: skip
    assert len(flat_config({f"k{i}": i for i in range(1000)})) == 64
    assert flat_config("not a mapping") == {}


def test_parallel_coordinates_has_an_axis_per_varying_hyperparameter_and_the_reward() -> None:
    """Hyperparameters that vary become axes (text as ticks), the final reward the last one."""
    rows = [
        {"run": "a", "final_reward": 1.0, "hp:lr": 1e-3, "hp:env": "A", "hp:same": 1.0},
        {"run": "b", "final_reward": 2.0, "hp:lr": 3e-4, "hp:env": "B", "hp:same": 1.0},
    ]
    trace = hparams_figure(rows, ["lr", "env", "same"])["data"][0]
    assert [d["label"] for d in trace["dimensions"]] == ["lr", "env", "final reward"]
    assert trace["dimensions"][1]["ticktext"] == ["A", "B"]


def test_sparkline_draws_the_last_values_on_a_fixed_scale() -> None:
    """A sparkline is one block character per recent value, lowest to highest on the given scale."""
    assert sparkline(np.array([0.0, 50.0, 100.0]), 0, 100) == "▁▅█"
    assert sparkline(np.array([np.nan, 3.0, 3.0])) == "▁▁"
    assert len(sparkline(np.arange(100.0))) == 24


def test_a_run_without_config_has_empty_hyperparameter_cells() -> None:
    """A run that never sent ``run_started`` still gets a row, its hyperparameter cells empty."""
    store = Store()
    store.add_live([Message("metrics", "x", "n", "p", 0, 1.0, 5, {"train/loss": 1.0})])
    (row,) = table_rows(store, ["learning_rate"])
    assert row["hp:learning_rate"] is None and row["steps"] == 5

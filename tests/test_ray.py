"""Ray Tune and RLlib on a real local Ray cluster (2 CPUs), publishing to a real bus.

One cluster and one stack serve the whole module: starting Ray costs seconds.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import REPO, Stack, free_port, wait_until

ray = pytest.importorskip("ray")
tune = pytest.importorskip("ray.tune")
gymnasium = pytest.importorskip("gymnasium")

MAX_T = 8
RATES = [1.0, 0.8, 0.3, 0.2, 0.05]  # best first: later trials meet ASHA's rungs already filled; the last fails


@pytest.fixture(scope="module")
def bus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(tmp_path_factory.mktemp("ray-bus")).start()
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def cluster(bus: Stack) -> Iterator[None]:
    # Ray's workers inherit this environment: they find the bus, and this module (the
    # trainable is pickled by reference to it), through it
    saved = {name: os.environ.get(name) for name in ("METRICBUS_ENDPOINT", "PYTHONPATH")}
    os.environ["METRICBUS_ENDPOINT"] = bus.frontend
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests"), str(REPO), saved["PYTHONPATH"] or ""])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _trainable(config: dict[str, Any]) -> None:
    if config["lr"] == RATES[-1]:
        raise RuntimeError("diverged on purpose")
    for i in range(1, MAX_T + 1):
        tune.report({"score": config["lr"] * i, "loss": 1.0 / (config["lr"] * i), "nested": {"acc": i / MAX_T}})


@pytest.mark.slow
def test_tune_sweep_with_asha_publishes_each_trial_as_a_run(cluster: None, bus: Stack, tmp_path: Path) -> None:
    """Each trial is <experiment>-<trial_id> with its config; every result at its iteration; ends with Tune's status.

    A second callback whose bus is down runs alongside: the sweep finishes all the same.
    """
    from ray.tune.schedulers import ASHAScheduler

    from publishers.ray import MetricbusTuneCallback

    scheduler = ASHAScheduler(metric="score", mode="max", max_t=MAX_T, grace_period=1, reduction_factor=2)
    nowhere = MetricbusTuneCallback(endpoint=f"tcp://127.0.0.1:{free_port()}")  # a bus that is down
    tuner = tune.Tuner(
        tune.with_resources(_trainable, {"cpu": 1}),
        param_space={"lr": tune.grid_search(RATES), "arch": {"width": 8}},
        tune_config=tune.TuneConfig(scheduler=scheduler, reuse_actors=True),
        run_config=tune.RunConfig(
            name="lr-sweep",
            storage_path=str(tmp_path / "ray_results"),
            stop={"training_iteration": MAX_T},
            # generous waits: on a loaded machine one slow connect would mark the bus unreachable
            callbacks=[MetricbusTuneCallback(connect_timeout=10.0, linger=10.0), nowhere],
            verbose=0,
        ),
    )
    grid = tuner.fit()
    assert len(grid) == len(RATES)

    def run_dirs() -> list[str]:
        return sorted(p.name for p in bus.root.iterdir() if p.name.startswith("lr-sweep-"))

    # fit() returns once the trials are done, not once the sink has written their last messages
    runs = wait_until(lambda: len(run_dirs()) >= len(RATES) and run_dirs(), 30, "every trial's run directory")
    assert len(runs) == len(RATES)

    def started(run: str) -> dict[str, Any]:
        return next(e["data"]["config"] for e in bus.records(run, "event") if e["data"]["event"] == "run_started")

    def ended(run: str) -> dict[str, Any] | None:
        events = [e for e in bus.records(run, "event") if e["data"]["event"] == "run_ended"]
        return events[-1] if events else None

    by_lr = {started(run)["hyperparameters"]["lr"]: run for run in runs}
    early = 0
    for result in grid:
        run = by_lr[result.config["lr"]]
        trial_id = started(run)["trial_id"]
        assert run == f"lr-sweep-{trial_id}"  # the regex (.*)-[^-]+$ groups the sweep
        end = wait_until(lambda run=run: ended(run), 20, f"run_ended of {run}")
        events = [e["data"] for e in bus.records(run, "event") if e["data"]["event"] != "heartbeat"]
        assert [e["event"] for e in events] == ["run_started", "run_ended"]
        config = events[0]["config"]
        assert config["experiment"] == "lr-sweep"
        assert config["hyperparameters"] == {"lr": result.config["lr"], "arch/width": 8}
        if result.error is not None:
            assert end["data"]["status"] == "failed" and "diverged on purpose" in end["data"]["error"]
            assert bus.records(run, "metrics") == []
            continue
        assert result.metrics["trial_id"] == trial_id
        reported = result.metrics_dataframe  # Tune's own record of every result (progress.csv)
        rows = bus.records(run, "metrics")
        assert [r["step"] for r in rows] == list(reported["training_iteration"])
        assert [r["data"]["score"] for r in rows] == list(reported["score"])
        assert [r["data"]["loss"] for r in rows] == list(reported["loss"])
        assert [r["data"]["nested/acc"] for r in rows] == list(reported["nested/acc"])
        assert not any(k in rows[0]["data"] for k in ("pid", "hostname", "date", "trial_id"))
        iterations = int(reported["training_iteration"].iloc[-1])
        assert end["step"] == iterations
        if iterations < MAX_T:  # ASHA cut it short: stopped, not completed (nor failed)
            assert end["data"]["status"] == "stopped" and "scheduler" in end["data"]["reason"]
            early += 1
        else:  # it ran to stop=
            assert end["data"]["status"] == "completed" and "reason" not in end["data"]
    assert early >= 1  # the scheduler did stop trials early in this sweep
    assert sum(r.error is not None for r in grid) == 1
    assert nowhere.unreachable and nowhere.errors == 0  # a bus that is down cost the sweep nothing but a warning


@pytest.mark.slow
def test_rllib_ppo_publishes_train_results_and_every_episode(cluster: None, bus: Stack) -> None:
    """PPO on CartPole: each train() result as metrics; the env runner's episodes add up to RLlib's own stats."""
    from ray.rllib.algorithms.ppo import PPOConfig

    from publishers.rllib import metricbus_callback

    config = (
        PPOConfig()
        .environment("CartPole-v1")
        .env_runners(num_env_runners=1, num_envs_per_env_runner=1, rollout_fragment_length=200)
        .training(train_batch_size_per_learner=200, minibatch_size=100, num_epochs=1, lr=3e-4)
        .rl_module(model_config={"fcnet_hiddens": [16]})
        .callbacks(metricbus_callback("rllib-ppo-1"))
        .debugging(seed=0)
    )
    algo = config.build_algo()
    try:
        results = [algo.train() for _ in range(2)]
    finally:
        algo.stop()

    def ended() -> bool:
        return any(e["data"]["event"] == "run_ended" for e in bus.records("rllib-ppo-1", "event"))

    total = int(results[-1]["env_runners"]["num_episodes_lifetime"])
    wait_until(lambda: ended() and len(bus.records("rllib-ppo-1", "episode")) >= total, 30, "every episode")
    rows = bus.records("rllib-ppo-1", "metrics")
    assert [r["step"] for r in rows] == [200, 400]
    for row, result in zip(rows, results, strict=True):
        reported = _numbers(result)
        assert reported.keys() - {"timestamp", "pid", "done"} <= row["data"].keys()
        for key, value in row["data"].items():  # every number exactly as train() returned it
            assert value == reported[key] or (math.isnan(value) and math.isnan(reported[key])), key
        for key in ("learners/default_policy/policy_loss", "env_runners/num_env_steps_sampled_lifetime_throughput"):
            assert any(k.startswith(key) for k in row["data"]), key

    episodes = bus.records("rllib-ppo-1", "episode")
    assert len(episodes) == total
    assert {e["data"]["runner"] for e in episodes} == {1}  # from the remote env runner, not the driver
    assert {e["pub"] for e in episodes}.isdisjoint({r["pub"] for r in rows})
    for start, result in zip((0, 200), results, strict=True):  # each iteration's episodes, as RLlib summed them
        mine = [e["data"]["reward"] for e in episodes if e["step"] == start]
        runners = result["env_runners"]
        assert len(mine) == runners["num_episodes"]
        assert max(mine) == runners["episode_return_max"] and min(mine) == runners["episode_return_min"]
        assert math.isclose(sum(mine) / len(mine), runners["episode_return_mean"], rel_tol=1e-9)
    assert all(e["data"]["length"] == e["data"]["reward"] for e in episodes)  # CartPole pays 1 per step

    events = [e["data"] for e in bus.records("rllib-ppo-1", "event") if e["data"]["event"] != "heartbeat"]
    assert [e["event"] for e in events] == ["run_started", "run_ended"]
    assert events[0]["config"]["algorithm"] == "PPO" and events[0]["config"]["hyperparameters"]["lr"] == 3e-4


CRASH_AFTER = 300  # env steps: inside the second train() of 200 steps each


class CrashingCartPole(gymnasium.Wrapper):  # type: ignore[type-arg]
    """CartPole whose every instance raises after ``CRASH_AFTER`` steps, as a broken simulator would."""

    def __init__(self, config: Any = None) -> None:
        super().__init__(gymnasium.make("CartPole-v1"))
        self.steps = 0

    def step(self, action: Any) -> Any:
        self.steps += 1
        if self.steps > CRASH_AFTER:
            raise RuntimeError("simulator crashed on purpose")
        return self.env.step(action)


@pytest.mark.slow
def test_rllib_train_that_raises_ends_the_run_failed_once(cluster: None, bus: Stack) -> None:
    """An env that raises: train() raises, the run ends failed with the env's error, once (stop() adds nothing)."""
    from ray.rllib.algorithms.ppo import PPOConfig

    from publishers.rllib import metricbus_callback

    config = (
        PPOConfig()
        .environment(CrashingCartPole)
        # the env runner in the driver: its error reaches train() as RLlib raises it (a remote
        # runner's process dies instead, and train() raises ActorDiedError: the same run_ended)
        .env_runners(num_env_runners=0, num_envs_per_env_runner=1, rollout_fragment_length=200)
        .fault_tolerance(restart_failed_sub_environments=False)
        .training(train_batch_size_per_learner=200, minibatch_size=100, num_epochs=1)
        .rl_module(model_config={"fcnet_hiddens": [16]})
        .callbacks(metricbus_callback("rllib-crash-1", episodes=False))
        .debugging(seed=0)
    )
    algo = config.build_algo()
    try:
        first = algo.train()
        with pytest.raises(RuntimeError) as raised:
            algo.train()
        assert "simulator crashed on purpose" in repr(raised.value.__cause__)
    finally:
        algo.stop()  # after the failure: no second run_ended

    def closing_heartbeat() -> dict[str, Any] | None:
        events = bus.records("rllib-crash-1", "event")
        end = next((e for e in events if e["data"]["event"] == "run_ended"), None)
        # the driver's closing heartbeat follows its run_ended: nothing more comes after it
        after = end is not None and any(e["seq"] > end["seq"] and e["pub"] == end["pub"] for e in events)
        return end if after else None

    end = wait_until(closing_heartbeat, 30, "run_ended and the closing heartbeat")
    assert end["data"]["status"] == "failed"
    assert "RuntimeError: simulator crashed on purpose" in end["data"]["error"]
    assert end["step"] == int(first["num_env_steps_sampled_lifetime"])  # the last result that made it
    assert len([e for e in bus.records("rllib-crash-1", "event") if e["data"]["event"] == "run_ended"]) == 1


def _numbers(result: dict[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in result.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            if name != "config":
                out.update(_numbers(value, name + "/"))
        elif isinstance(value, int | float) or getattr(value, "ndim", None) == 0:
            out[name] = float(value)
    return out

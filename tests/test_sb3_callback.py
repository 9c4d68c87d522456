"""The SB3 callback: what real trainings put on the bus, and that nothing it does stops them."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3 import A2C, DQN, PPO, SAC
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import Figure, configure
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv
from support import Stack, wait_until

from bus.publisher import Publisher
from publishers.sb3 import MetricbusCallback, MetricbusOutputFormat


def tiny() -> dict[str, Any]:
    """A fresh net_arch=[8] policy_kwargs (SB3 adds keys to the dict it is given)."""
    return {"net_arch": [8]}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    # tiny nets train faster on one thread, and the machine is shared
    torch.set_num_threads(1)


def _ended(stack: Stack, run: str) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        for row in stack.records(run, "event"):
            if row["data"]["event"] == "run_ended":
                return row
        return None

    row: dict[str, Any] = wait_until(find, 15, f"run_ended of {run}")
    return row


def _same(csv_text: str, value: Any) -> bool:
    # progress.csv holds str(value): float32 values print shorter than their float64 form
    if isinstance(value, str):
        return csv_text == value
    number = float(csv_text)
    if number == value or (math.isnan(number) and math.isnan(value)):
        return True
    return bool(np.float32(number) == np.float32(value))


@pytest.mark.slow
def test_every_progress_csv_value_and_every_episode_reaches_the_bus(stack: Stack, tmp_path: Path) -> None:
    """Every key and value of progress.csv is in metrics.jsonl at the same step; episodes match Monitor's."""
    monitor = Monitor(gym.make("CartPole-v1"))
    model = PPO(
        "MlpPolicy", DummyVecEnv([lambda: monitor]), n_steps=64, batch_size=32, n_epochs=2, policy_kwargs=tiny(), seed=0
    )
    logger = configure(str(tmp_path / "sb3"), ["csv"])
    model.set_logger(logger)
    callback = MetricbusCallback(run="fidelity", endpoint=stack.frontend)
    model.learn(512, callback=callback)
    logger.close()
    _ended(stack, "fidelity")

    with (tmp_path / "sb3" / "progress.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 512 // 64
    records = [r for r in stack.records("fidelity", "metrics") if "time/iterations" in r["data"]]
    by_step = {r["step"]: r["data"] for r in records}
    assert len(by_step) == len(rows)
    for row in rows:
        step = int(row["time/total_timesteps"])
        data = by_step[step]
        for key, text in row.items():
            if text == "":
                continue  # a key this dump did not record
            assert key in data, f"{key} missing at step {step}"
            assert _same(text, data[key]), f"{key} at step {step}: csv {text!r}, bus {data[key]!r}"
    assert any("train/value_loss" in d for d in by_step.values())

    episodes = stack.records("fidelity", "episode")
    assert len(episodes) == len(monitor.get_episode_rewards()) == callback.episodes > 0
    assert [e["data"]["reward"] for e in episodes] == monitor.get_episode_rewards()
    assert [e["data"]["length"] for e in episodes] == monitor.get_episode_lengths()
    assert callback.errors == 0


@pytest.mark.slow
def test_run_lifecycle_events_and_gradient_statistics(stack: Stack) -> None:
    """run_started names algorithm, env and hyper-parameters; gradient norms are taken before clipping."""
    model = PPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=64, n_epochs=2, policy_kwargs=tiny(), seed=1)
    model.learn(128, callback=MetricbusCallback(run="lifecycle", endpoint=stack.frontend, grad_every=1))
    ended = _ended(stack, "lifecycle")
    assert ended["data"]["status"] == "completed"
    started = next(r for r in stack.records("lifecycle", "event") if r["data"]["event"] == "run_started")
    config = started["data"]["config"]
    assert config["algorithm"] == "PPO"
    assert config["env"] == "CartPole-v1"
    assert config["n_envs"] == 1
    assert config["total_timesteps"] == 128
    assert config["hyperparameters"]["n_steps"] == 64
    assert config["hyperparameters"]["policy_kwargs"] == {"net_arch": [8]}

    grads = [r["data"] for r in stack.records("lifecycle", "metrics") if "grad/global_norm" in r["data"]]
    # 2 epochs x 1 minibatch per training, one training (the first rollout's train runs after 64 steps, then 128)
    assert len(grads) == 2 * 2
    layers = {k for k in grads[0] if k.startswith("grad/layer/")}
    assert "grad/layer/action_net/norm" in layers
    assert "grad/layer/mlp_extractor.policy_net.0/norm" in layers
    for g in grads:
        layer_sq = sum(g[k] ** 2 for k in layers)
        assert g["grad/global_norm"] == pytest.approx(math.sqrt(layer_sq))
        assert g["grad/nonfinite"] == 0
        assert 0.0 <= g["grad/zeros_ratio"] <= 1.0
        assert g["weight/update_ratio"] > 0
    # max_grad_norm is 0.5: a norm above it proves the value was read before clipping
    assert max(g["grad/global_norm"] for g in grads) > model.max_grad_norm
    assert type(model) is PPO  # the failure guard is gone after training


@pytest.mark.slow
@pytest.mark.parametrize(
    ("algo", "env_id", "expected"),
    [
        (A2C, "CartPole-v1", {"train/policy_loss", "train/value_loss", "train/entropy_loss"}),
        (DQN, "CartPole-v1", {"train/loss", "rollout/exploration_rate"}),
        (SAC, "Pendulum-v1", {"train/actor_loss", "train/critic_loss", "train/ent_coef"}),
    ],
    ids=["a2c", "dqn", "sac"],
)
def test_each_algorithm_records_its_own_train_keys(stack: Stack, algo: Any, env_id: str, expected: set[str]) -> None:
    """A2C, DQN and SAC each publish their own train/* keys and their gradients."""
    kwargs: dict[str, Any] = {"policy_kwargs": tiny(), "seed": 0}
    steps = 300
    log_interval = 1
    if algo is DQN:
        kwargs.update(learning_starts=50, train_freq=4, target_update_interval=100)
    if algo is SAC:
        kwargs.update(learning_starts=50)
        steps = 400  # Pendulum episodes are 200 steps; off-policy algorithms dump after episodes
    run = f"algo-{algo.__name__.lower()}"
    model = algo("MlpPolicy", env_id, **kwargs)
    model.learn(
        steps, callback=MetricbusCallback(run=run, endpoint=stack.frontend, grad_every=5), log_interval=log_interval
    )
    assert _ended(stack, run)["data"]["status"] == "completed"
    keys = set().union(*(r["data"].keys() for r in stack.records(run, "metrics")))
    assert expected <= keys
    if algo is SAC:
        assert {"grad/actor/global_norm", "grad/critic/global_norm"} <= keys
    else:
        assert "grad/global_norm" in keys
    assert stack.records(run, "episode")


@pytest.mark.slow
def test_every_env_of_a_vectorised_env_reports_its_episodes(stack: Stack) -> None:
    """With n_envs=4 each env's episodes are published, tagged with the env index."""
    env = make_vec_env("CartPole-v1", n_envs=4, seed=0)
    assert isinstance(env, DummyVecEnv)
    model = PPO("MlpPolicy", env, n_steps=64, batch_size=64, n_epochs=1, policy_kwargs=tiny(), seed=0)
    model.learn(512, callback=MetricbusCallback(run="vec4", endpoint=stack.frontend))
    _ended(stack, "vec4")
    episodes = stack.records("vec4", "episode")
    for i in range(4):
        monitor = env.envs[i]
        assert isinstance(monitor, Monitor)
        mine = [e["data"]["reward"] for e in episodes if e["data"]["env"] == i]
        assert mine == monitor.get_episode_rewards()
        assert mine


class _Explodes(gym.Wrapper[Any, Any, Any, Any]):
    """Raises ``error`` on the ``after``-th step."""

    def __init__(self, env: gym.Env[Any, Any], after: int, error: BaseException) -> None:
        super().__init__(env)
        self.after = after
        self.error = error
        self.steps = 0

    def step(self, action: Any) -> Any:
        self.steps += 1
        if self.steps >= self.after:
            raise self.error
        return self.env.step(action)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("error", "status"),
    [(RuntimeError("simulator lost its GPU context"), "failed"), (KeyboardInterrupt(), "interrupted")],
    ids=["failed", "interrupted"],
)
def test_an_exception_in_training_ends_the_run_and_still_reaches_the_user(
    stack: Stack, error: BaseException, status: str
) -> None:
    """An env that raises gives run_ended failed (with the text) or interrupted, and learn() still raises."""
    env = DummyVecEnv([lambda: Monitor(_Explodes(gym.make("CartPole-v1"), 100, error))])
    model = PPO("MlpPolicy", env, n_steps=64, batch_size=64, n_epochs=1, policy_kwargs=tiny(), seed=0)
    run = f"explodes-{status}"
    with pytest.raises(type(error)):
        model.learn(512, callback=MetricbusCallback(run=run, endpoint=stack.frontend))
    ended = _ended(stack, run)["data"]
    assert ended["status"] == status
    if status == "failed":
        assert ended["error"] == "RuntimeError: simulator lost its GPU context"
    assert type(model) is PPO


@pytest.mark.slow
def test_a_broken_publisher_never_stops_training(stack: Stack) -> None:
    """Publishing errors are counted and training completes with every step taken."""
    publisher = Publisher(stack.frontend, run="broken")
    publisher.close()  # every publish now raises
    callback = MetricbusCallback(publisher=publisher)
    model = PPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=64, n_epochs=1, policy_kwargs=tiny(), seed=0)
    model.learn(128, callback=callback)
    assert model.num_timesteps == 128
    assert callback.errors > 0


def test_the_output_format_passes_scalars_and_skips_what_is_not_one() -> None:
    """numpy and 0-d torch values become plain numbers; arrays, figures and excluded keys stay off the bus."""
    got: list[tuple[dict[str, Any], int]] = []
    writer = MetricbusOutputFormat(lambda record, step: got.append((record, step)))
    values = {
        "train/a": np.float32(1.5),
        "train/b": torch.tensor(2.0),
        "train/c": np.array([1.0, 2.0]),
        "train/d": "text",
        "train/e": Figure(figure=None, close=False),
        "train/f": 3,
        "train/g": 4.0,
    }
    excluded = {k: () for k in values} | {"train/g": ("metricbus",)}
    writer.write(values, excluded, step=7)
    assert got == [({"train/a": 1.5, "train/b": 2.0, "train/d": "text", "train/f": 3}, 7)]
    assert type(got[0][0]["train/a"]) is float


def test_a_bad_run_id_fails_at_construction() -> None:
    """A run id the wire format would refuse is an error when the callback is made, not mid-training."""
    with pytest.raises(ValueError, match="run id"):
        MetricbusCallback(run="ppo cartpole/1")

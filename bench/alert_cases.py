"""The trainings of the labelled alert suite: one process per run, published on a real bus.

    python bench/alert_cases.py --case ppo-cartpole --seed 0 --steps 20000 \
        [--fault KIND --fault-at 8000] --run ID --endpoint tcp://127.0.0.1:5555

Hyper-parameters are RL Zoo's tuned ones for each (algorithm, env) pair (rl-baselines3-zoo
``hyperparams/*.yml``), so the gradient norms, losses and rewards the rules see are those of
trainings people actually run; only the length is cut. ``supervised`` is a plain PyTorch
MLP regression (a fixed random teacher) with :class:`~publishers.torch.GradientMonitor`.
Faults come from :mod:`publishers.faults`.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _linear(start: float) -> Callable[[float], float]:
    return lambda progress: progress * start


# (algorithm, env id, n_envs, normalize, kwargs): RL Zoo's values
CASES: dict[str, tuple[str, str, int, bool, dict[str, Any]]] = {
    "ppo-cartpole": ("PPO", "CartPole-v1", 8, False, dict(
        n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98, n_epochs=20, ent_coef=0.0,
        learning_rate=_linear(1e-3), clip_range=_linear(0.2))),
    "a2c-cartpole": ("A2C", "CartPole-v1", 8, False, dict(ent_coef=0.0)),
    "dqn-cartpole": ("DQN", "CartPole-v1", 1, False, dict(
        learning_rate=2.3e-3, batch_size=64, buffer_size=100_000, learning_starts=1000, gamma=0.99,
        target_update_interval=10, train_freq=256, gradient_steps=128, exploration_fraction=0.16,
        exploration_final_eps=0.04, policy_kwargs=dict(net_arch=[256, 256]))),
    "ppo-acrobot": ("PPO", "Acrobot-v1", 16, True, dict(
        n_steps=256, gae_lambda=0.94, gamma=0.99, n_epochs=4, ent_coef=0.0)),
    "a2c-acrobot": ("A2C", "Acrobot-v1", 16, True, dict(ent_coef=0.0)),
    "dqn-acrobot": ("DQN", "Acrobot-v1", 1, False, dict(
        learning_rate=6.3e-4, batch_size=128, buffer_size=50_000, learning_starts=0, gamma=0.99,
        target_update_interval=250, train_freq=4, gradient_steps=-1, exploration_fraction=0.12,
        exploration_final_eps=0.1, policy_kwargs=dict(net_arch=[256, 256]))),
    "ppo-pendulum": ("PPO", "Pendulum-v1", 4, False, dict(
        n_steps=1024, gae_lambda=0.95, gamma=0.9, n_epochs=10, ent_coef=0.0, learning_rate=1e-3,
        clip_range=0.2, use_sde=True, sde_sample_freq=4)),
    "sac-pendulum": ("SAC", "Pendulum-v1", 1, False, dict(learning_rate=1e-3)),
    "td3-pendulum": ("TD3", "Pendulum-v1", 1, False, dict(learning_rate=1e-3, learning_starts=1000)),
}  # fmt: skip


def train_sb3(case: str, seed: int, steps: int, fault: str | None, fault_at: int, run: str, endpoint: str) -> None:
    import gymnasium as gym
    import numpy as np
    import stable_baselines3
    import torch
    from stable_baselines3.common.callbacks import CallbackList
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.noise import NormalActionNoise
    from stable_baselines3.common.vec_env import VecNormalize

    from publishers.faults import FaultCallback, FaultSwitch, FaultyEnv
    from publishers.sb3 import MetricbusCallback

    torch.set_num_threads(1)
    algo_name, env_id, n_envs, normalize, kwargs = CASES[case]
    switch = FaultSwitch(fault)
    counter = iter(range(1 << 30))

    def make_env() -> gym.Env[Any, Any]:
        return FaultyEnv(gym.make(env_id), switch, seed=seed * 1000 + next(counter))

    env = make_vec_env(make_env, n_envs=n_envs, seed=seed)
    if normalize:
        env = VecNormalize(env, norm_reward=False)
    if algo_name == "TD3":
        n_actions = env.action_space.shape[0]
        kwargs = {**kwargs, "action_noise": NormalActionNoise(np.zeros(n_actions), 0.1 * np.ones(n_actions))}
    algo = getattr(stable_baselines3, algo_name)
    model = algo("MlpPolicy", env, seed=seed, verbose=0, device="cpu", **kwargs)
    bus = MetricbusCallback(run=run, endpoint=endpoint, heartbeat_interval=1.0)
    callbacks: list[Any] = [bus]
    if fault is not None:
        callbacks.append(FaultCallback(fault, fault_at, switch, publisher=lambda: bus.publisher))
    try:
        model.learn(steps, callback=CallbackList(callbacks))
    except Exception as exc:  # the bus already has run_ended "failed"; say it here too
        print(f"{run}: failed: {type(exc).__name__}: {exc}", flush=True)
        raise SystemExit(3) from None
    print(f"{run}: {model.num_timesteps} steps, {bus.episodes} episodes", flush=True)


def train_supervised(seed: int, steps: int, fault: str | None, fault_at: int, run: str, endpoint: str) -> None:
    """An MLP (ReLU, Adam 1e-3, batch 64) fits a fixed random teacher network; loss logged every 5 steps."""
    import torch

    from bus.publisher import Publisher
    from publishers.faults import (
        heartbeat_forever,
        kill_relus,
        kill_self,
        poison_first_weight,
        publish_fault,
        scale_learning_rate,
    )
    from publishers.torch import GradientMonitor

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    teacher = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.Tanh(), torch.nn.Linear(64, 4))
    model = torch.nn.Sequential(
        torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4)
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    # the suite's runs start on the bus: a run killed early while its messages still waited for
    # the broker's subscription (a slow start on a loaded machine) would never have been seen
    publisher = Publisher(endpoint, run=run, heartbeat_interval=1.0, connect_timeout=60.0)
    publisher.event("run_started", 0, config={"algorithm": "supervised-mlp", "seed": seed})
    monitor = GradientMonitor(model, optimizer, publisher=publisher, every=5)
    status, error = "completed", None
    try:
        for step in range(steps):
            if fault is not None and step == fault_at:
                publish_fault(publisher, fault, step)
                if fault == "nan":
                    poison_first_weight(model)
                elif fault == "explode":
                    scale_learning_rate(optimizer, 1000.0)
                elif fault == "dead":
                    kill_relus(model)
                elif fault == "freeze":
                    heartbeat_forever(publisher)
                elif fault == "kill":
                    kill_self(publisher)
            x = torch.randn(64, 16)
            with torch.no_grad():
                y = teacher(x)
            loss = torch.nn.functional.mse_loss(model(x), y)
            if fault == "nan-loss" and step >= fault_at:
                loss = loss * math.nan  # a bad batch: NaN from here on
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step % 5 == 0:
                monitor.log(step, **{"train/loss": loss, "train/learning_rate": optimizer.param_groups[0]["lr"]})
    except Exception as exc:
        status, error = "failed", f"{type(exc).__name__}: {exc}"
        raise
    finally:
        monitor.close()  # first: detaching may publish the last gradient statistics, which belong before the end
        publisher.event("run_ended", steps, status=status, **({"error": error} if error else {}))
        publisher.close()
    print(f"{run}: {steps} steps", flush=True)


def _die_with_parent() -> None:
    """The suite killed outright must not leave trainings running (a frozen one never ends by itself)."""
    import os
    import threading

    from bus.process import stop_with_parent

    gone = threading.Event()
    stop_with_parent(gone)

    def leave() -> None:
        gone.wait()
        os._exit(1)

    threading.Thread(target=leave, daemon=True, name="parent-gone").start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="one training of the labelled alert suite")
    parser.add_argument("--case", required=True, choices=[*CASES, "supervised"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--fault")
    parser.add_argument("--fault-at", type=int, default=0)
    parser.add_argument("--run", required=True)
    parser.add_argument("--endpoint", required=True)
    args = parser.parse_args(argv)
    _die_with_parent()
    if args.case == "supervised":
        train_supervised(args.seed, args.steps, args.fault, args.fault_at, args.run, args.endpoint)
    else:
        train_sb3(args.case, args.seed, args.steps, args.fault, args.fault_at, args.run, args.endpoint)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Training faults injected on purpose, at a known step: what the alert rules are judged on.

The labelled alert suite (``bench/alert_suite.py``) and ``metricbus demo --fault KIND`` use
these to make a real training go wrong the way trainings do:

| kind | what happens at the fault step | what a practitioner would see |
|---|---|---|
| ``nan`` | one weight of the policy becomes NaN | NaN actions or a crash in the next rollout |
| ``nan-loss`` | the environment's reward becomes NaN (a bad batch) | NaN losses and gradients |
| ``explode`` | the learning rate is multiplied by ``factor`` (1000) | gradient norm and loss blow up |
| ``dead`` | the first layer's biases go to -1e4 (every ReLU dead) | gradients vanish (supervised) |
| ``collapse`` | the observations go dark (all zeros: a sensor died) | the reward falls to chance level |
| ``stagnate`` | learning stops (lr 0) and 40 % of actions slip | the reward settles well below its best |
| ``freeze`` | the training blocks; a watchdog thread keeps heart-beating | alive, but no progress |
| ``kill`` | the process gets SIGKILL | silence |

Every injection first publishes ``{"event": "fault_injected", "fault": KIND}`` at the
fault step, so the bus itself records when the fault happened (the suite measures the
detection delay from it).
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from typing import Any, Final

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback

from bus.publisher import Publisher

#: Faults an SB3 training can be given (``dead`` needs ReLU units: the supervised model).
SB3_FAULTS: Final = ("nan", "nan-loss", "explode", "collapse", "stagnate", "freeze", "kill")
#: Faults the plain-PyTorch supervised loop can be given.
TORCH_FAULTS: Final = ("nan", "nan-loss", "explode", "dead", "freeze", "kill")
ENV_FAULTS: Final = frozenset(("nan-loss", "collapse", "stagnate"))
#: ``stagnate``'s share of random actions. 30 % was too gentle: a PPO CartPole policy that had
#: learned lost 10-20 % of its 50-episode mean to it; 40 % costs it about a third, 50 % half,
#: enough for reward-collapse to fire too (bench/RESULTS.md).
_SLIP: Final = 0.4


class FaultSwitch:
    """Shared between the training loop and the env wrapper: which fault is on, if any."""

    def __init__(self, kind: str | None = None) -> None:
        self.kind = kind
        self.on = False


class FaultyEnv(gym.Wrapper[Any, Any, Any, Any]):
    """Inside ``Monitor`` (so the logged episode reward shows it): env-side faults once ``switch.on``."""

    def __init__(self, env: gym.Env[Any, Any], switch: FaultSwitch, seed: int = 0) -> None:
        super().__init__(env)
        self.switch = switch
        self._rng = np.random.default_rng(seed)

    def step(self, action: Any) -> Any:
        switch = self.switch
        if switch.on and switch.kind == "stagnate" and self._rng.random() < _SLIP:
            action = self.action_space.sample()
        obs, reward, terminated, truncated, info = self.env.step(action)
        if switch.on:
            if switch.kind == "collapse":
                obs = np.zeros_like(obs)
            elif switch.kind == "nan-loss":
                reward = math.nan
        return obs, reward, terminated, truncated, info


def publish_fault(publisher: Publisher | None, kind: str, step: int) -> None:
    """Record the injection on the bus (and wait until it left), before the fault acts."""
    if publisher is not None:
        publisher.event("fault_injected", step, fault=kind, wall=time.time())
        publisher.flush(2.0)


def heartbeat_forever(publisher: Publisher | None, interval: float = 1.0) -> None:
    """``freeze``: the calling thread blocks for good; a watchdog thread keeps saying it is alive.

    That is how a hung data loader or a deadlocked environment looks in frameworks whose
    heartbeat runs on a thread of its own: the process is there, nothing progresses.
    """
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            if publisher is not None:
                publisher.event("heartbeat", None, sent=publisher.sent, dropped=publisher.dropped)

    threading.Thread(target=beat, daemon=True, name="watchdog-heartbeat").start()
    while True:
        time.sleep(3600)


def kill_self(publisher: Publisher | None = None) -> None:
    """``kill``: SIGKILL, after ``publisher`` has delivered what it holds (its fault announcement
    included, which the suite measures from; a SIGKILL would otherwise race ZeroMQ's I/O thread).
    Closing sends no ``run_ended``: on the bus the run just goes silent, as a killed one does."""
    if publisher is not None:
        publisher.close()
    os.kill(os.getpid(), signal.SIGKILL)


def poison_first_weight(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for param in module.parameters():
            param.view(-1)[0] = math.nan
            return


def scale_learning_rate(optimizer: torch.optim.Optimizer, factor: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = group["lr"] * factor


def kill_relus(module: torch.nn.Module) -> None:
    """Every unit of the first linear layer negative for any input: ReLUs after it are dead."""
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, torch.nn.Linear) and layer.bias is not None:
                layer.bias.fill_(-1e4)
                return


class FaultCallback(BaseCallback):
    """Injects ``kind`` into an SB3 training at ``at_step`` (``num_timesteps``); see the module table.

    ``publisher``: where ``fault_injected`` goes (the MetricbusCallback's, once it exists).
    ``switch``: the one the env's :class:`FaultyEnv` wrappers read, for env-side faults.
    """

    def __init__(
        self,
        kind: str,
        at_step: int,
        switch: FaultSwitch,
        publisher: Any = None,
        factor: float = 1000.0,
    ) -> None:
        super().__init__()
        if kind not in SB3_FAULTS:
            raise ValueError(f"unknown fault {kind!r}; expected one of {', '.join(SB3_FAULTS)}")
        self.kind = kind
        self.at_step = at_step
        self.switch = switch
        self.publisher = publisher
        self.factor = factor
        self.injected = False

    def _on_step(self) -> bool:
        if self.injected or self.num_timesteps < self.at_step:
            return True
        self.injected = True
        publisher = self.publisher() if callable(self.publisher) else self.publisher
        publish_fault(publisher, self.kind, self.num_timesteps)
        model = self.model
        kind = self.kind
        if kind == "nan":
            poison_first_weight(model.policy)
        elif kind == "explode":
            base = model.lr_schedule
            factor = self.factor
            model.lr_schedule = lambda progress: base(progress) * factor
        elif kind == "stagnate":
            model.lr_schedule = lambda progress: 0.0
        elif kind == "freeze":
            heartbeat_forever(publisher)
        elif kind == "kill":
            kill_self(publisher)
        if kind in ENV_FAULTS:
            self.switch.on = True
        return True


__all__ = [
    "ENV_FAULTS",
    "SB3_FAULTS",
    "TORCH_FAULTS",
    "FaultCallback",
    "FaultSwitch",
    "FaultyEnv",
    "heartbeat_forever",
    "kill_relus",
    "kill_self",
    "poison_first_weight",
    "publish_fault",
    "scale_learning_rate",
]

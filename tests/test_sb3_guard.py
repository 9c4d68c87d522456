"""The SB3 callback's failure guard (issue 12): Ctrl-C inside dump_logs, and two callbacks on one model."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.logger import KVWriter, Logger
from support import Stack, wait_until

from publishers.sb3 import MetricbusCallback


class _CtrlCOnDump(KVWriter):
    """A logger output that is interrupted while SB3 dumps its table (as a Ctrl-C there would be)."""

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, Any], step: int = 0) -> None:
        raise KeyboardInterrupt

    def close(self) -> None:
        pass


def _model() -> PPO:
    torch.set_num_threads(1)
    return PPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=64, n_epochs=1, policy_kwargs={"net_arch": [8]})


def _ended(stack: Stack, run: str) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        return next((r for r in stack.records(run, "event") if r["data"]["event"] == "run_ended"), None)

    found: dict[str, Any] = wait_until(find, 15, f"run_ended of {run}")
    return found


@pytest.mark.slow
def test_a_ctrl_c_inside_dump_logs_ends_the_run_interrupted(stack: Stack) -> None:
    """KeyboardInterrupt raised while SB3 writes its log table gives run_ended interrupted; learn() still raises."""
    model = _model()
    model.set_logger(Logger(folder=None, output_formats=[_CtrlCOnDump()]))
    with pytest.raises(KeyboardInterrupt):
        model.learn(256, callback=MetricbusCallback(run="ctrl-c-in-dump", endpoint=stack.frontend))
    assert _ended(stack, "ctrl-c-in-dump")["data"]["status"] == "interrupted"
    assert type(model) is PPO


@pytest.mark.slow
def test_two_callbacks_on_one_model_leave_its_own_class(stack: Stack) -> None:
    """Two metricbus callbacks wrap the model twice; when both end, the model is a plain PPO again."""
    model = _model()
    callbacks = [MetricbusCallback(run=f"twice-{i}", endpoint=stack.frontend) for i in range(2)]
    model.learn(128, callback=callbacks)
    assert type(model) is PPO
    assert _ended(stack, "twice-0")["data"]["status"] == "completed"
    assert _ended(stack, "twice-1")["data"]["status"] == "completed"

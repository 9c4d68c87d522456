"""Training-side publishers: SB3 callback, PyTorch gradient monitor (torchrun/DDP aware),
Ray Tune and RLlib callbacks, Lightning logger, Hugging Face Trainer callback, system sampler.

Each lives in its own module so that importing one never imports another's heavy
dependencies (``publishers.sb3`` needs stable-baselines3, ``publishers.torch`` torch,
``publishers.ray`` and ``publishers.rllib`` Ray). The names below are imported on first
use, so ``import publishers`` imports none of them.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "DistributedRun",
    "GradientMonitor",
    "GradientStats",
    "MetricbusCallback",
    "MetricbusGradients",
    "MetricbusHFCallback",
    "MetricbusLogger",
    "MetricbusOutputFormat",
    "MetricbusRLlibCallback",
    "MetricbusTuneCallback",
    "SystemSampler",
]

_WHERE = {
    "DistributedRun": "publishers.distributed",
    "GradientMonitor": "publishers.torch",
    "GradientStats": "publishers.grad_stats",
    "MetricbusCallback": "publishers.sb3",
    "MetricbusGradients": "publishers.lightning",
    "MetricbusHFCallback": "publishers.huggingface",
    "MetricbusLogger": "publishers.lightning",
    "MetricbusOutputFormat": "publishers.sb3",
    "MetricbusRLlibCallback": "publishers.rllib",
    "MetricbusTuneCallback": "publishers.ray",
    "SystemSampler": "publishers.system",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'publishers' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)

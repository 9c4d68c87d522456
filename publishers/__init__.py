"""Training-side publishers: SB3 callback, PyTorch gradient monitor, system sampler.

Each lives in its own module so that importing one never imports another's heavy
dependencies (``publishers.sb3`` needs stable-baselines3, ``publishers.torch`` torch).
The names below are imported on first use, so ``import publishers`` imports neither.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "GradientMonitor",
    "GradientStats",
    "MetricbusCallback",
    "MetricbusOutputFormat",
    "SystemSampler",
]

_WHERE = {
    "GradientMonitor": "publishers.torch",
    "GradientStats": "publishers.grad_stats",
    "MetricbusCallback": "publishers.sb3",
    "MetricbusOutputFormat": "publishers.sb3",
    "SystemSampler": "publishers.system",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'publishers' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)

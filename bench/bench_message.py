"""The message the bus benchmarks publish: an SB3-like metrics dump, what a training loop sends most.

Imports nothing of the project, so a bench that measures another checkout (``--tree``) can
use it without loading this tree's ``bus``.
"""

from __future__ import annotations

from typing import Any

DATA: dict[str, Any] = {
    "train/value_loss": 0.4123,
    "train/policy_gradient_loss": -0.0123,
    "train/entropy_loss": -0.6812,
    "train/approx_kl": 0.0042,
    "train/clip_fraction": 0.083,
    "train/learning_rate": 0.0003,
    "rollout/ep_rew_mean": 187.5,
    "time/fps": 2011,
}

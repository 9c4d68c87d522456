"""The ``anomaly`` rule kind: a value far from the run's own recent values (robust z-score).

Why judge a value against its own history: what is normal differs by orders of magnitude
between trainings. PPO's gradient norm before clipping is routinely 5–50 on CartPole (SB3
clips it to 0.5 afterwards, which is normal), a small supervised MLP's is below 1. One
absolute bound cries wolf on the first and misses an explosion of the second. Against the
run's own last ``window`` values, "ten times its median and far outside its usual spread"
means the same on both.

The score is robust: the median and the median absolute deviation (MAD, scaled by 1.4826
so it equals the standard deviation for normal data) of the previous ``window`` values,
not their mean and standard deviation, so the spikes being looked for do not inflate the
yardstick. The bounds are computed again every ``window // 5`` values (sorting the window
on every value would cost the engine its budget); a value is judged before it joins.
``log: true`` scores ``log(value)`` (gradient norms and losses spread over
orders of magnitude); ``min_ratio`` additionally asks for that factor above (or below)
the median, and ``min_change`` (without ``log``) for that distance from it, so a
near-constant series with a tiny MAD does not fire on a small wobble.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Final

from alerts.rules import Rule, RuleError, Verdict
from bus.message import Message

_MAD_TO_SIGMA: Final = 1.4826
_TINY: Final = 1e-30  # log of an exact zero (a vanished gradient) is a very small number, not -inf


class _History:
    __slots__ = ("due", "high", "high_unit", "low", "low_unit", "values")

    def __init__(self, window: int) -> None:
        self.values: deque[float] = deque(maxlen=window)
        self.due = 0  # values to take before the bounds are computed again
        self.high = self.low = 0.0  # on the score's scale (log or not)
        self.high_unit = self.low_unit = 0.0  # in the metric's own unit, for the alert's text


def _median(ordered: list[float]) -> float:
    n = len(ordered)
    mid = n // 2
    return ordered[mid] if n % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])


class AnomalyRule(Rule):
    """The value is more than ``z`` robust standard deviations from the median of its last ``window`` values.

    ``direction``: ``up`` (spikes), ``down`` (collapses, vanishing) or ``both``. Nothing is
    judged before ``min_samples`` values were seen. ``min_ratio`` (with ``log``): the value
    must also be that many times above (or below) the median; ``min_change`` (without):
    that far from it.
    """

    kind = "anomaly"
    template = (
        "{rule}: {metric} = {value:.4g} on {source}, far outside its recent values (alert beyond {threshold:.4g})"
    )

    def __init__(
        self,
        z: float = 6.0,
        window: int = 50,
        min_samples: int = 20,
        direction: str = "up",
        log: bool = False,
        min_ratio: float = 1.0,
        min_change: float = 0.0,
    ) -> None:
        if z <= 0:
            raise RuleError("z", "a positive number of robust standard deviations such as 6", z)
        if window < 5:
            raise RuleError("window", "an integer of at least 5", window)
        if not 3 <= min_samples <= window:
            raise RuleError("min_samples", f"an integer from 3 to window ({window})", min_samples)
        if direction not in ("up", "down", "both"):
            raise RuleError("direction", "up, down or both", direction)
        if min_ratio < 1:
            raise RuleError("min_ratio", "a factor of at least 1 such as 10", min_ratio)
        if min_ratio > 1 and not log:
            raise RuleError("min_ratio", "log: true as well (a ratio is a distance on the log scale)", min_ratio)
        if min_change < 0 or (min_change > 0 and log):
            raise RuleError("min_change", "a distance >= 0, without log: true (use min_ratio there)", min_change)
        self.z = float(z)
        self.window = window
        self.min_samples = min_samples
        self.up = direction in ("up", "both")
        self.down = direction in ("down", "both")
        self.log = log
        #: the bounds are computed again every this many values (a fifth of the window)
        self.refresh = max(1, window // 5)
        # the least distance from the median that counts, on the scale the score is taken on
        self.margin = math.log(min_ratio) if log else float(min_change)

    def new_state(self) -> _History:
        return _History(self.window)

    def check(self, state: _History, metric: str, value: Any, message: Message) -> Verdict | None:
        if value - value != 0:
            return None  # NaN or Inf: the nonfinite rule's business
        if self.log:
            if value < 0 or (value == 0 and not self.down):
                return None  # off the log scale (PPO's total loss dips below 0); an exact 0 only means "vanished"
            x = math.log(max(value, _TINY))
        else:
            x = float(value)
        values = state.values
        if len(values) < self.min_samples:
            values.append(x)
            return None
        if state.due <= 0:
            # two sorts of the window: ~5 µs, so done every `refresh` values, not on each one
            state.due = self.refresh
            ordered = sorted(values)
            median = _median(ordered)
            mad = _median(sorted([abs(v - median) for v in ordered]))
            # a floor on the spread: a series that never moved would otherwise fire on rounding
            spread = max(_MAD_TO_SIGMA * mad, 1e-12 if self.log else 1e-12 * abs(median))
            reach = max(self.z * spread, self.margin)
            state.high, state.low = median + reach, median - reach
            state.high_unit, state.low_unit = self._unit(state.high), self._unit(state.low)
        state.due -= 1
        # the value joins the window after it was judged, so a spike is not its own yardstick
        values.append(x)
        if self.up and x > state.high:
            return True, value, state.high_unit
        if self.down and x < state.low:
            return True, value, state.low_unit
        return False, value, state.high_unit if self.up else state.low_unit

    def _unit(self, bound: float) -> float:
        if not self.log:
            return bound
        return math.exp(bound) if bound < 700 else math.inf

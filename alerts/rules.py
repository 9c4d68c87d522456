"""Alert rules as data: the rule base class and the built-in rule kinds (loading: ``alerts.loading``).

A rule is a *condition on one series*: the values of one metric of one run (or node) over
time. The engine keeps one state object per (rule, source, metric) and asks the rule,
sample by sample, whether the condition holds. :meth:`Rule.check` answers ``(active,
value, threshold)`` — what was compared and against what, for the alert's text — or
``None`` when it cannot tell yet (a window not yet full): then nothing changes state.

``for``, ``repeat``, severity, the selector and the message template are common to every
kind and handled by the engine; a kind only decides its condition. A rule class of one's
own is named ``package.module:Class`` in ``kind`` and subclasses :class:`Rule`.
"""

from __future__ import annotations

import fnmatch
import math
import operator
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from bus.message import Message
from bus.options import OptionError

SEVERITIES: Final = ("info", "warning", "error", "critical")
#: Message kinds a rule may select; ``alert`` and ``bus`` are not evaluated.
SELECTABLE_KINDS: Final = ("metrics", "episode", "system", "event")
DEFAULT_REPEAT: Final = 3600.0
_DURATION: Final = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d)\s*")
_UNIT_SECONDS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

Verdict = tuple[bool, float, float | None]


class RuleError(OptionError):
    """A bad rule option; ``key`` is the option's name, the text says what was expected."""


# -- values ---------------------------------------------------------------------------------


def parse_duration(value: object, key: str) -> float:
    """Seconds from ``30`` (seconds), ``"30s"``, ``"500ms"``, ``"5m"``, ``"1h"`` or ``"1d"``."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    if isinstance(value, str):
        match = _DURATION.fullmatch(value)
        if match:
            return float(match[1]) * _UNIT_SECONDS[match[2]]
    raise RuleError(key, "a duration such as 30s, 5m, 1h or a number of seconds", value)


def parse_for(value: object, key: str = "for") -> tuple[int, float]:
    """``for`` (or ``clear``): an integer count of samples, or a duration; returns (count, seconds)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise RuleError(key, "a count of at least 1 or a duration such as 30s", value)
        return value, 0.0
    if isinstance(value, str):
        return 1, parse_duration(value, key)
    raise RuleError(key, "an integer count of samples or a duration such as 30s", value)


def is_number(value: object) -> bool:
    """An int or float on the wire (a bool is not a measurement)."""
    kind = type(value)
    return kind is float or kind is int


# -- selectors ------------------------------------------------------------------------------


class Selector:
    """Which messages and which of their metrics a rule looks at.

    ``metrics`` are globs (``grad/*`` also matches ``grad/layer/fc/norm``), ``exclude``
    globs taken out of them; ``run`` and ``node`` are regular expressions that must match
    the whole name.
    """

    def __init__(
        self,
        kinds: frozenset[str],
        metrics: tuple[str, ...],
        run: re.Pattern[str] | None = None,
        node: re.Pattern[str] | None = None,
        exclude: tuple[str, ...] = (),
    ) -> None:
        self.kinds = kinds
        self.metrics = metrics
        self.run = run
        self.node = node
        self.exclude = exclude
        pattern = "|".join(f"(?:{fnmatch.translate(g)})" for g in metrics) or r"(?!)"
        if exclude:  # a negative look-ahead: resolved once per metric name, like the rest
            pattern = "(?!" + "|".join(f"(?:{fnmatch.translate(g)})" for g in exclude) + f")(?:{pattern})"
        self._metric = re.compile(pattern)

    def matches_source(self, kind: str, run: str | None, node: str) -> bool:
        if kind not in self.kinds:
            return False
        if self.run is not None and (run is None or self.run.fullmatch(run) is None):
            return False
        return self.node is None or self.node.fullmatch(node) is not None

    def matches_metric(self, name: str) -> bool:
        return self._metric.match(name) is not None


# -- rules ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RuleSpec:
    """What every rule has, whatever its kind."""

    name: str
    kind: str
    severity: str
    selector: Selector
    for_count: int = 1
    for_seconds: float = 0.0
    repeat: float | None = DEFAULT_REPEAT
    message: str = ""
    #: how long the condition must stay false before a firing alert resolves (hysteresis)
    clear_count: int = 1
    clear_seconds: float = 0.0
    #: what to check when it fires; carried in the alert (``hint``) and shown by every reader
    hint: str = ""


class Rule:
    """A condition on one series. Subclasses take their options as typed keywords."""

    kind: ClassVar[str] = ""
    #: Message kinds looked at when the rule's ``select`` names none.
    default_kinds: ClassVar[tuple[str, ...]] = ("metrics", "episode", "system")
    needs_metric: ClassVar[bool] = True
    #: Let bools through to :meth:`check` (as a rule on ``is_success`` needs); else numbers only.
    accepts_bool: ClassVar[bool] = False
    #: Let strings through to :meth:`check` (a run_ended ``status``); else numbers only.
    accepts_text: ClassVar[bool] = False
    #: The alert's text when the rule gives no ``message``; an instance may refine it.
    template: str = "{rule}: {metric} = {value} (threshold {threshold}) on {source}"

    spec: RuleSpec  # set by the loader

    def new_state(self) -> Any:
        """Per-series memory (a window, a best value); None when the rule needs none."""
        return None

    def check(self, state: Any, metric: str, value: Any, message: Message) -> Verdict | None:
        raise NotImplementedError

    def detail(self, message: Message) -> str:
        """More about the message that made the alert fire (an exception's text); asked only then."""
        return ""

    @property
    def name(self) -> str:
        return self.spec.name


_OPS: Final[dict[str, Callable[[Any, Any], bool]]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}


class ThresholdRule(Rule):
    """The value is above or below a bound (``op`` ``>``, ``>=``, ``<``, ``<=``).

    ``percent_of: mem_total_bytes`` compares ``100 * value / sibling``, where the sibling is
    the metric with its last path part replaced (``gpu/0/mem_used_bytes`` ->
    ``gpu/0/mem_total_bytes``) in the same message. ``delta: true`` compares a counter's
    increase since the same publisher's previous sample (``dropped`` in heartbeats).
    """

    kind = "threshold"

    def __init__(self, threshold: float, op: str = ">", percent_of: str | None = None, delta: bool = False) -> None:
        if op not in _OPS:
            raise RuleError("op", f"one of {', '.join(_OPS)}", op)
        self.threshold = float(threshold)
        self.op = op
        self._compare = _OPS[op]
        self.percent_of = percent_of
        self.delta = delta
        self.template = "{rule}: {metric} = {value:.4g} (alert when " + op + " {threshold:g}) on {source}"

    def new_state(self) -> dict[str, float] | None:
        return {} if self.delta else None

    def check(self, state: dict[str, float] | None, metric: str, value: Any, message: Message) -> Verdict | None:
        if self.percent_of is not None:
            total = message.data.get(_sibling(metric, self.percent_of))
            if not is_number(total) or not total:
                return None
            value = 100.0 * value / total
        if state is not None:  # delta: increase of a per-publisher counter
            previous = state.get(message.pub)
            state[message.pub] = value
            value = value - previous if previous is not None else value
        if value != value:  # NaN compares false both ways: leave it to the nonfinite rule
            return None
        return self._compare(value, self.threshold), value, self.threshold


def _sibling(metric: str, name: str) -> str:
    prefix = metric.rpartition("/")[0]
    return f"{prefix}/{name}" if prefix else name


class NonFiniteRule(Rule):
    """The value is NaN or ±Inf."""

    kind = "nonfinite"
    template = "{rule}: {metric} = {value} on {source}"

    def check(self, state: None, metric: str, value: Any, message: Message) -> Verdict | None:
        if type(value) is int:
            return False, float(value), None
        return not math.isfinite(value), value, None


class _Window:
    """The last ``size`` values with running sums, so the trend costs O(1) per sample."""

    __slots__ = ("added", "size", "sum_abs", "sum_iy", "sum_y", "values")

    def __init__(self, size: int) -> None:
        self.size = size
        self.values: deque[float] = deque(maxlen=size)
        self.sum_y = self.sum_abs = self.sum_iy = 0.0  # i counts from the oldest value, 0
        self.added = 0

    def push(self, value: float) -> None:
        values = self.values
        if len(values) == self.size:
            old = values[0]
            self.sum_y -= old
            self.sum_abs -= abs(old)
            self.sum_iy -= self.sum_y  # the oldest leaves: every other index drops by one
            index = self.size - 1
        else:
            index = len(values)
        values.append(value)
        self.sum_iy += index * value
        self.sum_y += value
        self.sum_abs += abs(value)
        self.added += 1
        if self.added % 1024 == 0:  # running float sums drift; re-add them now and then
            self.sum_y = sum(values)
            self.sum_abs = sum(abs(v) for v in values)
            self.sum_iy = sum(i * v for i, v in enumerate(values))


class DivergenceRule(Rule):
    """The metric trends upward over ``window`` samples by at least ``min_rise`` of its size.

    The rise is the least-squares line's change across the window, relative to the
    window's mean absolute value: noise around a flat mean does not fire it, a loss that
    keeps climbing does.
    """

    kind = "divergence"
    template = "{rule}: {metric} rose {value:.0%} over the last {window} samples on {source}"

    def __init__(self, window: int = 50, min_rise: float = 0.5) -> None:
        if window < 3:
            raise RuleError("window", "an integer of at least 3", window)
        if min_rise <= 0:
            raise RuleError("min_rise", "a positive fraction such as 0.5", min_rise)
        self.window = window
        self.min_rise = float(min_rise)
        self.template = self.template.replace("{window}", str(window))
        n = window
        self._x_mean = (n - 1) / 2
        self._sxx = sum((i - self._x_mean) ** 2 for i in range(n))

    def new_state(self) -> _Window:
        return _Window(self.window)

    def check(self, state: _Window, metric: str, value: Any, message: Message) -> Verdict | None:
        if not math.isfinite(value):
            return None
        state.push(value)
        if len(state.values) < self.window:
            return None
        # least squares: sum((i - x_mean) * (y - y_mean)) = sum(i * y) - x_mean * sum(y)
        slope = (state.sum_iy - self._x_mean * state.sum_y) / self._sxx
        scale = state.sum_abs / self.window
        rise = slope * (self.window - 1) / scale if scale > 0 else 0.0
        return rise >= self.min_rise, rise, self.min_rise


class _Best:
    __slots__ = ("best", "best_step", "since_best", "smooth", "total")

    def __init__(self, smooth: int = 1) -> None:
        self.best: float | None = None
        self.best_step: int | None = None
        self.since_best = 0
        self.smooth: deque[float] = deque(maxlen=smooth)
        self.total = 0.0  # running sum of `smooth`: a mean in O(1) per episode


class StagnationRule(Rule):
    """The best value has not improved by ``min_delta`` for ``patience`` samples (or steps).

    ``mode: max`` for rewards, ``min`` for losses; ``unit: steps`` counts training steps
    (the message's ``step``) instead of samples. ``smooth: N`` judges the mean of the last N
    values (one lucky episode at CartPole's cap of 500 is not a best that must be beaten).
    ``below_best``: fire only while the smoothed value is more than this fraction of
    ``|best|`` below the best — a run holding its best plateau (an env's maximum) is done
    improving, not stuck.
    """

    kind = "stagnation"
    template = "{rule}: {metric} has not improved on its best for {value:g} {unit} on {source}"

    def __init__(
        self,
        patience: int,
        min_delta: float = 0.0,
        mode: str = "max",
        unit: str = "samples",
        smooth: int = 1,
        below_best: float = 0.0,
    ) -> None:
        if patience < 1:
            raise RuleError("patience", "a positive integer", patience)
        if mode not in ("max", "min"):
            raise RuleError("mode", "max or min", mode)
        if unit not in ("samples", "steps"):
            raise RuleError("unit", "samples or steps", unit)
        if min_delta < 0:
            raise RuleError("min_delta", "a number >= 0", min_delta)
        if smooth < 1:
            raise RuleError("smooth", "a positive integer", smooth)
        if not 0 <= below_best < 1:
            raise RuleError("below_best", "a fraction from 0 to 1 such as 0.2", below_best)
        self.smoothing = smooth
        self.below_best = float(below_best)
        self.patience = patience
        self._patience = float(patience)
        self._improved: Verdict = (False, 0.0, self._patience)  # one tuple for the common answer
        self.min_delta = float(min_delta)
        self.sign = 1.0 if mode == "max" else -1.0
        self.unit = unit
        self.template = self.template.replace("{unit}", "episodes" if unit == "samples" else "steps")

    def new_state(self) -> _Best:
        return _Best(self.smoothing)

    def check(self, state: _Best, metric: str, value: Any, message: Message) -> Verdict | None:
        # every episode of every run comes through here: kept to a few operations
        if value - value != 0:
            return None  # NaN or Inf
        score = self.sign * value
        n = self.smoothing
        if n > 1:
            window = state.smooth
            if len(window) == n:
                state.total += score - window[0]
                window.append(score)
            else:
                state.total += score
                window.append(score)
                if len(window) < n:
                    return None
            score = state.total / n
        best = state.best
        if best is None or score > best + self.min_delta:
            state.best, state.best_step, state.since_best = score, message.step, 0
            return self._improved
        state.since_best += 1
        if self.below_best and score >= best - self.below_best * abs(best):
            return self._improved  # at (or near) its best: a plateau, not stuck
        if self.unit == "steps":
            if message.step is None or state.best_step is None:
                return None
            waited = float(message.step - state.best_step)
        else:
            waited = float(state.since_best)
        return waited >= self.patience, waited, self._patience


class _Drop:
    __slots__ = (
        "armed_above", "best", "count", "first", "first_n", "first_sq", "first_sum", "recent", "smooth", "total",
    )  # fmt: skip

    def __init__(self, smooth: int, window: int) -> None:
        self.smooth: deque[float] = deque(maxlen=smooth)
        self.total = 0.0  # running sum of `smooth`
        self.recent: deque[float] = deque(maxlen=window)
        self.best: float | None = None
        self.count = 0
        self.first_n = 0  # the first `window` raw values: where the run started, and how noisy
        self.first_sum = self.first_sq = 0.0
        self.first = 0.0  # their mean, once there are `window` of them
        self.armed_above: float | None = None  # of: gain judges once the best is above this


class DropRule(Rule):
    """The (optionally smoothed) value falls more than ``relative`` below a reference.

    ``reference: best`` — the best smoothed value before this one, once ``window`` values
    have been seen; ``reference: mean`` — the mean of the previous ``window`` smoothed
    values. ``smooth: N`` averages the last N samples first, so one bad episode does not
    fire it. The bound is ``reference - relative * |reference|``.

    ``of: gain`` measures the fall against what the run gained instead: the bound is
    ``best - relative * (best - first)``, where ``first`` is the mean of the first
    ``window`` values (the untrained agent). Rewards are often negative (Acrobot, Pendulum)
    and their zero means nothing, so "lost most of what it learned" is the drop that means
    the same on every env. Nothing fires before the gain is ``min_gain`` standard
    deviations of those first values: an early wobble is not a collapse of anything learned.
    """

    kind = "drop"
    template = "{rule}: {metric} = {value:.4g} (alert below {threshold:.4g}) on {source}"

    def __init__(
        self,
        relative: float,
        reference: str = "best",
        window: int = 20,
        smooth: int = 1,
        of: str = "reference",
        min_gain: float = 3.0,
    ) -> None:
        if not 0 < relative < 1:
            raise RuleError("relative", "a fraction between 0 and 1 such as 0.1", relative)
        if reference not in ("best", "mean"):
            raise RuleError("reference", "best or mean", reference)
        if window < 1:
            raise RuleError("window", "a positive integer", window)
        if smooth < 1:
            raise RuleError("smooth", "a positive integer", smooth)
        if of not in ("reference", "gain"):
            raise RuleError("of", "reference or gain", of)
        if of == "gain" and reference != "best":
            raise RuleError("of", "reference: best with of: gain (the gain is best - first)", of)
        if min_gain < 0:
            raise RuleError("min_gain", "a number of standard deviations >= 0 such as 3", min_gain)
        self.gain = of == "gain"
        self.min_gain = float(min_gain)
        self.relative = float(relative)
        self.reference = reference
        self.window = window
        self.smoothing = smooth

    def new_state(self) -> _Drop:
        return _Drop(self.smoothing, self.window)

    def check(self, state: _Drop, metric: str, value: Any, message: Message) -> Verdict | None:
        if value - value != 0:
            return None  # NaN or Inf
        if state.first_n < self.window:
            state.first_n = n = state.first_n + 1
            state.first_sum += value
            state.first_sq += value * value
            if n == self.window:
                state.first = first = state.first_sum / n
                spread = math.sqrt(max(0.0, state.first_sq / n - first * first))
                state.armed_above = first + self.min_gain * spread
        window = state.smooth
        full = len(window) == self.smoothing
        state.total += value - (window[0] if full else 0.0)
        window.append(value)
        if not full and len(window) < self.smoothing:
            return None
        current = state.total / self.smoothing
        ready = state.count >= self.window
        state.count += 1
        if self.reference == "best":
            reference = state.best
            if reference is None or current > reference:
                state.best = current
        else:
            reference = sum(state.recent) / len(state.recent) if state.recent else None
            state.recent.append(current)
        if not ready or reference is None:
            return None
        if self.gain:
            armed_above = state.armed_above
            if armed_above is None or reference <= armed_above or reference <= state.first:
                return False, current, state.first  # nothing learned yet: nothing to lose
            bound = reference - self.relative * (reference - state.first)
        else:
            bound = reference - self.relative * abs(reference)
        return current < bound, current, bound


class AbsenceRule(Rule):
    """Nothing at all (not even a heartbeat) from a run, node or publisher for ``after``.

    Evaluated on the engine's timer, not on messages. A run whose ``run_ended`` event had a
    status in ``ended_ok`` (``completed`` and ``stopped`` by default) is finished, not silent. No source
    fires before ``grace`` has passed since the engine started or the bus restarted.
    """

    kind = "absence"
    default_kinds = SELECTABLE_KINDS
    needs_metric = False
    template = "{rule}: nothing from {source} for {value:.0f} s (limit {threshold:g} s)"

    def __init__(
        self,
        after: float | str = 60.0,
        scope: str = "run",
        grace: float | str = 30.0,
        ended_ok: list[str] | None = None,
    ) -> None:
        self.after = parse_duration(after, "after")
        self.grace = parse_duration(grace, "grace")
        if self.after <= 0:
            raise RuleError("after", "a positive duration", after)
        if scope not in ("run", "node", "publisher"):
            raise RuleError("scope", "run, node or publisher", scope)
        self.scope = scope
        ok = ["completed", "stopped"] if ended_ok is None else ended_ok
        if not all(isinstance(s, str) for s in ok):
            raise RuleError("ended_ok", "a list of run_ended statuses such as [completed]", ended_ok)
        self.ended_ok = frozenset(ok)

    def check(self, state: Any, metric: str, value: Any, message: Message) -> Verdict | None:
        return None  # the engine evaluates absence on its timer


class _Streak:
    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0


class StreakRule(Rule):
    """``length`` consecutive samples whose (boolean) value is not ``expect`` (e.g. ``is_success``)."""

    kind = "streak"
    default_kinds = ("episode",)
    accepts_bool = True
    template = "{rule}: {value:.0f} episodes in a row without {metric} (alert at {threshold:.0f}) on {source}"

    def __init__(self, length: int, expect: bool = True) -> None:
        if length < 1:
            raise RuleError("length", "a positive integer", length)
        self.length = length
        self.expect = expect

    def new_state(self) -> _Streak:
        return _Streak()

    def check(self, state: _Streak, metric: str, value: Any, message: Message) -> Verdict | None:
        if type(value) is float and value != value:
            return None
        if bool(value) == self.expect:
            state.count = 0
        else:
            state.count += 1
        return state.count >= self.length, float(state.count), float(self.length)

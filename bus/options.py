"""Checking options against what they configure: the one place for key-path errors and
constructor-signature checks.

:class:`Where` is a file and a key path inside it (``bus.yaml: sinks.watch.rules[3].threshold``);
every config error names one. :func:`find_problem` checks a mapping of options against a
class's constructor (unknown keys, required ones, simple types from its type hints). The
config loader and the sink registry use it for sinks, the alerts package for rules and
notifiers, each wording the problem its own way (:func:`check_options`, :func:`construct_checked`).
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, Union

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file that cannot be used; the text names the file and the key path."""


class OptionError(ValueError):
    """A constructor's own refusal of one option: ``key`` names it, the text says what was expected.

    A class checked by :func:`construct_checked` raises it (or a subclass, such as
    ``alerts.rules.RuleError``) so that the error points at the option's key path.
    """

    def __init__(self, key: str, expected: str, got: object = ...) -> None:
        text = f"expected {expected}" + (f", got {got!r}" if got is not ... else "")
        super().__init__(text)
        self.key = key


class Where:
    """A file and a key path inside it, for error messages."""

    def __init__(self, file: str, path: str = "") -> None:
        self.file = file
        self.path = path

    def key(self, key: str) -> Where:
        return Where(self.file, f"{self.path}.{key}" if self.path else key)

    def index(self, i: int) -> Where:
        return Where(self.file, f"{self.path}[{i}]")

    def __truediv__(self, key: object) -> Where:
        return self.key(str(key))

    def error(self, text: str) -> ConfigError:
        return ConfigError(f"{self.file}: {self.path or '<top level>'}: {text}")

    def expected(self, what: str, got: object = ...) -> ConfigError:
        """``file: path: expected <what>, got <got>``."""
        return self.error(f"expected {what}" + (f", got {got!r}" if got is not ... else ""))


# -- constructor signatures -----------------------------------------------------------------------


@dataclass(frozen=True)
class OptionProblem:
    """What is wrong with a mapping of options for a constructor (the first thing found)."""

    reason: Literal["unknown", "missing", "type"]
    key: str
    accepted: tuple[str, ...]
    hint: Any = None  # the expected type, for reason "type"
    value: Any = None


def keyword_parameters(cls: type, exclude: Collection[str] = ()) -> dict[str, inspect.Parameter]:
    """The constructor keywords an option mapping may set (``exclude``: ones filled in by the caller)."""
    params = inspect.signature(cls).parameters
    return {
        name: p
        for name, p in params.items()
        if name not in exclude and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def type_hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls.__init__)  # type: ignore[misc]
    except Exception:  # a plug-in's unresolvable annotations just mean no type check
        return {}


def find_problem(cls: type, options: Mapping[str, Any], exclude: Collection[str] = ()) -> OptionProblem | None:
    """The first unknown, missing or wrongly typed option of ``options`` for ``cls(**options)``."""
    accepted = keyword_parameters(cls, exclude)
    names = tuple(accepted)
    takes_any = any(p.kind is p.VAR_KEYWORD for p in inspect.signature(cls).parameters.values())
    for key in options:
        if key not in accepted and not takes_any:
            return OptionProblem("unknown", key, names)
    for name, p in accepted.items():
        if p.default is p.empty and name not in options:
            return OptionProblem("missing", name, names)
    hints = type_hints(cls)
    for key, value in options.items():
        expected = hints.get(key)
        if expected is not None and not matches(value, expected):
            return OptionProblem("type", key, names, expected, value)
    return None


def matches(value: Any, expected: Any) -> bool:
    """Whether ``value`` (from YAML) fits the type hint ``expected``; unknown hints fit anything."""
    origin = typing.get_origin(expected)
    if expected is Any:
        return True
    if origin in (Union, types.UnionType):
        return any(matches(value, arg) for arg in typing.get_args(expected))
    if expected is type(None):
        return value is None
    if origin is not None:
        expected = origin
    if not isinstance(expected, type):
        return True
    if expected is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected in (tuple, list, typing.Sequence):
        return isinstance(value, list | tuple)
    try:
        return isinstance(value, expected)
    except TypeError:
        return True


def type_name(expected: Any) -> str:
    """A hint as Python spells it: ``float``, ``str | None``."""
    if typing.get_origin(expected) is None and hasattr(expected, "__name__"):
        return str(expected.__name__)
    return str(expected).replace("typing.", "").replace("collections.abc.", "")


_PLAIN: dict[Any, str] = {float: "a number", int: "an integer", str: "a string", bool: "true or false"}


def plain_type(expected: Any) -> str:
    """A hint in words for a YAML author: ``a number or a string``."""
    union = typing.get_origin(expected) in (Union, types.UnionType)
    names = []
    for t in typing.get_args(expected) if union else (expected,):
        if t is type(None):
            continue
        base = typing.get_origin(t) or t
        names.append(_PLAIN.get(base) or f"a {getattr(base, '__name__', str(base))}")
    return " or ".join(names)


# -- the two ways a problem is told -----------------------------------------------------------------


def check_options(cls: type, options: Mapping[str, Any], where: Where, exclude: Collection[str] = ()) -> None:
    """Raise a :class:`ConfigError` when ``options`` do not fit ``cls`` (a sink's YAML entry).

    e.g. ``my.yaml: sinks.losses.x: option 'x' is not accepted by PrintLosses (accepted: key)``.
    """
    problem = find_problem(cls, options, exclude)
    if problem is not None:
        at = where if problem.reason == "missing" else where.key(problem.key)
        raise at.error(option_text(cls, problem))


def option_text(cls: type, problem: OptionProblem) -> str:
    """The problem as one sentence about option ``key`` of ``cls``."""
    names = ", ".join(problem.accepted) or "none"
    if problem.reason == "unknown":
        return f"option {problem.key!r} is not accepted by {cls.__name__} (accepted: {names})"
    if problem.reason == "missing":
        return f"option {problem.key!r} is required by {cls.__name__} (accepted: {names})"
    return f"option {problem.key!r} of {cls.__name__}: expected {type_name(problem.hint)}, got {problem.value!r}"


def construct_checked(
    cls: type[T], options: dict[str, Any], where: Where, what: str, common: tuple[str, ...] = ()
) -> T:
    """``cls(**options)`` after checking them, each error at the option's own key path.

    ``what`` names the class for the reader (``kind threshold``); ``common`` are the keys the
    caller took out of the same mapping, listed among the accepted ones.
    """
    problem = find_problem(cls, options)
    if problem is not None:
        at = where.key(problem.key)
        if problem.reason == "unknown":
            accepted = ", ".join([*common, *problem.accepted])
            raise at.expected(f"one of the keys {accepted} (unknown key for {what})")
        if problem.reason == "missing":
            raise at.expected(f"a value (required by {what})")
        raise at.expected(plain_type(problem.hint), problem.value)
    try:
        return cls(**options)
    except OptionError as exc:
        raise where.key(exc.key).error(str(exc)) from None

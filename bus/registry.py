"""Finds a sink class by the ``type`` a config gives it, importing lazily.

Order: a built-in name, then ``package.module:Class``, then a name registered under the
entry-point group ``metricbus.sinks``. Only the chosen sink's module is imported, so a
config that uses JSONL alone never imports Dash or torch.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Final

from bus.options import find_problem, keyword_parameters, option_text, type_hints, type_name

ENTRY_POINT_GROUP: Final = "metricbus.sinks"

#: Built-in sinks: name -> "module:Class".
BUILTINS: Final[dict[str, str]] = {
    "jsonl": "sinks.jsonl:JsonlSink",
    "alerts": "alerts.engine:AlertEngine",
    "dashboard": "sinks.dashboard.sink:DashboardSink",
    "tensorboard": "sinks.tensorboard:TensorBoardSink",
    "prometheus": "sinks.prometheus:PrometheusSink",
    "csv": "sinks.csvfile:CsvSink",
    "console": "sinks.console:ConsoleSink",
    "websocket": "sinks.websocket.sink:WebSocketSink",
    "mlflow": "sinks.mlflow:MlflowSink",
    "wandb": "sinks.wandb:WandbSink",
}

#: A constructor parameter with this name receives the runner's :class:`bus.subscriber.SinkContext`
#: instead of a YAML option.
CONTEXT_PARAMETER: Final = "context"


#: What a class must have to be used as a sink (the :class:`bus.subscriber.Sink` protocol).
SINK_METHODS: Final = ("handle", "flush", "close")


@dataclass(frozen=True)
class SinkInfo:
    """One row of ``metricbus sinks``: where a sink type comes from and what it takes."""

    name: str
    target: str  # "module:Class"
    origin: str  # "built-in", or "plugin (<distribution>)"
    summary: str  # first line of the class docstring, or why it cannot be loaded
    options: list[tuple[str, str, str]]  # (option, type, default or "required")
    available: bool = True


def _load(target: str, type_name: str) -> type:
    module_name, colon, attr = target.partition(":")
    if not colon or not module_name or not attr:
        raise LookupError(f"sink type {type_name!r}: expected module:Class, got {target!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise LookupError(f"sink type {type_name!r}: cannot import {module_name!r}: {exc}") from None
    obj: Any = module
    for part in attr.split("."):  # "pkg.mod:Outer.Inner" is allowed, as entry points allow it
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise LookupError(f"sink type {type_name!r}: module {module_name!r} has no {attr!r}") from None
    if not isinstance(obj, type):
        raise LookupError(f"sink type {type_name!r}: {target} is not a class")
    missing = [m for m in SINK_METHODS if not callable(getattr(obj, m, None))]
    if missing:
        raise LookupError(
            f"sink type {type_name!r}: {target} lacks {', '.join(missing)} "
            f"(a sink has handle(batch), flush() and close())"
        )
    return obj


def _importable_here() -> None:
    # Sink processes run as `python -m metricbus`, which puts the directory `metricbus up` runs in on
    # sys.path; the console script does not, so `metricbus up`/`check` would fail to find the
    # same `my_sinks.py`. Appended, not prepended: it never shadows an installed package.
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)


def entry_points() -> dict[str, metadata.EntryPoint]:
    """Installed plugins: entry-point name -> entry point, in the ``metricbus.sinks`` group."""
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def resolve(type_name: str) -> type:
    """The sink class for ``type_name``; :class:`LookupError` lists the known names.

    A built-in name wins over a plugin of the same name, so installing a package can never
    change what an existing config runs.
    """
    if type_name in BUILTINS:
        return _load(BUILTINS[type_name], type_name)
    if ":" in type_name:
        _importable_here()
        return _load(type_name, type_name)
    plugins = entry_points()
    if type_name in plugins:
        ep = plugins[type_name]
        return _load(f"{ep.module}:{ep.attr}", type_name)  # .value may carry "[extras]"
    known = sorted(BUILTINS) + sorted(set(plugins) - set(BUILTINS))
    raise LookupError(f"unknown sink type {type_name!r}; known: {', '.join(known)}, or module:Class")


def options_of(cls: type) -> dict[str, inspect.Parameter]:
    """The constructor keywords a YAML entry may set (the runner's context excluded)."""
    return keyword_parameters(cls, exclude=(CONTEXT_PARAMETER,))


def check_options(cls: type, options: dict[str, Any]) -> str | None:
    """What is wrong with ``options`` for ``cls``, or None."""
    problem = find_problem(cls, options, exclude=(CONTEXT_PARAMETER,))
    return option_text(cls, problem) if problem is not None else None


def describe_all() -> list[SinkInfo]:
    """Every built-in and installed sink with its options, for ``metricbus sinks``."""
    rows: list[SinkInfo] = []
    targets = {name: (target, "built-in") for name, target in BUILTINS.items()}
    for name, ep in entry_points().items():
        if name not in BUILTINS:
            dist = ep.dist.name if ep.dist is not None else "?"
            targets[name] = (ep.value, f"plugin ({dist})")
    for name, (target, origin) in targets.items():
        try:
            cls = resolve(name)
        except LookupError as exc:
            rows.append(SinkInfo(name, target, origin, f"unavailable: {exc}", [], available=False))
            continue
        hints = type_hints(cls)
        options = [
            (
                opt,
                type_name(hints[opt]) if opt in hints else "any",
                "required" if p.default is p.empty else repr(p.default),
            )
            for opt, p in options_of(cls).items()
        ]
        summary = (inspect.getdoc(cls) or "").strip().splitlines()
        rows.append(SinkInfo(name, target, origin, summary[0] if summary else "", options))
    return rows


def create(sink_config: Any, context: Any = None) -> Any:
    """An instance of the sink a :class:`bus.config.SinkConfig` describes."""
    cls = resolve(sink_config.type)
    options = dict(sink_config.options)
    if CONTEXT_PARAMETER in inspect.signature(cls).parameters:
        options[CONTEXT_PARAMETER] = context
    return cls(**options)

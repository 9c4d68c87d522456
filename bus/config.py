"""One YAML file configures the whole stack: broker, sinks, sampler and alert rules.

Loading validates everything up front, so a bad file fails at once with the file, the
key path and what was expected, never with a traceback from deep inside a child process.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Final

import yaml

from bus import defaults
from bus.curve import CurveConfig, check_exposure, parse_curve
from bus.message import MAX_PAYLOAD_BYTES
from bus.options import ConfigError, Where, check_options
from bus.registry import CONTEXT_PARAMETER, resolve

__all__ = [  # ConfigError and CurveConfig live below this module; they are re-exported as before
    "RUNNER_KEYS",
    "BrokerConfig",
    "Config",
    "ConfigError",
    "CurveConfig",
    "SamplerConfig",
    "SinkConfig",
    "default_config_path",
    "load_config",
    "parse_config",
    "publisher_endpoint",
    "subscriber_endpoint",
]

#: Keys of a sink entry that configure its runner; every other key goes to the sink's constructor.
RUNNER_KEYS: Final = ("type", "topics", "batch_size", "flush_interval", "queue")
_NAME: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def default_config_path() -> Path:
    """The embedded ``configs/default.yaml`` (shipped as package data of ``configs``)."""
    return Path(str(resources.files("configs").joinpath("default.yaml")))


@dataclass(frozen=True)
class BrokerConfig:
    frontend: str = defaults.FRONTEND
    backend: str = defaults.BACKEND
    hwm: int = defaults.BROKER_HWM
    max_message_bytes: int = MAX_PAYLOAD_BYTES
    stats_interval: float = 5.0
    insecure: bool = False
    curve: CurveConfig | None = None

    @property
    def connect_frontend(self) -> str:
        return _connectable(self.frontend)

    @property
    def connect_backend(self) -> str:
        return _connectable(self.backend)


@dataclass(frozen=True)
class SinkConfig:
    name: str
    type: str
    topics: tuple[str, ...]
    options: dict[str, Any]
    batch_size: int = 1000
    flush_interval: float = 0.2
    queue: int = defaults.SUBSCRIBER_HWM


@dataclass(frozen=True)
class SamplerConfig:
    enabled: bool = True
    interval: float = 2.0
    disk_path: str = "/"


@dataclass(frozen=True)
class Config:
    path: Path | None = None
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    sinks: dict[str, SinkConfig] = field(default_factory=dict)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    #: The ``alerts`` section, as plain data; the alerts package validates it.
    alerts: dict[str, Any] = field(default_factory=dict)

    @property
    def base_dir(self) -> Path:
        """Relative file names inside the config (rules files) resolve against this."""
        return self.path.parent if self.path else Path.cwd()


def _connectable(endpoint: str) -> str:
    # A broker bound to every interface is reached on loopback from the same host.
    return endpoint.replace("://*:", "://127.0.0.1:").replace("://0.0.0.0:", "://127.0.0.1:")


def _mapping(value: object, where: Where) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise where.expected("a mapping", value)
    return value


def _no_unknown(section: Mapping[str, Any], allowed: tuple[str, ...], where: Where) -> None:
    for key in section:
        if key not in allowed:
            raise (where / key).expected(f"one of the keys {', '.join(allowed)} (unknown key)")


def _typed(section: Mapping[str, Any], key: str, kind: type | tuple[type, ...], default: Any, where: Where) -> Any:
    if key not in section:
        return default
    value = section[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # bool is an int in Python; a YAML `yes` where a number belongs is still a mistake.
    if isinstance(value, bool) and bool not in kinds:
        raise (where / key).expected(_type_names(kinds), value)
    if not isinstance(value, kinds) and not (float in kinds and isinstance(value, int)):
        raise (where / key).expected(_type_names(kinds), value)
    if float in kinds and isinstance(value, int):
        return float(value)
    return value


def _positive(value: float, where: Where) -> float:
    if value <= 0:
        raise where.expected("a positive number", value)
    return value


def _type_names(kinds: tuple[type, ...]) -> str:
    names = {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a mapping",
    }
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _endpoint(value: str, where: Where) -> str:
    if not re.fullmatch(r"(tcp://[^\s:]+:\d{1,5}|ipc://\S+|inproc://\S+)", value):
        raise where.expected("a ZeroMQ endpoint such as tcp://127.0.0.1:5555 or ipc:///tmp/bus", value)
    return value


def _broker(raw: object, where: Where, base: Path) -> BrokerConfig:
    section = _mapping(raw, where)
    allowed = ("frontend", "backend", "hwm", "max_message_bytes", "stats_interval", "insecure", "curve")
    _no_unknown(section, allowed, where)
    d = BrokerConfig()
    curve_raw = section.get("curve")
    curve = None
    if curve_raw is not None:
        curve = parse_curve(_mapping(curve_raw, where / "curve"), where / "curve", base)
    broker = BrokerConfig(
        frontend=_endpoint(_typed(section, "frontend", str, d.frontend, where), where / "frontend"),
        backend=_endpoint(_typed(section, "backend", str, d.backend, where), where / "backend"),
        hwm=int(_positive(_typed(section, "hwm", int, d.hwm, where), where / "hwm")),
        max_message_bytes=int(
            _positive(
                _typed(section, "max_message_bytes", int, d.max_message_bytes, where), where / "max_message_bytes"
            )
        ),
        stats_interval=_positive(
            _typed(section, "stats_interval", float, d.stats_interval, where), where / "stats_interval"
        ),
        insecure=_typed(section, "insecure", bool, d.insecure, where),
        curve=curve,
    )
    if broker.curve is None and not broker.insecure:
        check_exposure({"frontend": broker.frontend, "backend": broker.backend}, where)
    return broker


def _sink(name: str, raw: object, where: Where, base_dir: Path) -> SinkConfig:
    if not _NAME.fullmatch(name):
        raise where.expected(f"a sink name matching {_NAME.pattern}", name)
    section = _mapping(raw, where)
    if "type" not in section:
        raise (where / "type").expected("a sink type (required): a built-in name or module:Class")
    sink_type = _typed(section, "type", str, "", where)
    topics_raw = _typed(section, "topics", list, [""], where)
    for i, topic in enumerate(topics_raw):
        if not isinstance(topic, str):
            raise (where / "topics" / i).expected("a topic prefix string such as 'metrics/'", topic)
    options = {k: v for k, v in section.items() if k not in RUNNER_KEYS}
    sink = SinkConfig(
        name=name,
        type=sink_type,
        topics=tuple(topics_raw),
        options=options,
        batch_size=int(_positive(_typed(section, "batch_size", int, 1000, where), where / "batch_size")),
        flush_interval=_positive(_typed(section, "flush_interval", float, 0.2, where), where / "flush_interval"),
        queue=int(_positive(_typed(section, "queue", int, defaults.SUBSCRIBER_HWM, where), where / "queue")),
    )
    try:
        cls = resolve(sink_type)
    except LookupError as exc:
        raise (where / "type").error(str(exc)) from None
    check_options(cls, options, where, exclude=(CONTEXT_PARAMETER,))
    # Optional deeper check a sink class may offer (the alerts engine parses its rule files
    # here), so that `metricbus check` and load_config fail on what the signature cannot see.
    validate = getattr(cls, "validate_options", None)
    if callable(validate):
        validate(options, where.file, where.path, base_dir)  # raises ConfigError naming the key path
    return sink


def _sampler(raw: object, where: Where) -> SamplerConfig:
    section = _mapping(raw, where)
    _no_unknown(section, ("enabled", "interval", "disk_path"), where)
    d = SamplerConfig()
    return SamplerConfig(
        enabled=_typed(section, "enabled", bool, d.enabled, where),
        interval=_positive(_typed(section, "interval", float, d.interval, where), where / "interval"),
        disk_path=_typed(section, "disk_path", str, d.disk_path, where),
    )


def parse_config(data: object, file: str = "<config>", path: Path | None = None) -> Config:
    """A validated :class:`Config` from already-parsed YAML data."""
    where = Where(file)
    top = _mapping(data, where)
    _no_unknown(top, ("broker", "sinks", "sampler", "alerts"), where)
    sinks_raw = _mapping(top.get("sinks"), where / "sinks")
    base_dir = path.parent if path else Path.cwd()
    sinks = {str(name): _sink(str(name), raw, where / "sinks" / name, base_dir) for name, raw in sinks_raw.items()}
    return Config(
        path=path,
        broker=_broker(top.get("broker"), where / "broker", path.parent if path else Path.cwd()),
        sinks=sinks,
        sampler=_sampler(top.get("sampler"), where / "sampler"),
        alerts=_mapping(top.get("alerts"), where / "alerts"),
    )


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Load and validate a YAML config; ``None`` means the embedded default."""
    file = Path(path) if path is not None else default_config_path()
    try:
        text = file.read_text()
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"{file}: not valid YAML{at}: {getattr(exc, 'problem', exc)}") from None
    return parse_config(data, str(file), file.resolve())


# -- where a process connects when nothing says so: the environment, else $METRICBUS_CONFIG's --------


def publisher_endpoint() -> str:
    """Where a publisher connects: ``METRICBUS_ENDPOINT``, else the config's frontend."""
    env = os.environ.get(defaults.ENV_ENDPOINT)
    if env:
        return env
    path = os.environ.get(defaults.ENV_CONFIG)
    return load_config(path).broker.connect_frontend if path else defaults.FRONTEND


def subscriber_endpoint() -> str:
    """Where a subscriber connects: ``METRICBUS_BACKEND``, else the config's backend."""
    env = os.environ.get(defaults.ENV_BACKEND)
    if env:
        return env
    path = os.environ.get(defaults.ENV_CONFIG)
    return load_config(path).broker.connect_backend if path else defaults.BACKEND

"""Loading alert rules from YAML: every mistake is a :class:`~bus.config.ConfigError` naming
the file and the key path (``alerts.yaml: rules[3].threshold: expected a number``).

A rules file holds ``rules: [...]`` (or just the list); a rule is a mapping with the keys
common to every kind (``name kind severity select for repeat message``) plus its kind's
own options, which are checked against the kind's constructor signature and type hints.
"""

from __future__ import annotations

import importlib
import re
import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import yaml

from alerts.kinds import KINDS
from alerts.rules import (
    DEFAULT_REPEAT,
    SELECTABLE_KINDS,
    SEVERITIES,
    Rule,
    RuleError,
    RuleSpec,
    Selector,
    parse_duration,
    parse_for,
)
from bus.options import ConfigError, Where, construct_checked

TEMPLATE_FIELDS: Final = (
    "rule", "severity", "state", "run", "node", "source", "metric", "value", "threshold", "hint", "detail",
)  # fmt: skip
COMMON_KEYS: Final = ("name", "kind", "severity", "select", "for", "clear", "repeat", "message", "hint")
_NAME: Final = re.compile(r"[A-Za-z0-9_.:/-]{1,128}")


def _regex(value: object, where: Where) -> re.Pattern[str]:
    if not isinstance(value, str):
        raise where.error(f"expected a regular expression string, got {value!r}")
    try:
        return re.compile(value)
    except re.error as exc:
        raise where.error(f"expected a regular expression: {exc} in {value!r}") from None


def parse_selector(raw: object, default_kinds: Sequence[str], needs_metric: bool, where: Where) -> Selector:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise where.error(f"expected a mapping with kind, metric, run, node; got {raw!r}")
    for key in raw:
        if key not in ("kind", "metric", "exclude", "run", "node"):
            raise where.key(str(key)).error("expected one of the keys kind, metric, exclude, run, node (unknown key)")
    kinds_raw = raw.get("kind", list(default_kinds))
    kinds = [kinds_raw] if isinstance(kinds_raw, str) else kinds_raw
    if not isinstance(kinds, list) or not kinds:
        raise where.key("kind").error(f"expected a message kind or a list of them ({', '.join(SELECTABLE_KINDS)})")
    for i, kind in enumerate(kinds):
        if kind not in SELECTABLE_KINDS:
            raise where.key("kind").index(i).error(f"expected one of {', '.join(SELECTABLE_KINDS)}, got {kind!r}")
    metrics_raw = raw.get("metric", [])
    metrics = [metrics_raw] if isinstance(metrics_raw, str) else metrics_raw
    if not isinstance(metrics, list) or not all(isinstance(m, str) and m for m in metrics):
        raise where.key("metric").error(
            f"expected a metric name, a glob (grad/*) or a list of them, got {metrics_raw!r}"
        )
    exclude_raw = raw.get("exclude", [])
    exclude = [exclude_raw] if isinstance(exclude_raw, str) else exclude_raw
    if not isinstance(exclude, list) or not all(isinstance(m, str) and m for m in exclude):
        raise where.key("exclude").error(f"expected a metric name, a glob or a list of them, got {exclude_raw!r}")
    if needs_metric and not metrics:
        raise where.key("metric").error("expected a metric name or glob such as grad/* (required)")
    return Selector(
        kinds=frozenset(kinds),
        metrics=tuple(metrics),
        run=_regex(raw["run"], where.key("run")) if "run" in raw else None,
        node=_regex(raw["node"], where.key("node")) if "node" in raw else None,
        exclude=tuple(exclude),
    )


def rule_class(kind: object, where: Where) -> type[Rule]:
    """The class for a built-in kind name or ``package.module:Class``."""
    if not isinstance(kind, str):
        raise where.error(f"expected a rule kind ({', '.join(KINDS)} or module:Class), got {kind!r}")
    if kind in KINDS:
        return KINDS[kind]
    if ":" not in kind:
        raise where.error(f"expected a rule kind ({', '.join(KINDS)} or module:Class), got unknown kind {kind!r}")
    module_name, _, attr = kind.partition(":")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise where.error(f"expected an importable rule class, cannot load {kind!r}: {exc}") from None
    if not (isinstance(obj, type) and issubclass(obj, Rule)):
        raise where.error(f"expected a subclass of alerts.rules.Rule, {kind!r} is not one")
    return obj


def _check_template(template: str, where: Where) -> None:
    sample = {f: "x" for f in TEMPLATE_FIELDS} | {"value": 1.0, "threshold": 1.0}
    try:
        for _, field, _, _ in string.Formatter().parse(template):
            if field is not None and field.split(".")[0].split("[")[0] not in TEMPLATE_FIELDS and field:
                raise KeyError(field)
        template.format_map(sample)
    except (KeyError, ValueError, IndexError) as exc:
        raise where.error(f"expected a template using {{{'}, {'.join(TEMPLATE_FIELDS)}}}; {exc!r}") from None


def parse_rule(raw: object, where: Where) -> Rule:
    """One rule from its YAML mapping; errors name the file and the key path."""
    if not isinstance(raw, dict):
        raise where.error(f"expected a rule mapping with name, kind and its options, got {raw!r}")
    if "kind" not in raw:
        raise where.key("kind").error(f"expected a rule kind ({', '.join(KINDS)} or module:Class) (required)")
    cls = rule_class(raw["kind"], where.key("kind"))
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise where.key("name").error(f"expected a rule name matching {_NAME.pattern} (required), got {name!r}")
    severity = raw.get("severity", "warning")
    if severity not in SEVERITIES:
        raise where.key("severity").error(f"expected one of {', '.join(SEVERITIES)}, got {severity!r}")
    selector = parse_selector(raw.get("select"), cls.default_kinds, cls.needs_metric, where.key("select"))
    try:
        for_count, for_seconds = parse_for(raw.get("for", 1))
        clear_count, clear_seconds = parse_for(raw.get("clear", 1), "clear")
        repeat_raw = raw.get("repeat", DEFAULT_REPEAT)
        never = repeat_raw is None or repeat_raw is False or repeat_raw == "never"  # 0 is "every sample"
        repeat = None if never else parse_duration(repeat_raw, "repeat")
    except RuleError as exc:
        raise where.key(exc.key).error(str(exc)) from None
    if cls.kind == "absence" and "for" in raw:
        raise where.key("for").error("expected no 'for' on an absence rule: its 'after' is how long silence lasts")
    hint = raw.get("hint", "")
    if not isinstance(hint, str):
        raise where.key("hint").error(f"expected a short text saying what to check, got {hint!r}")
    message = raw.get("message")
    if message is not None:
        if not isinstance(message, str):
            raise where.key("message").error(f"expected a template string, got {message!r}")
        _check_template(message, where.key("message"))
    options = {k: v for k, v in raw.items() if k not in COMMON_KEYS}
    rule = construct_checked(cls, options, where, f"kind {cls.kind}", COMMON_KEYS)
    template = message if message is not None else rule.template
    rule.spec = RuleSpec(
        str(name),
        cls.kind,
        str(severity),
        selector,
        for_count,
        for_seconds,
        repeat,
        template,
        clear_count,
        clear_seconds,
        hint.strip(),
    )
    return rule


def load_rules_file(path: Path, where: Where) -> list[Rule]:
    """Rules from a YAML file holding ``rules: [...]`` (or the list itself)."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise where.error(f"expected a readable rules file, cannot read {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{at}: {getattr(exc, 'problem', exc)}") from None
    file_where = Where(str(path))
    if isinstance(data, dict):
        for key in data:
            if key != "rules":
                raise file_where.key(str(key)).error("expected only the key rules (unknown key)")
        data = data.get("rules")
        file_where = file_where.key("rules")
    if not isinstance(data, list):
        raise file_where.error(f"expected a list of rules, got {type(data).__name__}")
    return [parse_rule(item, file_where.index(i)) for i, item in enumerate(data)]


def load_rules(source: str | Sequence[Any] | None, base_dir: Path, where: Where) -> list[Rule]:
    """Rules from a file name, or a list whose items are rule mappings or file names.

    A relative file name resolves against ``base_dir`` (the config file's directory);
    ``None`` means the embedded ``configs/alerts.yaml``. Rule names must be unique.
    """
    if source is None:
        source = [str(default_rules_path())]
    items: Sequence[Any] = [source] if isinstance(source, str) else source
    rules: list[Rule] = []
    for i, item in enumerate(items):
        at = where if isinstance(source, str) else where.index(i)
        if isinstance(item, str):
            path = Path(item).expanduser()
            rules.extend(load_rules_file(path if path.is_absolute() else base_dir / path, at))
        else:
            rules.append(parse_rule(item, at))
    seen: dict[str, int] = {}
    for i, rule in enumerate(rules):
        if rule.name in seen:
            raise where.error(f"expected unique rule names; {rule.name!r} appears twice")
        seen[rule.name] = i
    return rules


def default_rules_path() -> Path:
    from importlib import resources

    return Path(str(resources.files("configs").joinpath("alerts.yaml")))

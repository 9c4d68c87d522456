"""Alert rules, the engine that evaluates them on the bus, and notifiers."""

from alerts.engine import AlertEngine
from alerts.loading import load_rules
from alerts.notifiers import (
    CommandNotifier,
    EmailNotifier,
    LogNotifier,
    Notifier,
    NotifierWorker,
    WebhookNotifier,
)
from alerts.rules import (
    KINDS,
    SEVERITIES,
    AbsenceRule,
    DivergenceRule,
    DropRule,
    NonFiniteRule,
    Rule,
    RuleSpec,
    Selector,
    StagnationRule,
    StreakRule,
    ThresholdRule,
)
from alerts.state import Series

__all__ = [
    "KINDS",
    "SEVERITIES",
    "AbsenceRule",
    "AlertEngine",
    "CommandNotifier",
    "DivergenceRule",
    "DropRule",
    "EmailNotifier",
    "LogNotifier",
    "NonFiniteRule",
    "Notifier",
    "NotifierWorker",
    "Rule",
    "RuleSpec",
    "Selector",
    "Series",
    "StagnationRule",
    "StreakRule",
    "ThresholdRule",
    "WebhookNotifier",
    "load_rules",
]

"""Alert rules, the engine that evaluates them on the bus, and notifiers."""

from alerts.anomaly import AnomalyRule
from alerts.engine import AlertEngine
from alerts.kinds import KINDS
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
from alerts.run_status import RunEndedRule
from alerts.state import Series

__all__ = [
    "KINDS",
    "SEVERITIES",
    "AbsenceRule",
    "AlertEngine",
    "AnomalyRule",
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
    "RunEndedRule",
    "Selector",
    "Series",
    "StagnationRule",
    "StreakRule",
    "ThresholdRule",
    "WebhookNotifier",
    "load_rules",
]

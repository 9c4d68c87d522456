"""The built-in rule kinds by name (``kind:`` in a rules file)."""

from __future__ import annotations

from typing import Final

from alerts.anomaly import AnomalyRule
from alerts.rules import (
    AbsenceRule,
    DivergenceRule,
    DropRule,
    NonFiniteRule,
    Rule,
    StagnationRule,
    StreakRule,
    ThresholdRule,
)
from alerts.run_status import RunEndedRule

KINDS: Final[dict[str, type[Rule]]] = {
    cls.kind: cls
    for cls in (
        ThresholdRule,
        NonFiniteRule,
        AnomalyRule,
        DivergenceRule,
        StagnationRule,
        DropRule,
        AbsenceRule,
        StreakRule,
        RunEndedRule,
    )
}

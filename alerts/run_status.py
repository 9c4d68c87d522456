"""The ``ended`` rule kind: a run whose ``run_ended`` event has a bad status, alerted at once.

A crashed training is the clearest fault there is, and before this rule it raised no
alert at all: the run just went quiet, and ``run-silent`` spoke a minute later without
saying why. The publisher's ``run_ended`` carries ``status`` (``completed``, ``stopped`` by
a sweep's scheduler, ``failed``, ``interrupted``) and, when failed, ``error`` (``"ValueError:
Expected parameter logits ... found invalid values"``): the alert carries that text as its
``detail``.

The engine resolves a run's other alerts when it ends; this one fires after that, and
stays firing: a failed run is a standing fact until someone looks (or the run id comes
back).
"""

from __future__ import annotations

from typing import Any, ClassVar

from alerts.rules import Rule, RuleError, Verdict
from bus.message import Message


class RunEndedRule(Rule):
    """``run_ended`` with a ``status`` in ``status`` (default ``[failed]``)."""

    kind = "ended"
    default_kinds = ("event",)
    accepts_text: ClassVar[bool] = True
    template = "{rule}: run {source} ended {value}: {detail}"

    def __init__(self, status: list[str] | None = None) -> None:
        statuses = ["failed"] if status is None else status
        if not statuses or not all(isinstance(s, str) for s in statuses):
            raise RuleError("status", "a list of run_ended statuses such as [failed]", status)
        self.statuses = frozenset(statuses)

    def check(self, state: Any, metric: str, value: Any, message: Message) -> Verdict | None:
        if metric != "status" or message.data.get("event") != "run_ended":
            return None
        return str(value) in self.statuses, value, None

    def detail(self, message: Message) -> str:
        error = message.data.get("error")
        return str(error)[:500] if error else "no error text"

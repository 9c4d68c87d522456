"""A short diagnosis of one run from its alerts: what fired, when, what to check, how it ended.

``metricbus report`` prints it under the summary table, one block per run, so that a
colleague reading a report learns not only that ``grad-spike`` fired but at which step and
what to look at. The input is the alert records as the JSONL sink stores them (or as the
dashboard's store keeps them): plain mappings with ``rule``, ``severity``, ``state``,
``message``, ``hint``, ``detail``, ``ts`` and ``step``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

_RANK: Final = {"critical": 0, "error": 1, "warning": 2, "info": 3}


@dataclass(frozen=True)
class Finding:
    """The first firing of one rule on a run."""

    rule: str
    severity: str
    ts: float
    step: int | None
    message: str
    hint: str
    resolved: bool


def findings(alerts: Iterable[Mapping[str, Any]]) -> list[Finding]:
    """One finding per rule (its first firing), in the order they fired."""
    first: dict[str, Finding] = {}
    resolved: set[str] = set()
    for a in sorted(alerts, key=lambda a: float(a.get("fired_ts") or a.get("since") or a.get("ts") or 0.0)):
        rule = str(a.get("rule", "?"))
        if a.get("state") == "resolved":
            resolved.add(rule)
        if rule in first:
            continue
        step = a.get("step")
        first[rule] = Finding(
            rule=rule,
            severity=str(a.get("severity", "warning")),
            ts=float(a.get("fired_ts") or a.get("since") or a.get("ts") or 0.0),
            step=step if isinstance(step, int) and a.get("state") == "firing" else None,
            message=str(a.get("fired_message") or a.get("message", "")),
            hint=str(a.get("hint") or ""),
            resolved=False,
        )
    return [Finding(f.rule, f.severity, f.ts, f.step, f.message, f.hint, f.rule in resolved) for f in first.values()]


def diagnose(status: str, error: str | None, alerts: Iterable[Mapping[str, Any]]) -> list[str]:
    """Lines of text: how the run ended, then each rule that fired (worst first), its hint."""
    found = findings(alerts)
    ended = f"ended {status}" + (f": {error}" if error else "")
    if not found:
        return [f"{ended}; no alert fired."]
    worst = min(found, key=lambda f: _RANK.get(f.severity, 9))
    lines = [f"{ended}; {len(found)} rule(s) fired, the worst {worst.severity} ({worst.rule})."]
    for f in sorted(found, key=lambda f: (_RANK.get(f.severity, 9), f.ts)):
        when = time.strftime("%H:%M:%S", time.localtime(f.ts)) if f.ts else "?"
        at = f" at step {f.step}" if f.step is not None else ""
        state = ", since resolved" if f.resolved else ""
        lines.append(f"{f.severity} {f.rule} {when}{at}{state}: {f.message}")
        if f.hint:
            lines.append(f"  check: {f.hint}")
    return lines

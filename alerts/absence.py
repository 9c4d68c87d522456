"""The absence tracker: which runs, nodes and publishers have gone silent, for absence rules.

Value rules judge each value a message carries; an absence rule judges what does *not*
arrive, so it is driven by a clock instead. The tracker notes every message's source
(:meth:`AbsenceTracker.saw`), forgets a run that ended well (:meth:`run_ended`), and on the
engine's timer (:meth:`check`) hands each silence it finds to ``verdict`` — the engine's
own series and notification path, the same one value rules go through.

``bus/`` messages matter here: while the broker's ``broker_stats`` stop (the broker is
down) absence is held, and when a new broker appears every silence timer restarts with its
grace period. Restart: the JSONL files say which sources wrote recently and did not end
(:meth:`seed`), so a run that died while the engine was down still fires.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from alerts.rules import AbsenceRule, Rule
from alerts.state import FIRING, recent_sources
from bus.bounded import Recent
from bus.message import Message

log = logging.getLogger("metricbus.alerts")

#: Absence rules are looked at no more often than this (the runner may flush more often).
_TICK: Final = 0.25
#: Ended runs remembered (so their publisher's closing heartbeat does not revive them).
_ENDED_RUNS: Final = 10_000
#: Sources watched per rule, and broker nodes remembered: names come from the wire, so the
#: least recently heard from are forgotten first (a flood of run ids evicts the flood).
_MAX_WATCHED: Final = 100_000
_MAX_BROKERS: Final = 1024

#: ``verdict(rule, source, active, silent_seconds, wall_ts, run, node)`` -> the series' phase
#: afterwards (None when it is not tracked).
Verdict = Callable[[AbsenceRule, str, bool, float, float, "str | None", str], "str | None"]


@dataclass(slots=True)
class _Seen:
    """When a run, node or publisher was last heard from (monotonic), and who it is."""

    last: float
    run: str | None
    node: str


def split_rules(rules: Sequence[Rule]) -> tuple[tuple[Rule, ...], tuple[AbsenceRule, ...]]:
    """(rules judged per value, rules judged on the clock)."""
    absence = tuple(r for r in rules if isinstance(r, AbsenceRule))
    return tuple(r for r in rules if not isinstance(r, AbsenceRule)), absence


class AbsenceTracker:
    """Silence per (absence rule, source); ``verdict`` turns a silence into an alert."""

    def __init__(self, rules: Sequence[AbsenceRule], verdict: Verdict, bus_timeout: float) -> None:
        self.rules = tuple(rules)
        self._verdict = verdict
        self._bus_timeout = bus_timeout
        self._seen: dict[str, Recent[str, _Seen]] = {r.name: Recent(_MAX_WATCHED) for r in self.rules}
        self._firing: set[tuple[str, str]] = set()
        self._ended_runs: dict[str, str] = {}  # run -> its run_ended status, oldest first
        self._epoch = time.monotonic()  # start, or the last bus restart: grace counts from here
        self._next_check = 0.0
        self._broker_pubs: Recent[str, str] = Recent(_MAX_BROKERS)
        self._last_broker_stats: float | None = None
        self._warned = False

    def owns(self, rule: Rule) -> bool:
        return rule in self.rules

    def stats(self) -> dict[str, int]:
        """Sources watched and forgotten for lack of room, over all absence rules."""
        return {
            "watched": sum(len(t) for t in self._seen.values()),
            "watched_evicted": sum(t.evicted for t in self._seen.values()),
        }

    # -- what arrives ------------------------------------------------------------------------------

    def saw(self, rules: tuple[AbsenceRule, ...], message: Message, now: float) -> None:
        """``message`` arrived at ``now`` (monotonic): its sources under ``rules`` are alive."""
        run = message.run
        if run is not None and run in self._ended_runs:
            ended = self._ended_runs[run]
            if message.kind == "event" and message.data.get("event") == "heartbeat":
                # Publisher.close() sends a last heartbeat after run_ended: that is no sign of life
                rules = tuple(r for r in rules if ended not in r.ended_ok)
            else:
                del self._ended_runs[run]  # the run id is in use again
        firing = self._firing
        for rule in rules:
            scope = rule.scope
            source = run if scope == "run" else message.node if scope == "node" else message.pub
            if source is None:
                continue
            tracked = self._seen[rule.spec.name]  # not the .name property: this runs per message
            seen = tracked.get(source)
            if seen is None:
                tracked.put(source, _Seen(now, run, message.node))
            else:
                seen.last = now
            if firing and (rule.name, source) in firing:
                self._judge(rule, source, False, 0.0, time.time(), run, message.node)

    def run_ended(self, run: str | None, status: object) -> list[tuple[str, str]]:
        """Forget the sources of a run that ended with a status its rules accept.

        Returns the (rule name, source) pairs forgotten; the engine resolves their alerts.
        """
        if run is not None:
            self._ended_runs[run] = str(status)
            if len(self._ended_runs) > _ENDED_RUNS:
                del self._ended_runs[next(iter(self._ended_runs))]
        ended: list[tuple[str, str]] = []
        for rule in self.rules:
            if status not in rule.ended_ok:
                continue  # e.g. a failed run: its silence from now on is still worth an alert
            tracked = self._seen[rule.name]
            for source in [s for s, seen in tracked.items() if seen.run == run]:
                tracked.pop(source)
                self._firing.discard((rule.name, source))
                ended.append((rule.name, source))
        return ended

    def bus_note(self, message: Message, now: float) -> None:
        """A ``bus`` message: the broker's counters say whether the bus is up, and whether it restarted."""
        if message.data.get("event") != "broker_stats":
            return
        self._last_broker_stats = now
        previous = self._broker_pubs.get(message.node)
        self._broker_pubs.put(message.node, message.pub)
        if previous is not None and previous != message.pub:
            # A new broker: everyone had to reconnect, so silence counts from now, after a grace.
            log.info("alerts: the broker on %s restarted; absence timers restart with their grace", message.node)
            self._epoch = now
            for tracked in self._seen.values():
                for seen in tracked.values():
                    seen.last = max(seen.last, now)

    # -- the clock ---------------------------------------------------------------------------------

    def check(self) -> None:
        """Judge every silence (at most every :data:`_TICK` seconds)."""
        if not self.rules:
            return
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + _TICK
        if self._last_broker_stats is not None and now - self._last_broker_stats > self._bus_timeout:
            if not self._warned:
                self._warned = True
                log.warning("alerts: no broker_stats for a while; absence rules held until the bus is back")
            return
        wall = time.time()
        for rule in self.rules:
            if now < self._epoch + rule.grace:
                continue
            for source, seen in self._seen[rule.name].items():  # a snapshot
                silent = now - seen.last
                if silent >= rule.after or (rule.name, source) in self._firing:
                    self._judge(rule, source, silent >= rule.after, silent, wall, seen.run, seen.node)

    def _judge(
        self, rule: AbsenceRule, source: str, active: bool, silent: float, ts: float, run: str | None, node: str
    ) -> None:
        phase = self._verdict(rule, source, active, silent, ts, run, node)
        if phase == FIRING:
            self._firing.add((rule.name, source))
        else:
            self._firing.discard((rule.name, source))

    # -- restart -----------------------------------------------------------------------------------

    def restored_firing(self, rule: Rule, source: str) -> None:
        """An alert of ``rule`` on ``source`` came back firing from the JSONL files."""
        if self.owns(rule):
            self._firing.add((rule.name, source))

    def seed(self, root: Path, resume_window: float) -> None:
        """Track the sources that wrote under ``root`` recently and did not end."""
        if not self.rules:
            return
        runs, nodes = recent_sources(root, resume_window)
        now, wall = time.monotonic(), time.time()
        for rule in self.rules:
            found = runs if rule.scope == "run" else nodes if rule.scope == "node" else []
            for src in found:
                if src.ended in rule.ended_ok:
                    continue
                run = src.name if rule.scope == "run" else None
                if rule.spec.selector.run is not None and (run is None or not rule.spec.selector.run.fullmatch(run)):
                    continue
                if rule.spec.selector.node is not None and not rule.spec.selector.node.fullmatch(src.node):
                    continue
                # The last write's age is real silence: a run that died while we were down still fires.
                self._seen[rule.name].put(src.name, _Seen(now - max(0.0, wall - src.last_ts), run, src.node))

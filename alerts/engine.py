"""The alert engine: a sink that evaluates rules on every message and publishes alerts back.

Configured as the built-in sink type ``alerts``::

    alerts:
      type: alerts
      topics: [metrics/, episode/, system/, event/, bus/]
      rules: alerts.yaml            # relative to this config file; or a list of rules/files
      notify: [{type: log}]

Why one node-scoped publisher and ``forward()``, not one publisher per run: an alert must
carry its run (topic ``alert/<run>``), and a :class:`~bus.publisher.Publisher` has a fixed
run. A publisher per run would wait up to 2 s for the broker's subscription the first
time each run alerts — on the evaluation path — and would need a bounded pool with
eviction. Instead the engine builds each alert payload itself (run, node, its own ``pub``
id and ``seq`` counter) and hands it to one publisher's ``forward()``: one socket, one
contiguous ``seq`` stream, so sinks still detect lost alerts, for any number of runs.

Absence rules are judged by :class:`~alerts.absence.AbsenceTracker` on the runner's flush
tick (every ``flush_interval``), so a run that sends nothing at all still fires; its
verdicts come back through the same series and notification path as every other rule's.
``bus/`` in ``topics`` lets the tracker see the broker's ``broker_stats``.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from alerts.absence import AbsenceTracker, split_rules
from alerts.loading import load_rules
from alerts.notifiers import NotifierWorker, build_notifiers, check_notify
from alerts.rules import AbsenceRule, Rule
from alerts.state import FIRING, INACTIVE, RESOLVED, RestoreStats, Series, SeriesKey, restore_alerts
from bus.bounded import Memo, Recent
from bus.message import Message, default_node, payload
from bus.options import Where

log = logging.getLogger("metricbus.alerts")

#: Alerts kept in memory for inspection (``engine.recent``); the bus and JSONL hold the rest.
RECENT: Final = 1000
#: (kind, run, node) plans cached; the least recently used go first.
_MAX_PLANS: Final = 10_000
#: Metric names cached per plan (a run of 1M names); the least recently seen are forgotten.
_MAX_METRICS_PER_PLAN: Final = 2048
_SELECTABLE: Final = frozenset(("metrics", "episode", "system", "event"))


@dataclass(slots=True)
class _Plan:
    """The rules that apply to one (kind, run, node), and per metric name the series it feeds."""

    rules: tuple[Rule, ...]
    absence: tuple[AbsenceRule, ...]
    by_metric: Memo[str, tuple[Series, ...]]


class AlertEngine:
    """Evaluates alert rules on every message; publishes alert/<run|node> and notifies.

    ``rules``: a rules file (relative to the config file), or a list of rules and files;
    None is the embedded configs/alerts.yaml. ``notify``: log, webhook, command, email.
    ``restore``: rebuild firing alerts from the JSONL sink's alerts.jsonl (or ``state_root``).
    """

    def __init__(
        self,
        rules: str | list[Any] | None = None,
        notify: list[Any] | None = None,
        restore: bool = True,
        state_root: str | None = None,
        resume_window: float = 3600.0,
        max_series: int = 100_000,
        context: Any = None,
    ) -> None:
        config = getattr(context, "config", None)
        base_dir = Path(config.base_dir) if config is not None else Path.cwd()
        where = Where(str(getattr(config, "path", None) or "<alerts options>"), f"sinks.{_name(context)}")
        self.rules = load_rules(rules, base_dir, where.key("rules"))
        self.max_series = max_series
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self.alerts_sent = 0
        self.rule_errors = 0
        self._value_rules, absence_rules = split_rules(self.rules)
        self._by_name = {r.name: r for r in self.rules}
        # Every name below comes from the wire: each map is bounded, least recently seen out,
        # so a flood of new runs evicts the flood and the engine keeps judging the live runs.
        self._plans: Recent[tuple[str, str | None, str], _Plan] = Recent(_MAX_PLANS, self._forget_plan)
        self._metrics_evicted = 0  # by the plans' metric memos, including plans since forgotten
        self._series: Recent[SeriesKey, Series] = Recent(max_series, self._forget_series)
        self.restore_stats = RestoreStats()
        bus_timeout = 3 * float(getattr(getattr(config, "broker", None), "stats_interval", 5.0)) + 5.0
        self.absence = AbsenceTracker(absence_rules, self._absence_verdict, bus_timeout)
        self._warned: set[str] = set()
        node = getattr(context, "node", None) or default_node()
        self._node = node
        self._pub_id = f"{node}:{os.getpid()}:alerts-{uuid.uuid4().hex[:8]}"
        self._seq = 0
        self._own_pubs = {self._pub_id}
        if config is not None and getattr(config, "alerts", None):
            log.warning("alerts: the top-level 'alerts:' section is not used; rules belong in the alerts sink entry")
        self._workers: list[NotifierWorker] = build_notifiers(notify, where.key("notify"))
        self._publisher = None
        try:
            if restore:
                root = Path(state_root) if state_root else _jsonl_root(config)
                if root is not None:
                    self._restore(root, resume_window)
            if context is not None:
                from bus.publisher import Publisher

                self._publisher = Publisher(
                    context.frontend, None, node, heartbeat_interval=1e9, curve=getattr(context, "curve", None)
                )
                self._own_pubs.add(self._publisher.pub)
        except BaseException:
            self._close_workers(0.0)
            raise
        log.info(
            "alerts: %d rules (%d absence), %d notifiers", len(self.rules), len(self.absence.rules), len(self._workers)
        )

    # -- load-time validation (called by bus.config for `metricbus check` and load_config) --

    @classmethod
    def validate_options(cls, options: Mapping[str, Any], file: str, key_path: str, base_dir: Path) -> None:
        """Raise :class:`~bus.config.ConfigError` naming the file and key path of a bad rule or notifier."""
        where = Where(file, key_path)
        load_rules(options.get("rules"), base_dir, where.key("rules"))
        check_notify(options.get("notify"), where.key("notify"))

    # -- Sink protocol -------------------------------------------------------------------------

    def handle(self, batch: Sequence[Message]) -> None:
        now = time.monotonic()
        plans = self._plans
        own = self._own_pubs
        for message in batch:
            if message.pub in own:
                continue
            kind = message.kind
            if kind == "bus":
                self.absence.bus_note(message, now)
                continue
            plan = plans.get((kind, message.run, message.node))
            if plan is None:
                plan = self._plan(kind, message.run, message.node)
            if plan.absence:
                self.absence.saw(plan.absence, message, now)
            if kind == "event" and message.data.get("event") == "run_ended":
                self._run_ended(message)
            if not plan.rules:
                continue
            by_metric = plan.by_metric
            for name, value in message.data.items():
                # the memo's current generation first: a dict lookup per value (see Memo)
                targets = by_metric.hot.get(name)
                if targets is None:
                    targets = by_metric.get(name)
                    if targets is None:
                        targets = by_metric.put(name, self._targets(plan, message, name))
                if targets:
                    self._evaluate(targets, message, name, value)
        self.absence.check()

    def flush(self) -> None:
        # The runner calls this on its timer even when no message comes: absence needs that.
        self.absence.check()

    def close(self) -> None:
        self._close_workers(5.0)
        if self._publisher is not None:
            self._publisher.close()
            self._publisher = None

    # -- evaluation ----------------------------------------------------------------------------

    def _plan(self, kind: str, run: str | None, node: str) -> _Plan:
        if kind not in _SELECTABLE:
            plan = _Plan((), (), Memo(_MAX_METRICS_PER_PLAN))
        else:
            rules = tuple(r for r in self._value_rules if r.spec.selector.matches_source(kind, run, node))
            absence = tuple(r for r in self.absence.rules if r.spec.selector.matches_source(kind, run, node))
            plan = _Plan(rules, absence, Memo(_MAX_METRICS_PER_PLAN))
        return self._plans.put((kind, run, node), plan)

    def _forget_plan(self, key: tuple[str, str | None, str], plan: _Plan) -> None:
        self._metrics_evicted += plan.by_metric.evicted

    def _targets(self, plan: _Plan, message: Message, metric: str) -> tuple[Series, ...]:
        """The series ``metric`` feeds under ``plan``: resolved once, then a dict lookup per value."""
        source = message.owner
        targets = []
        for rule in plan.rules:
            if rule.spec.selector.matches_metric(metric):
                key = (rule.spec.name, source, metric)
                series = self._series.get(key) or self._new_series(key, rule, message.run, message.node)
                if series is not None:
                    targets.append(series)
        return tuple(targets)

    def _evaluate(self, targets: tuple[Series, ...], message: Message, metric: str, value: Any) -> None:
        kind = type(value)
        if kind is not float and kind is not int and kind is not bool:
            if kind is not str:
                return
            targets = tuple(s for s in targets if s.rule.accepts_text)  # rare: a run_ended status
        for series in targets:
            if kind is bool and not series.rule.accepts_bool:
                continue
            try:
                verdict = series.check(series.memory, metric, value, message)
            except Exception as exc:  # a plug-in rule's bug must not stop the other rules
                self._rule_failed(series.rule, exc)
                continue
            if verdict is None:
                continue
            if not verdict[0] and series.phase == INACTIVE:
                continue  # the common case: nothing held, nothing to record (an inactive series has count 0)
            rule = series.rule
            active, series.value, series.threshold = verdict
            series.step = message.step
            series.node = message.node
            change = series.advance(active, message.ts)
            if change is not None:
                if change == FIRING:
                    series.extra["detail"] = rule.detail(message)
                self._emit(series, change)

    def _new_series(self, key: SeriesKey, rule: Rule, run: str | None, node: str) -> Series | None:
        return self._series.put(key, Series(rule, key[1], key[2], run, node, rule.new_state(), check=rule.check))

    def _forget_series(self, key: SeriesKey, series: Series) -> None:
        # Pushed out by newer series (max_series): the least recently seen, a flood's own.
        self._warn_once(
            "max_series", f"alerts: over {self.max_series} series; the least recently seen are forgotten (counted)"
        )

    def stats(self) -> dict[str, int]:
        """Sizes and evictions of the per-name state (logged by the runner when it stops)."""
        return {
            "series": len(self._series),
            "series_evicted": self._series.evicted,
            "plans": len(self._plans),
            "plans_evicted": self._plans.evicted,
            "metric_names_evicted": self._metrics_evicted + sum(p.by_metric.evicted for p in self._plans.values()),
            **self.absence.stats(),
            "restore_skipped": self.restore_stats.skipped,
            "notify_dropped": sum(w.dropped for w in self._workers),
        }

    def _rule_failed(self, rule: Rule, exc: Exception) -> None:
        self.rule_errors += 1
        self._warn_once(f"rule:{rule.name}", f"alerts: rule {rule.name} raised {type(exc).__name__}: {exc}")

    def _warn_once(self, key: str, text: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning("%s", text)

    # -- absence (the tracker finds silences; they become alerts here, like any rule's) --------------

    def _run_ended(self, message: Message) -> None:
        run = message.run
        ended: list[SeriesKey] = [
            (name, source, None) for name, source in self.absence.run_ended(run, message.data.get("status"))
        ]
        # A finished run's alerts can never clear by themselves: resolve them, forget its series.
        ended += [k for k, s in self._series.items() if s.run == run and not self.absence.owns(s.rule)]
        if ended:
            for plan in self._plans.values():  # plans hold the series being forgotten
                self._metrics_evicted += plan.by_metric.evicted
            self._plans.clear()
        for key in ended:
            series = self._series.pop(key)
            if series is not None and series.phase == FIRING:
                series.phase = "inactive"
                self._emit(series, RESOLVED, note="run ended")

    def _absence_verdict(
        self, rule: AbsenceRule, source: str, active: bool, silent: float, ts: float, run: str | None, node: str
    ) -> str | None:
        key = (rule.name, source, None)
        series = self._series.get(key) or self._new_series(key, rule, run, node)
        if series is None:
            return None
        series.value, series.threshold = round(silent, 3), rule.after
        change = series.advance(active, ts)
        if change is not None:
            self._emit(series, change)
        return series.phase

    # -- output --------------------------------------------------------------------------------

    def _emit(self, series: Series, state: str, note: str = "") -> None:
        spec = series.rule.spec
        detail = series.extra.get("detail", "") if series.extra else ""
        fields = {
            "rule": spec.name,
            "severity": spec.severity,
            "state": state,
            "run": series.run,
            "node": series.node,
            "source": series.source,
            "metric": series.metric,
            "value": series.value,
            "threshold": series.threshold,
            "hint": spec.hint,
            "detail": detail,
        }
        text = _render(spec.message, fields, series.rule)
        if note:
            text = f"{text} ({note})"
        data = {
            "rule": spec.name,
            "severity": spec.severity,
            "state": state,
            "message": text,
            "metric": series.metric,
            "value": series.value,
            "threshold": series.threshold,
            "since": series.since,
            "source": series.source,
        }
        if spec.hint:
            data["hint"] = spec.hint
        if detail:
            data["detail"] = detail
        record = payload("alert", series.run, series.node, self._pub_id, self._seq, time.time(), series.step, data)
        self._seq += 1
        self.alerts_sent += 1
        self.recent.append(record)
        if self._publisher is not None:
            self._publisher.forward(record)
        notice = {**data, "run": series.run, "node": series.node, "step": series.step, "ts": record["ts"]}
        for worker in self._workers:
            worker.submit(notice)

    def _close_workers(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for worker in self._workers:
            worker.close(max(0.0, deadline - time.monotonic()))

    def notifiers_idle(self) -> bool:
        return all(w.idle() for w in self._workers)

    @property
    def workers(self) -> list[NotifierWorker]:
        return list(self._workers)

    # -- restart -------------------------------------------------------------------------------

    def _restore(self, root: Path, resume_window: float) -> None:
        restored = 0
        for (rule_name, source, metric), record in restore_alerts(root, self.restore_stats).items():
            rule = self._by_name.get(rule_name)
            data = record["data"]
            if rule is None or data.get("state") != FIRING:
                continue
            key = (rule_name, source, metric)
            series = self._new_series(key, rule, record.get("run"), str(record.get("node") or self._node))
            if series is None:
                break
            series.phase = FIRING
            series.since = float(data.get("since") or record.get("ts") or 0.0)
            series.notified = float(record.get("ts") or 0.0)
            series.value, series.threshold, series.step = data.get("value"), data.get("threshold"), record.get("step")
            self.absence.restored_firing(rule, source)
            restored += 1
        self.absence.seed(root, resume_window)
        if restored:
            log.info("alerts: %d firing alerts restored from %s (not notified again)", restored, root)
        if self.restore_stats.skipped:
            log.warning(
                "alerts: %d records in %s/**/alerts.jsonl are not alerts this engine wrote; skipped",
                self.restore_stats.skipped,
                root,
            )


def _render(template: str, fields: Mapping[str, Any], rule: Rule) -> str:
    try:
        return template.format_map(fields)
    except (KeyError, ValueError, TypeError, IndexError):
        # e.g. "{threshold:g}" when a rule has no threshold: fall back to a plain text
        metric = f" {fields['metric']}" if fields["metric"] else ""
        return (
            f"{fields['rule']}:{metric} value {fields['value']} threshold {fields['threshold']} on {fields['source']}"
        )


def _name(context: Any) -> str:
    return str(getattr(context, "name", None) or "alerts")


def _jsonl_root(config: Any) -> Path | None:
    """The JSONL sink's root in the same config (relative to the cwd, as the sink resolves it)."""
    for sink in getattr(config, "sinks", {}).values():
        if sink.type == "jsonl":
            return Path(str(sink.options.get("root", "logs")))
    return None

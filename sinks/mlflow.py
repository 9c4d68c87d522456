"""MLflow bridge: every bus run becomes an MLflow run, kept up to date while it trains.

What goes where (run ``R`` → the MLflow run named ``R``, tagged ``metricbus.run = R``):

- ``run_started``'s ``config`` → params (nested keys joined by ``/``), its other fields → tags;
- ``metrics`` values → metrics with the message's step and time, sent with ``log_batch``
  (up to 1,000 values a request); ``episode`` values → ``episode/<key>``;
- ``alert`` → the tag ``alert/<rule>`` (state, severity, message) and the metric
  ``alert/<rule>`` (1 firing, 0 resolved), so an alert shows in the run's charts too;
- ``run_ended`` → the run's status (``completed`` and ``stopped`` → FINISHED, as MLflow's
  own Tune integration ends an early-stopped trial; ``failed`` → FAILED, ``interrupted`` →
  KILLED) and end time; the error text as the tag ``metricbus.error``;
- with ``system`` in ``kinds``: each node's samples in a run named ``node-<node>``.

``tracking_uri`` is what ``MlflowClient`` takes: ``sqlite:///mlflow.db`` (the default, next
to where ``metricbus up`` runs), a directory, or a tracking server's ``http://host:port``.
A restarted sink finds its runs again by the tag, so it does not duplicate them.

Delivery runs on a worker thread (:mod:`sinks._tracker_queue`): the bus never waits on
MLflow; while the tracker is unreachable, up to ``max_buffer`` messages wait and are
retried, the rest are counted as dropped. mlflow's own HTTP retries (minutes of back-off
by default) are turned down so that the queue's retry, which counts, is the one that acts.
"""

from __future__ import annotations

import logging
import os
import re
from collections import OrderedDict
from collections.abc import Sequence
from functools import partial
from typing import Any

from bus.message import Message
from sinks._scalars import check_kinds, numeric
from sinks._tracker_queue import Call, TrackerQueue, TrackerStats, flatten, tracked

log = logging.getLogger("metricbus.mlflow")

#: MLflow's own limits per log_batch request, and on names and values.
_MAX_METRICS = 1_000
_MAX_PARAMS_OR_TAGS = 100
_MAX_KEY = 250
_MAX_VALUE = 5_000
_STATUS = {"completed": "FINISHED", "stopped": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
#: Errors that say "this request is wrong", which no retry will fix.
_PERMANENT_CODES = frozenset({"INVALID_PARAMETER_VALUE", "BAD_REQUEST", "RESOURCE_ALREADY_EXISTS", "INVALID_STATE"})
_BAD_KEY_CHARS = re.compile(r"[^\w./\- ]")

# (kind, source, ts in ms, step or None, data)
_Item = tuple[str, str, int, "int | None", dict[str, Any]]


def mlflow_key(name: str) -> str:
    """``name`` as a valid MLflow metric/param/tag key (letters, digits, ``_-./`` and space)."""
    key = _BAD_KEY_CHARS.sub("_", name).lstrip("/").replace("..", "_")
    return key[:_MAX_KEY] or "_"


def _is_permanent(exc: BaseException) -> bool:
    # retrying is for a tracker that is away; a refused value or a bug here would block the queue
    return getattr(exc, "error_code", None) in _PERMANENT_CODES or isinstance(exc, LookupError | TypeError)


class MlflowSink:
    """Bridges each run to an MLflow run: params, metrics in batches, alerts, end status."""

    def __init__(
        self,
        tracking_uri: str = "sqlite:///mlflow.db",
        experiment: str = "metricbus",
        kinds: Sequence[str] = ("metrics", "episode", "event", "alert"),
        max_buffer: int = 20_000,
        max_runs: int = 1_000,
        request_timeout: float = 10.0,
        retry_max: float = 30.0,
        close_timeout: float = 10.0,
    ) -> None:
        # Read by mlflow at each request: without these a server that is down holds one
        # request for minutes in urllib3's back-off, invisible to our counters.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(max(1, request_timeout))))
        from mlflow.entities import Metric, Param, RunTag  # heavy: only when this sink runs
        from mlflow.tracking import MlflowClient

        self._metric, self._param, self._tag = Metric, Param, RunTag
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.kinds = check_kinds(kinds, "mlflow")
        self.close_timeout = close_timeout
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self._max_runs = max(1, max_runs)
        self._experiment_id: str | None = None
        self._run_ids: OrderedDict[str, str] = OrderedDict()  # source -> MLflow run id (worker only)
        self._last_step: dict[str, int] = {}  # worker only
        self._queue: TrackerQueue[_Item] = TrackerQueue(
            f"mlflow {tracking_uri}", self._plan, permanent=_is_permanent, max_buffer=max_buffer, retry_max=retry_max
        )

    @property
    def stats(self) -> TrackerStats:
        return self._queue.stats

    @property
    def pending(self) -> int:
        return self._queue.pending

    # -- the bus's thread -----------------------------------------------------------------------

    def handle(self, batch: Sequence[Message]) -> None:
        kinds = self.kinds
        items: list[_Item] = []
        for m in tracked(batch, kinds):
            source = f"node-{mlflow_key(m.node)}" if m.kind == "system" else m.run
            if source is None:
                continue
            items.append((m.kind, source, int(m.ts * 1000), m.step, m.data))
        self._queue.put(items)

    def flush(self) -> None:
        pass  # the worker sends as soon as it can; nothing waits here on purpose

    def close(self) -> None:
        self._queue.close(self.close_timeout)

    # -- the worker thread ----------------------------------------------------------------------

    def _plan(self, items: list[_Item]) -> list[Call]:
        calls: list[Call] = []
        by_source: dict[str, list[_Item]] = {}
        for item in items:
            by_source.setdefault(item[1], []).append(item)
        for source, its in by_source.items():
            calls.append(Call(partial(self._run_id, source, its[0][2]), 0, f"run {source}"))
            calls.extend(self._plan_run(source, its))
        return calls

    def _plan_run(self, source: str, items: list[_Item]) -> list[Call]:
        calls: list[Call] = []
        metrics: list[Any] = []
        carried = 0  # messages whose values are in ``metrics``

        def send_metrics() -> None:
            nonlocal metrics, carried
            if not metrics and carried:  # messages with no number in them: delivered as nothing
                calls.append(Call(lambda: None, carried, "no numeric values"))
            for start in range(0, len(metrics), _MAX_METRICS):
                chunk = metrics[start : start + _MAX_METRICS]
                last = start + _MAX_METRICS >= len(metrics)
                calls.append(self._batch_call(source, carried if last else 0, "metrics", metrics=chunk))
            metrics, carried = [], 0

        for kind, _, ts, step, data in items:
            if step is None:
                step = self._last_step.get(source, 0)
            self._last_step[source] = step
            if kind in ("metrics", "system", "episode"):
                prefix = "episode/" if kind == "episode" else ""
                for key, raw in data.items():
                    value = numeric(raw)
                    if value is not None:
                        metrics.append(self._metric(mlflow_key(prefix + key), value, ts, step))
                carried += 1
            elif kind == "alert":
                rule = mlflow_key(f"alert/{data.get('rule', '?')}")
                state = str(data.get("state", ""))
                metrics.append(self._metric(rule, 1.0 if state == "firing" else 0.0, ts, step))
                text = f"{state} ({data.get('severity', '')}) at step {step}: {data.get('message', '')}"
                send_metrics()
                calls.append(self._batch_call(source, 1, "alert", tags=[self._tag(rule, text[:_MAX_VALUE])]))
            elif kind == "event":
                send_metrics()
                calls.extend(self._event_calls(source, ts, data))
        send_metrics()
        return calls

    def _event_calls(self, source: str, ts: int, data: dict[str, Any]) -> list[Call]:
        event = data.get("event")
        if event == "run_started":
            config = data.get("config")
            params = [
                self._param(mlflow_key(k), v[:_MAX_VALUE])
                for k, v in flatten(config if isinstance(config, dict) else {}).items()
            ]
            tags = [
                self._tag(mlflow_key(f"metricbus.{k}"), str(v)[:_MAX_VALUE])
                for k, v in data.items()
                if k not in ("event", "config")
            ]
            calls = [
                self._batch_call(source, 0, "params", params=params[i : i + _MAX_PARAMS_OR_TAGS])
                for i in range(0, len(params), _MAX_PARAMS_OR_TAGS)
            ]
            if tags:
                calls.append(self._batch_call(source, 0, "tags", tags=tags[:_MAX_PARAMS_OR_TAGS]))
            if calls:
                calls[-1].size = 1
            return calls or [Call(lambda: None, 1, "run_started")]
        if event == "run_ended":
            status = _STATUS.get(str(data.get("status")), "FINISHED")
            error = data.get("error")

            def end() -> None:
                run_id = self._run_id(source)
                if error:
                    self.client.set_tag(run_id, "metricbus.error", str(error)[:_MAX_VALUE])
                self.client.set_terminated(run_id, status, end_time=ts)

            return [Call(end, 1, "run_ended")]
        return [Call(lambda: None, 1, "event")]  # heartbeats: nothing for a tracker

    def _batch_call(self, source: str, size: int, what: str, **entities: Any) -> Call:
        def run() -> None:
            self.client.log_batch(self._run_id(source), synchronous=True, **entities)

        return Call(run, size, what)

    def _run_id(self, source: str, start_ms: int | None = None) -> str:
        """The MLflow run of ``source``: cached, else found by its tag, else created."""
        run_id = self._run_ids.get(source)
        if run_id is not None:
            self._run_ids.move_to_end(source)
            return run_id
        if self._experiment_id is None:
            experiment = self.client.get_experiment_by_name(self.experiment)
            self._experiment_id = (
                experiment.experiment_id if experiment is not None else self.client.create_experiment(self.experiment)
            )
        found = self.client.search_runs(
            [self._experiment_id], filter_string=f"tags.`metricbus.run` = '{source}'", max_results=1
        )
        if found:
            run_id = str(found[0].info.run_id)
        else:
            run_id = str(
                self.client.create_run(
                    self._experiment_id, start_time=start_ms, tags={"metricbus.run": source}, run_name=source
                ).info.run_id
            )
        self._run_ids[source] = run_id
        if len(self._run_ids) > self._max_runs:
            evicted, _ = self._run_ids.popitem(last=False)
            self._last_step.pop(evicted, None)
        return run_id

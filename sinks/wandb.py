"""Weights & Biases bridge: every bus run becomes a W&B run, offline by default.

Offline (the default) needs no account and no network: runs are written under
``<dir>/wandb/offline-run-*`` and ``wandb sync <dir>/wandb/offline-run-*`` uploads them
later. ``mode: online`` sends them as they come (``WANDB_API_KEY`` from the environment).

What goes where (run ``R`` → the W&B run with id and name ``R``, in ``project``):

- ``run_started``'s ``config`` → the run's config; its other fields → ``metricbus/<key>`` in
  the summary;
- ``metrics`` values → one history row per message, at x-axis ``bus/step`` (declared with
  ``define_metric``, so rows out of step order are kept, not refused as ``step=`` would) and
  with the message's own ``_timestamp``; ``episode`` values → ``episode/<key>``;
- ``alert`` → ``alert/<rule>`` (1 firing, 0 resolved) in the history and the alert's text
  in the summary;
- ``run_ended`` → ``metricbus/status`` (and ``metricbus/error``) in the summary and the run
  finished with exit code 0 (``completed``) or 1.

``wandb.init`` takes a second or more and starts a helper process, so all W&B calls run on
the worker thread of :mod:`sinks._tracker_queue`: the bus never waits on W&B, what cannot
be delivered is retried from a bounded buffer, and what does not fit is counted as dropped.
At most ``max_open_runs`` runs are open at once; the least recently active is finished
(and resumed under the same id if it speaks again).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from bus.message import Message
from sinks._scalars import check_kinds, numeric
from sinks._tracker_queue import Call, TrackerQueue, TrackerStats, tracked

log = logging.getLogger("metricbus.wandb")

STEP_METRIC = "bus/step"
_MODES = ("offline", "online", "disabled")
_STATUS_EXIT = {"completed": 0, "stopped": 0}  # a trial a scheduler stopped is no failure

# (kind, source, ts, step or None, data)
_Item = tuple[str, str, float, "int | None", dict[str, Any]]


def _is_permanent(exc: BaseException) -> bool:
    # a value W&B cannot take is wrong for good; anything else (network, service) may pass later
    return isinstance(exc, TypeError | ValueError)


class WandbSink:
    """Bridges each run to a W&B run (offline by default): config, history, alerts, exit code."""

    def __init__(
        self,
        dir: str = ".",
        project: str = "metricbus",
        entity: str | None = None,
        mode: str = "offline",
        kinds: Sequence[str] = ("metrics", "episode", "event", "alert"),
        max_buffer: int = 20_000,
        max_open_runs: int = 16,
        retry_max: float = 30.0,
        close_timeout: float = 30.0,
    ) -> None:
        if mode not in _MODES:
            raise ValueError(f"wandb: mode must be one of {', '.join(_MODES)}, got {mode!r}")
        import wandb  # heavy (and starts a helper process on init): only when this sink runs

        self._wandb = wandb
        self.dir = Path(dir)
        self.project = project
        self.entity = entity
        self.mode = mode
        self.kinds = check_kinds(kinds, "wandb")
        self.max_open_runs = max(1, max_open_runs)
        self.close_timeout = close_timeout
        self.dir.mkdir(parents=True, exist_ok=True)
        self._runs: OrderedDict[str, Any] = OrderedDict()  # source -> wandb Run (worker only)
        self._queue: TrackerQueue[_Item] = TrackerQueue(
            f"wandb {mode} {dir}", self._plan, permanent=_is_permanent, max_buffer=max_buffer, retry_max=retry_max
        )

    @property
    def stats(self) -> TrackerStats:
        return self._queue.stats

    @property
    def pending(self) -> int:
        return self._queue.pending

    # -- the bus's thread -------------------------------------------------------------------------

    def handle(self, batch: Sequence[Message]) -> None:
        kinds = self.kinds
        items: list[_Item] = []
        for m in tracked(batch, kinds):
            source = f"node-{m.node}" if m.kind == "system" else m.run
            if source is not None:
                items.append((m.kind, source, m.ts, m.step, m.data))
        self._queue.put(items)

    def flush(self) -> None:
        pass  # the worker sends as soon as it can; nothing waits here on purpose

    def close(self) -> None:
        self._queue.close(self.close_timeout)
        for source in list(self._runs):
            self._finish(source, 0)

    # -- the worker thread --------------------------------------------------------------------------

    def _plan(self, items: list[_Item]) -> list[Call]:
        return [Call(partial(self._deliver, item), 1, f"{item[0]} of {item[1]}") for item in items]

    def _deliver(self, item: _Item) -> None:
        kind, source, ts, step, data = item
        run = self._run(source, data if kind == "event" and data.get("event") == "run_started" else None)
        if kind in ("metrics", "system", "episode"):
            prefix = "episode/" if kind == "episode" else ""
            row: dict[str, Any] = {}
            for key, raw in data.items():
                value = numeric(raw)
                if value is not None:
                    row[prefix + key] = value
            if row:
                row[STEP_METRIC] = step if step is not None else 0
                row["_timestamp"] = ts
                run.log(row)
        elif kind == "alert":
            key = f"alert/{data.get('rule', '?')}"
            state = str(data.get("state", ""))
            run.log({key: 1.0 if state == "firing" else 0.0, STEP_METRIC: step or 0, "_timestamp": ts})
            run.summary[key] = f"{state} ({data.get('severity', '')}) at step {step}: {data.get('message', '')}"
        elif kind == "event" and data.get("event") == "run_ended":
            status = str(data.get("status", "completed"))
            run.summary["metricbus/status"] = status
            if data.get("error"):
                run.summary["metricbus/error"] = str(data["error"])[:2000]
            self._finish(source, _STATUS_EXIT.get(status, 1))

    def _run(self, source: str, started: dict[str, Any] | None) -> Any:
        run = self._runs.get(source)
        if run is not None:
            self._runs.move_to_end(source)
            if started is not None:
                self._started(run, started)
            return run
        if len(self._runs) >= self.max_open_runs:
            self._finish(next(iter(self._runs)), 0)
        wandb = self._wandb
        config = started.get("config") if started is not None else None
        run = wandb.init(
            config=config if isinstance(config, dict) else None,
            mode=self.mode,
            dir=str(self.dir),
            project=self.project,
            entity=self.entity,
            id=source,
            name=source,
            resume="allow",
            reinit="create_new",  # one process, many runs at once
            settings=wandb.Settings(console="off", silent=True, x_disable_stats=True, save_code=False),
        )
        run.define_metric("*", step_metric=STEP_METRIC)
        self._runs[source] = run
        if started is not None:
            self._started(run, {k: v for k, v in started.items() if k != "config"})
        return run

    def _started(self, run: Any, data: dict[str, Any]) -> None:
        config = data.get("config")
        if isinstance(config, dict):
            run.config.update(config, allow_val_change=True)
        for key, value in data.items():
            if key not in ("event", "config"):
                run.summary[f"metricbus/{key}"] = value

    def _finish(self, source: str, exit_code: int) -> None:
        run = self._runs.pop(source, None)
        if run is not None:
            try:
                run.finish(exit_code=exit_code)
            except Exception as exc:  # a run that will not finish is W&B's to recover; go on
                log.warning("wandb: finishing run %s failed: %r", source, exc)

"""PyTorch Lightning on the bus in one line:

    trainer = L.Trainer(logger=MetricbusLogger(run="mnist-1"), callbacks=[MetricbusGradients()])

:class:`MetricbusLogger` is a Lightning ``Logger``: what ``self.log(...)`` sends to any
logger (CSVLogger's ``metrics.csv`` rows) goes out as one ``metrics`` message at the step
Lightning gives, ``log_hyperparams`` becomes ``run_started`` (its ``config``), and
``finalize`` becomes ``run_ended`` (``success`` → ``completed``, ``failed`` → ``failed``,
or ``interrupted`` when the trainer was stopped with Ctrl-C).

:class:`MetricbusGradients` is a ``Callback`` that adds gradient health, with the same
statistics as :class:`publishers.torch.GradientMonitor` (:mod:`publishers.grad_stats`):
measured at the end of ``backward()``, so before Lightning's ``gradient_clip_val`` clips,
and published at the step the loss of that batch is logged at. It also tells the logger
which exception ended a run. It publishes through the trainer's ``MetricbusLogger``.

Only global rank 0 publishes (Lightning's ``rank_zero_only``), as its own loggers do.
Publishing errors are counted in ``errors`` and logged once; they never reach training.
"""

from __future__ import annotations

import logging
from argparse import Namespace
from collections.abc import Mapping
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers.logger import Logger
from lightning.pytorch.utilities import rank_zero_only

from bus.message import check_run_id
from bus.publisher import Publisher
from publishers._values import json_safe
from publishers.grad_stats import GradientTap
from publishers.torch import _plain

log = logging.getLogger("metricbus.lightning")

#: Lightning's finalize statuses → the bus's ``run_ended`` statuses.
_STATUS = {"success": "completed", "finished": "completed", "failed": "failed"}


class MetricbusLogger(Logger):
    """A Lightning logger that publishes to the metricbus broker.

    ``publisher`` is used as given (and not closed); otherwise one is made for ``run`` on
    ``endpoint`` (default: ``METRICBUS_ENDPOINT``, else the config's frontend) on first use.
    """

    def __init__(
        self,
        run: str | None = None,
        *,
        endpoint: str | None = None,
        publisher: Publisher | None = None,
    ) -> None:
        super().__init__()
        if publisher is None and run is None:
            raise ValueError("MetricbusLogger needs a run id (run=...) or a publisher")
        self._run = check_run_id(run) if run is not None else str(publisher.run if publisher else "")
        self._endpoint = endpoint
        self._publisher = publisher
        self._own_publisher = publisher is None
        self._started = False
        self._error: BaseException | None = None
        self.errors = 0

    # -- Logger's interface -----------------------------------------------------------------------

    @property
    def name(self) -> str:
        return "metricbus"

    @property
    def version(self) -> str:
        return self._run

    @property
    def publisher(self) -> Publisher:
        """The publisher, made on first use (so a logger made on every rank connects on rank 0 only)."""
        if self._publisher is None:
            self._publisher = Publisher(self._endpoint, run=self._run)
        return self._publisher

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
        config = vars(params) if isinstance(params, Namespace) else dict(params)
        self._start(config)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self._start({})
        self.publish("metrics", _plain(metrics), step)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        if not self._started:
            return
        error = self._error
        fields: dict[str, Any] = {"event": "run_ended", "status": _STATUS.get(status, status)}
        if isinstance(error, KeyboardInterrupt):
            fields["status"] = "interrupted"
        elif error is not None:
            fields["status"] = "failed"
            fields["error"] = f"{type(error).__name__}: {error}"[:2000]
        self.publish("event", fields)
        self._started = False  # fit, then test: each is a run_started … run_ended of its own
        self._error = None
        try:
            if self._own_publisher and self._publisher is not None:
                self._publisher.close()
                self._publisher = None
            elif self._publisher is not None:
                self._publisher.flush()
        except Exception as exc:
            self._failed(exc)

    # -- used by MetricbusGradients ----------------------------------------------------------------

    def publish(self, kind: str, data: Mapping[str, Any], step: int | None = None) -> None:
        """Publish on the training thread without ever raising into it."""
        try:
            self.publisher.publish(kind, data, step)
        except Exception as exc:
            self._failed(exc)

    def failed_with(self, error: BaseException) -> None:
        """Remember why the run is ending, for ``finalize``'s ``run_ended``."""
        self._error = error

    def _start(self, config: dict[str, Any]) -> None:
        if self._started:
            return
        self._started = True
        self.publish("event", {"event": "run_started", "config": json_safe(config), "framework": "lightning"})

    def _failed(self, exc: BaseException) -> None:
        self.errors += 1
        if self.errors == 1:
            log.warning("metricbus: publishing failed (counted, training goes on): %r", exc)


class MetricbusGradients(Callback):
    """Gradient health (pre-clipping) of the module every ``every`` optimizer steps."""

    def __init__(self, every: int = 10, update_ratio: bool = True) -> None:
        self.every = every
        self.update_ratio = update_ratio
        self._tap: GradientTap | None = None
        self._logger: MetricbusLogger | None = None
        self._trainer: Trainer | None = None

    @property
    def emitted(self) -> int:
        return self._tap.emitted if self._tap is not None else 0

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        loggers = [lg for lg in trainer.loggers if isinstance(lg, MetricbusLogger)]
        if not loggers:
            raise ValueError("MetricbusGradients publishes through a MetricbusLogger: add one to Trainer(logger=...)")
        self._logger = loggers[0]
        self._trainer = trainer
        if trainer.global_rank != 0:
            return
        self._tap = GradientTap(
            _optimizer_groups(pl_module, trainer.optimizers),
            self._emit,
            every=self.every,
            update_ratio=self.update_ratio,
        )

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._detach()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._detach()
        for lg in trainer.loggers:
            if isinstance(lg, MetricbusLogger):
                lg.failed_with(exception)

    def _emit(self, metrics: dict[str, float]) -> None:
        # Called from the optimizer's step hook, before Lightning counts the step: the
        # global step is the one this batch's self.log values are logged at.
        assert self._logger is not None and self._trainer is not None
        self._logger.publish("metrics", metrics, self._trainer.global_step)

    def _detach(self) -> None:
        if self._tap is not None:
            self._tap.remove()
            self._tap = None


def _optimizer_groups(
    module: torch.nn.Module, optimizers: list[torch.optim.Optimizer]
) -> list[tuple[str, list[tuple[str, torch.nn.Parameter]], torch.optim.Optimizer]]:
    """(prefix, named parameters, optimizer) per optimizer; one optimizer keeps the plain names."""
    names = {id(p): n for n, p in module.named_parameters()}
    groups = []
    for i, opt in enumerate(optimizers):
        params = [(names[id(p)], p) for g in opt.param_groups for p in g["params"] if id(p) in names]
        groups.append((f"opt{i}/" if len(optimizers) > 1 else "", params, opt))
    return groups

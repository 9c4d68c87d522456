"""The Hugging Face ``Trainer`` on the bus in one line:

    trainer = Trainer(model, args, ..., callbacks=[MetricbusHFCallback(run="bert-sst2-1")])

Every dict the Trainer logs (what ``trainer.state.log_history`` records: loss, learning
rate, grad norm, epoch, eval metrics, the final train summary) goes out as one ``metrics``
message at its ``global_step``, with names as Hugging Face's own W&B and Comet callbacks
write them: ``eval_loss`` → ``eval/loss``, ``test_…`` → ``test/…``, anything else →
``train/<name>`` (``train/loss``, ``train/learning_rate``, ``train/grad_norm``).

``run_started`` carries the training arguments (``TrainingArguments.to_sanitized_dict()``)
and the model's class; ``on_train_end`` sends ``run_ended`` ``completed``. The Trainer
has no hook for an exception, so ``with callback.guard(): trainer.train()`` reports a
failed (or Ctrl-C interrupted) run too. Only the world's process zero publishes.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from bus.message import check_run_id
from bus.publisher import Publisher
from publishers._values import json_safe

log = logging.getLogger("metricbus.huggingface")


def metric_name(key: str) -> str:
    """Hugging Face's log key as a bus metric name (the convention of its W&B callback)."""
    for prefix in ("eval", "test"):
        if key.startswith(prefix + "_"):
            return f"{prefix}/{key[len(prefix) + 1 :]}"
    return f"train/{key}"


class MetricbusHFCallback(TrainerCallback):
    """Publishes a ``transformers.Trainer``'s logs, arguments and end status.

    ``publisher`` is used as given (and not closed); otherwise one is made for ``run``
    (default: the Trainer's ``run_name``) on ``endpoint`` when training begins.
    """

    def __init__(
        self, run: str | None = None, *, endpoint: str | None = None, publisher: Publisher | None = None
    ) -> None:
        self.run = check_run_id(run) if run is not None else None
        self.endpoint = endpoint
        self.publisher = publisher
        self._own_publisher = publisher is None
        self._names: dict[str, str] = {}  # bounded by the Trainer's own set of log keys
        self._running = False
        self.errors = 0

    # -- TrainerCallback ----------------------------------------------------------------------------

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if not state.is_world_process_zero:
            return
        try:
            if self.publisher is None:
                self.publisher = Publisher(self.endpoint, run=self.run or _run_id(args))
            config = dict(args.to_sanitized_dict())
            model = kwargs.get("model")
            if model is not None:
                config["model"] = type(model).__name__
            self._running = True
            self._publish("event", {"event": "run_started", "config": json_safe(config), "framework": "transformers"})
        except Exception as exc:
            self._failed(exc)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if not state.is_world_process_zero or not logs or self.publisher is None:
            return
        names = self._names
        data = {}
        for key, value in logs.items():
            name = names.get(key)
            if name is None:
                name = names[key] = metric_name(key)
            data[name] = json_safe(value)
        self._publish("metrics", data, state.global_step)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if state.is_world_process_zero:
            self._end({"event": "run_ended", "status": "completed"}, state.global_step)

    # -- failures -------------------------------------------------------------------------------------

    @contextmanager
    def guard(self) -> Iterator[None]:
        """Wrap ``trainer.train()`` so that an exception ends the run as failed (or interrupted)."""
        try:
            yield
        except KeyboardInterrupt:
            self._end({"event": "run_ended", "status": "interrupted"})
            raise
        except Exception as exc:
            self._end({"event": "run_ended", "status": "failed", "error": f"{type(exc).__name__}: {exc}"[:2000]})
            raise

    def _end(self, fields: dict[str, Any], step: int | None = None) -> None:
        if not self._running:
            return
        self._running = False
        self._publish("event", fields, step)
        try:
            if self.publisher is not None:
                if self._own_publisher:
                    self.publisher.close()
                    self.publisher = None
                else:
                    self.publisher.flush()
        except Exception as exc:
            self._failed(exc)

    def _publish(self, kind: str, data: Mapping[str, Any], step: int | None = None) -> None:
        try:
            if self.publisher is not None:
                self.publisher.publish(kind, data, step)
        except Exception as exc:
            self._failed(exc)

    def _failed(self, exc: BaseException) -> None:
        self.errors += 1
        if self.errors == 1:
            log.warning("metricbus: publishing failed (counted, training goes on): %r", exc)


def _run_id(args: TrainingArguments) -> str:
    raw = str(getattr(args, "run_name", None) or f"hf-{time.strftime('%Y%m%d-%H%M%S')}")
    return re.sub(r"[^A-Za-z0-9._-]", "-", raw)[:128]

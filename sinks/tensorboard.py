"""TensorBoard bridge: event files per run, one scalar for every numeric value.

``tensorboard --logdir <logdir>`` then shows the same training as the dashboard. Layout:
``<logdir>/<run>/events.out.tfevents.*`` for run-scoped messages and
``<logdir>/_nodes/<node>/…`` for node-scoped ones (``system``), so TensorBoard lists each
run (and node) as its own line. Tags are the metric names as published (``train/loss``);
an episode's values are tagged ``episode/<key>`` so they do not collide with a metric of
the same name. Values are written with the message's step and wall time.

The writer is tensorboardX's ``FileWriter`` (maintained, no torch needed), imported in
``__init__`` so that ``metricbus check`` on a JSONL-only install never imports it. One
event per message carries all of its scalars (one protobuf, one record), which is several
times cheaper than one ``add_scalar`` call per value.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bus.bounded import Recent
from bus.message import Message
from sinks._scalars import check_kinds, numeric
from sinks.jsonl_files import NODES_DIR, safe_name

log = logging.getLogger("metricbus.tensorboard")
#: A failing message is logged at most this often, with a count.
_REPORT_INTERVAL = 10.0

#: Tag prefix per kind; metrics and system names already carry their own prefixes.
_TAG_PREFIX = {"metrics": "", "episode": "episode/", "system": "", "alert": "alert/", "event": "event/"}


class TensorBoardSink:
    """Writes every numeric value of ``kinds`` messages as a TensorBoard scalar."""

    def __init__(
        self,
        logdir: str = "tensorboard",
        kinds: Sequence[str] = ("metrics", "episode", "system"),
        max_open_writers: int = 64,
        flush_secs: float = 5.0,
    ) -> None:
        from tensorboardX import FileWriter  # heavy (numpy, protobuf): only when this sink runs
        from tensorboardX.proto.summary_pb2 import Summary

        self._file_writer = FileWriter
        self._summary = Summary
        self.logdir = Path(logdir)
        self.kinds = check_kinds(kinds, "tensorboard")
        self.max_open_writers = max(1, max_open_writers)
        self.flush_secs = flush_secs
        self.scalars_written = 0
        self.messages_failed = 0
        self._reported = -1e9
        # LRU of open writers: each holds a file and a thread, so a bus with hundreds of runs
        # keeps only the recently active ones open; a reopened run gets a new event file in
        # the same directory, which TensorBoard reads together with the old one.
        self._writers: OrderedDict[Path, Any] = OrderedDict()
        self._last_step: Recent[Path, int] = Recent(16 * self.max_open_writers)
        self._opened = 0
        self._directories: dict[tuple[str | None, str], Path] = {}
        self.logdir.mkdir(parents=True, exist_ok=True)

    def handle(self, batch: Sequence[Message]) -> None:
        Value = self._summary.Value
        for message in batch:
            if message.kind not in self.kinds:
                continue
            prefix = _TAG_PREFIX.get(message.kind, f"{message.kind}/")
            values = []
            for key, raw in message.data.items():
                value = numeric(raw)
                if value is not None:
                    values.append(Value(tag=prefix + key, simple_value=value))
            if not values:
                continue
            try:
                self._write(message, values)
            except Exception as exc:  # one message must not cost the rest of the batch (other runs)
                self._failed(exc)

    def _write(self, message: Message, values: list[Any]) -> None:
        where = self._directory(message)
        # A message without a step (a node's system sample) is drawn at the last step seen
        # in that directory, so TensorBoard's step axis stays monotone.
        step = message.step if message.step is not None else self._last_step.get(where) or 0
        self._last_step.put(where, step)
        self._writer(where).add_summary(self._summary(value=values), step, message.ts)
        self.scalars_written += len(values)

    def _failed(self, exc: Exception) -> None:
        self.messages_failed += 1
        now = time.monotonic()
        if now - self._reported >= _REPORT_INTERVAL:
            self._reported = now
            log.error(
                "tensorboard: a message failed (%s: %s); %d so far", type(exc).__name__, exc, self.messages_failed
            )

    def stats(self) -> dict[str, int]:
        """Counters and the sizes of the per-name state (logged by the runner when it stops)."""
        return {
            "scalars_written": self.scalars_written,
            "messages_failed": self.messages_failed,
            "open_writers": len(self._writers),
            "directories": len(self._directories),
        }

    def flush(self) -> None:
        for writer in self._writers.values():
            writer.flush()

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()

    def _directory(self, message: Message) -> Path:
        by_run = not message.of_node
        key = (message.run, "") if by_run else (None, message.node)
        where = self._directories.get(key)
        if where is None:  # cached: building a Path per message costs more than the scalars
            if len(self._directories) > 16 * self.max_open_writers:
                self._directories.clear()
            if by_run:
                where = self.logdir / safe_name(str(message.run))
            else:
                where = self.logdir / NODES_DIR / safe_name(message.node)
            self._directories[key] = where
        return where

    def _writer(self, where: Path) -> Any:
        writer = self._writers.get(where)
        if writer is not None:
            self._writers.move_to_end(where)
            return writer
        if len(self._writers) >= self.max_open_writers:
            _, oldest = self._writers.popitem(last=False)
            oldest.close()
        # Event files are named by the second they are opened in and the host; the suffix keeps
        # a reopened (or restarted) writer from truncating a file opened in the same second.
        self._opened += 1
        writer = self._writers[where] = self._file_writer(
            str(where),
            max_queue=1000,
            flush_secs=max(1, math.ceil(self.flush_secs)),
            filename_suffix=f".{os.getpid()}.{self._opened}",
        )
        return writer

"""One run for all ranks of a ``torchrun`` / DDP job: rank discovery and the shared run id.

    job = DistributedRun("resnet-ddp-1", per_rank=True)   # on every rank, after init_process_group
    job.metrics({"train/loss": loss}, step)             # rank 0 only (the others' call is a no-op)
    job.rank_metrics({"time/steps_per_s": sps}, step)   # every rank, as rank/<r>/time/steps_per_s
    job.close()                                         # rank 0: run_ended, once per job

Ranks come from ``torch.distributed`` when a process group is up, else from the variables
torchrun sets (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``); without either it is one process.
The run id all ranks share is, in order: the ``run`` argument (the same on every rank),
``METRICBUS_RUN``, rank 0's choice agreed through one ``all_gather_object`` (which also
collects each rank's host for ``run_started``), or torchrun's ``TORCHELASTIC_RUN_ID``.
Rank 0 alone publishes ``run_started``/``run_ended`` and the training metrics, so the run
has one lifecycle however many ranks it has. Every rank's node name is its host.

A SIGTERM to rank 0 — what torchrun's agent sends every rank when the job is stopped or a
rank failed, and what Slurm or Kubernetes send — ends the run ``interrupted`` (with
``signal: SIGTERM``) before the signal takes its course (``publishers.signals``): the
process still dies by it, or runs the handler that was installed before.

This module imports torch only if the process already has (a DDP job always has), so the
rank discovery is usable from any launcher without the ``sb3`` extra.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from bus.message import check_run_id, default_node
from bus.publisher import Publisher
from publishers.signals import OnSignal, interrupted_inside

log = logging.getLogger("metricbus.distributed")

#: Set to the same value on every rank (e.g. by the launch script) to name the job's run.
RUN_ENV = "METRICBUS_RUN"
#: Where a signal handler must not re-enter a publisher: its code holds the socket's lock.
_PUBLISHER_CODE = Publisher.publish.__code__.co_filename


@dataclass(frozen=True)
class RankInfo:
    """Where this process sits in its job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    node: str = ""

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def discover(node: str | None = None) -> RankInfo:
    """This process's rank and world size: ``torch.distributed`` if initialised, else torchrun's variables."""
    host = node or default_node()  # the hostname as the wire's node rule allows it
    local_rank = _env_int("LOCAL_RANK", 0)
    dist = _torch_distributed()
    if dist is not None:
        return RankInfo(dist.get_rank(), dist.get_world_size(), local_rank, host)
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is outside WORLD_SIZE={world}")
    return RankInfo(rank, world, local_rank, host)


def agree_on_run(me: RankInfo, run: str | None = None) -> tuple[str, list[RankInfo]]:
    """The job's run id and every rank's :class:`RankInfo` (only this one's without a process group).

    A collective when a process group is up: every rank must call it, at the same point.
    """
    chosen = run or os.environ.get(RUN_ENV) or None
    dist = _torch_distributed()
    if dist is not None and me.world_size > 1:
        proposal = chosen or _new_run_id()
        gathered: list[Any] = [None] * me.world_size
        dist.all_gather_object(gathered, (asdict(me), proposal))
        ranks = [RankInfo(**info) for info, _ in gathered]
        return check_run_id(gathered[0][1]), ranks
    if chosen is None:
        elastic = os.environ.get("TORCHELASTIC_RUN_ID", "none")
        if me.world_size > 1 and elastic == "none":
            raise ValueError(
                f"rank {me.rank} of {me.world_size}: the ranks cannot agree on a run id; pass run=..., "
                f"set {RUN_ENV}, or create the monitor after torch.distributed.init_process_group()"
            )
        chosen = f"ddp-{elastic}" if me.world_size > 1 else _new_run_id()
    return check_run_id(_sanitise(chosen)), [me]


class DistributedRun:
    """A publisher for one rank of a job whose ranks share one run.

    Rank 0 always has a publisher; the other ranks have one only with ``per_rank`` (else
    they open no socket at all). ``config`` goes into ``run_started`` next to the world size
    and the ranks. ``close(status, error)`` ends the run on rank 0; on another rank a
    failure is published as a ``rank_failed`` event, since the job's end is rank 0's to say.
    On rank 0, ``signals`` (SIGTERM) end the run ``interrupted`` at ``step``, after
    ``before_signal_end`` (the owner's held messages), then take their course.
    """

    def __init__(
        self,
        run: str | None = None,
        *,
        endpoint: str | None = None,
        per_rank: bool = False,
        config: Mapping[str, Any] | None = None,
        node: str | None = None,
        start: bool = True,
        signals: Iterable[int] = (signal.SIGTERM,),
    ) -> None:
        self.me = discover(node)
        self.run, ranks = agree_on_run(self.me, run)
        self.endpoint = endpoint
        self.per_rank = per_rank
        self.prefix = f"rank/{self.me.rank}/"
        self.errors = 0
        self.publisher: Publisher | None = None
        #: the training's latest step, set by the owner (``GradientMonitor.log``): a signal's run_ended carries it
        self.step: int | None = None
        self.before_signal_end: Callable[[], None] | None = None
        self._closed = False
        self._ended = False  # run_ended sent (by a signal's handler, through another publisher)
        self._on_signal: OnSignal | None = None
        if self.me.is_main or per_rank:
            self.publisher = Publisher(endpoint, run=self.run, node=self.me.node)
        if self.me.is_main and signals:
            self._on_signal = OnSignal(self._signalled, signals)
        if start and self.me.is_main:
            info = {
                "world_size": self.me.world_size,
                "ranks": [asdict(r) for r in ranks],
                "nodes": sorted({r.node for r in ranks}),
            }
            self._publish("event", {"event": "run_started", "config": {**info, **(config or {})}})

    def metrics(self, data: Mapping[str, Any], step: int | None = None) -> None:
        """The training's own metrics: published by rank 0, ignored on the others."""
        if self.me.is_main:
            self._publish("metrics", data, step)

    def rank_metrics(self, data: Mapping[str, Any], step: int | None = None) -> None:
        """This rank's own statistics as ``rank/<r>/<name>``; only with ``per_rank``."""
        if self.per_rank:
            prefix = self.prefix
            self._publish("metrics", {prefix + k: v for k, v in data.items()}, step)

    def close(
        self,
        status: str = "completed",
        error: BaseException | None = None,
        step: int | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        if self._closed:
            return
        self._closed = True
        if self._on_signal is not None:
            self._on_signal.restore()
        if self.me.is_main and not self._ended:
            self._ended = True
            fields: dict[str, Any] = {"event": "run_ended", "status": status, **(extra or {})}
            if error is not None and status == "failed":
                fields["error"] = f"rank 0: {type(error).__name__}: {error}"
            self._publish("event", fields, step)
        elif error is not None:
            self._publish("event", {"event": "rank_failed", "rank": self.me.rank, "error": repr(error)}, step)
        if self.publisher is not None:
            self.publisher.close()

    def _signalled(self, signum: int, frame: Any) -> None:
        if self._closed or self._ended:
            return
        extra = {"signal": signal.Signals(signum).name}
        if not interrupted_inside(frame, _PUBLISHER_CODE):
            if self.before_signal_end is not None:
                self.before_signal_end()
            self.close("interrupted", step=self.step, extra=extra)
            return
        # The signal stopped this thread inside the publisher, holding its lock: a new one says it
        self._ended = True
        with Publisher(self.endpoint, run=self.run, node=self.me.node, connect_timeout=1.0, linger=1.0) as last:
            last.event("run_ended", self.step, status="interrupted", **extra)

    def _publish(self, kind: str, data: Mapping[str, Any], step: int | None = None) -> None:
        if self.publisher is None:
            return
        try:
            self.publisher.publish(kind, data, step)
        except Exception as exc:  # a broken bus never stops training
            self.errors += 1
            if self.errors == 1:
                log.warning("publishing failed (counted, training goes on): %r", exc)


class Throughput:
    """Steps per second between two readings (a rank that straggles shows a lower figure)."""

    def __init__(self, clock: Any = time.perf_counter) -> None:
        self._clock = clock
        self._last: tuple[float, int] | None = None

    def read(self, step: int | None) -> dict[str, float]:
        now = self._clock()
        last, self._last = self._last, (now, step or 0)
        if last is None or step is None or step <= last[1] or now <= last[0]:
            return {}
        seconds = (now - last[0]) / (step - last[1])
        return {"time/steps_per_s": 1.0 / seconds, "time/step_ms": seconds * 1e3}


def status_of(exc: BaseException | None) -> str:
    """``run_ended`` status for how a ``with`` block ended."""
    if exc is None:
        return "completed"
    return "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"


def _torch_distributed() -> Any:
    if "torch" not in sys.modules:  # never import torch for a job that does not use it
        return None
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None


def _new_run_id() -> str:
    return f"ddp-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def _sanitise(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)[:128] or "run"

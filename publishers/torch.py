"""Gradient health and scalars from a plain PyTorch training loop.

    monitor = GradientMonitor(model, optimizer, run="mlp-1", every=10)
    for step, (x, y) in enumerate(loader):
        loss = loss_fn(model(x), y)
        optimizer.zero_grad(); loss.backward(); optimizer.step()
        monitor.log(step, **{"train/loss": loss})
    monitor.close()

Every ``every``-th optimizer step (or backward pass, without an optimizer) publishes
``grad/global_norm`` (before any clipping the loop does), ``grad/layer/<module>/norm``,
``grad/zeros_ratio``, ``grad/nonfinite`` and, with an optimizer, ``weight/update_ratio``.

Under ``torchrun`` (DDP) every rank makes the same monitor; they share one run (see
``publishers.distributed``). Rank 0 publishes ``log()`` scalars and the gradient statistics,
plus ``run_started`` (world size, ranks, hosts) and ``run_ended``; with ``per_rank=True`` every
rank adds its own ``rank/<r>/grad/global_norm``, ``…/grad/nonfinite``, ``…/grad/zeros_ratio``
and ``rank/<r>/time/steps_per_s`` at each measured step, so a straggler or a rank whose
gradients go NaN shows up. The statistics are taken at the end of ``backward()``, before DDP
has written the averaged gradients back: each rank measures its own local gradients. A
SIGTERM to rank 0 (torchrun's agent, a scheduler) sends what is held and ``run_ended``
``interrupted``, then lets the signal stop the process (``publishers.distributed``).

Messages go out in bursts (``publishers.burst``: 32 messages or 0.5 s, and at ``flush()``
or ``close()``): each with its exact step, its ``ts`` when the burst was sent.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch

from bus.publisher import Publisher
from publishers.burst import Burst
from publishers.distributed import DistributedRun, Throughput, status_of
from publishers.grad_stats import GradientTap

log = logging.getLogger("metricbus.torch")


class GradientMonitor:
    """Attaches to ``model`` (and ``optimizer``) and publishes gradient statistics.

    ``publisher`` is used as given (and not closed, no lifecycle events); otherwise the
    monitor owns the run: ``run`` (else ``METRICBUS_RUN``, else agreed between the ranks) on
    ``endpoint`` (default: ``METRICBUS_ENDPOINT``, else the config's frontend), with
    ``run_started`` now and ``run_ended`` at ``close()`` — once per job, from rank 0.
    """

    #: the per-rank subset of the gradient statistics (per-layer norms stay with rank 0)
    RANK_KEYS = ("grad/global_norm", "grad/nonfinite", "grad/zeros_ratio")

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        run: str | None = None,
        endpoint: str | None = None,
        publisher: Publisher | None = None,
        every: int = 10,
        update_ratio: bool = True,
        per_rank: bool = False,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        self.job: DistributedRun | None = None
        if publisher is None:
            self.job = DistributedRun(run, endpoint=endpoint, per_rank=per_rank, config=config)
        self.publisher = publisher if publisher is not None else self.job.publisher  # type: ignore[union-attr]
        self.is_main = self.job is None or self.job.me.is_main
        self.per_rank = per_rank and self.job is not None
        self.step: int | None = None
        self.errors = 0
        self._throughput = Throughput()
        self._burst = Burst(self._send)
        if self.job is not None:
            self.job.before_signal_end = self._burst.flush  # SIGTERM: what is held goes out before run_ended
        self._tap: GradientTap | None = None
        if self.is_main or self.per_rank:  # a silent rank pays nothing: no hooks at all
            self._tap = GradientTap(
                [("", model.named_parameters(), optimizer)],
                self._publish_grads,
                every=every,
                # the other ranks publish RANK_KEYS only: no copy of the weights for them
                update_ratio=update_ratio and self.is_main,
            )

    @property
    def emitted(self) -> int:
        """How many gradient-statistics messages were published."""
        return self._tap.emitted if self._tap is not None else 0

    def log(self, step: int, /, **scalars: Any) -> None:
        """Publish the user's own scalars (loss, lr …) at ``step``; tensors become numbers.

        Also sets the step that the next gradient statistics are published at.
        """
        self.step = step
        if self.job is not None:
            self.job.step = step
        if not self.is_main or self.publisher is None:
            return  # rank 0 speaks for the job
        try:
            self._burst.add("metrics", _plain(scalars), step)
        except Exception as exc:
            self._failed(exc)

    def flush(self) -> None:
        """Send what is held for the next burst now (``close()`` does)."""
        self._burst.flush()

    def close(self, error: BaseException | None = None) -> None:
        """Detach the hooks; end the run (``failed`` with ``error``) if this monitor made it."""
        if self._tap is not None:
            self._tap.remove()
        self._burst.flush()
        if self.job is not None:
            self.job.close(status_of(error), error, self.step)

    def __enter__(self) -> GradientMonitor:
        return self

    def __exit__(self, _type: object, error: BaseException | None, _tb: object) -> None:
        self.close(error)

    def _publish_grads(self, metrics: dict[str, float]) -> None:
        try:
            if self.is_main:
                self._burst.add("metrics", metrics, self.step)
            if self.per_rank and self.job is not None:
                mine = {k: metrics[k] for k in self.RANK_KEYS if k in metrics}
                prefix = self.job.prefix
                ranked = {prefix + k: v for k, v in {**mine, **self._throughput.read(self.step)}.items()}
                self._burst.add("metrics", ranked, self.step)
        except Exception as exc:
            self._failed(exc)

    def _send(self, kind: str, data: Mapping[str, Any], step: int | None) -> None:
        if self.publisher is None:
            return
        try:
            self.publisher.publish(kind, data, step)
        except Exception as exc:
            self._failed(exc)

    def _failed(self, exc: Exception) -> None:
        self.errors += 1
        if self.errors == 1:
            log.warning("publishing failed (counted, training goes on): %r", exc)


def _plain(scalars: Mapping[str, Any]) -> dict[str, Any]:
    # one host transfer for all tensor values instead of one .item() each
    tensors = [(k, v) for k, v in scalars.items() if isinstance(v, torch.Tensor)]
    if not tensors:
        return dict(scalars)
    out = dict(scalars)
    if len(tensors) == 1:  # the usual loss alone: .item() is 0.2 µs, stack + tolist 8 µs
        key, tensor = tensors[0]
        out[key] = tensor.detach().reshape(()).item()
        return out
    flat = torch.stack([v.detach().reshape(()).to(torch.float64) for _, v in tensors]).tolist()
    for (key, _), value in zip(tensors, flat, strict=True):
        out[key] = value
    return out

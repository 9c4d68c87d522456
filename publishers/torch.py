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
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch

from bus.publisher import Publisher
from publishers.grad_stats import GradientTap

log = logging.getLogger("metricbus.torch")


class GradientMonitor:
    """Attaches to ``model`` (and ``optimizer``) and publishes gradient statistics.

    ``publisher`` is used as given (and not closed); otherwise one is made for ``run`` on
    ``endpoint`` (default: ``METRICBUS_ENDPOINT``, else the config's frontend).
    """

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
    ) -> None:
        if publisher is None and run is None:
            raise ValueError("GradientMonitor needs a run id (run=...) or a publisher")
        self._own_publisher = publisher is None
        self.publisher = publisher if publisher is not None else Publisher(endpoint, run=run)
        self.step: int | None = None
        self.errors = 0
        self._tap = GradientTap(
            [("", model.named_parameters(), optimizer)],
            self._publish_grads,
            every=every,
            update_ratio=update_ratio,
        )

    @property
    def emitted(self) -> int:
        """How many gradient-statistics messages were published."""
        return self._tap.emitted

    def log(self, step: int, /, **scalars: Any) -> None:
        """Publish the user's own scalars (loss, lr …) at ``step``; tensors become numbers.

        Also sets the step that the next gradient statistics are published at.
        """
        self.step = step
        try:
            self.publisher.metrics(_plain(scalars), step)
        except Exception as exc:
            self._failed(exc)

    def close(self) -> None:
        """Detach the hooks, and close the publisher if this monitor made it."""
        self._tap.remove()
        if self._own_publisher:
            self.publisher.close()

    def __enter__(self) -> GradientMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _publish_grads(self, metrics: dict[str, float]) -> None:
        try:
            self.publisher.metrics(metrics, self.step)
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
    flat = torch.stack([v.detach().reshape(()).to(torch.float64) for _, v in tensors]).tolist()
    for (key, _), value in zip(tensors, flat, strict=True):
        out[key] = value
    return out

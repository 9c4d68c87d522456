"""Gradient health taken where the gradients exist: at the end of ``backward()``.

Why there and not at ``optimizer.step()``: SB3's PPO, A2C and DQN clip the gradients
between the two (``clip_grad_norm_``) and throw the norm away, so a step hook would only
ever see clipped gradients. A post-accumulate-grad hook on each parameter fires during
backward; the first one of a pass queues an autograd *end of pass* callback (the hook
PyTorch's own DDP and FSDP use), and that callback sees every ``.grad`` complete and
not yet clipped. The statistics stay on the device until the optimizer step that
consumes them, then cross to the host in one ``tolist()``: one transfer per publish.

Only every ``every``-th update is measured; the others cost one Python call per
parameter and a counter.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.autograd import Variable

log = logging.getLogger("metricbus.grad")

Emit = Callable[[dict[str, float]], None]


def _cpu_counts(grads: list[torch.Tensor]) -> torch.Tensor:
    """``[‖g‖₂…, nonzeros…, nonfinite…]`` as :meth:`GradientStats.compute` gives them, for CPU tensors."""
    norms = torch.stack(torch._foreach_norm(grads)).to(torch.float64)
    # count_nonzero counts what a norm of order 0 counts (-0.0 is zero, NaN is not), exactly
    nonzeros = torch.stack([torch.count_nonzero(g) for g in grads]).to(torch.float64)
    nonfinite = torch.zeros(len(grads), dtype=torch.float64)
    if not bool(torch.isfinite(norms).all()):  # NaN or Inf somewhere: count them where the norm says
        for i in torch.nonzero(~torch.isfinite(norms)).flatten().tolist():
            nonfinite[i] = torch.count_nonzero(~torch.isfinite(grads[i])).to(torch.float64)
    return torch.cat([norms, nonzeros, nonfinite])


def _layer_of(param_name: str) -> str:
    # weight and bias of one module are one layer to a reader of a dashboard
    return param_name.rsplit(".", 1)[0] if "." in param_name else param_name


@dataclass(frozen=True)
class Measured:
    """Per-parameter numbers still on the device: ``[‖g‖₂…, nonzeros…, nonfinite…]``."""

    values: torch.Tensor
    present: tuple[int, ...]  # which of the monitored parameters had a gradient


class GradientStats:
    """Computes the statistics of a fixed set of named parameters' gradients.

    ``prefix`` goes after ``grad/`` and ``weight/`` in the global names (``""`` gives
    ``grad/global_norm``; ``"actor/"`` gives ``grad/actor/global_norm``); layer names are
    the module paths, so they are unique already.

    On an accelerator it runs a handful of ``torch._foreach_*`` kernels over all parameters
    at once (a norm of order 0 counts non-zeros, and ``g − g`` is 0 exactly where ``g`` is
    finite), and nothing crosses to the host until :meth:`to_metrics`. On a CPU the numbers
    are at hand with no transfer to wait for, so :meth:`compute` does less instead: the 2-norm
    (vectorised), ``count_nonzero`` (twice as fast as a norm of order 0), and the non-finite
    count only for a gradient whose norm is not finite — a finite ‖g‖₂ means no NaN or Inf in
    ``g`` (measured on a 1M-parameter MLP: 0.7 ms instead of 2.7 ms). Same numbers either way.
    The per-layer sums and ratios are done on the host, after the one transfer.
    """

    def __init__(self, named_params: Iterable[tuple[str, torch.nn.Parameter]], prefix: str = "") -> None:
        self.params: list[tuple[str, torch.nn.Parameter]] = [(n, p) for n, p in named_params if p.requires_grad]
        if not self.params:
            raise ValueError("no parameters that require gradients to monitor")
        self.prefix = prefix
        layers: list[str] = []
        self._layer_index: list[int] = []
        for name, _ in self.params:
            layer = _layer_of(name)
            if layer not in layers:
                layers.append(layer)
            self._layer_index.append(layers.index(layer))
        self.layers = layers
        self._numel = [p.numel() for _, p in self.params]

    # -- on the device ------------------------------------------------------------------------

    def compute(self) -> Measured | None:
        """The gradients' numbers, not yet transferred; None when no parameter has a gradient."""
        present = tuple(i for i, (_, p) in enumerate(self.params) if p.grad is not None)
        if not present:
            return None
        grads = [self.params[i][1].grad.detach() for i in present]  # type: ignore[union-attr]
        with torch.no_grad():
            if all(g.device.type == "cpu" for g in grads):
                return Measured(_cpu_counts(grads), present)
            norms = torch._foreach_norm(grads)
            nonzeros = torch._foreach_norm(grads, 0)
            nonfinite = torch._foreach_norm(torch._foreach_sub(grads, grads), 0)
            values = torch.stack([*norms, *nonzeros, *nonfinite])
        return Measured(values, present)

    def snapshot(self) -> list[torch.Tensor]:
        """Copies of the weights, for :meth:`update_ratio` after the optimizer step."""
        with torch.no_grad():
            return [p.detach().clone() for _, p in self.params]

    def update_ratio(self, before: list[torch.Tensor]) -> torch.Tensor:
        """``[‖Δw‖ per parameter…, ‖w_before‖ per parameter…]``, not yet transferred.

        Consumes ``before`` (the :meth:`snapshot`): ``w_before − w_after`` is written into it,
        which has the norm of ``Δw`` to the bit and spares a copy of the model.
        """
        with torch.no_grad():
            weights = torch._foreach_norm(before)
            torch._foreach_sub_(before, [p.detach() for _, p in self.params])
            delta = torch._foreach_norm(before)
            return torch.stack([*delta, *weights])

    # -- on the host ----------------------------------------------------------------------------

    def to_metrics(self, measured: Measured, ratio: torch.Tensor | None = None) -> dict[str, float]:
        """The metric map, after the single device-to-host transfer of ``measured`` (+ ratio)."""
        flat = measured.values.to(torch.float64)
        if ratio is not None:
            flat = torch.cat([flat, ratio.to(flat.device, torch.float64)])
        values: list[float] = flat.tolist()
        k = len(measured.present)
        norms, nonzeros, nonfinite = values[:k], values[k : 2 * k], values[2 * k : 3 * k]
        layer_sq = [0.0] * len(self.layers)
        for i, norm in zip(measured.present, norms, strict=True):
            layer_sq[self._layer_index[i]] += norm * norm
        counted = sum(self._numel[i] for i in measured.present)
        p = self.prefix
        out: dict[str, float] = {
            f"grad/{p}global_norm": math.sqrt(sum(layer_sq)),
            f"grad/{p}zeros_ratio": (counted - sum(nonzeros)) / counted if counted else 0.0,
            f"grad/{p}nonfinite": int(sum(nonfinite)),
        }
        for layer, sq in zip(self.layers, layer_sq, strict=True):
            out[f"grad/layer/{layer}/norm"] = math.sqrt(sq)
        if ratio is not None:
            n = len(self.params)
            delta, weights = values[3 * k : 3 * k + n], values[3 * k + n :]
            w = math.sqrt(sum(x * x for x in weights))
            out[f"weight/{p}update_ratio"] = math.sqrt(sum(x * x for x in delta)) / w if w else math.inf
        return out


@dataclass
class _Group:
    stats: GradientStats
    optimizer: torch.optim.Optimizer | None
    updates: int = 0  # optimizer steps (or backward passes without an optimizer) seen
    touched: bool = False  # received a gradient in the current backward pass
    pending: Measured | None = None
    before: list[torch.Tensor] | None = None
    param_hooks: list[Any] = field(default_factory=list)
    step_hooks: list[Any] = field(default_factory=list)
    #: a parameter seen to get a gradient: once known, arming hooks it alone
    sentinel: int | None = None
    fired: int | None = None

    def due(self, every: int) -> bool:
        return self.updates % every == 0


class GradientTap:
    """Measures gradient health of parameter groups every ``every`` updates and emits it.

    A group with an optimizer counts optimizer steps and emits at the step (with
    ``weight/update_ratio`` when ``update_ratio``); a group without one counts backward
    passes and emits at the end of the pass. ``emit`` gets the metric map; an exception
    in measuring or emitting is counted in ``errors`` and never reaches training.

    A Python hook called from autograd costs ~10 µs on a CPU, per parameter and pass — as
    much as a small policy's whole update over a few dozen parameters. So a group with
    an optimizer has parameter hooks only while its next step is one to measure; the
    optimizer's own step hooks (plain Python calls) do the counting.
    """

    def __init__(
        self,
        groups: Sequence[tuple[str, Iterable[tuple[str, torch.nn.Parameter]], torch.optim.Optimizer | None]],
        emit: Emit,
        *,
        every: int = 10,
        update_ratio: bool = True,
    ) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.every = every
        self.emit = emit
        self.update_ratio = update_ratio
        self.errors = 0
        self.emitted = 0
        self._queued = False
        self._groups = [_Group(GradientStats(params, prefix), opt) for prefix, params, opt in groups]
        for group in self._groups:
            self._arm(group)
            if group.optimizer is not None:
                group.step_hooks.append(group.optimizer.register_step_pre_hook(self._make_pre_step(group)))
                group.step_hooks.append(group.optimizer.register_step_post_hook(self._make_post_step(group)))

    def remove(self) -> None:
        """Detach every hook; the model trains exactly as it would without the tap."""
        for group in self._groups:
            self._disarm(group)
            for handle in group.step_hooks:
                handle.remove()
            group.step_hooks.clear()
            group.pending = group.before = None

    # -- hooks ------------------------------------------------------------------------------------

    def _arm(self, group: _Group) -> None:
        # registering costs too (~25 µs a hook): one sentinel parameter suffices to learn
        # that a backward pass reached the group; all of them only until one is known
        if group.param_hooks:
            return
        params = group.stats.params
        chosen = range(len(params)) if group.sentinel is None or group.optimizer is None else [group.sentinel]
        for i in chosen:
            hook = self._make_hook(group, i)
            group.param_hooks.append(params[i][1].register_post_accumulate_grad_hook(hook))  # type: ignore[no-untyped-call]

    def _disarm(self, group: _Group) -> None:
        for handle in group.param_hooks:
            handle.remove()
        group.param_hooks.clear()
        group.touched = False

    def _make_hook(self, group: _Group, index: int) -> Callable[[torch.Tensor], None]:
        def hook(_param: torch.Tensor) -> None:
            group.touched = True
            group.fired = index
            if not self._queued:
                self._queued = True
                Variable._execution_engine.queue_callback(self._end_of_backward)

        return hook

    def _end_of_backward(self) -> None:
        self._queued = False
        for group in self._groups:
            if not group.touched:
                continue
            group.touched = False
            try:
                if group.optimizer is None:
                    if group.due(self.every):
                        measured = group.stats.compute()
                        if measured is not None:
                            self._emit(group.stats.to_metrics(measured))
                    group.updates += 1
                else:
                    # armed only before a measured step; the latest pass before the step wins
                    # (SAC's actor loss also reaches the critic's parameters)
                    group.pending = group.stats.compute()
            except Exception as exc:
                self._failed(exc)

    def _make_pre_step(self, group: _Group) -> Callable[..., None]:
        def pre_step(_opt: object, _args: object, _kwargs: object) -> None:
            # armed means this step is measured; with a closure (Lightning, LBFGS) backward runs
            # inside step(), after this hook, so pending cannot be known yet
            if self.update_ratio and (group.pending is not None or group.param_hooks):
                try:
                    group.before = group.stats.snapshot()
                except Exception as exc:
                    self._failed(exc)

        return pre_step

    def _make_post_step(self, group: _Group) -> Callable[..., None]:
        def post_step(_opt: object, _args: object, _kwargs: object) -> None:
            self._queued = False  # a backward that raised never ran its end-of-pass callback
            group.updates += 1
            pending, before = group.pending, group.before
            group.pending = group.before = None
            if group.param_hooks:  # this step was armed for: keep a sentinel that fired, drop one that did not
                group.sentinel = group.fired if pending is not None else None
                self._disarm(group)
            group.fired = None
            if group.due(self.every):
                self._arm(group)
            if pending is None:
                return
            try:
                ratio = group.stats.update_ratio(before) if before is not None else None
                self._emit(group.stats.to_metrics(pending, ratio))
            except Exception as exc:
                self._failed(exc)

        return post_step

    def _emit(self, metrics: dict[str, float]) -> None:
        self.emit(metrics)
        self.emitted += 1

    def _failed(self, exc: Exception) -> None:
        self.errors += 1
        if self.errors == 1:
            log.warning("gradient statistics failed (counted, training goes on): %r", exc)

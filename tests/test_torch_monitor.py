"""Gradient statistics on a tiny MLP whose gradients are worked out by hand.

The net is ``y = w2 · (W1 x + b1)`` with ``W1 = 0``, ``b1 = [1, 0]``, ``w2 = [2, 0]`` and
``x = [1, 2, 2]``, and the loss is ``y``. Then ``h = [1, 0]`` and

- ``dW1 = outer(w2, x) = [[2, 4, 4], [0, 0, 0]]`` (norm 6), ``db1 = w2 = [2, 0]`` (norm 2),
  so layer ``0`` has norm √40;
- ``dw2 = h = [1, 0]``, so layer ``1`` has norm 1;
- the global norm is √41; 5 of the 10 gradient entries are zero.
"""

from __future__ import annotations

import math

import pytest
import torch
from support import Stack, wait_until

from publishers.grad_stats import GradientStats
from publishers.torch import GradientMonitor


def _net() -> torch.nn.Sequential:
    first, second = torch.nn.Linear(3, 2), torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        first.weight.zero_()
        first.bias.copy_(torch.tensor([1.0, 0.0]))
        second.weight.copy_(torch.tensor([[2.0, 0.0]]))
    return torch.nn.Sequential(first, second)


X = torch.tensor([[1.0, 2.0, 2.0]])


def test_norms_and_counts_match_the_hand_computed_gradients() -> None:
    """Global and per-layer norms, zero ratio and non-finite count equal the hand-worked values."""
    net = _net()
    net(X).sum().backward()
    stats = GradientStats(net.named_parameters())
    metrics = stats.to_metrics(stats.compute())  # type: ignore[arg-type]
    assert metrics["grad/layer/0/norm"] == pytest.approx(math.sqrt(40))
    assert metrics["grad/layer/1/norm"] == pytest.approx(1.0)
    assert metrics["grad/global_norm"] == pytest.approx(math.sqrt(41))
    assert metrics["grad/zeros_ratio"] == pytest.approx(0.5)
    assert metrics["grad/nonfinite"] == 0


def test_nan_and_inf_gradients_are_counted() -> None:
    """x[0] = NaN makes column 0 of dW1 NaN (0 × NaN is NaN too) and h, so dw2: 4 non-finite values."""
    net = _net()
    net(torch.tensor([[math.nan, 2.0, 2.0]])).sum().backward()
    stats = GradientStats(net.named_parameters())
    metrics = stats.to_metrics(stats.compute())  # type: ignore[arg-type]
    assert metrics["grad/nonfinite"] == 4
    assert math.isnan(metrics["grad/global_norm"])


def test_monitor_publishes_pre_clip_norms_update_ratio_and_scalars(stack: Stack) -> None:
    """Through the bus: every 2nd step, the norm before clip_grad_norm_, ‖Δw‖/‖w‖, and log() scalars."""
    net = _net()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    with GradientMonitor(net, optimizer, run="mlp", endpoint=stack.frontend, every=2) as monitor:
        for step in range(3):
            with torch.no_grad():  # the same weights every step, so every step has the hand-worked gradient
                fresh = _net()
                for p, q in zip(net.parameters(), fresh.parameters(), strict=True):
                    p.copy_(q)
            loss = net(X).sum()
            optimizer.zero_grad()
            monitor.log(step, **{"train/loss": loss.detach()})
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), max_norm=1.0)
            optimizer.step()
        assert monitor.emitted == 2
    rows = wait_until(
        lambda: len(stack.records("mlp", "metrics")) == 5 and stack.records("mlp", "metrics"), 10, "5 rows"
    )
    grads = [r for r in rows if "grad/global_norm" in r["data"]]
    assert [r["step"] for r in grads] == [0, 2]
    for row in grads:
        assert row["data"]["grad/global_norm"] == pytest.approx(math.sqrt(41))
        # SGD moves every weight by lr × the clipped gradient (norm 1) over weights of norm √5
        assert row["data"]["weight/update_ratio"] == pytest.approx(0.1 * 1.0 / math.sqrt(5), rel=1e-5)
    losses = [r["data"]["train/loss"] for r in rows if "train/loss" in r["data"]]
    assert losses == [2.0, 2.0, 2.0]


def test_without_an_optimizer_every_backward_pass_counts(stack: Stack) -> None:
    """A monitor on the model alone publishes at the end of every ``every``-th backward pass."""
    net = _net()
    with GradientMonitor(net, run="no-opt", endpoint=stack.frontend, every=1) as monitor:
        for step in range(2):
            net.zero_grad()
            monitor.step = step
            net(X).sum().backward()
    rows = wait_until(
        lambda: len(stack.records("no-opt", "metrics")) == 2 and stack.records("no-opt", "metrics"), 10, "2 rows"
    )
    assert [r["step"] for r in rows] == [0, 1]
    assert rows[0]["data"]["grad/global_norm"] == pytest.approx(math.sqrt(41))
    assert "weight/update_ratio" not in rows[0]["data"]


def test_every_nth_optimizer_step_is_measured_and_hooks_come_off() -> None:
    """every=3 over 7 steps measures steps 0, 3 and 6; after remove() no hook is left on the model."""
    from publishers.grad_stats import GradientTap

    net = _net()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.0)  # lr 0: every step has the hand-worked gradient
    got: list[dict[str, float]] = []
    tap = GradientTap([("", net.named_parameters(), optimizer)], got.append, every=3)
    measured_at = []
    for step in range(7):
        optimizer.zero_grad()
        net(X).sum().backward()
        before = len(got)
        optimizer.step()
        if len(got) > before:
            measured_at.append(step)
    assert measured_at == [0, 3, 6]
    assert all(g["grad/global_norm"] == pytest.approx(math.sqrt(41)) for g in got)
    assert tap.errors == 0
    tap.remove()
    assert all(not p._post_accumulate_grad_hooks for p in net.parameters())


def test_cpu_counts_equal_the_fused_kernels_of_the_accelerator_path() -> None:
    """On a CPU, norms, count_nonzero and the non-finite count where the norm is not finite: the same numbers."""
    from publishers.grad_stats import _cpu_counts

    generator = torch.Generator().manual_seed(0)
    grads = [torch.randn(shape, generator=generator) for shape in ((64, 32), (32,), (1, 64), (7,))]
    grads[0][:5] = 0.0
    grads[0][5, :3] = -0.0  # zero for both
    grads[1][3] = math.nan
    grads[2][0, :4] = math.inf
    grads[3][0] = 3e38  # finite, but its square overflows: the norm is inf, the count still 0
    fused = torch.stack(
        [
            *torch._foreach_norm(grads),
            *torch._foreach_norm(grads, 0),
            *torch._foreach_norm(torch._foreach_sub(grads, grads), 0),
        ]
    ).to(torch.float64)
    ours = _cpu_counts(grads)
    assert torch.equal(ours.isnan(), fused.isnan())
    assert torch.equal(ours.nan_to_num(nan=-1.0), fused.nan_to_num(nan=-1.0))
    assert ours[8:].tolist() == [0.0, 1.0, 4.0, 0.0]

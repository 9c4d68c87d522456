"""A tiny DDP training that ``torchrun`` launches in the distributed tests.

Every rank trains ``Linear(4, 1)`` on its own batch (seeded by rank, so local gradients
differ) with a ``GradientMonitor(per_rank=True)`` and no run id (the ranks agree on one).
Beside it, each rank works out what the monitor should have measured, on a plain copy of
the model: its local gradient's norm before DDP averages it, and the loss. It writes those
to ``<out>/rank<r>.json`` for the test to compare with what reached the JSONL sink.
``--nan-at K`` feeds rank 1 a NaN input at step K: its local gradient is then non-finite.
``--pause-at K`` makes rank 0 write its pid to ``<out>/rank0.pid`` after step K and wait
for a signal there (the test sends SIGTERM).

    torchrun --nproc_per_node=2 tests/ddp_train.py OUT_DIR [--steps N] [--nan-at K] [--pause-at K]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from publishers.torch import GradientMonitor


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--nan-at", type=int, default=-1)
    parser.add_argument("--pause-at", type=int, default=-1)
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)  # the same initial weights on every rank, as DDP requires
    model = torch.nn.Linear(4, 1)
    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.05)
    data = torch.Generator().manual_seed(100 + rank)
    expected: list[dict[str, float]] = []
    with GradientMonitor(ddp, optimizer, every=1, per_rank=True, config={"lr": 0.05}) as monitor:
        for step in range(args.steps):
            x, y = torch.randn(8, 4, generator=data), torch.randn(8, 1, generator=data)
            if rank == 1 and step == args.nan_at:
                x[0, 0] = math.nan
            plain = torch.nn.Linear(4, 1)  # the reference: this rank's gradient, not averaged
            plain.load_state_dict(model.state_dict())
            torch.nn.functional.mse_loss(plain(x), y).backward()
            local = torch.cat([p.grad.reshape(-1) for p in plain.parameters()])  # type: ignore[union-attr]
            loss = torch.nn.functional.mse_loss(ddp(x), y)
            monitor.log(step, **{"train/loss": loss.detach()})
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            expected.append(
                {
                    "step": step,
                    "loss": loss.item(),
                    "local_norm": local.norm().item(),
                    "nonfinite": int((~torch.isfinite(local)).sum()),
                }
            )
            if rank == 0 and step == args.pause_at:
                (args.out / "rank0.pid").write_text(str(os.getpid()))
                while True:  # until the test's SIGTERM ends the process
                    signal.pause()
        run = monitor.job.run if monitor.job is not None else None
    out = {"rank": rank, "run": run, "pid": os.getpid(), "expected": expected}
    (args.out / f"rank{rank}.json").write_text(json.dumps(out))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

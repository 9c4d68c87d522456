"""What GradientMonitor costs a torchrun / DDP job, beside the same job without it.

    .venv/bin/python bench/bench_ddp.py [--pairs N] [--steps N] [--nproc 2]

Starts ``metricbus up`` (broker + JSONL sink) on random loopback ports, then one
``torchrun --nproc_per_node=2`` job (gloo, CPU, one thread a rank) that trains an MLP
(64 → width → width → 1, batch 128; width 1024 by default) in alternating
segments of ``--steps`` steps: bare, monitored, monitored, bare, … (so drift hits both
alike). A monitored segment has a ``GradientMonitor(per_rank=True, every=10)`` (``--every``) on every rank
and ``log()``s the loss each step — the most a user would turn on; the monitor is made
and closed outside the timed part, and its hooks come off, so a bare segment is bare.
Each segment is timed on rank 0 between two barriers. The ratio is the median of the
per-pair throughput ratios (monitored / bare), with a bootstrap 95 % interval.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench_stats import bootstrap_ci  # noqa: E402  (bench/ is the script's own folder)

from bus.testing import free_port  # noqa: E402  (after the path tweak)

# -- inside torchrun ------------------------------------------------------------------------------


def job(pairs: int, steps: int, width: int, every: int, out: Path) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from publishers.torch import GradientMonitor

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, width),
        torch.nn.ReLU(),
        torch.nn.Linear(width, width),
        torch.nn.ReLU(),
        torch.nn.Linear(width, 1),
    )
    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=1e-3)
    data = torch.Generator().manual_seed(rank)
    x, y = torch.randn(128, 64, generator=data), torch.randn(128, 1, generator=data)

    def segment(monitor: GradientMonitor | None, start: int) -> tuple[float, float]:
        dist.barrier()
        t0, c0 = time.perf_counter(), time.process_time()
        for step in range(start, start + steps):
            loss = torch.nn.functional.mse_loss(ddp(x), y)
            if monitor is not None:
                monitor.log(step, **{"train/loss": loss.detach()})
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        cpu = torch.tensor([time.process_time() - c0], dtype=torch.float64)
        dist.barrier()
        wall = time.perf_counter() - t0
        dist.all_reduce(cpu)  # every rank's CPU seconds (its gloo threads included)
        return wall, float(cpu.item())

    segment(None, 0)  # warm-up
    times: dict[str, list[tuple[float, float]]] = {"bare": [], "monitored": []}
    for pair in range(pairs):
        order = ["bare", "monitored"] if pair % 2 == 0 else ["monitored", "bare"]
        for mode in order:
            if mode == "bare":
                times[mode].append(segment(None, 0))
            else:
                monitor = GradientMonitor(ddp, optimizer, every=every, per_rank=True, run=f"bench-ddp-{pair}")
                times[mode].append(segment(monitor, 0))
                monitor.close()
    if rank == 0:
        out.write_text(json.dumps(times))
    dist.destroy_process_group()


# -- the driver -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=12)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--every", type=int, default=10, help="gradient statistics every N steps")
    parser.add_argument("--width", type=int, default=1024, help="hidden width of the MLP (256: ~1 ms steps)")
    parser.add_argument("--job", type=Path, help=argparse.SUPPRESS)  # set inside torchrun
    args = parser.parse_args()
    if args.job is not None:
        job(args.pairs, args.steps, args.width, args.every, args.job)
        return

    import yaml

    from metricbus.demo import StackProcess

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        frontend = f"tcp://127.0.0.1:{free_port()}"
        config = {
            "broker": {"frontend": frontend, "backend": f"tcp://127.0.0.1:{free_port()}"},
            "sinks": {"jsonl": {"type": "jsonl", "root": str(workdir / "logs")}},
            "sampler": {"enabled": False},
        }
        (workdir / "bench.yaml").write_text(yaml.safe_dump(config))
        stack = StackProcess(workdir / "bench.yaml")
        try:
            if not stack.wait_ready(90):
                raise SystemExit("metricbus up did not come up")
            out = workdir / "times.json"
            argv = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                f"--nproc_per_node={args.nproc}",
                "--master_addr=127.0.0.1",
                f"--master_port={free_port()}",
                __file__,
                "--pairs",
                str(args.pairs),
                "--steps",
                str(args.steps),
                "--width",
                str(args.width),
                "--every",
                str(args.every),
                "--job",
                str(out),
            ]
            env = {**os.environ, "METRICBUS_ENDPOINT": frontend, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
            subprocess.run(argv, env=env, check=True)
            times = json.loads(out.read_text())
            lines = sum(1 for _ in (workdir / "logs").glob("bench-ddp-*/metrics.jsonl"))
        finally:
            stack.stop()
    print(f"torchrun --nproc_per_node={args.nproc}, MLP width {args.width}, every={args.every}, ", end="")
    print(f"{args.pairs} pairs of {args.steps}-step segments")
    for index, what in ((0, "wall time"), (1, "CPU time, all ranks")):
        bare = [t[index] for t in times["bare"]]
        monitored = [t[index] for t in times["monitored"]]
        ratios = [b / m for b, m in zip(bare, monitored, strict=True)]
        low, high = bootstrap_ci(ratios)
        print(f"{what}: bare {args.steps / statistics.median(bare):.1f} steps/s, ", end="")
        print(f"monitored {args.steps / statistics.median(monitored):.1f} steps/s; ", end="")
        print(f"ratio monitored/bare {statistics.median(ratios):.3f} (95% CI {low:.3f}–{high:.3f}), target >= 0.98")
    print(f"runs written by the JSONL sink: {lines}")


if __name__ == "__main__":
    main()

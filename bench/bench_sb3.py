"""What the SB3 callback costs a training, measured beside the uninstrumented baseline.

    .venv/bin/python bench/bench_sb3.py [--quick] [--pairs N] [--steps N]

Three figures, each against its reference in the same invocation:

1. throughput: PPO on CartPole-v1 with the callback (gradient statistics on) and the
   system sampler thread, against the same PPO with no callback; trials interleaved
   (bare, instrumented, instrumented, bare, …) so drift hits both alike. The ratio is
   the median of per-pair ratios, with a bootstrap 95 % interval;
2. per env step: ``on_step()`` of the callback against a no-op ``BaseCallback``, with
   SB3's own ``locals`` (no episode ending; then one env of 1 ending an episode every
   50 steps), median of repeats;
3. per scalar: a 16-key SB3 record through the callback's logger output format against
   ``SummaryWriter.add_scalar`` (torch.utils.tensorboard) per scalar.

The stack (broker + JSONL sink) runs as ``metricbus up`` on random loopback ports, as in
real use; the sink's process shares the machine with the training.
"""

from __future__ import annotations

import argparse
import random
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bus.publisher import Publisher  # noqa: E402  (after the path tweak, to run from a checkout)
from bus.testing import free_port  # noqa: E402  (after the path tweak)
from metricbus.demo import StackProcess  # noqa: E402
from publishers.sb3 import MetricbusCallback  # noqa: E402
from publishers.system import SystemSampler  # noqa: E402


class NoOp(BaseCallback):
    def _on_step(self) -> bool:
        return True


def start_stack(workdir: Path) -> tuple[StackProcess, str]:
    frontend = f"tcp://127.0.0.1:{free_port()}"
    config = {
        "broker": {"frontend": frontend, "backend": f"tcp://127.0.0.1:{free_port()}"},
        "sinks": {"jsonl": {"type": "jsonl", "root": str(workdir / "logs")}},
        "sampler": {"enabled": False},
    }
    path = workdir / "bench.yaml"
    path.write_text(yaml.safe_dump(config))
    stack = StackProcess(path)
    if not stack.wait_ready(90):
        raise SystemExit("metricbus up did not come up")
    return stack, frontend


def tiny_model() -> PPO:
    """A model for the microbenchmarks: a logger with no outputs, never trained."""
    model = PPO("MlpPolicy", "CartPole-v1", n_steps=64, policy_kwargs={"net_arch": [8]}, verbose=0)
    model.set_logger(Logger(folder=None, output_formats=[]))
    return model


def make_model(seed: int = 0) -> PPO:
    return PPO("MlpPolicy", "CartPole-v1", n_steps=1024, batch_size=64, n_epochs=4, seed=seed, verbose=0)


# -- 1. throughput -----------------------------------------------------------------------------------


def trial(frontend: str, steps: int, instrumented: bool, index: int) -> tuple[float, float]:
    """Steps per wall second and per CPU second (all threads of this process) of one learn().

    CPU time counts what the training process itself spends, publisher and sampler threads
    and ZeroMQ's I/O thread included, and is far less moved by other processes' load than
    wall time; the target is on wall time, so both are reported.
    """
    model = make_model()
    sampler = publisher = callback = None
    if instrumented:
        publisher = Publisher(frontend)
        sampler = SystemSampler(publisher, 2.0).start()
        callback = MetricbusCallback(run=f"bench-{index}", endpoint=frontend, grad_every=10)
    wall, cpu = time.perf_counter(), time.process_time()
    model.learn(steps, callback=callback)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if sampler is not None and publisher is not None:
        sampler.stop()
        publisher.close()
    return model.num_timesteps / wall, model.num_timesteps / cpu


def _ratio(name: str, bare: list[float], inst: list[float]) -> str:
    ratios = [a / b for a, b in zip(inst, bare, strict=True)]
    median = statistics.median(ratios)
    rng = random.Random(0)
    boot = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(2000))
    low, high = boot[int(0.025 * len(boot))], boot[int(0.975 * len(boot)) - 1]
    return (
        f"{name}: bare {statistics.median(bare):.0f} steps/s, instrumented {statistics.median(inst):.0f} steps/s; "
        f"ratio {median:.3f} (95% CI {low:.3f}–{high:.3f}, spread ±{(high - low) / 2 * 100:.1f}%, {len(ratios)} pairs)"
    )


def throughput(frontend: str, pairs: int, steps: int) -> None:
    trial(frontend, steps // 2, False, -1)  # warm-up: imports, first allocations
    bare: list[tuple[float, float]] = []
    inst: list[tuple[float, float]] = []
    for i in range(pairs):
        order = (False, True) if i % 2 == 0 else (True, False)
        for instrumented in order:
            (inst if instrumented else bare).append(trial(frontend, steps, instrumented, i))
        print(
            f"  pair {i + 1}/{pairs}: wall bare {bare[-1][0]:6.0f} / instrumented {inst[-1][0]:6.0f} steps/s; "
            f"cpu bare {bare[-1][1]:6.0f} / instrumented {inst[-1][1]:6.0f} steps/s",
            flush=True,
        )
    print(_ratio("throughput (wall)", [b[0] for b in bare], [a[0] for a in inst]) + " [target >= 0.98]")
    print(_ratio("throughput (CPU time)", [b[1] for b in bare], [a[1] for a in inst]))


# -- 2. per env step --------------------------------------------------------------------------------


def per_step(frontend: str, calls: int, repeats: int) -> None:
    model = tiny_model()
    ours = MetricbusCallback(run="bench-step", endpoint=frontend, grad_every=0)
    noop = NoOp()
    episode_info = {"episode": {"r": 21.0, "l": 21, "t": 0.5}, "TimeLimit.truncated": False}

    def timed(callback: BaseCallback, with_episodes: bool) -> float:
        infos: list[dict[str, Any]] = [{}]
        callback.update_locals({"infos": infos, "dones": [False]})
        start = time.perf_counter()
        for i in range(calls):
            if with_episodes:
                infos[0] = episode_info if i % 50 == 0 else {}
            callback.on_step()
        return (time.perf_counter() - start) / calls * 1e6

    for callback in (ours, noop):
        callback.init_callback(model)
    model._total_timesteps = calls
    ours.on_training_start({}, {})
    for with_episodes in (False, True):
        added = []
        for _ in range(repeats):
            a = timed(noop, with_episodes)
            b = timed(ours, with_episodes)
            added.append(b - a)
        label = "with an episode every 50 steps" if with_episodes else "no episode ending"
        print(f"per env step ({label}): callback adds {statistics.median(added):.2f} µs over a no-op [target <= 2 µs]")
    ours.on_training_end()


# -- 3. per scalar ----------------------------------------------------------------------------------


def per_scalar(frontend: str, records: int, workdir: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    model = tiny_model()
    callback = MetricbusCallback(run="bench-scalar", endpoint=frontend, grad_every=0)
    callback.init_callback(model)
    writer_format = callback._writer
    keys = [f"train/key_{i}" for i in range(16)]
    record = {k: 0.1 * i for i, k in enumerate(keys)}
    excluded: dict[str, tuple[str, ...]] = {k: () for k in keys}

    start = time.perf_counter()
    for step in range(records):
        writer_format.write(record, excluded, step)
    ours = (time.perf_counter() - start) / (records * len(keys)) * 1e6

    tb = SummaryWriter(str(workdir / "tb"))
    start = time.perf_counter()
    for step in range(records):
        for key, value in record.items():
            tb.add_scalar(key, value, step)
    theirs = (time.perf_counter() - start) / (records * len(keys)) * 1e6
    tb.close()
    assert callback.publisher is not None
    callback.publisher.close()
    print(
        f"per scalar: metricbus {ours:.2f} µs, SummaryWriter.add_scalar {theirs:.2f} µs: "
        f"{theirs / ours:.0f}x cheaper [target >= 10x]"
    )


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few pairs and short runs, to check the bench runs")
    parser.add_argument("--pairs", type=int, help="interleaved bare/instrumented pairs (default 8, quick 3)")
    # 32k steps (~12 s) per trial: short runs overweight the fixed per-learn() cost (publisher,
    # handshake, run_started), which a real training pays once
    parser.add_argument("--steps", type=int, help="env steps per trial (default 32768, quick 2048)")
    args = parser.parse_args()
    pairs = args.pairs or (3 if args.quick else 8)
    steps = args.steps or (2048 if args.quick else 32768)
    torch.set_num_threads(1)  # steadier timings; the same for both sides
    # SIGTERM (a timeout, a killed job) still stops the stack this bench started
    signal.signal(signal.SIGTERM, _interrupt)
    with tempfile.TemporaryDirectory(prefix="bench-sb3-") as tmp:
        stack, frontend = start_stack(Path(tmp))
        try:
            per_step(frontend, calls=20_000 if args.quick else 200_000, repeats=5 if args.quick else 15)
            per_scalar(frontend, records=200 if args.quick else 2000, workdir=Path(tmp))
            throughput(frontend, pairs, steps)
        finally:
            stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

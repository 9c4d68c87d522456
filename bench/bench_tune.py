"""What the Tune callback costs a sweep, beside the same sweep without it.

    .venv/bin/python bench/bench_tune.py [--pairs N] [--trials N] [--iterations N]

One local Ray cluster (``ray.init(num_cpus=2)``) and ``metricbus up`` (broker + JSONL sink)
on random loopback ports. A sweep is ``--trials`` trials (ASHA, reuse_actors) of a function
that burns ~5 ms of CPU and reports 3 metrics per iteration, ``--iterations`` iterations;
sweeps with and without ``MetricbusTuneCallback`` alternate (bare, instrumented,
instrumented, bare, …). Two ratios (instrumented / bare, median of the per-pair ratios,
bootstrap 95 % interval): the sweep's wall time, and the driver's CPU time — the callback
runs on the driver, so that is where all of its cost lands. Since both swing by more than
the callback costs on a loaded machine, it also adds up the wall time spent inside the
callback's hooks (on Tune's event loop) and prints it as a share of the sweeps' time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench_stats import bootstrap_ci  # noqa: E402  (bench/ is the script's own folder)

from bus.testing import free_port  # noqa: E402  (after the path tweak)


def trainable(config: dict[str, Any]) -> None:
    from ray import tune

    x = 0.0
    for i in range(1, config["iterations"] + 1):
        end = time.process_time() + 0.005
        while time.process_time() < end:  # the "training" of one iteration
            x += 1.0
        tune.report({"score": config["lr"] * i, "loss": 1.0 / (config["lr"] * i), "work": x})


def timed_callback(endpoint: str) -> Any:
    """The callback, with the wall time spent inside its hooks added up (they run on Tune's loop)."""
    from publishers.ray import MetricbusTuneCallback

    class Timed(MetricbusTuneCallback):
        spent = 0.0

        def _timed(self, hook: Any, *args: Any, **kwargs: Any) -> None:
            t0 = time.perf_counter()
            hook(*args, **kwargs)
            Timed.spent += time.perf_counter() - t0

        def on_trial_start(self, *args: Any, **kwargs: Any) -> None:
            self._timed(super().on_trial_start, *args, **kwargs)

        def on_trial_result(self, *args: Any, **kwargs: Any) -> None:
            self._timed(super().on_trial_result, *args, **kwargs)

        def on_trial_complete(self, *args: Any, **kwargs: Any) -> None:
            self._timed(super().on_trial_complete, *args, **kwargs)

        def on_experiment_end(self, *args: Any, **kwargs: Any) -> None:
            self._timed(super().on_experiment_end, *args, **kwargs)

    return Timed(endpoint=endpoint)


def sweep(trials: int, iterations: int, storage: Path, callbacks: list[Any]) -> tuple[float, float]:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        param_space={"lr": tune.grid_search([0.1 * (k + 1) for k in range(trials)]), "iterations": iterations},
        tune_config=tune.TuneConfig(
            scheduler=ASHAScheduler(metric="score", mode="max", max_t=iterations, grace_period=iterations // 4),
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(storage_path=str(storage), callbacks=callbacks, verbose=0),
    )
    t0, c0 = time.perf_counter(), time.process_time()
    tuner.fit()
    return time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=40)
    args = parser.parse_args()

    import ray
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
        os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO / "bench"), str(REPO)])  # the workers import us
        try:
            if not stack.wait_ready(90):
                raise SystemExit("metricbus up did not come up")
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
            sweep(2, 4, workdir / "warm", [])  # warm-up: workers started, modules imported
            times: dict[str, list[tuple[float, float]]] = {"bare": [], "instrumented": []}
            hooked: list[Any] = []
            for pair in range(args.pairs):
                order = ["bare", "instrumented"] if pair % 2 == 0 else ["instrumented", "bare"]
                for mode in order:
                    callbacks = [timed_callback(frontend)] if mode == "instrumented" else []
                    hooked += callbacks
                    times[mode].append(sweep(args.trials, args.iterations, workdir / f"{mode}-{pair}", callbacks))
            runs = sum(1 for p in (workdir / "logs").iterdir() if not p.name.startswith("_"))
            results = sum(1 for p in (workdir / "logs").glob("*/metrics.jsonl") for _ in p.open())
        finally:
            ray.shutdown()
            stack.stop()
    print(f"Tune sweep: {args.trials} trials x {args.iterations} iterations (ASHA), {args.pairs} pairs, 2 CPUs")
    for index, what in ((0, "sweep wall time"), (1, "driver CPU time")):
        bare = [t[index] for t in times["bare"]]
        instrumented = [t[index] for t in times["instrumented"]]
        ratios = [b / m for b, m in zip(bare, instrumented, strict=True)]
        low, high = bootstrap_ci(ratios)
        print(
            f"{what}: bare {statistics.median(bare):.2f} s, instrumented {statistics.median(instrumented):.2f} s; ",
            end="",
        )
        print(f"ratio instrumented/bare {statistics.median(ratios):.3f} (95% CI {low:.3f}–{high:.3f}), target >= 0.98")
    print(f"published: {runs} runs, {results} results in the JSONL sink")
    inside = sum(type(c).spent for c in hooked)
    swept = sum(t[0] for t in times["instrumented"])
    print(f"inside the callback's hooks: {inside * 1e3:.1f} ms of {swept:.1f} s of instrumented sweeps ", end="")
    print(f"({inside / swept:.3%}; {inside / max(results, 1) * 1e6:.0f} µs per published result, lifecycle included)")


if __name__ == "__main__":
    main()

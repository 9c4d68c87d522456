"""Framework publishers and tracker bridges, each beside the framework's or tracker's own way.

Publishers (a real in-process broker; the publisher's messages go over real sockets):

- Lightning: µs per ``log_metrics`` call, MetricbusLogger vs CSVLogger (with the ``save()``
  Lightning makes every 100 steps); and seconds per training step of a tiny module, fit with
  CSVLogger alone vs CSVLogger + MetricbusLogger (+ MetricbusGradients every 10 steps),
  interleaved rounds after a warm-up fit, the fastest round of each.
- Hugging Face: µs per ``on_log``, MetricbusHFCallback vs transformers' own
  TensorBoardCallback; and seconds per step of a tiny GPT-2 with ``logging_steps=1``, no
  reporting vs MetricbusHFCallback, the same way.

Bridges (in-process, the messages of ``bench_sinks.make_messages``: 14 scalars per metrics
message, one episode per 4): messages per second from ``handle`` until the worker has
delivered all (``pending == 0``), beside the tracker's own client doing the same work by hand:
MLflow ``log_batch`` with 1,000 metrics a request (what the bridge does) and ``log_metric``
per value (the obvious call); W&B ``run.log`` per row in offline mode.

    .venv-test/bin/python bench/bench_trackers.py            # everything
    .venv-test/bin/python bench/bench_trackers.py --quick    # fewer steps and messages
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_SILENT", "true")

from bench_sinks import make_messages

from bus.publisher import Publisher
from bus.testing import broker_config, running_broker

SCALARS = {"train/loss": 0.5, "train/acc": 0.9, "lr": 1e-3, "grad_norm": 1.2, "epoch": 1.0}


def per_call_us(fn: Callable[[int], None], calls: int) -> float:
    start = time.perf_counter()
    for i in range(calls):
        fn(i)
    return (time.perf_counter() - start) / calls * 1e6


def row(name: str, ours: float, theirs: float, unit: str, their_name: str) -> None:
    print(f"  {name:<44} {ours:10.2f} {unit}   {their_name}: {theirs:10.2f} {unit}   ratio {ours / theirs:5.2f}")


# -- Lightning ---------------------------------------------------------------------------------------


def bench_lightning(frontend: str, tmp: Path, steps: int, rounds: int) -> None:
    import lightning.pytorch as L
    import torch
    from lightning.pytorch.loggers import CSVLogger
    from torch.utils.data import DataLoader, TensorDataset

    from publishers.lightning import MetricbusGradients, MetricbusLogger

    logging.getLogger("lightning").setLevel(logging.ERROR)
    print("Lightning")
    pub = Publisher(frontend, run="bench-lit")
    ours = MetricbusLogger(publisher=pub)
    csv_logger = CSVLogger(tmp / "csv-calls", name="c")

    def csv_call(i: int) -> None:
        csv_logger.log_metrics(SCALARS, i)
        if i % 100 == 99:
            csv_logger.save()

    row("log_metrics per call", per_call_us(lambda i: ours.log_metrics(SCALARS, i), 20_000),
        per_call_us(csv_call, 20_000), "µs", "CSVLogger")  # fmt: skip

    class Tiny(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))

        def training_step(self, batch: Any, _i: int) -> torch.Tensor:
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.net(x), y)
            self.log("train/loss", loss)
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.parameters(), 1e-3)

    x = torch.randn(steps * 16, 16)
    data = DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=16)

    class StepClock(L.Callback):
        """Seconds per step after a warm-up of 10 steps: Trainer start-up is not a step's cost."""

        def on_train_batch_start(self, trainer: Any, *_: Any) -> None:
            if trainer.global_step == 10:
                self.start = time.perf_counter()

        def on_train_end(self, trainer: Any, *_: Any) -> None:
            self.per_step = (time.perf_counter() - self.start) / (trainer.global_step - 10)

    def fit(kind: str) -> float:
        loggers: list[Any] = [CSVLogger(tmp / "csv-fit", name=kind)]
        clock = StepClock()
        callbacks: list[Any] = [clock]
        if kind != "csv":
            loggers.append(MetricbusLogger(publisher=pub))
        if kind == "csv+metricbus+grads":
            callbacks.append(MetricbusGradients(every=10))
        trainer = L.Trainer(max_epochs=1, logger=loggers, callbacks=callbacks, log_every_n_steps=1,
                            enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                            accelerator="cpu")  # fmt: skip
        trainer.fit(Tiny(), data)
        return float(clock.per_step)

    kinds = ("csv", "csv+metricbus", "csv+metricbus+grads")
    times: dict[str, list[float]] = {k: [] for k in kinds}
    fit("csv")  # the first fit in a process pays for imports and lazy init: not a logger's cost
    for _ in range(rounds):
        for kind in kinds:
            times[kind].append(fit(kind))
    # the fastest round: on a shared machine, what other processes add only ever adds
    base = min(times["csv"]) * 1e3
    for kind in kinds[1:]:
        row(f"fit, ms per step, {kind}", min(times[kind]) * 1e3, base, "ms", "csv only")
    pub.close()


# -- Hugging Face ------------------------------------------------------------------------------------


def bench_huggingface(frontend: str, tmp: Path, steps: int, rounds: int) -> None:
    import torch
    import transformers
    from transformers.integrations import TensorBoardCallback

    from publishers.huggingface import MetricbusHFCallback

    transformers.logging.set_verbosity_error()
    print("Hugging Face")
    pub = Publisher(frontend, run="bench-hf")
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(tmp / "tb")
    args = transformers.TrainingArguments(output_dir=str(tmp / "hf"), report_to=[])
    state, control = transformers.TrainerState(), transformers.TrainerControl()
    ours = MetricbusHFCallback(publisher=pub)
    ours.on_train_begin(args, state, control)
    tb = TensorBoardCallback()
    tb.on_train_begin(args, state, control)

    def call(cb: Any) -> Callable[[int], None]:
        def one(i: int) -> None:
            state.global_step = i
            cb.on_log(args, state, control, logs=SCALARS)

        return one

    row("on_log per call", per_call_us(call(ours), 20_000), per_call_us(call(tb), 20_000), "µs", "TensorBoardCallback")
    tb.on_train_end(args, state, control)

    class Tokens(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
        ids = torch.randint(0, 64, (steps * 4, 16), generator=torch.Generator().manual_seed(0))

        def __len__(self) -> int:
            return len(self.ids)

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            return {"input_ids": self.ids[i], "labels": self.ids[i]}

    class StepClock(transformers.TrainerCallback):
        """Seconds per step after a warm-up of 5 steps."""

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == 5:
                self.start = time.perf_counter()

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.per_step = (time.perf_counter() - self.start) / (state.global_step - 5)

    def fit(with_us: bool) -> float:
        clock = StepClock()
        config = transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2)
        fit_args = transformers.TrainingArguments(output_dir=str(tmp / "hf-fit"), max_steps=steps, logging_steps=1,
                                                  per_device_train_batch_size=4, save_strategy="no", report_to=[],
                                                  use_cpu=True, disable_tqdm=True)  # fmt: skip
        callbacks: list[Any] = [clock, MetricbusHFCallback(publisher=pub)] if with_us else [clock]
        trainer = transformers.Trainer(model=transformers.GPT2LMHeadModel(config), args=fit_args,
                                       train_dataset=Tokens(), callbacks=callbacks)  # fmt: skip
        trainer.train()
        return float(clock.per_step)

    times: dict[bool, list[float]] = {False: [], True: []}
    fit(False)  # warm-up, as above
    for _ in range(rounds):
        for with_us in (False, True):
            times[with_us].append(fit(with_us))
    row("train, ms per step, logging_steps=1", min(times[True]) * 1e3, min(times[False]) * 1e3, "ms", "no reporting")
    pub.close()


# -- bridges -------------------------------------------------------------------------------------------


def _drain(sink: Any, messages: list[Any]) -> float:
    start = time.perf_counter()
    for i in range(0, len(messages), 1000):
        sink.handle(messages[i : i + 1000])
    while sink.pending:
        time.sleep(0.005)
    seconds = time.perf_counter() - start
    assert sink.stats.dropped == 0 and sink.stats.rejected == 0, sink.stats
    return len(messages) / seconds


def bench_mlflow(tmp: Path, count: int) -> None:
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from sinks.mlflow import MlflowSink

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    print(f"MLflow (sqlite), {count} messages")
    messages = make_messages(count)
    uri = f"sqlite:///{tmp / 'bench.db'}"
    sink = MlflowSink(tracking_uri=uri, max_buffer=count + 1)
    sink.handle(messages[:4])  # create the runs (and the schema) outside the timing
    while sink.pending:
        time.sleep(0.01)
    bridge = _drain(sink, messages)
    sink.close()

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("metricbus")
    assert experiment is not None
    # by hand, the same shape as the bridge: one run per bus run, log_batch of 1,000 values each
    run_ids = {m.run: client.create_run(experiment.experiment_id).info.run_id for m in messages}
    start = time.perf_counter()
    pending: dict[str | None, list[Metric]] = {run: [] for run in run_ids}
    for m in messages:
        ts = int(m.ts * 1000)
        into = pending[m.run]
        into.extend(Metric(k, float(v), ts, m.step or 0) for k, v in m.data.items())
        if len(into) >= 1000:
            client.log_batch(run_ids[m.run], metrics=into[:1000])
            del into[:1000]
    for run, rest in pending.items():
        client.log_batch(run_ids[run], metrics=rest)
    by_hand = count / (time.perf_counter() - start)
    row("bridge msg/s", bridge, by_hand, "msg/s", "log_batch by hand")
    run_id = next(iter(run_ids.values()))
    few = messages[: max(50, count // 100)]
    start = time.perf_counter()
    for m in few:
        for k, v in m.data.items():
            client.log_metric(run_id, k, float(v), int(m.ts * 1000), m.step or 0)
    per_value = len(few) / (time.perf_counter() - start)
    row("bridge msg/s", bridge, per_value, "msg/s", "log_metric per value")


def bench_wandb(tmp: Path, count: int) -> None:
    import wandb

    from sinks.wandb import WandbSink

    print(f"W&B (offline), {count} messages")
    messages = make_messages(count)
    sink = WandbSink(dir=str(tmp / "wb-bridge"), max_buffer=count + 1)
    sink.handle(messages[:4])  # start the runs (a second or more each) outside the timing
    while sink.pending:
        time.sleep(0.01)
    bridge = _drain(sink, messages)
    sink.close()
    # by hand, the same shape as the bridge: one offline run per bus run, one row per message
    runs = {}
    for m in messages[:4]:
        settings = wandb.Settings(console="off", silent=True, x_disable_stats=True)
        runs[m.run] = run = wandb.init(
            mode="offline", dir=str(tmp / "wb-raw"), project="bench", id=f"raw-{m.run}", reinit="create_new",
            settings=settings,
        )  # fmt: skip
        run.define_metric("*", step_metric="bus/step")
        run.log({**m.data, "bus/step": m.step or 0, "_timestamp": m.ts})  # warmed up, as the bridge's runs were
    start = time.perf_counter()
    for m in messages:
        runs[m.run].log({**m.data, "bus/step": m.step or 0, "_timestamp": m.ts})
    raw = count / (time.perf_counter() - start)
    for run in runs.values():
        run.finish()
    row("bridge msg/s", bridge, raw, "msg/s", "run.log per row")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", choices=["lightning", "huggingface", "mlflow", "wandb"])
    opts = parser.parse_args()
    import torch

    torch.set_num_threads(1)  # a shared machine: threads fighting over cores are noise, not overhead
    steps, rounds, count = (100, 1, 2_000) if opts.quick else (400, 5, 20_000)
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        config = broker_config()
        with running_broker(config):
            if opts.only in (None, "lightning"):
                bench_lightning(config.frontend, tmp, steps, rounds)
            if opts.only in (None, "huggingface"):
                bench_huggingface(config.frontend, tmp, steps // 4, rounds)
        if opts.only in (None, "mlflow"):
            bench_mlflow(tmp, count // 4)  # sqlite takes ~100 messages/s: a quarter keeps it to minutes
        if opts.only in (None, "wandb"):
            bench_wandb(tmp, count)


if __name__ == "__main__":
    main()

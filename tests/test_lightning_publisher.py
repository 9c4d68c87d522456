"""The Lightning logger and gradient callback against Lightning's own CSVLogger, on a tiny
module trained for 2 epochs on data the test makes, through a real in-process bus."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import pytest

L = pytest.importorskip("lightning.pytorch")
import torch  # noqa: E402
from lightning.pytorch.loggers import CSVLogger  # noqa: E402
from support import wait_until  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from bus.message import Message  # noqa: E402
from bus.publisher import Publisher  # noqa: E402
from bus.testing import inproc_bus  # noqa: E402
from publishers.lightning import MetricbusGradients, MetricbusLogger  # noqa: E402

CLIP = 0.01  # far below the real norms, so a norm taken after clipping would show it


class Tiny(L.LightningModule):  # type: ignore[misc,name-defined]
    def __init__(self, lr: float = 0.05, hidden: int = 8, fail_at: int = -1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))
        self.pre_clip: dict[int, float] = {}

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.global_step == self.hparams.fail_at:
            raise ValueError("diverged")
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("train/loss", loss)
        self.log("train/loss_epoch", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val/loss", torch.nn.functional.mse_loss(self.net(x), y))

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        # the reference: Lightning calls this after backward, before it clips
        norms = [p.grad.detach().double().norm() for p in self.parameters() if p.grad is not None]
        self.pre_clip[self.global_step] = float(torch.stack(norms).norm())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def _loaders() -> tuple[DataLoader[Any], DataLoader[Any]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(80, 4, generator=g)
    y = (x.sum(1, keepdim=True) * 3 + torch.randn(80, 1, generator=g)).float()
    train = DataLoader(TensorDataset(x[:64], y[:64]), batch_size=8)
    val = DataLoader(TensorDataset(x[64:], y[64:]), batch_size=8)
    return train, val


def _fit(module: Tiny, frontend: str, csv_dir: Path, max_epochs: int = 2) -> MetricbusLogger:
    pub = Publisher(frontend, run="lit-1")
    logger = MetricbusLogger(publisher=pub)
    trainer = L.Trainer(
        max_epochs=max_epochs,
        logger=[logger, CSVLogger(csv_dir, name="csv")],
        callbacks=[MetricbusGradients(every=1)],
        gradient_clip_val=CLIP,
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        accelerator="cpu",
        num_sanity_val_steps=0,
    )
    train, val = _loaders()
    try:
        trainer.fit(module, train, val)
    finally:
        pub.close()
    return logger


def _ended(messages: list[Message]) -> list[Message]:
    return [m for m in messages if m.kind == "event" and m.data["event"] == "run_ended"]


@pytest.mark.slow
def test_lightning_metrics_match_csvlogger_and_gradients_are_taken_before_clipping(tmp_path: Path) -> None:
    """Every value CSVLogger writes is published at its step; grad/global_norm is the pre-clip norm."""
    module = Tiny()
    with inproc_bus() as (config, sink):
        _fit(module, config.frontend, tmp_path)
        wait_until(lambda: _ended(sink.sink.messages), 30, "run_ended")
    messages = sink.sink.messages
    events = [m.data for m in messages if m.kind == "event" and m.data["event"] != "heartbeat"]
    assert events[0]["event"] == "run_started"
    assert events[0]["config"] == {"lr": 0.05, "hidden": 8, "fail_at": -1}
    assert events[-1] == {"event": "run_ended", "status": "completed"}

    (csv_file,) = tmp_path.glob("csv/*/metrics.csv")
    with csv_file.open() as f:
        expected = sorted(
            (int(row["step"]), key, float(value))
            for row in csv.DictReader(f)
            for key, value in row.items()
            if key != "step" and value != ""
        )
    metrics = [m for m in messages if m.kind == "metrics"]
    published = sorted(
        (m.step, key, float(value))
        for m in metrics
        for key, value in m.data.items()
        if not key.startswith(("grad/", "weight/"))
    )
    assert published == expected
    assert {k for _, k, _ in expected} >= {"train/loss", "train/loss_epoch", "val/loss", "epoch"}

    grads = {m.step: m.data for m in metrics if "grad/global_norm" in m.data}
    assert sorted(grads) == sorted(module.pre_clip) == list(range(16))
    for step, norm in module.pre_clip.items():
        assert norm > 10 * CLIP
        assert math.isclose(grads[step]["grad/global_norm"], norm, rel_tol=1e-5)
        assert {"grad/layer/net.0/norm", "grad/layer/net.2/norm", "weight/update_ratio"} <= grads[step].keys()
        assert grads[step]["grad/nonfinite"] == 0


def test_a_failing_lightning_run_ends_failed_with_the_error(tmp_path: Path) -> None:
    """An exception in training_step ends the run as failed, with the error text, and reaches the caller."""
    with inproc_bus() as (config, sink):
        with pytest.raises(ValueError, match="diverged"):
            _fit(Tiny(fail_at=3), config.frontend, tmp_path, max_epochs=1)
        wait_until(lambda: _ended(sink.sink.messages), 30, "run_ended")
    (ended,) = _ended(sink.sink.messages)
    assert ended.data == {"event": "run_ended", "status": "failed", "error": "ValueError: diverged"}

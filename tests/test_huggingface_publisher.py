"""The Hugging Face callback against ``trainer.state.log_history``: a tiny GPT-2 built from a
config (nothing downloaded) trained for a few steps with evaluation, on a real in-process bus."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
import torch  # noqa: E402
from support import wait_until  # noqa: E402

from bus.message import Message  # noqa: E402
from bus.publisher import Publisher  # noqa: E402
from bus.testing import inproc_bus  # noqa: E402
from publishers.huggingface import MetricbusHFCallback, metric_name  # noqa: E402


class _Tokens(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, 64, (n, 16), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def _trainer(tmp_path: Path, callback: MetricbusHFCallback, max_steps: int) -> Any:
    config = transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=max_steps,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=8,
        learning_rate=1e-3,
        logging_steps=2,
        eval_strategy="steps",
        eval_steps=4,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        run_name="hf-tiny",
        seed=0,
    )
    return transformers.Trainer(
        model=transformers.GPT2LMHeadModel(config),
        args=args,
        train_dataset=_Tokens(64, 0),
        eval_dataset=_Tokens(16, 1),
        callbacks=[callback],
    )


def _events(messages: list[Message]) -> list[dict[str, Any]]:
    return [m.data for m in messages if m.kind == "event" and m.data["event"] != "heartbeat"]


@pytest.mark.slow
def test_every_logged_dict_is_published_at_its_global_step(tmp_path: Path) -> None:
    """log_history entry by entry: loss, learning rate, grad norm, eval metrics, summary; args and status."""
    with inproc_bus() as (config, sink), Publisher(config.frontend, run="hf-1") as pub:
        trainer = _trainer(tmp_path, MetricbusHFCallback(publisher=pub), max_steps=8)
        trainer.train()
        wait_until(lambda: any(e["event"] == "run_ended" for e in _events(sink.sink.messages)), 30, "run_ended")
    expected = [
        (entry["step"], {metric_name(k): v for k, v in entry.items() if k != "step"})
        for entry in trainer.state.log_history
    ]
    published = [(m.step, m.data) for m in sink.sink.messages if m.kind == "metrics"]
    assert published == expected
    names = set().union(*(data for _, data in published))
    assert {"train/loss", "train/learning_rate", "train/grad_norm", "eval/loss", "train/train_runtime"} <= names
    started, ended = _events(sink.sink.messages)
    assert started["event"] == "run_started"
    assert started["config"]["learning_rate"] == 1e-3 and started["config"]["max_steps"] == 8
    assert started["config"]["model"] == "GPT2LMHeadModel"
    assert ended == {"event": "run_ended", "status": "completed"}


def test_guard_reports_a_failed_training(tmp_path: Path) -> None:
    """An exception out of trainer.train() inside guard() ends the run as failed, with the error."""

    class Boom(transformers.TrainerCallback):  # type: ignore[misc]
        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            raise RuntimeError("out of memory")

    with inproc_bus() as (config, sink), Publisher(config.frontend, run="hf-2") as pub:
        callback = MetricbusHFCallback(publisher=pub)
        trainer = _trainer(tmp_path, callback, max_steps=4)
        trainer.add_callback(Boom())
        with pytest.raises(RuntimeError, match="out of memory"), callback.guard():
            trainer.train()
        wait_until(lambda: len(_events(sink.sink.messages)) == 2, 30, "run_ended")
    assert _events(sink.sink.messages)[1] == {
        "event": "run_ended",
        "status": "failed",
        "error": "RuntimeError: out of memory",
    }

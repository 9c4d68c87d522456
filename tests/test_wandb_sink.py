"""The W&B bridge in offline mode, in a real ``metricbus up`` beside the JSONL sink; the
offline run's ``.wandb`` file is read back and its records parsed with wandb's own protobuf
``Record`` (wandb ≥ 0.19 has no Python reader of the file any more; its framing is LevelDB's
log format, a few lines below)."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import Stack, records, wait_until

pb = pytest.importorskip("wandb.proto.wandb_internal_pb2")

RUN = "wandb-a"
STEPS = 20
_BLOCK = 32 * 1024
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def wandb_records(path: Path) -> Iterator[Any]:
    """Every ``Record`` in a ``.wandb`` file: a 7-byte W&B header, then LevelDB log blocks."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        if _BLOCK - pos % _BLOCK < 7:  # a block's tail too short for a header is padding
            pos += _BLOCK - pos % _BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (_FULL, _LAST):
            record = pb.Record()
            record.ParseFromString(pending + chunk)
            pending = b""
            yield record
        elif kind in (_FIRST, _MIDDLE):
            pending += chunk


def _history(path: Path) -> list[dict[str, Any]]:
    rows = []
    for record in wandb_records(path):
        if record.WhichOneof("record_type") == "history":
            rows.append(
                {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            )
    return rows


def _of_type(path: Path, kind: str) -> list[Any]:
    return [getattr(r, kind) for r in wandb_records(path) if r.WhichOneof("record_type") == kind]


@pytest.mark.slow
def test_wandb_offline_run_holds_the_jsonl_values_config_and_exit_code(tmp_path: Path) -> None:
    """Each metrics/episode message is one history row at its bus/step and time; config and exit code follow the run."""
    sinks = {
        "jsonl": {"type": "jsonl", "root": str(tmp_path / "logs")},
        "wandb": {"type": "wandb", "dir": str(tmp_path / "wb")},
    }
    from bus.publisher import Publisher

    with Stack(tmp_path, sinks) as stack:
        with Publisher(stack.frontend, run=RUN) as pub:
            pub.event("run_started", config={"lr": 3e-4, "net": {"arch": [64, 64]}}, algo="PPO")
            for step in range(STEPS):
                pub.metrics({"train/loss": 1.0 / (step + 1), "time/fps": 100 + step, "note": "x"}, step)
                if step % 5 == 4:
                    pub.episode({"reward": float(step), "length": step + 1}, step)
            pub.alert({"rule": "nan", "state": "firing", "severity": "critical", "message": "NaN loss"}, 15)
            pub.event("run_ended", step=STEPS, status="failed", error="ValueError: nan")
        wait_until(lambda: any(r["data"].get("event") == "run_ended" for r in records(stack.root, RUN, "event")), 30)
    (path,) = (tmp_path / "wb" / "wandb").glob(f"offline-run-*-{RUN}/run-{RUN}.wandb")
    rows = _history(path)
    expected = [
        {
            **{("episode/" if r["kind"] == "episode" else "") + k: v for k, v in r["data"].items() if k != "note"},
            "bus/step": r["step"],
            "_timestamp": r["ts"],
        }
        for r in records(stack.root, RUN, "metrics") + records(stack.root, RUN, "episode")
    ]
    got = [{k: v for k, v in row.items() if k not in ("_step", "_runtime")} for row in rows]
    alert_rows = [row for row in got if "alert/nan" in row]
    assert alert_rows == [{"alert/nan": 1, "bus/step": 15, "_timestamp": alert_rows[0]["_timestamp"]}]
    key = lambda row: (row["bus/step"], sorted(row))  # noqa: E731
    assert sorted((row for row in got if "alert/nan" not in row), key=key) == sorted(expected, key=key)

    (run,) = _of_type(path, "run")
    config = {u.key: json.loads(u.value_json) for c in [run.config, *_of_type(path, "config")] for u in c.update}
    assert (run.run_id, config["lr"], config["net"]) == (RUN, 3e-4, {"arch": [64, 64]})
    summary = {}
    for s in _of_type(path, "summary"):
        summary.update({u.key or "/".join(u.nested_key): json.loads(u.value_json) for u in s.update})
    assert summary["metricbus/status"] == "failed"
    assert summary["metricbus/error"] == "ValueError: nan"
    assert summary["alert/nan"] == "firing (critical) at step 15: NaN loss"
    assert [e.exit_code for e in _of_type(path, "exit")] == [1]


def test_the_readme_tracker_config_loads() -> None:
    """The README's MLflow and W&B sink YAML passes the config checks (types, options) as printed."""
    import yaml
    from test_plugins import readme_blocks

    from bus.config import parse_config

    (block,) = [b for b in readme_blocks("Write your own sink")["yaml"] if "type: wandb" in b]
    config = parse_config(yaml.safe_load(block), "README.md")
    assert {s.type for s in config.sinks.values()} == {"mlflow", "wandb"}

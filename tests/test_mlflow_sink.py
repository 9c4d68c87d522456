"""The MLflow bridge, read back through mlflow's own client: a local sqlite store and a real
``mlflow server`` process on loopback, side by side in one ``metricbus up`` with the JSONL
sink as the record to compare with, plus a third bridge pointed at a closed port."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import Stack, free_port, records, wait_until

pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient

from bus.message import Message
from bus.publisher import Publisher
from sinks.mlflow import MlflowSink, mlflow_key

RUN = "mlflow-a"
STEPS = 30


@pytest.fixture
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Callable[[], None]]]:
    """A real ``mlflow server`` on a random loopback port: its URL, and a call that waits for
    /health (so a test can start its own processes while the server boots)."""
    where = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = (where / "server.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{where / 'server.db'}", "--default-artifact-root", str(where / "art")],
        stdout=log, stderr=subprocess.STDOUT, cwd=where, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"mlflow server exited {proc.returncode}: {(where / 'server.log').read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def ready() -> None:
        wait_until(healthy, 120, "mlflow server to answer /health", interval=0.25)

    try:
        yield url, ready
    finally:
        os.killpg(proc.pid, 15)  # uvicorn's worker is a child of its own
        proc.wait(30)
        log.close()


def _publish_a_run(frontend: str) -> None:
    with Publisher(frontend, run=RUN) as pub:
        pub.event("run_started", config={"lr": 3e-4, "net": {"arch": [64, 64]}}, algo="PPO")
        for step in range(STEPS):
            pub.metrics({"train/loss": 1.0 / (step + 1), "train/weird name?": step, "note": "text"}, step)
            if step % 10 == 9:
                pub.episode({"reward": float(step), "length": step + 1}, step)
        pub.alert({"rule": "loss_divergence", "state": "firing", "severity": "warning", "message": "loss grew"}, 20)
        pub.event("run_ended", step=STEPS, status="failed", error="ValueError: nan")


def _check_run(client: MlflowClient, jsonl_root: Path) -> None:
    experiment = client.get_experiment_by_name("metricbus")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`metricbus.run` = '{RUN}'")
    assert len(runs) == 1, "one MLflow run per bus run"
    run = runs[0]
    assert run.info.status == "FAILED"
    assert run.data.tags["metricbus.error"] == "ValueError: nan"
    assert run.data.tags["metricbus.algo"] == "PPO"
    assert run.data.params == {"lr": "0.0003", "net/arch": "[64, 64]"}
    assert run.data.tags["alert/loss_divergence"].startswith("firing (warning) at step 20: loss grew")
    for rec in records(jsonl_root, RUN, "metrics"):
        for key, value in rec["data"].items():
            if isinstance(value, str):
                continue
            history = client.get_metric_history(run.info.run_id, mlflow_key(key))
            at_step = [(m.value, m.timestamp) for m in history if m.step == rec["step"]]
            assert at_step == [(float(value), int(rec["ts"] * 1000))], (key, rec["step"])
    episodes = records(jsonl_root, RUN, "episode")
    history = client.get_metric_history(run.info.run_id, "episode/reward")
    assert [(m.step, m.value) for m in history] == [(e["step"], e["data"]["reward"]) for e in episodes]
    assert "note" not in run.data.metrics


@pytest.mark.slow
def test_mlflow_runs_match_the_jsonl_record_locally_and_on_a_server_while_a_dead_one_buffers(
    tmp_path: Path, mlflow_server: tuple[str, Callable[[], None]]
) -> None:
    """A bus run is one MLflow run (params, metrics, episodes, alert, status) locally and on a server."""
    server, server_ready = mlflow_server
    local_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    dead = f"http://127.0.0.1:{free_port()}"
    sinks = {
        "jsonl": {"type": "jsonl", "root": str(tmp_path / "logs")},
        "local": {"type": "mlflow", "tracking_uri": local_uri},
        "server": {"type": "mlflow", "tracking_uri": server, "retry_max": 1.0},
        "dead": {"type": "mlflow", "tracking_uri": dead, "max_buffer": 10, "close_timeout": 0.5},
    }
    with Stack(tmp_path, sinks) as stack:
        server_ready()  # booted beside the stack; until then its bridge buffers and retries
        _publish_a_run(stack.frontend)
        wait_until(lambda: any(r["data"].get("event") == "run_ended" for r in records(stack.root, RUN, "event")), 30)
        for uri in (local_uri, server):
            client = MlflowClient(tracking_uri=uri)

            def ended(client: MlflowClient = client) -> bool:
                experiment = client.get_experiment_by_name("metricbus")
                if experiment is None:
                    return False
                runs = client.search_runs([experiment.experiment_id])
                return bool(runs) and runs[0].info.status == "FAILED"

            wait_until(ended, 60, f"the run to end in {uri}", interval=0.2)
            _check_run(client, stack.root)
    assert len(records(stack.root, RUN, "metrics")) == STEPS
    assert "dead" in stack.stderr() and "undelivered" in stack.stderr(), stack.stderr()


def test_an_unreachable_tracker_buffers_boundedly_retries_and_counts_drops() -> None:
    """With the server down, handle() returns at once, keeps max_buffer messages, retries, counts the rest dropped."""
    sink = MlflowSink(tracking_uri=f"http://127.0.0.1:{free_port()}", max_buffer=100, close_timeout=0.2)
    batch = [Message("metrics", "r", "n", "p", i, 1.7e9 + i, i, {"loss": float(i)}) for i in range(1_000)]
    for start in range(0, len(batch), 100):
        sink.handle(batch[start : start + 100])  # would hang here if it waited on the tracker
    assert sink.stats.queued == 100
    assert sink.stats.dropped == 900
    wait_until(lambda: sink.stats.retries >= 2, 30, "a second retry")
    assert sink.stats.delivered == 0
    assert "Connection refused" in sink.stats.last_error or "onnect" in sink.stats.last_error
    sink.close()
    assert sink.stats.dropped == 1_000, "what was still buffered at close is counted too"


def test_a_value_mlflow_refuses_is_counted_and_the_rest_gets_through(tmp_path: Path) -> None:
    """A request MLflow refuses for good (a changed param after a restart) is counted and skipped; later data lands."""
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    started = [Message("event", "r", "n", "p", 0, 1.7e9, None, {"event": "run_started", "config": {"lr": 1}})]
    first = MlflowSink(tracking_uri=uri)
    first.handle(started)
    wait_until(lambda: first.stats.delivered == 1, 60)
    first.close()
    again = MlflowSink(tracking_uri=uri)  # a restart finds the run by its tag; lr changed is refused
    restarted = [Message("event", "r", "n", "p", 0, 1.7e9, None, {"event": "run_started", "config": {"lr": 2}})]
    again.handle([*restarted, Message("metrics", "r", "n", "p", 1, 1.7e9 + 1, 5, {"loss": math.pi})])
    wait_until(lambda: again.stats.delivered + again.stats.rejected == 2, 60)
    again.close()
    assert (again.stats.rejected, again.stats.delivered) == (1, 1)
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("metricbus").experiment_id])  # type: ignore[union-attr]
    assert run.data.params == {"lr": "1"}
    assert run.data.metrics == {"loss": math.pi}

"""`metricbus demo`: the main job, end to end, in real processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from support import free_port, jsonl_lines, wait_until

from metricbus.demo import broker_answers
from sinks.jsonl_files import list_runs, read_records, run_dir


def _config(tmp_path: Path) -> tuple[Path, str]:
    frontend = f"tcp://127.0.0.1:{free_port()}"
    config = {
        "broker": {"frontend": frontend, "backend": f"tcp://127.0.0.1:{free_port()}"},
        "sinks": {"jsonl": {"type": "jsonl", "root": "logs"}},
        "sampler": {"enabled": True, "interval": 0.5},
    }
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, frontend


@pytest.mark.slow
def test_demo_trains_two_runs_through_the_whole_stack_and_exits(tmp_path: Path) -> None:
    """`demo --timesteps 4096 --runs 2 --exit` exits 0 and leaves both runs' logs and the node's system file."""
    config, frontend = _config(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("METRICBUS_")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "metricbus",
            "demo",
            "--timesteps",
            "4096",
            "--runs",
            "2",
            "--exit",
            "--config",
            str(config),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    root = tmp_path / "logs"
    runs = [r for r in list_runs(root) if r.startswith("ppo-cartpole-")]
    assert len(runs) == 2, list_runs(root)
    for run in runs:
        metrics = list(read_records(run_dir(root, run), ["metrics"]))
        assert max(m["step"] for m in metrics) == 4096
        assert any("train/value_loss" in m["data"] for m in metrics)
        assert any("grad/global_norm" in m["data"] for m in metrics)
        assert list(read_records(run_dir(root, run), ["episode"]))
        events = [e["data"]["event"] for e in read_records(run_dir(root, run), ["event"])]
        assert "run_started" in events and "run_ended" in events
    system = root / "_nodes" / socket.gethostname() / "system.jsonl"
    assert jsonl_lines(system)
    assert "training finished" in result.stdout
    assert not broker_answers(frontend), "the stack the demo started is still running"


@pytest.mark.slow
def test_demo_uses_a_stack_that_is_already_running_and_leaves_it_up(stack_factory: type, tmp_path: Path) -> None:
    """With a broker already answering on the config's frontend, the demo trains into it and stops nothing."""
    stack = stack_factory(tmp_path).start()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "metricbus",
            "demo",
            "--timesteps",
            "512",
            "--runs",
            "1",
            "--config",
            str(stack.config_path),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "already answers" in result.stdout
    assert broker_answers(stack.frontend, timeout=2.0)
    (run,) = [r for r in list_runs(stack.root) if r.startswith("ppo-cartpole-0-")]
    assert stack.records(run, "episode")


def _start_long_demo(tmp_path: Path, config: Path) -> subprocess.Popen[bytes]:
    """``metricbus demo`` with two runs too long to finish during the test; output in demo.out."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("METRICBUS_")}
    with (tmp_path / "demo.out").open("wb") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "metricbus",
                "demo",
                "--timesteps",
                "1000000",
                "--runs",
                "2",
                "--config",
                str(config),
            ],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


@pytest.mark.slow
def test_ctrl_c_stops_the_runs_which_report_interrupted_then_the_stack(tmp_path: Path) -> None:
    """SIGINT mid-training: every run writes run_ended interrupted, the stack stops, the demo exits 130."""
    config, frontend = _config(tmp_path)
    proc = _start_long_demo(tmp_path, config)
    root = tmp_path / "logs"
    try:
        wait_until(
            lambda: len([r for r in list_runs(root) if list(read_records(run_dir(root, r), ["episode"]))]) == 2,
            120,
            "episodes of both runs",
        )
        proc.send_signal(signal.SIGINT)
        assert proc.wait(90) == 130, (tmp_path / "demo.out").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for run in list_runs(root):
        ended = [e["data"] for e in read_records(run_dir(root, run), ["event"]) if e["data"]["event"] == "run_ended"]
        assert [e["status"] for e in ended] == ["interrupted"], run
    assert not broker_answers(frontend)


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


@pytest.mark.slow
def test_a_killed_demo_leaves_no_stack_or_training_behind(tmp_path: Path) -> None:
    """SIGKILL of the demo: the stack it started and its training runs stop by themselves."""
    config, frontend = _config(tmp_path)
    proc = _start_long_demo(tmp_path, config)
    root = tmp_path / "logs"
    try:
        wait_until(lambda: len(list_runs(root)) >= 2 and _processes_mentioning(frontend), 120, "both runs training")
    finally:
        proc.kill()
        proc.wait()
    wait_until(lambda: not _processes_mentioning(frontend), 60, "the runs to stop after the demo died")
    wait_until(lambda: not _processes_mentioning(str(config)), 60, "the stack to stop after the demo died")
    assert not broker_answers(frontend)


@pytest.mark.slow
def test_demo_fault_nan_alerts_at_once_beside_a_healthy_run_that_raises_nothing(tmp_path: Path) -> None:
    """`demo --fault nan` crashes one run, which raises run-failed (critical, with the exception and a hint);
    the healthy run beside it raises no error."""
    config, _ = _config(tmp_path)
    data = yaml.safe_load(config.read_text())
    data["sampler"]["enabled"] = False
    rules = Path(__file__).resolve().parent.parent / "configs" / "alerts.yaml"
    data["sinks"]["alerts"] = {"type": "alerts", "topics": ["metrics/", "episode/", "event/", "bus/"],
                               "rules": str(rules), "notify": []}  # fmt: skip
    config.write_text(yaml.safe_dump(data))
    env = {k: v for k, v in os.environ.items() if not k.startswith("METRICBUS_")}
    result = subprocess.run(
        [sys.executable, "-m", "metricbus", "demo", "--timesteps", "3000", "--fault", "nan", "--exit",
         "--config", str(config)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    root = tmp_path / "logs"
    faulty = [r for r in list_runs(root) if "-nan-" in r]
    healthy = [r for r in list_runs(root) if r.startswith("ppo-cartpole-") and "-nan-" not in r]
    assert len(faulty) == 1 and len(healthy) == 1, list_runs(root)
    alerts = [a["data"] for a in read_records(run_dir(root, faulty[0]), ["alert"])]
    failed = [a for a in alerts if a["rule"] == "run-failed"]
    assert failed and failed[0]["severity"] == "critical", alerts
    assert "ValueError" in failed[0]["detail"] and failed[0]["hint"]
    alerts = [a["data"] for a in read_records(run_dir(root, healthy[0]), ["alert"])]
    assert [a for a in alerts if a["severity"] in ("error", "critical")] == []

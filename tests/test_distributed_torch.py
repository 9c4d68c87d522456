"""torchrun / DDP: two real gloo ranks on the CPU publish one run onto a real bus.

Each rank of ``tests/ddp_train.py`` writes what the monitor should have measured (its
loss, its local gradient's norm); the test compares that with what the JSONL sink holds.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support import REPO, Stack, free_port, wait_until

pytest.importorskip("torch.distributed")

STEPS = 6
NAN_AT = STEPS - 1  # the last step: a NaN gradient averaged into the weights ends the useful run anyway


def torchrun_argv(out: Path, *args: str) -> list[str]:
    """``torchrun --nproc_per_node=2`` of tests/ddp_train.py on loopback, writing to ``out``."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        str(REPO / "tests" / "ddp_train.py"),
        str(out),
        *args,
    ]


def torchrun(out: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    env = {**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(torchrun_argv(out, *args), env=env, capture_output=True, text=True, timeout=180, cwd=REPO)


def only_run(root: Path) -> str:
    runs = [p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("_")]
    assert len(runs) == 1, runs
    return runs[0]


@pytest.mark.slow
def test_two_ddp_ranks_publish_one_run_with_per_rank_series(stack: Stack, tmp_path: Path) -> None:
    """Ranks agree on one run id; rank 0's loss and grads, each rank's local norm under rank/<r>/, one lifecycle."""
    out = tmp_path / "out"
    out.mkdir()
    env = {k: v for k, v in stack.env.items() if k != "METRICBUS_RUN"}
    done = torchrun(out, env, "--steps", str(STEPS), "--nan-at", str(NAN_AT))
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    run = ranks[0]["run"]
    assert ranks[1]["run"] == run and run.startswith("ddp-")

    def complete() -> list[dict[str, Any]] | None:
        ended = [e for e in stack.records(run, "event") if e["data"]["event"] == "run_ended"]
        rows = stack.records(run, "metrics")
        return rows if ended and len(rows) >= 3 * STEPS else None

    rows = wait_until(complete, 30, "every rank's metrics and the run's end")
    assert only_run(stack.root) == run

    expected = {r["rank"]: {e["step"]: e for e in r["expected"]} for r in ranks}
    losses = {r["step"]: r["data"]["train/loss"] for r in rows if "train/loss" in r["data"]}
    assert losses == {s: expected[0][s]["loss"] for s in range(STEPS)}  # rank 0's, and only rank 0's
    for rank in (0, 1):
        mine = {r["step"]: r["data"] for r in rows if f"rank/{rank}/grad/global_norm" in r["data"]}
        assert sorted(mine) == list(range(STEPS))
        for step, data in mine.items():
            want = expected[rank][step]
            got = data[f"rank/{rank}/grad/global_norm"]
            if want["nonfinite"]:
                assert math.isnan(got) and data[f"rank/{rank}/grad/nonfinite"] == want["nonfinite"]
            else:  # each rank's own gradient, before DDP averaged it
                assert got == pytest.approx(want["local_norm"], rel=1e-5)
                assert data[f"rank/{rank}/grad/nonfinite"] == 0
            if step > 0:
                assert data[f"rank/{rank}/time/steps_per_s"] > 0
    assert expected[1][NAN_AT]["nonfinite"] > 0 and expected[0][NAN_AT]["nonfinite"] == 0
    global_norms = {r["step"]: r["data"]["grad/global_norm"] for r in rows if "grad/global_norm" in r["data"]}
    assert global_norms == pytest.approx({s: expected[0][s]["local_norm"] for s in range(STEPS)}, rel=1e-5)
    assert {r["node"] for r in rows} == {os.uname().nodename}
    assert len({r["pub"] for r in rows}) == 2  # one publisher per rank

    events = [e["data"] for e in stack.records(run, "event") if e["data"]["event"] != "heartbeat"]
    assert [e["event"] for e in events] == ["run_started", "run_ended"]  # once per job, not per rank
    config = events[0]["config"]
    assert config["world_size"] == 2 and config["lr"] == 0.05
    assert [(r["rank"], r["local_rank"]) for r in config["ranks"]] == [(0, 0), (1, 1)]
    assert config["nodes"] == [os.uname().nodename]
    assert events[1]["status"] == "completed"


def test_ranks_without_a_process_group_need_a_shared_run_id(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under torchrun's variables but before init_process_group, no run id is guessed: a clear error."""
    from publishers.distributed import agree_on_run, discover

    for name, value in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "TORCHELASTIC_RUN_ID": "none"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("METRICBUS_RUN", raising=False)
    me = discover()
    assert (me.rank, me.world_size, me.local_rank) == (1, 2, 1)
    with pytest.raises(ValueError, match="rank 1 of 2: the ranks cannot agree on a run id"):
        agree_on_run(me)
    monkeypatch.setenv("METRICBUS_RUN", "job-7")
    assert agree_on_run(me)[0] == "job-7"
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE='two' is not an integer"):
        discover()


@pytest.mark.slow
def test_sigterm_to_rank_0_ends_the_run_once_and_still_kills_it(stack: Stack, tmp_path: Path) -> None:
    """SIGTERM to rank 0 (as torchrun sends it): held metrics, then one run_ended interrupted; it dies by the signal."""
    out = tmp_path / "out"
    out.mkdir()
    env = {**stack.env, "METRICBUS_RUN": "ddp-sigterm-1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    argv = torchrun_argv(out, "--steps", str(STEPS), "--pause-at", "2")
    with subprocess.Popen(argv, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as job:
        try:
            pid_file = out / "rank0.pid"
            wait_until(lambda: pid_file.exists() or job.poll() is not None, 120, "rank 0 at its pause")
            assert job.poll() is None, job.stdout.read() if job.stdout else ""
            os.kill(int(pid_file.read_text()), signal.SIGTERM)
            output, _ = job.communicate(timeout=120)
        finally:
            if job.poll() is None:
                job.kill()
    assert job.returncode != 0  # the job was stopped, not finished
    assert "Signal 15 (SIGTERM) received by PID" in output  # rank 0 died by the signal: not swallowed

    def ended() -> dict[str, Any] | None:
        events = stack.records("ddp-sigterm-1", "event")
        end = next((e for e in events if e["data"]["event"] == "run_ended"), None)
        # rank 0's closing heartbeat follows its run_ended: after it, nothing more can come from rank 0
        closed = end is not None and any(
            e["pub"] == end["pub"] and e["seq"] > end["seq"] and e["data"]["event"] == "heartbeat" for e in events
        )
        return end if closed else None

    end = wait_until(ended, 30, "run_ended and rank 0's closing heartbeat")
    ends = [e for e in stack.records("ddp-sigterm-1", "event") if e["data"]["event"] == "run_ended"]
    assert len(ends) == 1
    assert end["data"]["status"] == "interrupted" and end["data"]["signal"] == "SIGTERM"
    assert end["step"] == 2
    losses = {r["step"] for r in stack.records("ddp-sigterm-1", "metrics") if "train/loss" in r["data"]}
    assert losses == {0, 1, 2}  # what the burst held went out before the end


def _run_ended(stack: Stack, run: str) -> list[dict[str, Any]]:
    return [e for e in stack.records(run, "event") if e["data"]["event"] == "run_ended"]


def test_sigterm_handler_chains_to_the_one_installed_before(stack: Stack) -> None:
    """A SIGTERM handler the program had is still called after run_ended, and is back in place after."""
    from publishers.distributed import DistributedRun

    seen: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, _frame: seen.append(signum))
    try:
        job = DistributedRun("sigterm-chain-1", endpoint=stack.frontend)
        job.step = 7
        signal.raise_signal(signal.SIGTERM)
        assert seen == [signal.SIGTERM]
        assert signal.getsignal(signal.SIGTERM) is not job._signalled  # ours is gone, theirs is back
        job.close()  # the run has ended already: nothing more
        end = wait_until(lambda: _run_ended(stack, "sigterm-chain-1"), 20, "run_ended")
        assert end[0]["data"]["status"] == "interrupted" and end[0]["step"] == 7
        signal.raise_signal(signal.SIGTERM)
        assert seen == [signal.SIGTERM, signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_sigterm_inside_a_publish_ends_the_run_through_a_new_publisher(stack: Stack) -> None:
    """A signal that lands while the main thread holds the publisher's lock: no deadlock, run_ended all the same."""
    from publishers.distributed import DistributedRun

    previous = signal.signal(signal.SIGTERM, lambda _signum, _frame: None)
    try:
        job = DistributedRun("sigterm-inside-1", endpoint=stack.frontend)
        assert job.publisher is not None
        pack = job.publisher._pack

        def pack_then_signal(*fields: Any) -> bytes:  # runs inside publish(), under the publisher's lock
            signal.raise_signal(signal.SIGTERM)
            return pack(*fields)

        job.publisher._pack = pack_then_signal
        job.metrics({"train/loss": 1.0}, 3)
        job.publisher._pack = pack
        end = wait_until(lambda: _run_ended(stack, "sigterm-inside-1"), 20, "run_ended")
        assert end[0]["data"]["status"] == "interrupted" and end[0]["pub"] != job.publisher.pub
        job.close()
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert len(_run_ended(stack, "sigterm-inside-1")) == 1

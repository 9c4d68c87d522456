"""The system sampler: real values that make sense, rates, failing fields, and `metricbus sample`."""

from __future__ import annotations

import socket
from collections import namedtuple
from pathlib import Path
from typing import Any

import psutil
import pytest
from support import Stack, jsonl_lines, wait_until

from bus.publisher import Publisher
from publishers.system import SystemSampler, find_gpus

Io = namedtuple("Io", "read_bytes write_bytes")
Net = namedtuple("Net", "bytes_recv bytes_sent")


def _percent(value: Any) -> bool:
    return isinstance(value, float) and 0.0 <= value <= 100.0


def test_a_real_sample_is_sane() -> None:
    """Percentages lie in 0–100, RSS and used memory are positive, every core is there."""
    sampler = SystemSampler(gpus=None)
    sample = sampler.sample()
    for key in ("cpu/percent", "mem/percent", "swap/percent", "disk/percent"):
        assert _percent(sample[key]), (key, sample.get(key))
    # like top, a process's CPU percent is per core: a busy 4-thread process shows up to 400
    assert 0.0 <= sample["proc/cpu_percent"] <= 100.0 * (psutil.cpu_count() or 1)
    for i in range(psutil.cpu_count() or 1):
        assert _percent(sample[f"cpu/{i}/percent"])
    assert sample["proc/rss_bytes"] > 0
    assert 0 < sample["mem/used_bytes"] < psutil.virtual_memory().total
    assert sample["net/rx_bytes_per_s"] >= 0 and sample["disk/read_bytes_per_s"] >= 0


def test_rates_come_from_counter_deltas_over_the_clock() -> None:
    """Disk and network rates are (counter now − counter before) / elapsed, from injected sources."""
    now = [100.0]
    disk = [Io(1000, 0)]
    net = [Net(0, 500)]
    sampler = SystemSampler(
        gpus=None, clock=lambda: now[0], disk_io_counters=lambda: disk[0], net_io_counters=lambda: net[0]
    )
    now[0], disk[0], net[0] = 102.0, Io(5000, 2000), Net(8000, 500)
    sample = sampler.sample()
    assert sample["disk/read_bytes_per_s"] == 2000.0
    assert sample["disk/write_bytes_per_s"] == 1000.0
    assert sample["net/rx_bytes_per_s"] == 4000.0
    assert sample["net/tx_bytes_per_s"] == 0.0


def test_a_field_that_fails_is_skipped_not_the_sample() -> None:
    """A source that raises drops only its own keys."""

    def broken() -> Any:
        raise OSError("no swap information in this container")

    sample = SystemSampler(gpus=None, swap_memory=broken).sample()
    assert "swap/percent" not in sample
    assert "mem/percent" in sample and "cpu/percent" in sample


def test_without_a_gpu_the_sampler_says_so_once_and_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    """With no GPU, find_gpus logs once that GPU metrics are off; the sample has no gpu/ keys."""
    if find_gpus() is not None:
        pytest.skip("this machine has a GPU")
    caplog.clear()
    with caplog.at_level("INFO", logger="metricbus.system"):
        sampler = SystemSampler()
        sampler.sample()
        sampler.sample()
    assert sum("GPU metrics are off" in r.getMessage() for r in caplog.records) == 1
    assert not any(k.startswith("gpu/") for k in sampler.sample())


@pytest.mark.gpu
def test_gpu_fields_are_sane() -> None:
    """On a GPU machine every visible GPU reports utilisation, memory and temperature."""
    gpus = find_gpus()
    if gpus is None:
        pytest.skip("no GPU")
    sample: dict[str, float | int] = {}
    gpus.sample(sample)
    indices = {k.split("/")[1] for k in sample}
    assert indices
    for i in indices:
        assert 0 <= sample[f"gpu/{i}/util_percent"] <= 100
        assert 0 < sample[f"gpu/{i}/mem_used_bytes"] <= sample[f"gpu/{i}/mem_total_bytes"]
        assert 0 < sample[f"gpu/{i}/temp_c"] < 120


def test_the_sampler_thread_publishes_system_messages(stack: Stack) -> None:
    """A started sampler publishes node-scoped system messages every interval."""
    with Publisher(stack.frontend) as pub, SystemSampler(pub, 0.05, gpus=None):
        path = stack.root / "_nodes" / socket.gethostname() / "system.jsonl"
        wait_until(lambda: path.exists() and len(jsonl_lines(path)) >= 3, 10, "3 system samples")
    row = jsonl_lines(path)[0]
    assert row["kind"] == "system" and row["run"] is None
    assert row["data"]["proc/rss_bytes"] > 0


def test_metricbus_up_runs_the_sampler_and_stops_it(stack_factory: type[Stack], tmp_path: Path) -> None:
    """The supervisor's `sample` child writes the node's system file and stops cleanly with the stack."""
    stack = stack_factory(tmp_path, sampler=True).start()
    path = stack.root / "_nodes" / socket.gethostname() / "system.jsonl"
    wait_until(lambda: path.exists() and len(jsonl_lines(path)) >= 2, 20, "2 samples from metricbus sample")
    assert stack.stop() == 0
    assert "killing" not in stack.stdout()  # the supervisor kills a child that ignores SIGTERM


def test_importing_publishers_and_the_sampler_imports_no_torch_or_sb3() -> None:
    """A node that only samples system metrics never imports torch or stable-baselines3."""
    import subprocess
    import sys

    code = "import sys, publishers, publishers.system; print(sorted({'torch', 'stable_baselines3'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"

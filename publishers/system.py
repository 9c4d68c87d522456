"""Node health: CPU, memory, swap, disk, network, this process, and every visible GPU.

:class:`SystemSampler` reads its data sources through constructor arguments (psutil's
functions by default), so a test can hand it any source without mocking psutil. It runs
in a daemon thread of a training process, or alone as ``metricbus sample`` (:mod:`metricbus.sample`), and publishes
one ``system`` message per interval. A field that cannot be read is left out, never the
whole sample; without a GPU it says so once and samples the rest.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import psutil

from bus.publisher import Publisher

log = logging.getLogger("metricbus.system")

Sample = dict[str, float | int]


class GpuSource(Protocol):
    """Reads per-GPU fields; ``sample`` fills ``gpu/<i>/...`` keys it can read."""

    name: str

    def sample(self, out: Sample) -> None: ...


# -- GPUs ------------------------------------------------------------------------------------------


def _visible_devices() -> list[str] | None:
    """The entries of ``CUDA_VISIBLE_DEVICES`` (indices or UUIDs), or None when unset."""
    raw = os.environ.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        return None
    return [item.strip() for item in raw.split(",") if item.strip()]


class NvmlGpus:
    """GPUs through NVML (``nvidia-ml-py``); raises at construction when NVML is unusable."""

    name = "NVML"

    def __init__(self, visible: list[str] | None = None) -> None:
        import pynvml

        self._nvml = pynvml
        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
        handles: list[tuple[int, Any]] = []
        if visible is None:
            handles = [(i, pynvml.nvmlDeviceGetHandleByIndex(i)) for i in range(count)]
        else:
            for item in visible:
                if item.isdigit() and int(item) < count:
                    handles.append((int(item), pynvml.nvmlDeviceGetHandleByIndex(int(item))))
                elif item.startswith(("GPU-", "MIG-")):
                    handle = pynvml.nvmlDeviceGetHandleByUUID(item)
                    handles.append((int(pynvml.nvmlDeviceGetIndex(handle)), handle))
                else:
                    break  # CUDA stops at the first invalid entry; so do we
        if not handles:
            pynvml.nvmlShutdown()
            raise RuntimeError("NVML sees no (visible) GPU")
        self.handles = handles

    def sample(self, out: Sample) -> None:
        nv = self._nvml
        for index, handle in self.handles:
            self._device(out, f"gpu/{index}/", nv, handle)

    @staticmethod
    def _device(out: Sample, p: str, nv: Any, handle: Any) -> None:
        _read(out, p + "util_percent", lambda: float(nv.nvmlDeviceGetUtilizationRates(handle).gpu))
        mem: Any = _try(lambda: nv.nvmlDeviceGetMemoryInfo(handle))
        if mem is not None:
            out[p + "mem_used_bytes"] = int(mem.used)
            out[p + "mem_total_bytes"] = int(mem.total)
        _read(out, p + "temp_c", lambda: float(nv.nvmlDeviceGetTemperature(handle, nv.NVML_TEMPERATURE_GPU)))
        _read(out, p + "power_w", lambda: nv.nvmlDeviceGetPowerUsage(handle) / 1000.0)


class GputilGpus:
    """GPUs through GPUtil (``nvidia-smi``): the fallback when NVML cannot be loaded."""

    name = "GPUtil"

    def __init__(self, visible: list[str] | None = None) -> None:
        import GPUtil

        self._gputil = GPUtil
        gpus = GPUtil.getGPUs()
        if visible is not None:
            keep = set(visible)
            gpus = [g for g in gpus if str(g.id) in keep or str(g.uuid) in keep]
        if not gpus:
            raise RuntimeError("GPUtil sees no (visible) GPU")
        self._ids = {g.id for g in gpus}

    def sample(self, out: Sample) -> None:
        for gpu in self._gputil.getGPUs():
            if gpu.id in self._ids:
                self._device(out, f"gpu/{gpu.id}/", gpu)

    @staticmethod
    def _device(out: Sample, p: str, gpu: Any) -> None:
        mib = 1 << 20
        _read(out, p + "util_percent", lambda: float(gpu.load) * 100.0)
        _read(out, p + "mem_used_bytes", lambda: int(gpu.memoryUsed * mib))
        _read(out, p + "mem_total_bytes", lambda: int(gpu.memoryTotal * mib))
        _read(out, p + "temp_c", lambda: float(gpu.temperature))


def find_gpus(visible: list[str] | None = None) -> GpuSource | None:
    """NVML first, then GPUtil; None (said once, in the log) when neither finds a GPU."""
    if visible is None:
        visible = _visible_devices()
    problems = []
    for source in (NvmlGpus, GputilGpus):
        try:
            return source(visible)
        except Exception as exc:  # NVMLError_LibraryNotFound, no nvidia-smi, no GPU: all mean "none"
            problems.append(f"{source.name}: {type(exc).__name__}: {exc}")
    log.info("no GPU found, GPU metrics are off (%s)", "; ".join(problems))
    return None


# -- the sampler -------------------------------------------------------------------------------------


def _try(read: Callable[[], Any]) -> Any:
    try:
        return read()
    except Exception:  # a field that fails is skipped, not the sample
        return None


def _read(out: Sample, key: str, read: Callable[[], float | int]) -> None:
    value = _try(read)
    if value is not None:
        out[key] = value


class SystemSampler:
    """Samples this node (and ``process``) every ``interval`` seconds and publishes it.

    Every data source is an argument: psutil's functions by default, anything with the
    same shape in a test. ``gpus="auto"`` looks for NVML, then GPUtil; ``None`` means none.
    """

    def __init__(
        self,
        publisher: Publisher | None = None,
        interval: float = 2.0,
        *,
        disk_path: str = "/",
        gpus: GpuSource | str | None = "auto",
        process: psutil.Process | None = None,
        cpu_percent: Callable[..., Any] = psutil.cpu_percent,
        virtual_memory: Callable[[], Any] = psutil.virtual_memory,
        swap_memory: Callable[[], Any] = psutil.swap_memory,
        disk_usage: Callable[[str], Any] = psutil.disk_usage,
        disk_io_counters: Callable[[], Any] = psutil.disk_io_counters,
        net_io_counters: Callable[[], Any] = psutil.net_io_counters,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be positive, got {interval}")
        self.publisher = publisher
        self.interval = interval
        self.disk_path = disk_path
        self.gpus: GpuSource | None = find_gpus() if gpus == "auto" else gpus  # type: ignore[assignment]
        self.process = process if process is not None else psutil.Process()
        self._cpu_percent = cpu_percent
        self._virtual_memory = virtual_memory
        self._swap_memory = swap_memory
        self._disk_usage = disk_usage
        self._disk_io = disk_io_counters
        self._net_io = net_io_counters
        self._clock = clock
        self.samples = 0
        self.errors = 0
        self._max_proc_percent = 100.0 * (psutil.cpu_count() or 1)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last: tuple[float, Any, Any] | None = None
        # psutil's CPU percentages are "since the previous call": the first call primes them
        _try(lambda: cpu_percent(percpu=True))
        _try(self.process.cpu_percent)
        self._last = (clock(), _try(disk_io_counters), _try(net_io_counters))

    def sample(self) -> Sample:
        """One sample; rates are over the time since the previous call."""
        out: Sample = {}
        per_cpu = _try(lambda: self._cpu_percent(percpu=True))
        if per_cpu:
            out["cpu/percent"] = float(sum(per_cpu) / len(per_cpu))
            for i, value in enumerate(per_cpu):
                out[f"cpu/{i}/percent"] = float(value)
        mem = _try(self._virtual_memory)
        if mem is not None:
            out["mem/percent"] = float(mem.percent)
            out["mem/used_bytes"] = int(mem.used)
            out["mem/available_bytes"] = int(mem.available)
        _read(out, "swap/percent", lambda: float(self._swap_memory().percent))
        _read(out, "disk/percent", lambda: float(self._disk_usage(self.disk_path).percent))
        _read(out, "proc/rss_bytes", lambda: int(self.process.memory_info().rss))
        # psutil counts process CPU in clock ticks (10 ms): over a short interval one tick
        # reads as thousands of percent, more than the machine has
        _read(out, "proc/cpu_percent", lambda: min(float(self.process.cpu_percent()), self._max_proc_percent))
        self._rates(out)
        if self.gpus is not None:
            try:
                self.gpus.sample(out)
            except Exception as exc:
                self._failed("GPU sample", exc)
        self.samples += 1
        return out

    def _rates(self, out: Sample) -> None:
        now, disk, net = self._clock(), _try(self._disk_io), _try(self._net_io)
        assert self._last is not None
        then, disk0, net0 = self._last
        self._last = (now, disk, net)
        dt = now - then
        if dt <= 0:
            return
        if disk is not None and disk0 is not None:
            out["disk/read_bytes_per_s"] = max(0.0, (disk.read_bytes - disk0.read_bytes) / dt)
            out["disk/write_bytes_per_s"] = max(0.0, (disk.write_bytes - disk0.write_bytes) / dt)
        if net is not None and net0 is not None:
            out["net/rx_bytes_per_s"] = max(0.0, (net.bytes_recv - net0.bytes_recv) / dt)
            out["net/tx_bytes_per_s"] = max(0.0, (net.bytes_sent - net0.bytes_sent) / dt)

    # -- the thread ---------------------------------------------------------------------------------

    def start(self) -> SystemSampler:
        """Sample in a daemon thread until :meth:`stop`."""
        if self.publisher is None:
            raise ValueError("SystemSampler.start() needs a publisher")
        self._thread = threading.Thread(target=self._loop, name="metricbus-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        assert self.publisher is not None
        next_at = time.monotonic()
        while True:
            try:
                self.publisher.system(self.sample())
            except Exception as exc:  # a sampler that dies silently would look like a healthy idle node
                self._failed("sample", exc)
            next_at += self.interval
            delay = next_at - time.monotonic()
            if delay < 0:  # fell behind (suspended, overloaded): skip, do not burst
                next_at, delay = time.monotonic(), 0.0
            if self._stop.wait(delay):
                return

    def _failed(self, what: str, exc: Exception) -> None:
        self.errors += 1
        if self.errors == 1:
            log.warning("system sampler: %s failed (counted, sampling goes on): %r", what, exc)

    def __enter__(self) -> SystemSampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

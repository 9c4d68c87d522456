"""Test helpers shared by every test module: ports, waiting on conditions, a real stack.

No mocks: a :class:`Stack` is ``metricbus up`` in a subprocess on random loopback ports,
and tests read what its sinks wrote to real files.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from bus.testing import free_port, wait_until
from sinks.jsonl_files import read_records, run_dir

__all__ = ["REPO", "Stack", "free_port", "records", "wait_until"]

REPO = Path(__file__).resolve().parent.parent
#: Debian's Chromium, and the flags it runs headless with on these machines (never a downloaded
#: browser: `playwright install` cannot reach its servers here)
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def records(root: Path, run: str, kind: str) -> list[dict[str, Any]]:
    """What the JSONL sink wrote for ``run`` and ``kind`` (``metrics``, ``episode`` …)."""
    return list(read_records(run_dir(root, run), [kind]))


class Stack:
    """``metricbus up`` on a config written to ``workdir`` with random ports.

    ``sinks`` and ``extra`` are merged into the YAML; the sampler is off unless asked for.
    """

    def __init__(
        self,
        workdir: Path,
        sinks: Mapping[str, Any] | None = None,
        *,
        sampler: bool = False,
        extra: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.frontend = f"tcp://127.0.0.1:{free_port()}"
        self.backend = f"tcp://127.0.0.1:{free_port()}"
        self.root = workdir / "logs"
        config: dict[str, Any] = {
            "broker": {"frontend": self.frontend, "backend": self.backend, "stats_interval": 1.0},
            "sinks": dict(sinks) if sinks is not None else {"jsonl": {"type": "jsonl", "root": str(self.root)}},
            "sampler": {"enabled": sampler, "interval": 0.5},
        }
        for key, value in (extra or {}).items():
            if isinstance(value, dict) and isinstance(config.get(key), dict):
                config[key] = {**config[key], **value}
            else:
                config[key] = value
        self.config = config
        self.config_path = workdir / "metricbus.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.stdout_path = workdir / "up.out"
        self.stderr_path = workdir / "up.err"
        self.ready_file = workdir / "up.ready"
        self.env = {**os.environ, "METRICBUS_ENDPOINT": self.frontend, "METRICBUS_BACKEND": self.backend, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> Stack:
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "metricbus", "up", str(self.config_path), "--ready-file", str(self.ready_file)],
                cwd=self.workdir,
                stdout=out,
                stderr=err,
                env=self.env,
            )
        wait_until(
            lambda: self.ready_file.exists() or self.proc.poll() is not None, timeout, "metricbus up to be ready"
        )
        if self.proc.poll() is not None:
            raise AssertionError(f"metricbus up exited {self.proc.returncode}:\n{self.stdout()}\n{self.stderr()}")
        return self

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def child_pid(self, name: str) -> int:
        """PID of a child (``broker`` or ``sink NAME``), from the process table."""
        marker = ["broker"] if name == "broker" else ["sink", name.removeprefix("sink ")]
        assert self.proc is not None
        for pid in _children(self.proc.pid):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            words = [a.decode() for a in argv if a]
            if "metricbus" in words:
                rest = words[words.index("metricbus") + 1 :]
                if rest[: len(marker)] == marker:
                    return pid
        raise LookupError(f"no child {name!r} of metricbus up")

    def stop(self, timeout: float = 40.0) -> int:
        """SIGTERM ``up`` and wait for it; returns its exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"metricbus up did not stop in {timeout} s:\n{self.stdout()}\n{self.stderr()}"
            ) from None

    def records(self, run: str, kind: str) -> list[dict[str, Any]]:
        return records(self.root, run, kind)

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _children(pid: int) -> Iterator[int]:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            yield int(entry.name)


def jsonl_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

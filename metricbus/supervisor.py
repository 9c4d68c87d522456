"""``metricbus up``: the broker, every sink and the sampler as child processes of one config.

Children run in their own session so that a terminal's Ctrl-C reaches only the
supervisor, which then stops them in order: the sampler (a publisher), the broker (it
forwards until its frontend is quiet), then the sinks (they drain, flush and close). A
child that dies is restarted with exponential back-off. ``up`` starts what can start: a
sink (or the sampler) that fails to start is reported by name and retried with the same
back-off while the rest of the stack runs; only a broker that cannot start (its ports
taken, say) fails ``up`` at once, since nothing works without it.

Readiness is a file, never printed text: each child writes its ``--ready-file`` when it is
up, and ``up --ready-file PATH`` writes PATH (holding its pid) once every child is, and
removes it when it stops. The lines ``up`` prints are for people.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bus.config import Config, SinkConfig
from bus.process import PARENT_ENV, mark_ready, stop_with_parent

_BACKOFF_START = 0.5
_BACKOFF_MAX = 30.0
#: A child that ran this long before dying is restarted after the shortest back-off again.
_STABLE_AFTER = 30.0
_START_TIMEOUT = 60.0
_AWAIT_SUBSCRIBERS = 5.0
_STOP_TIMEOUT = {"sampler": 5.0, "broker": 10.0, "sink": 20.0}


def say(text: str) -> None:
    print(f"metricbus: {text}", flush=True)


@dataclass
class Child:
    name: str
    role: str  # "broker", "sink" or "sampler"
    argv: list[str]
    ready_file: Path
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    backoff: float = _BACKOFF_START
    restart_at: float | None = None
    exit_codes: list[int] = field(default_factory=list)

    def start(self) -> None:
        self.ready_file.unlink(missing_ok=True)
        env = {**os.environ, PARENT_ENV: str(os.getpid())}
        self.proc = subprocess.Popen(self.argv, env=env, start_new_session=True)
        self.started_at = time.monotonic()
        self.restart_at = None

    @property
    def ready(self) -> bool:
        return self.ready_file.exists()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Supervisor:
    """Starts, watches and stops the children that ``config`` describes."""

    def __init__(self, config: Config, config_path: Path, ready_file: Path | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.ready_file = ready_file
        self._stop = threading.Event()
        self._state = Path(tempfile.mkdtemp(prefix="metricbus-up-"))
        base = [sys.executable, "-m", "metricbus"]
        cfg = ["--config", str(config_path)]
        self.children: list[Child] = []

        def child(name: str, role: str, argv: list[str]) -> Child:
            ready = self._state / f"{name}.ready"
            return Child(name, role, [*base, *argv, *cfg, "--ready-file", str(ready)], ready)

        # After a restart, publishers hold what they publish until the sinks are back.
        self.broker = child("broker", "broker", ["broker", "--await-subscribers", str(_AWAIT_SUBSCRIBERS)])
        self.sinks = [child(f"sink {n}", "sink", ["sink", n]) for n in config.sinks]
        self.sampler = child("sampler", "sampler", ["sample"]) if config.sampler.enabled else None
        self.children = [self.broker, *self.sinks, *([self.sampler] if self.sampler else [])]

    def request_stop(self, *_: object) -> None:
        self._stop.set()

    def run(self) -> int:
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGTERM, self.request_stop)
        # started by `metricbus demo` (which sets METRICBUS_PARENT_PID): go when it goes
        stop_with_parent(self._stop)
        if self.ready_file is not None:
            self.ready_file.unlink(missing_ok=True)
        try:
            if not self._start_all():
                return 1
            self._announce()
            if self.ready_file is not None:
                mark_ready(str(self.ready_file))
            while not self._stop.wait(0.2):
                self._watch()
            say("stopping (sinks flush before exit)")
            return 0
        finally:
            self._stop_all()

    # -- start ------------------------------------------------------------------------------

    def _start_all(self) -> bool:
        self.broker.start()
        if not self._await_ready([self.broker]):
            return False
        for c in self.sinks:
            c.start()
        self._await_started(self.sinks)
        if self.sampler and not self._stop.is_set():
            self.sampler.start()
            self._await_started([self.sampler])
        return not self._stop.is_set()

    def _await_started(self, children: list[Child]) -> None:
        """Wait until each child is ready or has died; the dead are reported, and _watch retries them."""
        deadline = time.monotonic() + _START_TIMEOUT
        waiting = list(children)
        while waiting and not self._stop.is_set() and time.monotonic() < deadline:
            for c in list(waiting):
                if c.ready:
                    waiting.remove(c)
                elif not c.alive():
                    waiting.remove(c)
                    code = c.proc.returncode if c.proc else None
                    say(f"{c.name} failed to start (exit code {code}); see its error above; the rest runs")
            time.sleep(0.05)  # the ready files are written by other processes; nothing to wait on
        if waiting and not self._stop.is_set():
            say(f"{', '.join(c.name for c in waiting)} not ready after {_START_TIMEOUT:.0f} s; the rest runs")

    def _await_ready(self, children: list[Child]) -> bool:
        deadline = time.monotonic() + _START_TIMEOUT
        while not self._stop.is_set() and time.monotonic() < deadline:
            for c in children:
                if not c.alive() and not c.ready:
                    code = c.proc.returncode if c.proc else None
                    say(f"{c.name} failed to start (exit code {code}); see its error above")
                    return False
            if all(c.ready for c in children):
                return True
            time.sleep(0.05)  # the ready files are written by other processes; nothing to wait on
        if not self._stop.is_set():
            late = ", ".join(c.name for c in children if not c.ready)
            say(f"{late} not ready after {_START_TIMEOUT:.0f} s")
        return False

    def _announce(self) -> None:
        b = self.config.broker
        say(f"config {self.config_path}")
        say(f"broker: publishers connect to {b.connect_frontend}, subscribers to {b.connect_backend}")
        for name, sink in self.config.sinks.items():
            say(f"sink {name} ({sink.type}, topics {list(sink.topics)}){_where(sink)}")
        if self.sampler:
            say(f"sampler: system metrics every {self.config.sampler.interval:g} s")
        say(f"ready (pid {os.getpid()}); Ctrl-C stops everything")

    # -- watch and restart ---------------------------------------------------------------------

    def _watch(self) -> None:
        now = time.monotonic()
        for c in self.children:
            if c.restart_at is not None:
                if now >= c.restart_at:
                    c.restarts += 1
                    say(f"restarting {c.name} (restart #{c.restarts})")
                    c.start()
                continue
            if c.alive() or c.proc is None:
                continue
            code = c.proc.returncode
            c.exit_codes.append(code)
            if now - c.started_at >= _STABLE_AFTER:
                c.backoff = _BACKOFF_START
            c.restart_at = now + c.backoff
            say(f"{c.name} exited with code {code}; restarting in {c.backoff:.1f} s")
            c.backoff = min(c.backoff * 2, _BACKOFF_MAX)

    # -- stop -----------------------------------------------------------------------------------

    def _stop_all(self) -> None:
        order: list[list[Child]] = [[self.sampler] if self.sampler else [], [self.broker], self.sinks]
        for group in order:
            live = [c for c in group if c.alive()]
            for c in live:
                assert c.proc is not None
                c.proc.send_signal(signal.SIGTERM)
            for c in live:
                assert c.proc is not None
                try:
                    c.proc.wait(timeout=_STOP_TIMEOUT[c.role])
                except subprocess.TimeoutExpired:
                    say(f"{c.name} did not stop in {_STOP_TIMEOUT[c.role]:.0f} s; killing it")
                    c.proc.kill()
                    c.proc.wait()
        for f in self._state.iterdir():
            f.unlink(missing_ok=True)
        self._state.rmdir()
        if self.ready_file is not None:
            self.ready_file.unlink(missing_ok=True)
        say("stopped")


def _where(sink: SinkConfig) -> str:
    """Where a sink serves or writes, from its options and its constructor's defaults."""
    from bus.registry import options_of, resolve

    try:
        defaults = {k: p.default for k, p in options_of(resolve(sink.type)).items()}
    except LookupError:
        return ""
    options = {**defaults, **sink.options}
    if isinstance(options.get("port"), int):
        return f" -> http://{options.get('host') or '127.0.0.1'}:{options['port']}"
    for key in ("root", "logdir", "path"):
        if isinstance(options.get(key), str):
            return f" -> {Path(options[key]).resolve()}"
    return ""

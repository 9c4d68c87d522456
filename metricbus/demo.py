"""``metricbus demo``: the whole stack, and real PPO agents on CartPole-v1 feeding it.

It starts ``metricbus up`` on the config (unless a broker already answers on its
frontend), trains ``--runs`` PPO agents with different seeds side by side — one process
each, one torch thread each, so two runs share two cores without fighting — with
:class:`~publishers.sb3.MetricbusCallback`, says where the dashboard and the logs are,
and then keeps the stack up until Ctrl-C (or stops it at once with ``--exit``).

``python -m metricbus.demo --run ID --seed N --timesteps T --endpoint E`` is one
training process; the command starts those.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import zmq

from bus import defaults
from bus.config import Config, default_config_path, load_config
from bus.curve import CurveKeys
from bus.process import PARENT_ENV, stop_with_parent

_STACK_START_TIMEOUT = 90.0
_STACK_STOP_TIMEOUT = 60.0
_WORKER_STOP_TIMEOUT = 15.0


def say(text: str) -> None:
    print(f"metricbus demo: {text}", flush=True)


# -- is a stack already there? ----------------------------------------------------------------------


def broker_answers(endpoint: str, curve: CurveKeys | None = None, timeout: float = 0.5) -> bool:
    """True when a broker on ``endpoint`` subscribes to a new publisher within ``timeout``.

    The same handshake as :class:`bus.publisher.Publisher`, but on a bare socket that
    sends nothing, so probing leaves no trace on the bus.
    """
    context = zmq.Context()
    sock = context.socket(zmq.XPUB)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        if curve is not None:
            curve.apply(sock)
        sock.connect(endpoint)
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            if not sock.poll(int(remaining * 1000) + 1, zmq.POLLIN):
                return False
            if sock.recv()[:1] == b"\x01":
                return True
        return False
    finally:
        sock.close()
        context.term()


class StackProcess:
    """``metricbus up CONFIG`` as a child process; it says it is up with its ``--ready-file``."""

    def __init__(self, config_path: Path) -> None:
        self._state = Path(tempfile.mkdtemp(prefix="metricbus-demo-"))
        self.ready_file = self._state / "up.ready"
        # own session: a terminal's Ctrl-C reaches only the demo, which stops the runs
        # first (they report "interrupted" through the stack) and the stack after them
        # METRICBUS_PARENT_PID: should the demo be killed outright, the stack stops by itself
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "metricbus", "up", str(config_path), "--ready-file", str(self.ready_file)],
            start_new_session=True,
            env={**os.environ, PARENT_ENV: str(os.getpid())},
        )

    def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready_file.exists():
                return True
            if self.proc.poll() is not None:
                return False
            time.sleep(0.1)  # written by another process: nothing to wait on but the file
        return False

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(_STACK_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                say(f"the stack did not stop in {_STACK_STOP_TIMEOUT:.0f} s; killing it")
                self.proc.kill()
                self.proc.wait()
        self.ready_file.unlink(missing_ok=True)
        self._state.rmdir()
        return self.proc.returncode


# -- where to look --------------------------------------------------------------------------------


def _announce(config: Config, started: bool) -> None:
    dashboards = [s for s in config.sinks.values() if s.type == "dashboard" or s.type.endswith(":DashboardSink")]
    for sink in dashboards:
        host = str(sink.options.get("host", defaults.DASHBOARD_HOST))
        if host in ("0.0.0.0", "::", "*"):  # bound everywhere: this machine reaches it on loopback
            host = defaults.DASHBOARD_HOST
        port = sink.options.get("port", defaults.DASHBOARD_PORT)
        say(f"dashboard: http://{host}:{port}")
    if not dashboards:
        say("no dashboard sink in this config; watch live with `metricbus tail metrics/ episode/`")
    for sink in config.sinks.values():
        if sink.type == "jsonl":
            root = Path(str(sink.options.get("root", defaults.LOG_ROOT)))
            where = root.resolve() if started else f"{root} (under the directory where that `metricbus up` runs)"
            say(f"logs: {where}/<run>/{{metrics,episodes,events}}.jsonl and {root}/_nodes/<node>/system.jsonl")
        elif sink.type == "websocket":
            host = str(sink.options.get("host", "127.0.0.1"))
            host = "127.0.0.1" if host in ("0.0.0.0", "::", "*") else host
            say(f"live JSON stream: ws://{host}:{sink.options.get('port', 8765)} (examples/live.html draws it)")


# -- the command ------------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    from bus.process import stop_on_signals
    from bus.security import client_curve

    if args.runs < 1 or args.timesteps < 1:
        print("metricbus: demo: --runs and --timesteps must be at least 1", file=sys.stderr)
        return 2
    env_config = os.environ.get(defaults.ENV_CONFIG)
    config_path = Path(args.config or env_config or default_config_path()).resolve()
    config = load_config(config_path)
    frontend = config.broker.connect_frontend
    stop = stop_on_signals()

    stack: StackProcess | None = None
    if broker_answers(frontend, client_curve(config)):
        say(f"a broker already answers on {frontend}; using that stack")
    else:
        say(f"starting the stack from {config_path}")
        stack = StackProcess(config_path)
        if not stack.wait_ready(_STACK_START_TIMEOUT):
            say("the stack did not come up; see its messages above")
            stack.stop()
            return 1
    _announce(config, started=stack is not None)

    stamp = time.strftime("%Y%m%d-%H%M%S")
    fault: str | None = getattr(args, "fault", None)
    runs = [(seed, f"ppo-cartpole-{seed}-{stamp}") for seed in range(args.runs)]
    fault_argv: list[str] = []
    if fault:
        # one healthy run and one faulty one beside it: the alert is the difference
        runs = [(0, f"ppo-cartpole-0-{stamp}"), (1, f"ppo-cartpole-1-{fault}-{stamp}")]
        fault_argv = ["--fault", fault, "--fault-at", str(max(1, args.timesteps // 3))]
        say(f"{runs[1][1]} gets the fault {fault!r} at step {args.timesteps // 3}; watch the dashboard's alerts")
        if fault == "freeze":
            say("a frozen run stays frozen (alive, heart-beating, no progress) until Ctrl-C")
    say(f"training {len(runs)} PPO run(s) on CartPole-v1, {args.timesteps} steps each: {', '.join(r for _, r in runs)}")
    env = {**os.environ, defaults.ENV_ENDPOINT: frontend, PARENT_ENV: str(os.getpid())}
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "metricbus.demo",
                "--run",
                run,
                "--seed",
                str(seed),
                "--timesteps",
                str(args.timesteps),
                "--endpoint",
                frontend,
                *(fault_argv if i == 1 else []),
            ],
            env=env,
            # own session: the demo alone gets a terminal's Ctrl-C and passes on exactly one
            # interrupt, so a second one cannot cut short a run reporting "interrupted"
            start_new_session=True,
        )
        for i, (seed, run) in enumerate(runs)
    ]
    codes = _wait_workers(workers, stop)
    # the faulty run may crash or be killed: that is what it was asked to do
    outcomes = enumerate(zip(runs, codes, strict=True))
    failed = [run for i, ((_, run), code) in outcomes if code != 0 and not (fault and i)]
    interrupted = stop.is_set()
    if interrupted:
        say("interrupted; every run reported how far it got")
    elif failed:
        say(f"run(s) that did not finish: {', '.join(failed)} (exit codes {codes})")
    else:
        say("training finished")
    if stack is not None:
        if not args.exit and not stop.is_set():
            say("the stack keeps running so you can look around; Ctrl-C stops it")
            stop.wait()
        say("stopping the stack")
        stack.stop()
    if interrupted:
        return 130
    return 1 if failed else 0


def _wait_workers(workers: list[subprocess.Popen[bytes]], stop: threading.Event) -> list[int]:
    while any(w.poll() is None for w in workers):
        if stop.wait(0.2):
            # each run reports run_ended "interrupted" through the stack, which is still up
            for w in workers:
                if w.poll() is None:
                    w.send_signal(signal.SIGINT)
            deadline = time.monotonic() + _WORKER_STOP_TIMEOUT
            for w in workers:
                try:
                    w.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    w.kill()
                    w.wait()
            break
    return [w.returncode for w in workers]


# -- one training process -------------------------------------------------------------------------


def train(
    run: str, seed: int, timesteps: int, endpoint: str | None, fault: str | None = None, fault_at: int = 0
) -> None:
    """PPO on CartPole-v1 with RL-Zoo's tuned hyper-parameters, published as ``run``.

    ``fault``: one of :data:`publishers.faults.SB3_FAULTS`, injected at step ``fault_at``.
    """
    import gymnasium as gym
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import CallbackList
    from stable_baselines3.common.env_util import make_vec_env

    from publishers.faults import FaultCallback, FaultSwitch, FaultyEnv
    from publishers.sb3 import MetricbusCallback

    torch.set_num_threads(1)  # one core per run: runs side by side instead of fighting
    switch = FaultSwitch(fault)
    env = make_vec_env(lambda: FaultyEnv(gym.make("CartPole-v1"), switch, seed), n_envs=8, seed=seed)
    model = PPO(
        "MlpPolicy",
        env,
        n_steps=32,
        batch_size=256,
        n_epochs=20,
        gamma=0.98,
        gae_lambda=0.8,
        learning_rate=1e-3,
        ent_coef=0.0,
        seed=seed,
        verbose=0,
    )
    callback = MetricbusCallback(run=run, endpoint=endpoint)
    callbacks: list[Any] = [callback]
    if fault:
        callbacks.append(FaultCallback(fault, fault_at, switch, publisher=lambda: callback.publisher))
    model.learn(timesteps, callback=CallbackList(callbacks))
    rewards = [e["r"] for e in model.ep_info_buffer or []]
    mean = sum(rewards) / len(rewards) if rewards else float("nan")
    print(
        f"metricbus demo: {run}: {model.num_timesteps} steps, {callback.episodes} episodes, "
        f"mean reward of the last {len(rewards)}: {mean:.1f}",
        flush=True,
    )


def _interrupt_when_parent_dies() -> None:
    """A demo killed outright must not leave its runs training: they stop as if Ctrl-C'd."""
    parent_gone = threading.Event()
    stop_with_parent(parent_gone)

    def interrupt() -> None:
        parent_gone.wait()
        os.kill(os.getpid(), signal.SIGINT)  # KeyboardInterrupt: the run reports "interrupted"

    threading.Thread(target=interrupt, daemon=True, name="parent-gone").start()


def _worker_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m metricbus.demo", description="one demo training run")
    parser.add_argument("--run", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timesteps", type=int, default=50_000)
    parser.add_argument("--endpoint")
    parser.add_argument("--fault")
    parser.add_argument("--fault-at", type=int, default=0)
    args = parser.parse_args(argv)
    _interrupt_when_parent_dies()
    try:
        train(args.run, args.seed, args.timesteps, args.endpoint, args.fault, args.fault_at)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # an injected fault that crashes the run: the bus has run_ended "failed"
        if not args.fault:
            raise
        print(f"metricbus demo: {args.run}: failed as injected: {type(exc).__name__}: {exc}", flush=True)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main())

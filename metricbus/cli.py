"""The ``metricbus`` command line.

Each subcommand imports what it needs when it runs, so ``metricbus check`` or
``metricbus tail`` on a bare install never imports torch or Dash.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from bus import defaults
from bus.config import (
    Config,
    ConfigError,
    default_config_path,
    load_config,
    publisher_endpoint,
    subscriber_endpoint,
)
from bus.message import default_node

if TYPE_CHECKING:  # the runner (and zmq) load only for the commands that run a sink
    from bus.subscriber import SinkRunner

log = logging.getLogger("metricbus")


def _config_path(value: str | None) -> Path:
    if value:
        return Path(value)
    env = os.environ.get(defaults.ENV_CONFIG)
    return Path(env) if env else default_config_path()


def _load(value: str | None) -> tuple[Config, Path]:
    path = _config_path(value)
    return load_config(path), path.resolve()


# -- commands -------------------------------------------------------------------------------


def cmd_up(args: argparse.Namespace) -> int:
    from metricbus.supervisor import Supervisor

    config, path = _load(args.config or args.config_option)
    ready_file = Path(args.ready_file).resolve() if args.ready_file else None
    return Supervisor(config, path, ready_file).run()


def cmd_broker(args: argparse.Namespace) -> int:
    from bus.broker import run_broker
    from bus.process import mark_ready, stop_on_signals
    from bus.security import broker_curve

    config, _ = _load(args.config)
    stop = stop_on_signals()
    run_broker(
        config.broker,
        stop,
        broker_curve(config),
        on_ready=lambda: mark_ready(args.ready_file),
        await_subscribers=args.await_subscribers,
    )
    return 0


def cmd_sink(args: argparse.Namespace) -> int:
    from bus.process import mark_ready, stop_on_signals
    from bus.registry import create
    from bus.security import client_curve
    from bus.subscriber import SinkContext, SinkRunner

    config, _ = _load(args.config)
    if args.name not in config.sinks:
        known = ", ".join(config.sinks) or "none"
        print(
            f"metricbus: no sink {args.name!r} in {args.config or 'the default config'} (sinks: {known})",
            file=sys.stderr,
        )
        return 2
    sink_config = config.sinks[args.name]
    stop = stop_on_signals()
    curve = client_curve(config)
    context = SinkContext(
        name=args.name,
        frontend=config.broker.connect_frontend,
        backend=config.broker.connect_backend,
        node=default_node(),
        config=config,
        curve=curve,
    )
    sink = create(sink_config, context)
    runner = SinkRunner(
        sink,
        name=args.name,
        backend=config.broker.connect_backend,
        frontend=config.broker.connect_frontend,
        topics=sink_config.topics,
        batch_size=sink_config.batch_size,
        flush_interval=sink_config.flush_interval,
        queue=sink_config.queue,
        max_bytes=config.broker.max_message_bytes,
        curve=curve,
    )
    _stop_runner_on(stop, runner)
    runner.run(on_ready=lambda: mark_ready(args.ready_file))
    return 0


def _stop_runner_on(stop: threading.Event, runner: SinkRunner) -> None:
    # The signal handler only sets an event; the runner's loop looks at its own flag.
    def wait() -> None:
        stop.wait()
        runner.stop()

    threading.Thread(target=wait, daemon=True, name="stop-watch").start()


def cmd_tail(args: argparse.Namespace) -> int:
    from bus.process import stop_on_signals
    from bus.subscriber import SinkRunner
    from sinks.console import ConsoleSink

    endpoint = args.endpoint
    if endpoint is None:
        endpoint = load_config(args.config).broker.connect_backend if args.config else subscriber_endpoint()
    stop = stop_on_signals()
    sink = ConsoleSink(max_fields=args.fields, mode="table" if args.table else "lines", refresh=args.refresh)
    from bus.security import default_client_curve  # CURVE keys from the env or $METRICBUS_CONFIG

    runner = SinkRunner(
        sink,
        name="tail",
        backend=endpoint,
        topics=args.prefixes or [""],
        flush_interval=0.1,
        curve=default_client_curve(),
    )
    _stop_runner_on(stop, runner)
    runner.run()
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    config, path = _load(args.config)
    sinks = ", ".join(config.sinks) or "none"
    print(f"{path}: ok — broker {config.broker.frontend} / {config.broker.backend}, sinks: {sinks}")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from bus.process import stop_on_signals
    from metricbus.replay import replay

    endpoint = args.endpoint or publisher_endpoint()
    paths = [Path(p) for p in args.files]
    for p in paths:
        if not p.is_file():
            print(f"metricbus: replay: no such file: {p}", file=sys.stderr)
            return 2
    count = replay(paths, endpoint, speed=args.speed, stop=stop_on_signals())
    print(f"metricbus: replayed {count} records to {endpoint}")
    return 0


def cmd_sinks(args: argparse.Namespace) -> int:
    from bus.registry import describe_all

    for info in describe_all():
        print(f"{info.name}  [{info.origin}] {info.target}")
        print(f"    {info.summary}")
        for option, kind, default in info.options:
            print(f"    {option}: {kind} = {default}")
    print("type: a name above, or module:Class; options are the YAML keys beside type/topics/batch_size/...")
    return 0


def _lazy(target: str) -> Callable[[argparse.Namespace], int]:
    """A command implemented in another module, imported only when it runs."""

    def run(args: argparse.Namespace) -> int:
        import importlib

        module_name, _, attr = target.partition(":")
        fn: Callable[[argparse.Namespace], int] = getattr(importlib.import_module(module_name), attr)
        return fn(args)

    return run


# -- parser ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="metricbus", description="Real-time metrics bus for RL/DL training.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, fn: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=fn)
        return p

    def config_option(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", "-c", help="YAML config (default: $METRICBUS_CONFIG, else configs/default.yaml)")

    p = command("up", cmd_up, "start the broker, every sink and the sampler from one config")
    p.add_argument("config", nargs="?", help="YAML config (default: the embedded configs/default.yaml)")
    p.add_argument("--config", "-c", dest="config_option", help=argparse.SUPPRESS)
    p.add_argument("--ready-file", help="write this file (holding the pid) once everything is up; removed on stop")

    p = command("broker", cmd_broker, "run the broker (XSUB/XPUB proxy) alone")
    config_option(p)
    p.add_argument("--ready-file", help=argparse.SUPPRESS)
    p.add_argument(
        "--await-subscribers",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="hold publishers (in their backlog) until sinks subscribe, at most this long (`up` uses 5)",
    )

    p = command("sink", cmd_sink, "run one sink of a config in this process")
    p.add_argument("name", help="the sink's name under `sinks:`")
    config_option(p)
    p.add_argument("--ready-file", help=argparse.SUPPRESS)

    p = command("tail", cmd_tail, "print live messages, one line each (or a refreshing table per run)")
    p.add_argument("prefixes", nargs="*", metavar="PREFIX", help="topic prefixes such as metrics/ or episode/ppo-1")
    p.add_argument("--endpoint", help="broker backend (default: $METRICBUS_BACKEND or the config's)")
    p.add_argument("--fields", type=int, default=12, help="at most this many fields per line (or rows per run)")
    p.add_argument("--table", action="store_true", help="latest value of each metric, one table per run")
    p.add_argument("--refresh", type=float, default=1.0, help="seconds between table redraws (default 1)")
    config_option(p)

    p = command("check", cmd_check, "validate a config without starting anything")
    p.add_argument("config", nargs="?", help="YAML config (default: the embedded configs/default.yaml)")

    p = command("replay", cmd_replay, "republish recorded JSONL records onto the bus")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--endpoint", help="broker frontend (default: $METRICBUS_ENDPOINT or the config's)")
    p.add_argument("--speed", type=float, default=0.0, help="1 = recorded pace, 0 = as fast as possible (default)")

    command("sinks", cmd_sinks, "list the sink types available, with their options")

    p = command("demo", _lazy("metricbus.demo:cmd_demo"), "train PPO on CartPole with the whole stack running")
    p.add_argument("--timesteps", type=int, default=50_000, help="steps per run (default 50000)")
    p.add_argument("--runs", type=int, default=2, help="runs side by side, different seeds (default 2)")
    p.add_argument("--exit", action="store_true", help="stop the stack when training ends")
    p.add_argument(
        "--fault",
        choices=["nan", "nan-loss", "explode", "collapse", "stagnate", "freeze", "kill"],
        help="train one run with this fault (injected a third of the way) beside a healthy one, to see alerts fire",
    )
    config_option(p)

    p = command("sample", _lazy("metricbus.sample:cmd_sample"), "publish this node's system metrics")
    p.add_argument("--interval", type=float, help="seconds between samples (default: the config's)")
    p.add_argument("--endpoint", help="broker frontend (default: $METRICBUS_ENDPOINT or the config's)")
    config_option(p)
    p.add_argument("--ready-file", help=argparse.SUPPRESS)

    p = command("report", _lazy("metricbus.report:cmd_report"), "write an HTML (or markdown) report of runs")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("-o", "--output", help="output file (default: report.html or report.md)")
    p.add_argument("--format", choices=("html", "md"), default="html")

    p = command("keys", _lazy("metricbus.keys:cmd_keys"), "create a CURVE key pair for the broker or a client")
    p.add_argument("name", help="key name, e.g. broker or worker-1")
    p.add_argument("--dir", default="keys", help="directory for the key files (default: keys/)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from bus.subscriber import configure_logging

    configure_logging(logging.DEBUG if args.verbose else logging.INFO)
    if isinstance(getattr(args, "config", None), str):
        # Publishers this process makes (the sampler's, a sink's alerts) then find the
        # config's endpoint and CURVE keys the way a training script does.
        os.environ[defaults.ENV_CONFIG] = str(Path(args.config).resolve())
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"metricbus: config error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `metricbus sinks | head`: the reader left; say nothing more, like other Unix tools
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())

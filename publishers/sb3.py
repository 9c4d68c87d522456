"""stable-baselines3 on the bus in one line:

    model.learn(100_000, callback=MetricbusCallback(run="ppo-cartpole-1"))

What it publishes, for run ``run``:

- every record SB3's logger dumps, as one ``metrics`` message at the dumped step. A
  ``KVWriter`` added to the model's logger sees exactly what ``progress.csv`` gets, when it
  gets it (PPO dumps *before* it trains, so reading ``logger.name_to_value`` from a
  callback would mix two iterations);
- every finished episode of every env (``info["episode"]`` from ``Monitor``: ``reward``,
  ``length``, ``time``, the Monitor's extra ``info_keywords``, ``is_success``, ``env``);
- ``run_started`` (algorithm, policy, env, hyper-parameters) and ``run_ended``
  (``completed``, ``interrupted``, ``failed`` with the error text);
- every ``grad_every``-th update: gradient health of the policy (see
  :mod:`publishers.grad_stats`).

Episodes and gradient statistics are queued and sent in bursts (see ``_BURST``): their
``step`` is the step they happened at, their ``ts`` at most ``_BURST_DELAY`` late.

Nothing here may stop or slow training: publishing errors are counted in ``errors``
and logged once, and ``_on_step`` always returns True.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import KVWriter, filter_excluded_keys

from bus.message import check_run_id
from bus.publisher import Publisher
from publishers._values import json_safe
from publishers.grad_stats import GradientTap

log = logging.getLogger("metricbus.sb3")

#: The name under which SB3's ``exclude=`` can keep a key off the bus.
FORMAT_NAME = "metricbus"
#: Hyper-parameters worth a line in ``run_started``, when the algorithm has them.
_HYPERPARAMETERS = (
    "learning_rate",
    "n_steps",
    "batch_size",
    "n_epochs",
    "gamma",
    "gae_lambda",
    "clip_range",
    "clip_range_vf",
    "normalize_advantage",
    "ent_coef",
    "vf_coef",
    "max_grad_norm",
    "use_sde",
    "target_kl",
    "buffer_size",
    "learning_starts",
    "tau",
    "train_freq",
    "gradient_steps",
    "target_update_interval",
    "target_entropy",
    "exploration_initial_eps",
    "exploration_final_eps",
    "exploration_fraction",
    "policy_kwargs",
    "seed",
    "device",
)
_CLOCK_CHECK_EVERY = 64  # steps between looks at the clock: one per step would show
#: Class attributes that mark a guard subclass made by _guard_failures, and whether its callback still runs.
_GUARD: Final = "_metricbus_guard"
_ACTIVE: Final = "_metricbus_guard_active"
#: Episodes and gradient statistics wait in a short queue and go out together. Each
#: message sent on its own wakes ZeroMQ's I/O thread, which in a training loop costs
#: ~190 µs of the process's CPU per message (cold caches); 8 sent together cost ~60 µs each.
_BURST = 32
_BURST_DELAY = 0.5  # seconds a queued message may wait; its step is exact, its ts this late


class MetricbusOutputFormat(KVWriter):
    """An SB3 logger output format that hands each dumped record to ``emit(record, step)``."""

    def __init__(self, emit: Callable[[dict[str, Any], int], None]) -> None:
        self.emit = emit

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, tuple[str, ...]], step: int = 0) -> None:
        record: dict[str, Any] = {}
        for key, value in filter_excluded_keys(key_values, key_excluded, FORMAT_NAME).items():
            plain = _scalar(value)
            if plain is not _SKIP:
                record[key] = plain
        if record:
            self.emit(record, step)

    def close(self) -> None:
        pass


_SKIP = object()


def _scalar(value: Any) -> Any:
    # progress.csv holds str(value); the bus carries the same number, not its text
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.item() if value.size == 1 else _SKIP
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else _SKIP
    return _SKIP


class MetricbusCallback(BaseCallback):
    """Publishes an SB3 training onto the bus; see the module docstring.

    ``endpoint``: the broker frontend (default ``METRICBUS_ENDPOINT``, else the config's).
    ``run``: the run id (default ``<algo>-<env>-<time>``). ``publisher``: use this one
    instead (it is flushed, never closed). ``grad_every``: gradient statistics every that
    many updates, ``0`` for none.
    """

    def __init__(
        self,
        run: str | None = None,
        *,
        endpoint: str | None = None,
        publisher: Publisher | None = None,
        grad_every: int = 10,
        heartbeat_interval: float = 10.0,
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose)
        self.run = check_run_id(run) if run is not None else None  # a bad id fails here, not mid-run
        self.endpoint = endpoint
        self.grad_every = grad_every
        self.heartbeat_interval = heartbeat_interval
        self.errors = 0
        self.episodes = 0
        self.publisher = publisher
        self._own_publisher = publisher is None
        self._writer = MetricbusOutputFormat(self._publish_record)
        self._tap: Any = None
        self._guarded_class: type | None = None
        self._ended = True
        self._last_publish = 0.0
        self._queue: list[tuple[str, Mapping[str, Any], int]] = []
        self._queued_at = 0.0

    # -- SB3 template methods ------------------------------------------------------------------

    def _init_callback(self) -> None:
        if self.run is None:
            self.run = _default_run_id(self.model)
        if self.publisher is None:
            self.publisher = Publisher(self.endpoint, run=self.run, heartbeat_interval=self.heartbeat_interval)
        outputs = self.model.logger.output_formats
        if self._writer not in outputs:
            outputs.append(self._writer)

    def _on_training_start(self) -> None:
        self._ended = False
        try:
            self._guard_failures()
            if self.grad_every > 0:
                self._attach_gradients()
            self._publish("event", {"event": "run_started", "config": self._run_config()})
        except Exception as exc:  # an odd model or env must not stop the training it describes
            self._failed(exc)

    def _on_step(self) -> bool:
        try:
            infos = self.locals.get("infos")
            if infos:
                for env, info in enumerate(infos):
                    if "episode" in info:
                        self._publish_episode(env, info)
            if self.n_calls % _CLOCK_CHECK_EVERY == 0:
                now = time.monotonic()
                if self._queue and now - self._queued_at >= _BURST_DELAY:
                    self._send_queued()
                elif now - self._last_publish >= self.heartbeat_interval:
                    self._heartbeat()
        except Exception as exc:
            self._failed(exc)
        return True

    def _on_training_end(self) -> None:
        self._end("completed")

    # -- what is published -----------------------------------------------------------------------

    def _publish_record(self, record: dict[str, Any], step: int) -> None:
        self._send_queued()  # what happened before the dump goes first
        self._publish("metrics", record, step)

    def _publish_episode(self, env: int, info: Mapping[str, Any]) -> None:
        episode = info["episode"]
        data: dict[str, Any] = {
            "reward": float(episode["r"]),
            "length": int(episode["l"]),
            "time": float(episode["t"]),
            "env": env,
        }
        for key, value in episode.items():
            if key not in ("r", "l", "t"):
                data[key] = _info_value(value)
        if "is_success" in info:
            data["is_success"] = _info_value(info["is_success"])
        self.episodes += 1
        self._enqueue("episode", data)

    def _publish_grads(self, metrics: dict[str, float]) -> None:
        self._enqueue("metrics", metrics)

    def _enqueue(self, kind: str, data: Mapping[str, Any]) -> None:
        if not self._queue:
            self._queued_at = time.monotonic()
        self._queue.append((kind, data, self.model.num_timesteps))
        if len(self._queue) >= _BURST:
            self._send_queued()

    def _send_queued(self) -> None:
        queue, self._queue = self._queue, []
        for kind, data, step in queue:
            self._publish(kind, data, step)

    def _publish(self, kind: str, data: Mapping[str, Any], step: int | None = None) -> None:
        pub = self.publisher
        if pub is None:
            return
        try:
            pub.publish(kind, data, self.model.num_timesteps if step is None else step)
            self._last_publish = time.monotonic()
        except Exception as exc:
            self._failed(exc)

    def _heartbeat(self) -> None:
        # Publisher sends heartbeats when it publishes; a long quiet stretch (no episode
        # ends, no dump) must not look like a dead training to the "silent" alert.
        pub = self.publisher
        if pub is not None:
            self._publish("event", {"event": "heartbeat", "sent": pub.sent, "dropped": pub.dropped})

    def _run_config(self) -> dict[str, Any]:
        model = self.model
        config: dict[str, Any] = {
            "algorithm": type(model).__name__,
            "policy": type(model.policy).__name__,
            "env": _env_id(model),
            "n_envs": model.n_envs,
            "total_timesteps": int(model._total_timesteps),
            "num_timesteps_at_start": int(model.num_timesteps),
        }
        hyper = {}
        for name in _HYPERPARAMETERS:
            if hasattr(model, name):
                hyper[name] = json_safe(getattr(model, name))
        config["hyperparameters"] = hyper
        return config

    # -- run_ended, also when learn() raises -------------------------------------------------------

    def _end(self, status: str, error: BaseException | None = None) -> None:
        if self._ended:
            return
        self._ended = True
        fields: dict[str, Any] = {"event": "run_ended", "status": status}
        if error is not None and status == "failed":
            fields["error"] = f"{type(error).__name__}: {error}"
        self._send_queued()
        self._publish("event", fields)
        self._detach()

    def _guard_failures(self) -> None:
        # learn() is already running when a callback starts, so it cannot be wrapped; the
        # loop calls self.collect_rollouts() and self.train() on every iteration, though. A
        # subclass made here overrides both to report an exception before it propagates.
        # Swapping __class__ (not patching instance attributes) keeps model.save() working,
        # since SB3 saves the instance __dict__.
        model = self.model
        base = type(model)
        end = self._end

        def guarded(name: str) -> Callable[..., Any]:
            def method(self: BaseAlgorithm, *args: Any, **kwargs: Any) -> Any:
                try:
                    return getattr(super(guarded_class, self), name)(*args, **kwargs)
                except KeyboardInterrupt as exc:
                    end("interrupted", exc)
                    raise
                except BaseException as exc:
                    end("failed", exc)
                    raise

            method.__name__ = name
            return method

        # dump_logs too: a Ctrl-C that lands while SB3 prints its table must still say interrupted.
        names = [n for n in ("collect_rollouts", "train", "dump_logs", "_dump_logs") if hasattr(base, n)]
        guarded_class = type(
            base.__name__,
            (base,),
            {
                **{n: guarded(n) for n in names},
                "__module__": base.__module__,
                _GUARD: True,  # whose it is: _detach unwraps only guards whose callback has ended
                _ACTIVE: True,
            },
        )
        model.__class__ = guarded_class
        self._guarded_class = guarded_class

    def _attach_gradients(self) -> None:
        try:
            self._tap = GradientTap(_optimizer_groups(self.model.policy), self._publish_grads, every=self.grad_every)
        except Exception as exc:
            self._failed(exc)

    def _detach(self) -> None:
        model = self.model
        if self._guarded_class is not None:
            setattr(self._guarded_class, _ACTIVE, False)
            # Two callbacks on one model stack two guards, and either may end first: peel off
            # every ended guard from the top, so the last one to end leaves the model's own class.
            cls = type(model)
            while cls.__dict__.get(_GUARD) and not cls.__dict__.get(_ACTIVE):
                cls = cls.__mro__[1]
            if cls is not type(model):
                model.__class__ = cls
        self._guarded_class = None
        if self._tap is not None:
            self._tap.remove()
            self._tap = None
        outputs = model.logger.output_formats
        if self._writer in outputs:
            outputs.remove(self._writer)
        pub = self.publisher
        if pub is not None:
            try:
                if self._own_publisher:
                    pub.close()
                    self.publisher = None
                else:
                    pub.flush()
            except Exception as exc:
                self._failed(exc)

    def _failed(self, exc: BaseException) -> None:
        self.errors += 1
        if self.errors == 1:
            log.warning("metricbus: publishing failed (counted, training goes on): %r", exc)


# -- helpers -----------------------------------------------------------------------------------------


def _optimizer_groups(
    policy: torch.nn.Module,
) -> list[tuple[str, list[tuple[str, torch.nn.Parameter]], torch.optim.Optimizer]]:
    """(prefix, named parameters, optimizer) for each optimizer a policy (or a part of it) owns."""
    names = {id(p): n for n, p in policy.named_parameters()}
    found: list[tuple[str, torch.optim.Optimizer]] = []
    for module_name, module in policy.named_modules():
        opt = getattr(module, "optimizer", None)
        if isinstance(opt, torch.optim.Optimizer) and all(opt is not o for _, o in found):
            found.append((module_name, opt))
    groups = []
    for module_name, opt in found:
        params = [(names[id(p)], p) for g in opt.param_groups for p in g["params"] if id(p) in names]
        # one optimizer gives the plain names (grad/global_norm); SAC's two get grad/actor/…
        prefix = f"{module_name}/" if len(found) > 1 and module_name else ""
        groups.append((prefix, params, opt))
    return groups


def _env_id(model: BaseAlgorithm) -> str | None:
    env = model.get_env()
    if env is None:
        return None
    try:
        spec = env.get_attr("spec", [0])[0]
        return str(spec.id) if spec is not None else None
    except Exception:  # an env without a spec (or one that refuses get_attr) is still trained
        return None


def _default_run_id(model: BaseAlgorithm) -> str:
    env = _env_id(model) or "env"
    raw = f"{type(model).__name__}-{env}-{time.strftime('%Y%m%d-%H%M%S')}".lower()
    return re.sub(r"[^a-z0-9._-]", "-", raw)[:128]


def _info_value(value: Any) -> Any:
    plain = _scalar(value)
    return json_safe(value) if plain is _SKIP else plain

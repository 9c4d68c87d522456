"""RLlib (new API stack): each ``train()`` result and every finished episode on the bus.

    from publishers.rllib import metricbus_callback

    config = PPOConfig().environment("CartPole-v1").callbacks(metricbus_callback("ppo-cartpole-1"))
    algo = config.build_algo()
    for _ in range(100):
        algo.train()                              # one that raises: run_ended failed, with the error
    algo.stop()                                   # run_ended completed

RLlib makes its callback objects itself (``callbacks_class()``), on the driver and inside
every env runner, which may be on other nodes; so :func:`metricbus_callback` returns a
class with the run id and endpoint baked in (Ray ships it to the env runners by value).

- **Driver** (the Algorithm): ``run_started`` (algorithm, env, learning hyperparameters,
  env runners) at ``on_algorithm_init``; each ``train()`` result as one ``metrics`` message
  at its ``num_env_steps_sampled_lifetime`` — every number of the result, nested keys joined
  by ``/``: ``env_runners/episode_return_mean``, ``learners/default_policy/policy_loss``,
  ``num_env_steps_sampled_lifetime_throughput`` …; ``run_ended`` once: ``failed`` (with the
  error's last line) when a ``train()`` raises, ``interrupted`` on Ctrl-C, else ``completed``
  when ``algo.stop()`` runs (the wrapped methods are those a Tune trial actor calls too).
- **Env runners**: every finished episode as an ``episode`` message — ``reward`` (the
  return), ``length`` (env steps), ``time`` (seconds), ``env`` (index in the runner's vector)
  and ``runner`` (the env runner's index). Its step is the runner's lifetime env-step count
  as of its last sync with the learner (RLlib has no exact global count inside a runner).
  Each env runner process opens its own publisher on its first episode, so it must reach
  the broker (``endpoint``, else ``METRICBUS_ENDPOINT`` / ``METRICBUS_CONFIG`` there).
"""

from __future__ import annotations

import atexit
import logging
from typing import Any, ClassVar

from ray.rllib.callbacks.callbacks import RLlibCallback

from bus.message import check_run_id
from bus.publisher import Publisher
from publishers.ray import TUNE_BOOKKEEPING, flat_config, flat_numbers

log = logging.getLogger("metricbus.rllib")

#: The algorithm's settings worth a line in ``run_started``, when it has them.
HYPERPARAMETERS = (
    "lr",
    "gamma",
    "train_batch_size_per_learner",
    "minibatch_size",
    "num_epochs",
    "lambda_",
    "clip_param",
    "vf_loss_coeff",
    "entropy_coeff",
    "kl_coeff",
    "grad_clip",
    "num_env_runners",
    "num_envs_per_env_runner",
    "num_learners",
    "seed",
)
STEP_KEY = "num_env_steps_sampled_lifetime"


def metricbus_callback(run: str, *, endpoint: str | None = None, episodes: bool = True) -> type[MetricbusRLlibCallback]:
    """An ``RLlibCallback`` class that publishes to ``run`` (pass it to ``config.callbacks(...)``)."""
    check_run_id(run)
    attrs = {"run": run, "endpoint": endpoint, "episodes": episodes}
    return type("MetricbusRLlibCallback", (MetricbusRLlibCallback,), attrs)


class MetricbusRLlibCallback(RLlibCallback):
    """Use :func:`metricbus_callback` to make one bound to a run; this base has none."""

    run: ClassVar[str | None] = None
    endpoint: ClassVar[str | None] = None
    episodes: ClassVar[bool] = True

    def __init__(self) -> None:
        super().__init__()
        self.publisher: Publisher | None = None
        self.errors = 0
        self._ended = False

    # -- driver ---------------------------------------------------------------------------------

    def on_algorithm_init(self, *, algorithm: Any, metrics_logger: Any = None, **kwargs: Any) -> None:
        pub = self._publisher()
        if pub is None:
            return
        config = algorithm.config
        hyper = {name: getattr(config, name) for name in HYPERPARAMETERS if hasattr(config, name)}
        info = {
            "algorithm": type(algorithm).__name__,
            "env": str(config.env),
            "framework": "rllib",
            "hyperparameters": flat_config(hyper),
        }
        self._publish("event", {"event": "run_started", "config": info})
        self._guard(algorithm)

    def on_train_result(
        self, *, algorithm: Any, metrics_logger: Any = None, result: dict[str, Any], **kwargs: Any
    ) -> None:
        step = _steps(result.get(STEP_KEY))
        algorithm._metricbus_last_step = step
        self._publish("metrics", flat_numbers(result, TUNE_BOOKKEEPING), step)

    def _guard(self, algorithm: Any) -> None:
        # RLlib has no hook for an algorithm's end, nor for a train() that raises. Trainable.train()
        # calls self.step() and Trainable.stop() calls self.cleanup(), both looked up on the
        # instance, so wrapping these two on this instance sees both — also where Tune drives the
        # algorithm as an actor, whose remote train()/stop() are the class's own (an instance's
        # train or stop would be bypassed there). The run ends exactly once.
        original_step, original_cleanup = algorithm.step, algorithm.cleanup

        def step() -> Any:
            try:
                return original_step()
            except KeyboardInterrupt:
                self._end("interrupted", _steps(getattr(algorithm, "_metricbus_last_step", None)))
                raise
            except BaseException as exc:
                self._end("failed", _steps(getattr(algorithm, "_metricbus_last_step", None)), exc)
                raise

        def cleanup() -> None:
            self._end("completed", _steps(getattr(algorithm, "_metricbus_last_step", None)))
            original_cleanup()

        algorithm.step = step
        algorithm.cleanup = cleanup

    # -- env runners ----------------------------------------------------------------------------

    def on_episode_end(
        self,
        *,
        episode: Any,
        prev_episode_chunks: list[Any] | None = None,
        env_runner: Any = None,
        env_index: int = 0,
        **kwargs: Any,
    ) -> None:
        if not self.episodes:
            return
        # an episode that spans two sample() calls arrives in chunks: the whole is their sum
        chunks = [*(prev_episode_chunks or ()), episode]
        data = {
            "reward": float(sum(c.get_return() for c in chunks)),
            "length": int(sum(c.env_steps() for c in chunks)),
            "time": float(sum(c.get_duration_s() for c in chunks)),
            "env": int(env_index),
            "runner": int(getattr(env_runner, "worker_index", 0) or 0),
        }
        self._publish("episode", data, _steps(getattr(env_runner, "num_env_steps_sampled_lifetime", None)))

    # -- publishing -----------------------------------------------------------------------------

    def _publisher(self) -> Publisher | None:
        if self.publisher is None and not self._ended:
            if self.run is None:
                raise ValueError("MetricbusRLlibCallback has no run id: use metricbus_callback(run) to make one")
            try:
                self.publisher = Publisher(self.endpoint, run=self.run)
            except Exception as exc:
                self._failed(exc)
                self._ended = True  # do not retry a socket per episode
                return None
            # an env runner actor ends with its process: deliver what is queued on the way out
            atexit.register(self.publisher.close)
        return self.publisher

    def _publish(self, kind: str, data: dict[str, Any], step: int | None = None) -> None:
        pub = self._publisher()
        if pub is None:
            return
        try:
            pub.publish(kind, data, step)
        except Exception as exc:
            self._failed(exc)

    def _end(self, status: str, step: int | None, error: BaseException | None = None) -> None:
        if self._ended:
            return
        fields: dict[str, Any] = {"event": "run_ended", "status": status}
        if error is not None:
            fields["error"] = _error_line(error)
        self._publish("event", fields, step)
        self._ended = True
        if self.publisher is not None:
            self.publisher.close()
            atexit.unregister(self.publisher.close)

    def _failed(self, exc: Exception) -> None:
        self.errors += 1
        if self.errors == 1:
            log.warning("publishing failed (counted, training goes on): %r", exc)


def _error_line(error: BaseException) -> str:
    # RLlib re-raises an env's exception as a bare ``RuntimeError from e``, and a remote
    # failure's text is a whole traceback: say the first cause, by its last line
    while error.__cause__ is not None:
        error = error.__cause__
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    last = lines[-1].strip() if lines else ""
    return f"{type(error).__name__}: {last}"[:1000] if last else type(error).__name__


def _steps(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None

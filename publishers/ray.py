"""Ray Tune: every trial of a sweep is a run on the bus.

    from publishers.ray import MetricbusTuneCallback

    tuner = tune.Tuner(train_fn, param_space=space, tune_config=tune.TuneConfig(scheduler=ASHAScheduler(...)),
                       run_config=tune.RunConfig(name="lr-sweep", callbacks=[MetricbusTuneCallback()]))

The callback runs on the **driver** (where ``Tuner.fit()`` is called), like every Tune
callback: trials on any node of the cluster report their results to the driver, which
publishes them. So only the driver needs to reach the broker (and hold the CURVE client
keys); the workers publish nothing and need no change.

- a trial is the run ``<experiment>-<trial_id>`` (``lr-sweep-3f2a1_00004``): the
  dashboard groups a sweep by the regex ``(.*)-[^-]+$`` (or by the ``experiment`` config key);
- ``run_started`` carries the experiment, the trial id and the trial's config as
  ``hyperparameters`` (nested keys joined by ``/``);
- every reported result is one ``metrics`` message at its ``training_iteration`` (or
  ``step_key``): its numbers, nested dicts flattened with ``/`` (an RLlib result's
  ``env_runners/episode_return_mean``), Tune's bookkeeping (pid, host, dates) left out;
- the trial's end is ``run_ended``: ``completed`` when it ran to its end (returned, or met
  its ``stop=`` criterion); ``stopped`` (with a ``reason``) when Tune cut it short — its
  scheduler (ASHA, HyperBand, median stopping) or a ``Stopper``; Tune's own status for
  both is TERMINATED, and a callback cannot tell which of the two decided; ``failed`` with
  the error, or ``interrupted`` if the sweep ends with the trial still running (Ctrl-C).

One publisher per running trial (sharing one ZeroMQ context), closed when the trial ends,
so the sockets stay bounded by the trials the cluster runs at once.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import zmq
from ray.tune import Callback
from ray.tune.experiment import Trial

from bus.publisher import Publisher

log = logging.getLogger("metricbus.ray")

#: Tune's bookkeeping in every result: not training metrics.
TUNE_BOOKKEEPING = frozenset(
    {
        "config",
        "date",
        "done",
        "experiment_id",
        "experiment_tag",
        "hostname",
        "node_ip",
        "pid",
        "should_checkpoint",
        "checkpoint_dir_name",
        "timestamp",
        "trial_id",
        "trial_info",
    }
)
#: A flattened result keeps at most this many numbers (an RLlib result has a few hundred).
MAX_KEYS = 2000
#: ``run_ended``'s ``reason`` for a trial Tune stopped before its ``stop=`` criterion.
STOPPED_REASON = "stopped early by Tune's scheduler or a stopper"


class MetricbusTuneCallback(Callback):
    """Publishes each trial of a Tune experiment as a run (see the module docstring).

    ``endpoint`` and ``curve`` are the :class:`bus.publisher.Publisher`'s (default:
    ``METRICBUS_ENDPOINT`` / ``METRICBUS_CONFIG`` on the driver); ``experiment`` overrides
    the name taken from Tune's ``RunConfig(name=...)``. Its hooks run on Tune's event loop, so
    a trial's publisher waits at most ``connect_timeout`` for the broker and ``linger`` to
    deliver at the trial's end; once the broker did not answer (``unreachable``), later trials
    wait for neither until a trial's messages get through again.
    """

    def __init__(
        self,
        *,
        endpoint: str | None = None,
        experiment: str | None = None,
        step_key: str = "training_iteration",
        curve: Mapping[str, bytes] | None = None,
        connect_timeout: float = 0.5,
        linger: float = 1.0,
    ) -> None:
        self.endpoint = endpoint
        self.experiment = experiment
        self.step_key = step_key
        self.curve = curve
        self.connect_timeout = connect_timeout
        self.linger = linger
        self.errors = 0
        self.unreachable = False  # the last trial's publisher never reached the broker
        self._context: zmq.Context[zmq.Socket[bytes]] | None = None
        self._live: dict[str, Publisher] = {}  # trial id → its run's publisher
        self._stopped: set[str] = set()  # trials whose last result Tune marked done

    def run_id(self, trial: Trial) -> str:
        """``<experiment>-<trial_id>``, cut to the wire's 128 characters (the trial id kept)."""
        experiment = safe_id(self.experiment or trial.experiment_dir_name or "tune")
        trial_id = safe_id(trial.trial_id)
        return f"{experiment[: 127 - len(trial_id)]}-{trial_id}"

    # -- Tune's hooks (on the driver) ----------------------------------------------------------

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._start(trial)

    def on_trial_result(
        self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any], **info: Any
    ) -> None:
        pub = self._live.get(trial.trial_id) or self._start(trial)
        if pub is None:
            return
        step = result.get(self.step_key)
        try:
            pub.metrics(flat_numbers(result, TUNE_BOOKKEEPING), int(step) if step is not None else None)
        except Exception as exc:
            self._failed(exc)
        if result.get("done"):
            self._stopped.add(trial.trial_id)

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        # A trial that returned on its own had its last result not ``done``; one that Tune
        # stopped was marked ``done`` — by its stop criterion, or early, by a scheduler/stopper.
        fields: dict[str, Any] = {"status": "completed"}
        if trial.trial_id in self._stopped:
            last = flat_numbers(trial.last_result, frozenset({"done"}))
            if not _meets(trial.stopping_criterion, last):
                fields = {"status": "stopped", "reason": STOPPED_REASON}
        self._end(trial, fields)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._end(trial, {"status": "failed", "error": _error_text(trial)})

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        for trial in trials:
            if trial.trial_id in self._live:
                self._end(trial, {"status": "interrupted"})
        self.close()

    def close(self) -> None:
        """Close what is still open (after ``on_experiment_end`` nothing is)."""
        for pub in self._live.values():
            pub.close()
        self._live.clear()
        if self._context is not None:
            self._context.term()
            self._context = None

    def __del__(self) -> None:  # Tune may drop the callback without on_experiment_end (driver crash)
        if self._live or self._context is not None:
            with contextlib.suppress(Exception):
                self.close()

    # -- runs ----------------------------------------------------------------------------------

    def _start(self, trial: Trial) -> Publisher | None:
        if trial.trial_id in self._live:
            return self._live[trial.trial_id]
        try:
            if self._context is None:
                self._context = zmq.Context()
            pub = Publisher(
                self.endpoint,
                run=self.run_id(trial),
                curve=self.curve,
                context=self._context,
                # Tune's event loop waits on these: once the broker has been found unreachable,
                # later trials neither wait for it nor linger (what it misses is counted as dropped)
                connect_timeout=0.0 if self.unreachable else self.connect_timeout,
                linger=0.0 if self.unreachable else self.linger,
            )
            self._live[trial.trial_id] = pub
            if not self.unreachable and not pub.connected:
                self.unreachable = True
                log.warning("trial %s: the broker at %s did not answer; not waiting for it", trial, pub.endpoint)
            config = {
                "experiment": self.experiment or trial.experiment_dir_name,
                "trial_id": trial.trial_id,
                "trainable": trial.trainable_name,
                "hyperparameters": flat_config(trial.config),
            }
            pub.event("run_started", config=config)
            return pub
        except Exception as exc:
            self._failed(exc)
            return None

    def _end(self, trial: Trial, fields: dict[str, Any]) -> None:
        self._stopped.discard(trial.trial_id)
        pub = self._live.pop(trial.trial_id, None)
        if pub is None:
            return
        step = trial.last_result.get(self.step_key) if trial.last_result else None
        try:
            pub.event("run_ended", int(step) if step is not None else None, **fields)
        except Exception as exc:
            self._failed(exc)
        finally:
            pub.close()
            self.unreachable = pub.dropped > 0  # its messages got through, or not

    def _failed(self, exc: Exception) -> None:
        self.errors += 1
        if self.errors == 1:
            log.warning("publishing failed (counted, the sweep goes on): %r", exc)


# -- results and configs as wire values (RLlib's callback uses these too) ---------------------


def flat_numbers(result: Mapping[str, Any], exclude: Iterable[str] = (), limit: int = MAX_KEYS) -> dict[str, Any]:
    """The numbers of a (nested) result, keys joined by ``/``; top-level ``exclude`` keys left out."""
    skip = frozenset(exclude)
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if len(out) >= limit:
            return
        if isinstance(value, Mapping):
            for key, item in value.items():
                walk(f"{prefix}/{key}" if prefix else str(key), item)
        elif isinstance(value, int | float):  # bool too
            out[prefix] = value
        elif hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy / torch scalar
            out[prefix] = value.item()

    for key, value in result.items():
        if key not in skip:
            walk(str(key), value)
    return out


def flat_config(config: Mapping[str, Any], limit: int = 200) -> dict[str, Any]:
    """A trial's config as wire-safe values: numbers, strings, bools, None; anything else as its repr."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if len(out) >= limit:
            return
        if isinstance(value, Mapping):
            for key, item in value.items():
                walk(f"{prefix}/{key}" if prefix else str(key), item)
        elif value is None or isinstance(value, bool | int | float | str):
            out[prefix] = value
        else:
            out[prefix] = repr(value)[:200]

    walk("", config)
    return out


def safe_id(text: str) -> str:
    """``text`` with every character a run id may not hold replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", str(text))[:128] or "_"


def _meets(criterion: Mapping[str, Any], result: Mapping[str, Any]) -> bool:
    # Tune's own rule: the trial reached any one of its ``stop`` values
    return any(
        key in result and isinstance(result[key], int | float) and result[key] >= value
        for key, value in criterion.items()
        if isinstance(value, int | float) and not (isinstance(value, float) and math.isnan(value))
    )


def _error_text(trial: Trial) -> str:
    # Tune has just written the error to the trial's local error file (storage may lag)
    try:
        path = trial.error_file
        text = Path(path).read_text(errors="replace") if path and Path(path).exists() else trial.get_error()
    except Exception as exc:
        return f"(error text unavailable: {exc!r})"
    if not text:
        return "trial failed"
    lines = [line for line in str(text).strip().splitlines() if line.strip()]
    return lines[-1][:1000] if lines else "trial failed"

"""An example metricbus sink plugin, registered under the entry-point group ``metricbus.sinks``.

``RunSummarySink`` keeps, per run, how many messages it saw, the last step, and the latest
and best value of one metric, and writes them to one JSON file — replaced atomically, so a
reader never sees half a file. Use it from YAML by its entry-point name::

    sinks:
      summary: {type: run_summary, topics: [metrics/], path: summary.json, metric: rollout/ep_rew_mean}
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["RunSummarySink"]


class RunSummarySink:
    """A JSON summary per run: message count, last step, latest and best value of ``metric``."""

    def __init__(self, path: str = "summary.json", metric: str = "rollout/ep_rew_mean", higher_is_better: bool = True):
        self.path = Path(path)
        self.metric = metric
        self.higher_is_better = higher_is_better
        self.runs: dict[str, dict[str, Any]] = {}
        self._dirty = False

    def handle(self, batch: Sequence[Any]) -> None:
        for message in batch:
            if message.run is None:
                continue
            run = self.runs.setdefault(message.run, {"messages": 0, "last_step": None, "latest": None, "best": None})
            run["messages"] += 1
            if message.step is not None:
                run["last_step"] = message.step
            value = message.data.get(self.metric)
            if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                run["latest"] = value
                best = run["best"]
                better = best is None or (value > best if self.higher_is_better else value < best)
                run["best"] = value if better else best
        self._dirty = self._dirty or bool(batch)

    def flush(self) -> None:
        if not self._dirty:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"metric": self.metric, "runs": self.runs}, indent=1, sort_keys=True))
        os.replace(tmp, self.path)  # readers see the old summary or the new one, never half
        self._dirty = False

    def close(self) -> None:
        self.flush()

"""Runs at scale: a stable colour per run, which runs are drawn by default, groups of runs
(by a regex capture on the run id or by a hyperparameter), and the runs table's rows.

Knows nothing of Dash callbacks; callers hold the store's lock.
"""

from __future__ import annotations

import colorsys
import hashlib
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from sinks.dashboard.store import SourceData, Store

#: Runs drawn when the page opens (the most recent ones): a sweep of hundreds of runs must not
#: put hundreds of traces on every chart; groups or "select matching" draw more on purpose.
DEFAULT_DRAWN: Final = 8
#: The default group-by pattern: runs that differ only by their seed form one group.
DEFAULT_GROUP_PATTERN: Final = r"(.*)-seed\d+"
#: Hyperparameter columns in the runs table at most.
MAX_HP_COLUMNS: Final = 24


def run_colour(name: str) -> str:
    """A colour of the run's own, stable across pages and restarts: a hue from a hash of the
    name (not a 10-colour cycle, which repeats every 10 runs of a sweep), with lightness and
    saturation in three steps so neighbouring hues still differ."""
    # blake2s, not crc32: crc is linear, so "x-seed0" and "x-seed1" would get near hues
    digest = int.from_bytes(hashlib.blake2s(name.encode("utf-8"), digest_size=4).digest(), "big")
    hue = (digest % 360) / 360.0
    lightness = (0.38, 0.48, 0.58)[(digest >> 9) % 3]
    saturation = (0.85, 0.65, 0.75)[(digest >> 11) % 3]
    r, g, b = colorsys.hls_to_rgb(hue, lightness, saturation)
    return f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}"


def recent_runs(store: Store, count: int = DEFAULT_DRAWN) -> list[str]:
    """The ``count`` runs that started last (by their first message), oldest of them first."""
    runs = sorted(store.runs.values(), key=lambda d: (d.first_ts, d.name))
    return sorted(d.name for d in runs[-count:])


def matching(names: Iterable[str], pattern: re.Pattern[str] | None) -> list[str]:
    return [n for n in names if pattern is None or pattern.search(n)]


@dataclass(frozen=True)
class Grouping:
    """How runs form groups: by ``mode`` "regex" (``key`` a pattern whose first capture, or
    whole match, names the group) or "hparam" (``key`` a config key); ``stat`` mean or median,
    ``band`` minmax, std or ci95; ``members`` draws each run's own line too."""

    mode: str
    key: str
    stat: str = "mean"
    band: str = "minmax"
    members: bool = False

    @property
    def active(self) -> bool:
        return self.mode in ("regex", "hparam") and bool(self.key)

    def signature(self) -> list[Any]:
        return [self.mode, self.key, self.stat, self.band, self.members] if self.active else []


def group_of(data: SourceData, grouping: Grouping) -> str:
    """The run's group; a run that matches no pattern, or lacks the hyperparameter, is a group
    of its own (so unrelated runs are never averaged together)."""
    if grouping.mode == "hparam":
        value = data.config.get(grouping.key)
        if value is None:
            return data.name
        return f"{grouping.key}={value:g}" if isinstance(value, float) else f"{grouping.key}={value}"
    try:
        pattern = re.compile(grouping.key)
    except re.error:
        return data.name
    found = pattern.search(data.name)
    if found is None:
        return data.name
    return found.group(1) if pattern.groups and found.group(1) is not None else found.group(0)


def groups(store: Store, runs: Iterable[str], grouping: Grouping) -> dict[str, list[str]]:
    """Group name → its runs (sorted), for the runs given."""
    out: dict[str, list[str]] = {}
    for name in runs:
        data = store.runs.get(name)
        if data is not None:
            out.setdefault(group_of(data, grouping), []).append(name)
    return {g: sorted(members) for g, members in sorted(out.items())}


def config_keys(store: Store) -> list[str]:
    """Config keys that vary across runs first (a sweep's hyperparameters), then the rest."""
    values: dict[str, set[str]] = {}
    for data in store.runs.values():
        for key, value in data.config.items():
            values.setdefault(key, set()).add(repr(value))
            if len(values) >= 4 * MAX_HP_COLUMNS:
                break
    return sorted(values, key=lambda k: (len(values[k]) <= 1, k))[:MAX_HP_COLUMNS]


# -- the runs table ---------------------------------------------------------------------------

REWARD_WINDOW: Final = 100


def final_and_best_reward(data: SourceData) -> tuple[float, float]:
    """Mean of the last 100 episode rewards, and the best such mean (as ``metricbus report``
    counts them); falls back on SB3's ``rollout/ep_rew_mean`` when no episode was published."""
    import numpy as np

    series = data.series.get("episode/reward") or data.series.get("rollout/ep_rew_mean")
    if series is None or series.n == 0:
        return math.nan, math.nan
    values = series.tail(series.n)
    values = values[np.isfinite(values)]
    if not len(values):
        return math.nan, math.nan
    if data.series.get("episode/reward") is None:
        return float(values[-1]), float(values.max())
    window = min(REWARD_WINDOW, len(values))
    sums = np.cumsum(np.concatenate([[0.0], values]))
    means = (sums[window:] - sums[:-window]) / window
    return float(means[-1]), float(means.max())


def table_rows(store: Store, keys: list[str]) -> list[dict[str, Any]]:
    """One row per run for the runs table: status, steps, episodes, rewards, alerts, node and
    the config ``keys`` (columns ``hp:<key>``); numbers stay numbers so the table sorts them."""
    rows = []
    for name in sorted(store.runs):
        data = store.runs[name]
        final, best = final_and_best_reward(data)
        row: dict[str, Any] = {
            "id": name,
            "run": name,
            "status": store.status(data),
            "steps": data.last_step if data.last_step >= 0 else None,
            "episodes": data.episodes,
            "final_reward": round(final, 4) if math.isfinite(final) else None,
            "best_reward": round(best, 4) if math.isfinite(best) else None,
            "alerts": store.alerts.fired.get(name, 0),
            "node": data.node,
        }
        for key in keys:
            row[f"hp:{key}"] = data.config.get(key)
        rows.append(row)
    return rows


def hparams_figure(rows: list[dict[str, Any]], keys: list[str]) -> dict[str, Any]:
    """Parallel coordinates: one axis per hyperparameter that varies (text values as ticks),
    the final reward last, each run a line coloured by its final reward."""
    scored = [r for r in rows if r.get("final_reward") is not None]
    dimensions: list[dict[str, Any]] = []
    for key in keys:
        values = [r.get(f"hp:{key}") for r in scored]
        present = [v for v in values if v is not None]
        if len({repr(v) for v in present}) < 2:
            continue
        if all(isinstance(v, float) for v in present):
            numbers = [v if isinstance(v, float) else math.nan for v in values]
            dimensions.append({"label": key, "values": [None if math.isnan(v) else v for v in numbers]})
        else:
            texts = sorted({str(v) for v in present})
            index = {t: i for i, t in enumerate(texts)}
            dimensions.append(
                {
                    "label": key,
                    "values": [index.get(str(v)) for v in values],
                    "tickvals": list(range(len(texts))),
                    "ticktext": texts,
                }
            )
    rewards = [r["final_reward"] for r in scored]
    title = "hyperparameters vs final reward" + ("" if scored else " (no run has a reward yet)")
    layout: dict[str, Any] = {
        "height": 360,
        "margin": {"l": 60, "r": 40, "t": 80, "b": 20},
        "paper_bgcolor": "#ffffff",
        "title": {"text": title, "font": {"size": 13}, "x": 0.02},
    }
    if not scored:
        return {"data": [], "layout": layout}
    dimensions.append({"label": "final reward", "values": rewards})
    trace = {
        "type": "parcoords",
        "dimensions": dimensions,
        "line": {"color": rewards, "colorscale": "Viridis", "showscale": True},
        "meta": {"runs": [r["run"] for r in scored]},
    }
    return {"data": [trace], "layout": layout}

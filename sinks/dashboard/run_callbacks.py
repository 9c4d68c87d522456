"""The callback that decides which runs are drawn, from whichever control moved (the run
selector, the runs table's ticked rows, "recent N", "all matching", grouping), and keeps the
runs table, its columns and the parallel-coordinates view in step with the store.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any, Final

from sinks.dashboard.charts import compile_filter
from sinks.dashboard.layout import run_options
from sinks.dashboard.runs import config_keys, hparams_figure, matching, recent_runs, table_rows
from sinks.dashboard.store import Store
from sinks.dashboard.views import TABLE_REFRESH, PageOptions

if TYPE_CHECKING:
    from dash import Dash

_TABLE_COLUMNS: Final = (
    ("run", "run", "text"),
    ("status", "status", "text"),
    ("steps", "steps", "numeric"),
    ("episodes", "episodes", "numeric"),
    ("final_reward", "final reward", "numeric"),
    ("best_reward", "best reward", "numeric"),
    ("alerts", "alerts", "numeric"),
    ("node", "node", "text"),
)


def register(app: Dash, store: Store, settings: PageOptions) -> None:
    from dash import Input, Output, State, ctx, no_update

    default_runs = settings.default_runs

    @app.callback(
        Output("run-select", "options"),
        Output("run-select", "value"),
        Output("known-runs", "data"),
        Output("runs-table", "columns"),
        Output("runs-table", "data"),
        Output("runs-table", "selected_rows"),
        Output("hparams", "figure"),
        Output("group-hparam", "options"),
        Output("runs-key", "data"),
        Input("tick", "data"),
        Input("run-select", "value"),
        Input("runs-table", "selected_rows"),
        Input("select-recent", "n_clicks"),
        Input("select-matching", "n_clicks"),
        Input("group-mode", "value"),
        State("run-filter", "value"),
        State("known-runs", "data"),
        State("runs-table", "data"),
        State("runs-key", "data"),
        State("closed-sections", "data"),
        prevent_initial_call=True,  # the page is served with its runs; the first poll fills the table
    )
    def update_runs(
        _tick: Any,
        selected: list[str] | None,
        ticked: list[int] | None,
        _recent: Any,
        _matching: Any,
        group_mode: str | None,
        run_filter: str | None,
        known: list[str] | None,
        shown: list[dict[str, Any]] | None,
        runs_key: Any,
        closed: list[str] | None,
    ) -> Any:
        """Which runs are drawn, from whichever control moved; the runs table (its rows are
        rebuilt here too, at most every TABLE_REFRESH, so that its ticked rows' indices and
        its rows always come from one answer)."""
        trigger = ctx.triggered_id
        bucket = int(time.time() / TABLE_REFRESH)
        with store.lock:
            runs = sorted(store.runs)
            recent = recent_runs(store, default_runs)
            rebuild = "runs" not in set(closed or []) and (runs_key or {}).get("at") != bucket
            hp_keys = config_keys(store) if rebuild or runs != (known or []) else []
            rows = table_rows(store, hp_keys) if rebuild else None
        present = set(runs)
        selected = [r for r in (selected or []) if r in present]
        if trigger == "runs-table":
            ids = [row["id"] for row in shown or []]
            value = [ids[i] for i in sorted(ticked or []) if i < len(ids) and ids[i] in present]
        elif trigger == "select-recent":
            value = recent
        elif trigger == "select-matching" or (trigger == "group-mode" and group_mode not in (None, "none")):
            value = matching(runs, compile_filter(run_filter))
        elif trigger == "run-select":
            value = selected
        elif not known and runs:
            value = recent  # a page opens on the most recent runs, not on a whole sweep
        else:
            fresh = [r for r in runs if r not in set(known or [])]
            grouped = group_mode not in (None, "none")
            room = len(fresh) if grouped else max(0, default_runs - len(selected))
            value = selected + fresh[-room:] if room and fresh else selected
        out: list[Any] = [no_update] * 9
        if runs != (known or []):
            out[0] = run_options(runs)
            out[2] = runs
            out[7] = [{"label": k, "value": k} for k in hp_keys]
        if value != selected:
            out[1] = value
        ids = [row["id"] for row in shown or []]
        if rows is not None:
            key = json.dumps([rows, hp_keys], sort_keys=True, default=str)
            if key != (runs_key or {}).get("rows"):
                columns = [{"id": i, "name": n, "type": t} for i, n, t in _TABLE_COLUMNS]
                columns += [{"id": f"hp:{k}", "name": k, "type": "any"} for k in hp_keys]
                out[3], out[4], out[6] = columns, rows, hparams_figure(rows, hp_keys)
                ids = [row["id"] for row in rows]
            out[8] = {"at": bucket, "rows": key}
        # the ticked rows follow the drawn runs (by index into the rows the table holds)
        wanted = set(value)
        ticks = [i for i, run in enumerate(ids) if run in wanted]
        if out[4] is not no_update or sorted(ticked or []) != ticks:
            out[5] = ticks
        return tuple(out)

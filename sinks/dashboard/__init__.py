"""The live dashboard sink (``metricbus report`` draws with its charts).

Importing this package imports no Dash: the sink class lives in :mod:`sinks.dashboard.sink`
and imports Dash only when it is constructed, so ``metricbus check`` stays light.
"""

from __future__ import annotations

__all__ = ["DashboardSink"]


def __getattr__(name: str) -> object:
    if name == "DashboardSink":
        from sinks.dashboard.sink import DashboardSink

        return DashboardSink
    raise AttributeError(name)

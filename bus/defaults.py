"""Default addresses and limits, and the environment variables that override them.

Every example, the embedded config and a user's first run agree on these numbers. Which
endpoint a process uses when nothing says so is :func:`bus.config.publisher_endpoint`.
"""

from __future__ import annotations

from typing import Final

FRONTEND: Final = "tcp://127.0.0.1:5555"
BACKEND: Final = "tcp://127.0.0.1:5556"
DASHBOARD_HOST: Final = "127.0.0.1"
DASHBOARD_PORT: Final = 8050
LOG_ROOT: Final = "logs"

#: ZeroMQ's default HWM is 1,000 messages; a burst of a few thousand (an SB3 dump plus
#: episodes of many envs) would then be dropped. These absorb bursts of seconds.
BROKER_HWM: Final = 1_000_000
PUBLISHER_HWM: Final = 100_000
SUBSCRIBER_HWM: Final = 1_000_000

ENV_ENDPOINT: Final = "METRICBUS_ENDPOINT"  # where publishers connect (broker frontend)
ENV_BACKEND: Final = "METRICBUS_BACKEND"  # where subscribers connect (broker backend)
ENV_CONFIG: Final = "METRICBUS_CONFIG"  # the config file the CLI and publishers read

"""``metricbus sample``: this node's system metrics, published until SIGINT/SIGTERM.

The supervisor runs it as its ``sampler`` child; the sampler itself is
:class:`publishers.system.SystemSampler`.
"""

from __future__ import annotations

import argparse
import logging
import os

from bus import defaults
from bus.config import load_config, publisher_endpoint
from bus.process import mark_ready, stop_on_signals
from bus.publisher import Publisher
from bus.security import client_curve
from publishers.system import SystemSampler

log = logging.getLogger("metricbus.system")


def cmd_sample(args: argparse.Namespace) -> int:
    """Publish this node's system metrics until SIGINT/SIGTERM (the supervisor's ``sampler``)."""
    # the supervisor passes --config: its sampler must reach that config's broker, whatever
    # METRICBUS_ENDPOINT says; without --config the usual publisher defaults apply
    config_path = args.config or os.environ.get(defaults.ENV_CONFIG)
    config = load_config(config_path) if config_path else None
    if args.endpoint:
        endpoint = args.endpoint
    elif args.config and config is not None:
        endpoint = config.broker.connect_frontend
    else:
        endpoint = publisher_endpoint()
    interval = args.interval or (config.sampler.interval if config is not None else 2.0)
    disk_path = config.sampler.disk_path if config is not None else "/"
    curve = client_curve(config) if config is not None else None
    stop = stop_on_signals()
    publisher = Publisher(endpoint, run=None, curve=curve)
    sampler = SystemSampler(publisher, interval, disk_path=disk_path).start()
    mark_ready(getattr(args, "ready_file", None))
    log.info("sampling this node every %g s to %s", interval, endpoint)
    try:
        stop.wait()
    finally:
        sampler.stop()
        publisher.close()
    return 0

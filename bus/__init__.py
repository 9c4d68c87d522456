"""metricbus's foundation: wire format, publisher, broker, sink runner, config, options, CURVE keys, registry."""

from bus.config import Config, ConfigError, load_config
from bus.message import DecodeError, EncodeError, Message, decode, encode
from bus.publisher import Publisher
from bus.subscriber import Sink, SinkContext, SinkRunner

__all__ = [
    "Config",
    "ConfigError",
    "DecodeError",
    "EncodeError",
    "Message",
    "Publisher",
    "Sink",
    "SinkContext",
    "SinkRunner",
    "decode",
    "encode",
    "load_config",
]

"""Built-in sinks and the registry that finds custom ones (heavy sinks import lazily)."""

from bus.registry import resolve
from sinks.jsonl import JsonlSink

__all__ = ["JsonlSink", "resolve"]

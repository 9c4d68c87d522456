"""Built-in sinks and the registry that finds custom ones (heavy sinks import lazily)."""

from sinks.jsonl import JsonlSink
from sinks.registry import resolve

__all__ = ["JsonlSink", "resolve"]

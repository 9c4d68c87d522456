"""What a client asks for: topic prefixes and a run regex, validated and bounded.

A client's first message, and any later one to change it, is

    {"type": "subscribe", "topics": ["metrics/", "episode/ppo-"], "run": "^ppo-(1|2)$"}

``topics`` are prefixes of ``"<kind>/<source>"``, as ZeroMQ subscriptions are (``[""]``, the
default, is everything). ``run`` is searched (``re.search``) in the run id of run-scoped
messages; messages of no run (a node's system metrics, broker stats) are chosen by
``topics`` alone. A regex runs in the server's thread on every new run id, so it is
bounded: at most :data:`MAX_PATTERN` characters and no repetition inside a repetition (the
shape of catastrophic backtracking, e.g. ``(a+)+``); a bad one is refused with the reason.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

MAX_TOPICS: Final = 64
MAX_TOPIC: Final = 256
MAX_PATTERN: Final = 256
#: Remembered (topic, run) -> decision per client; past this the memo starts over.
MAX_MEMO: Final = 4096


class SubscriptionError(ValueError):
    """A subscribe message that cannot be used; the text says which field and why."""


@dataclass
class Subscription:
    topics: tuple[str, ...] = ("",)
    run: re.Pattern[str] | None = None
    _memo: dict[tuple[str, str | None], bool] = field(default_factory=dict, repr=False)

    def wants(self, topic: str, run: str | None) -> bool:
        """True when a message of ``topic`` and ``run`` passes this client's filter."""
        key = (topic, run)
        decision = self._memo.get(key)
        if decision is None:
            decision = topic.startswith(self.topics) and (run is None or self.run is None or bool(self.run.search(run)))
            if len(self._memo) >= MAX_MEMO:
                self._memo.clear()
            self._memo[key] = decision
        return decision

    def describe(self) -> dict[str, Any]:
        return {"topics": list(self.topics), "run": self.run.pattern if self.run is not None else None}


def parse_subscription(message: Mapping[str, Any]) -> Subscription:
    """The :class:`Subscription` a ``subscribe`` message asks for, or :class:`SubscriptionError`."""
    unknown = sorted(set(message) - {"type", "topics", "run", "token"})
    if unknown:
        raise SubscriptionError(f"subscribe: unknown field(s) {', '.join(unknown)}; expected topics, run")
    topics = message.get("topics", [""])
    if not isinstance(topics, list) or not all(isinstance(t, str) for t in topics):
        raise SubscriptionError(f"subscribe.topics: expected a list of strings, got {_short(topics)}")
    if not topics or len(topics) > MAX_TOPICS:
        raise SubscriptionError(f"subscribe.topics: expected 1 to {MAX_TOPICS} prefixes, got {len(topics)}")
    for topic in topics:
        if len(topic) > MAX_TOPIC:
            raise SubscriptionError(f"subscribe.topics: a prefix is at most {MAX_TOPIC} characters")
    pattern = message.get("run")
    if pattern is None or pattern == "":
        return Subscription(tuple(topics), None)
    if not isinstance(pattern, str):
        raise SubscriptionError(f"subscribe.run: expected a regex string or null, got {_short(pattern)}")
    return Subscription(tuple(topics), compile_run_pattern(pattern))


def compile_run_pattern(pattern: str) -> re.Pattern[str]:
    if len(pattern) > MAX_PATTERN:
        raise SubscriptionError(f"subscribe.run: a regex is at most {MAX_PATTERN} characters, got {len(pattern)}")
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise SubscriptionError(f"subscribe.run: not a valid regex ({exc}): {pattern!r}") from None
    if _nested_repeat(pattern):
        raise SubscriptionError(
            f"subscribe.run: a repetition inside a repetition (e.g. (a+)+) can take exponential time: {pattern!r}"
        )
    return compiled


def _nested_repeat(pattern: str) -> bool:
    """True when a repeated part of ``pattern`` repeats again or alternates inside.

    Walks the regex parser's tree (``re._parser``: the parser ``re.compile`` itself uses);
    ``(a|ab)*`` and ``(a*)*`` backtrack exponentially on a long non-matching input.
    """
    from re import _constants as c  # type: ignore[attr-defined]
    from re import _parser as parser  # type: ignore[attr-defined]

    repeats = {c.MAX_REPEAT, c.MIN_REPEAT, getattr(c, "POSSESSIVE_REPEAT", c.MAX_REPEAT)}

    def children(value: Any) -> list[Any]:
        if isinstance(value, parser.SubPattern):
            return [value]
        if isinstance(value, list | tuple):
            return [sub for item in value for sub in children(item)]
        return []

    def walk(node: Any, repeated: bool) -> bool:
        for op, arg in node:
            if op in repeats:
                _, high, sub = arg
                many = high > 1
                if many and repeated:
                    return True
                if walk(sub, repeated or many):
                    return True
            elif (op is c.BRANCH and repeated) or any(walk(child, repeated) for child in children(arg)):
                return True
        return False

    return walk(parser.parse(pattern), False)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."

"""Per-name state with a size bound and least-recently-seen eviction.

Every name on the wire (run, node, publisher, metric) is chosen by whoever publishes, and on
loopback without CURVE that is any local account. A sink that keeps something per name must
therefore forget: when full, the name seen longest ago goes, so a flood of new names evicts
the flood itself while the names still in use stay (first-come refusal would do the
opposite and blind the sink to every run that starts after the flood). Evictions are
counted, so a sink's stats show when its bound is too small for the real traffic.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Recent(Generic[K, V]):
    """A mapping of at most ``limit`` entries; reading or writing a key makes it the newest.

    ``on_evict(key, value)`` is called for each entry pushed out (to close a file, say).
    """

    __slots__ = ("_items", "evicted", "limit", "on_evict")

    def __init__(self, limit: int, on_evict: Callable[[K, V], None] | None = None) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        self.limit = limit
        self.on_evict = on_evict
        self.evicted = 0
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        """The value of ``key`` (now the most recently seen), or None."""
        items = self._items
        value = items.get(key)
        if value is not None:
            items.move_to_end(key)
        return value

    def peek(self, key: K) -> V | None:
        """The value of ``key`` without touching its age."""
        return self._items.get(key)

    def put(self, key: K, value: V) -> V:
        """Set ``key`` (the newest now), evicting the least recently seen beyond the bound."""
        items = self._items
        items[key] = value
        items.move_to_end(key)
        while len(items) > self.limit:
            old_key, old_value = items.popitem(last=False)
            self.evicted += 1
            if self.on_evict is not None:
                self.on_evict(old_key, old_value)
        return value

    def pop(self, key: K) -> V | None:
        return self._items.pop(key, None)

    def clear(self) -> None:
        self._items.clear()

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[K]:
        return iter(self._items)

    def items(self) -> list[tuple[K, V]]:
        """A snapshot, oldest first (safe to change the mapping while going through it)."""
        return list(self._items.items())

    def values(self) -> list[V]:
        return list(self._items.values())


class Memo(Generic[K, V]):
    """A bounded memo of values that can be computed again (sanitised names, routes, rule
    matches), least recently seen out, at the cost of a plain dict lookup for the names in use.

    Two generations: new entries and hits go to ``hot``; when ``hot`` holds ``limit // 2``
    entries it becomes the old generation and the previous old one is dropped (counted in
    ``evicted``). So an entry is forgotten only when it was not seen during a whole generation
    (at least ``limit // 2`` new names): a flood of new names evicts the flood, and a name in
    use between them stays. Unlike :class:`Recent` a hit costs no reordering, which is what a
    lookup per value of every message can afford.

    Hot paths look in ``hot`` first (``memo.hot.get(key)``: a dict lookup) and call
    :meth:`get` only on a miss; read ``hot`` again after any call, as it is replaced when full.
    """

    __slots__ = ("_half", "_old", "evicted", "hot", "limit")

    def __init__(self, limit: int) -> None:
        if limit < 2:
            raise ValueError(f"limit must be at least 2, got {limit}")
        self.limit = limit
        self._half = limit // 2
        self.evicted = 0
        self.hot: dict[K, V] = {}
        self._old: dict[K, V] = {}

    def get(self, key: K) -> V | None:
        """The value of ``key`` (now seen in this generation), or None."""
        value = self.hot.get(key)
        if value is None:
            value = self._old.pop(key, None)
            if value is not None:
                self.put(key, value)
        return value

    def put(self, key: K, value: V) -> V:
        """Set ``key`` (seen in this generation); a full generation makes room by aging."""
        hot = self.hot
        if key not in hot:
            self._old.pop(key, None)
            if len(hot) >= self._half:
                self.evicted += len(self._old)
                self._old, self.hot = hot, {}
        self.hot[key] = value
        return value

    def pop(self, key: K) -> V | None:
        value = self.hot.pop(key, None)
        old = self._old.pop(key, None)
        return value if value is not None else old

    def clear(self) -> None:
        self.hot = {}
        self._old = {}

    def __contains__(self, key: object) -> bool:
        return key in self.hot or key in self._old

    def __len__(self) -> int:
        return len(self.hot) + len(self._old)

    def items(self) -> list[tuple[K, V]]:
        """A snapshot (safe to change the memo while going through it)."""
        return [*self._old.items(), *self.hot.items()]

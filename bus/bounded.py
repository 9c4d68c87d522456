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

"""Memories bounded by count and by age, with compact entries.

The intake remembers what it saw lately (event ids, Kubernetes occurrence counts, pods'
nodes) only to do less work: the database is the backstop for deduplication, and an entry
forgotten costs a little precision, never correctness. So these memories keep each key as
its 64-bit hash (a Python int, ~32 bytes, instead of the key's strings and a tuple around
them) and forget in two generations:

- lookups read the current and the previous generation (a hit in the previous one moves the
  entry into the current one, so what is used stays);
- when the current generation holds ``max_entries / 2`` keys or is ``max_age / 2`` old, it
  becomes the previous one and the old previous one is dropped whole.

So an entry is kept at least ``max_age / 2`` seconds and the last ``max_entries / 2`` keys
(unless both bounds are hit), at most ``max_age`` and ``max_entries``: memory stays flat under
any load, and a rotation is O(1), with no per-entry timestamps or linked lists.

Two different keys with the same 64-bit hash are one entry: with 100,000 entries the chance
that a given new key meets one is about 1 in 10^14.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class _Generations:
    def __init__(self, max_entries: int, max_age: float, clock: Callable[[], float]) -> None:
        if max_entries < 2 or max_age <= 0:
            raise ValueError("max_entries must be at least 2 and max_age positive")
        self.max_entries = max_entries
        self.max_age = max_age
        self.clock = clock
        self._half = max_entries // 2
        self._since = clock()

    def _age(self) -> int:
        """0: the current generation is young; 1: it is due to rotate; 2: both generations are
        older than ``max_age / 2`` (nothing was added for a while): drop both."""
        age = self.clock() - self._since
        return 0 if age < self.max_age / 2 else 1 if age < self.max_age else 2

    def _rotate(self, size: int) -> None:
        age = self._age()
        if age == 2:
            self._drop(both=True)
        elif age == 1 or size >= self._half:
            self._drop(both=False)

    def _drop(self, *, both: bool) -> None:
        raise NotImplementedError


class RecentSet(_Generations):
    """Keys seen lately (as their hashes), bounded by count and age."""

    def __init__(self, max_entries: int, max_age: float, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(max_entries, max_age, clock)
        self._current: set[int] = set()
        self._previous: set[int] = set()

    def _drop(self, *, both: bool) -> None:
        self._previous, self._current = (set() if both else self._current), set()
        self._since = self.clock()

    def add(self, key: Hashable) -> None:
        self._rotate(len(self._current))
        self._current.add(hash(key))

    def __contains__(self, key: Hashable) -> bool:
        if self._age() == 2:
            self._drop(both=True)
        h = hash(key)
        return h in self._current or h in self._previous

    def discard(self, key: Hashable) -> None:
        h = hash(key)
        self._current.discard(h)
        self._previous.discard(h)

    def __len__(self) -> int:
        return len(self._current) + len(self._previous)


class RecentMap(_Generations, Generic[V]):
    """Key -> value for keys used lately (keys as their hashes), bounded by count and age."""

    def __init__(self, max_entries: int, max_age: float, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(max_entries, max_age, clock)
        self._current: dict[int, V] = {}
        self._previous: dict[int, V] = {}

    def _drop(self, *, both: bool) -> None:
        self._previous, self._current = ({} if both else self._current), {}
        self._since = self.clock()

    def get(self, key: Hashable) -> V | None:
        return self.get_hashed(hash(key))

    def set(self, key: Hashable, value: V) -> None:
        self.set_hashed(hash(key), value)

    # By hash, for a caller that reads and then writes the same key (hashing it once).

    def get_hashed(self, h: int) -> V | None:
        if self._age() == 2:
            self._drop(both=True)
        value = self._current.get(h)
        if value is None:
            value = self._previous.pop(h, None)
            if value is not None:
                self._put(h, value)      # used again: kept
        return value

    def current(self, h: int) -> V | None:
        """The value of a key (by hash) if the current generation holds it: no rotation,
        no move, nothing changes."""
        return self._current.get(h)

    def set_hashed(self, h: int, value: V) -> None:
        current = self._current
        if h not in current:             # (a key is in one generation at most)
            self._previous.pop(h, None)
            self._rotate(len(current))
            current = self._current      # the rotation may have begun a new one
        current[h] = value

    def _put(self, h: int, value: V) -> None:
        if h not in self._current:
            self._rotate(len(self._current))
        self._current[h] = value

    def __len__(self) -> int:
        return len(self._current) + len(self._previous)

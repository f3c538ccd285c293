"""engine.bounded: the intake's memories stay within their count and age, and keep what is used."""

from __future__ import annotations

from engine.bounded import RecentMap, RecentSet


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_recent_set_never_holds_more_than_its_bound_and_keeps_the_newest_half() -> None:
    seen = RecentSet(1000, 3600, clock=Clock())
    for i in range(100_000):
        seen.add(f"event-{i}")
        assert len(seen) <= 1000
    assert all(f"event-{i}" in seen for i in range(100_000 - 500, 100_000))
    assert "event-0" not in seen and "event-98000" not in seen


def test_a_recent_set_forgets_by_age_even_when_few_keys_came() -> None:
    clock = Clock()
    seen = RecentSet(1000, 600, clock=clock)
    seen.add("a")
    clock.now = 299
    assert "a" in seen               # kept at least half the age
    seen.add("b")
    clock.now = 301
    seen.add("c")                    # the generation holding a and b is now the previous one
    assert "a" in seen and "b" in seen
    clock.now = 602
    seen.add("d")
    assert "a" not in seen and "b" not in seen and "c" in seen and "d" in seen
    clock.now = 602 + 601            # nothing added for longer than the age: all forgotten
    assert "c" not in seen and "d" not in seen and len(seen) == 0


def test_a_discarded_key_is_forgotten() -> None:
    seen = RecentSet(10, 60, clock=Clock())
    seen.add("x")
    seen.discard("x")
    assert "x" not in seen


def test_a_recent_map_keeps_keys_in_use_and_forgets_idle_ones() -> None:
    counts: RecentMap[int] = RecentMap(100, 3600, clock=Clock())
    counts.set(("hot", "pod"), 1)
    for i in range(10_000):
        counts.set(("cold", str(i)), i)
        if i % 10 == 0:
            assert counts.get(("hot", "pod")) == 1   # read: moved to the current generation
        assert len(counts) <= 100
    assert counts.get(("cold", "0")) is None
    assert counts.get(("cold", "9999")) == 9999
    counts.set(("hot", "pod"), 5)
    assert counts.get(("hot", "pod")) == 5


def test_a_recent_map_keeps_a_zero() -> None:
    counts: RecentMap[int] = RecentMap(10, 60, clock=Clock())
    counts.set("k", 0)
    assert counts.get("k") == 0

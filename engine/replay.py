"""The offline pipeline: a recorded stream -> intake -> rule base -> correlation, on event time.

The same components as the service, driven by a virtual-time scheduler whose clock
follows the events' own timestamps, so a day of events replays in seconds and always
gives the same incidents.
"""

from __future__ import annotations

import contextlib
import gc
import heapq
import itertools
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from reactivex.abc import DisposableBase
from reactivex.internal import ArgumentOutOfRangeException
from reactivex.scheduler.scheduler import Scheduler

from engine.correlation import Correlator, Incident
from engine.events import Event, OccurrenceTracker, parse_events, read_stream
from engine.exceptions import MalformedEvent
from engine.rulebase import RuleBase
from engine.rules.model import Strategy

log = logging.getLogger(__name__)

FLUSH_HORIZON = 10 * 365 * 86400.0


@dataclass
class DeadLetter:
    line: int
    reason: str


@dataclass
class ReplayResult:
    incidents: list[Incident] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    records: int = 0
    duplicates: int = 0
    ignored: int = 0
    rulebase: dict[str, int] = field(default_factory=dict)
    correlation: dict[str, int] = field(default_factory=dict)

    def arms(self) -> dict[str, dict[str, int]]:
        """Incidents per experiment arm: strategy id -> arm -> incidents."""
        out: dict[str, dict[str, int]] = {}
        for incident in self.incidents:
            if incident.arm is not None:
                counts = out.setdefault(incident.strategy.id, {})
                counts[incident.arm] = counts.get(incident.arm, 0) + 1
        return out

    def summary(self) -> dict[str, Any]:
        arms = self.arms()
        return {
            "kind": "summary", "records": self.records, "duplicates": self.duplicates,
            "ignored": self.ignored, "dead_letters": len(self.dead_letters),
            "incidents": len(self.incidents), **{f"rules_{k}": v for k, v in self.rulebase.items()},
            **{f"correlation_{k}": v for k, v in self.correlation.items()},
            **({"arms": arms} if arms else {}),
        }


@contextlib.contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """The cyclic garbage collector off for a replay's loop, as it was before after.

    A replay allocates millions of short-lived objects, all freed by reference counting,
    and keeps a few hundred thousand (incidents and their samples, the tracker's memory).
    The collector finds next to nothing to collect in it (a few hundred objects in a
    storm of 200,000 events) yet walked the live ones hundreds of times: a tenth of
    the time. Whatever cyclic garbage there is goes at its next run, after the loop.
    """
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


class _Timer(DisposableBase):
    __slots__ = ("cancelled",)

    def __init__(self) -> None:
        self.cancelled = False

    def dispose(self) -> None:
        self.cancelled = True


class EventTimeScheduler(Scheduler):
    """A virtual-time scheduler whose clock the replay moves to each event's time.

    It does what reactivex's ``HistoricalScheduler`` does for the correlator (absolute
    timers, run in the order of their due time, then of their scheduling, each with the
    clock at its due time; ``advance_to`` runs every timer due by then) without its
    per-timer costs: no lock, no ``ScheduledItem`` and disposables around each timer, no
    Python-level comparisons in the heap. A storm's 10,000 groups arm three timers
    each; they were a fifth of a replay's time. Times stay datetimes, as there, so the
    correlator sees the very same clock values.
    """

    def __init__(self, initial_clock: datetime) -> None:
        super().__init__()
        self._now = initial_clock
        self._heap: list[tuple[datetime, int, Any, Any, _Timer]] = []
        self._order = itertools.count()
        self._running = False

    @property
    def now(self) -> datetime:
        return self._now

    def schedule(self, action: Any, state: Any = None) -> DisposableBase:
        return self.schedule_absolute(self._now, action, state)

    def schedule_relative(self, duetime: Any, action: Any, state: Any = None) -> DisposableBase:
        return self.schedule_absolute(self._now + self.to_timedelta(duetime), action, state)

    def schedule_absolute(self, duetime: Any, action: Any, state: Any = None) -> DisposableBase:
        timer = _Timer()
        heapq.heappush(self._heap, (self.to_datetime(duetime), next(self._order), action, state, timer))
        return timer

    def advance_to(self, moment: datetime) -> None:
        """Run every timer due by ``moment`` (those they schedule too), then set the clock
        to it. A call from inside a timer does nothing."""
        if moment < self._now:
            raise ArgumentOutOfRangeException()
        if moment == self._now or self._running:
            return
        self._running = True
        heap = self._heap
        try:
            while heap and heap[0][0] <= moment:
                due, _, action, state, timer = heapq.heappop(heap)
                if due > self._now:
                    self._now = due
                if not timer.cancelled:
                    action(self, state)
        finally:
            self._running = False
        self._now = moment


class Replayer:
    """Feeds decoded stream items through the pipeline on a virtual clock."""

    def __init__(self, strategies: Iterable[Strategy],
                 on_incident: Callable[[Incident], None] | None = None) -> None:
        self.rulebase = RuleBase(strategies)
        self.tracker = OccurrenceTracker()
        self.scheduler: EventTimeScheduler | None = None
        self.correlator: Correlator | None = None
        self.result = ReplayResult()
        self._on_incident = on_incident
        self._clock = 0.0

    def _ensure_clock(self, start: float) -> Correlator:
        if self.correlator is None:
            self.scheduler = EventTimeScheduler(datetime.fromtimestamp(start, UTC))
            self._clock = start
            self.correlator = Correlator(self.scheduler, ids=itertools.count(1))
            self.correlator.formed.subscribe(self._formed)
        return self.correlator

    def _formed(self, incident: Incident) -> None:
        self.result.incidents.append(incident)
        if self._on_incident is not None:
            self._on_incident(incident)
        # Offline, the workflow "runs" at once (dry-run): the incident closes on forming
        # and its cooldown starts.
        assert self.correlator is not None
        self.correlator.close(incident)

    def feed(self, items: Iterable[tuple[int, Any]]) -> None:
        """Feed decoded stream items (:func:`~engine.events.read_file`'s): malformed ones
        become dead letters, the rest go through the pipeline in order."""
        with _no_cyclic_gc():
            self._run(self._events(items))

    def feed_events(self, events: Iterable[Event]) -> None:
        """Feed events already parsed (a rehearsal builds them), in time order."""
        with _no_cyclic_gc():
            self._run(events)

    def _events(self, items: Iterable[tuple[int, Any]]) -> Iterator[Event]:
        result = self.result
        dead = result.dead_letters
        for line, obj in items:
            if isinstance(obj, MalformedEvent):
                dead.append(DeadLetter(line, str(obj)))
                continue
            try:
                events = parse_events(obj)
            except MalformedEvent as exc:
                dead.append(DeadLetter(line, str(exc)))
                continue
            if not events:
                result.ignored += 1
                continue
            yield from events

    def _run(self, events: Iterable[Event]) -> None:
        # The hot loop of a replay: one pass per event record, attribute lookups hoisted.
        result = self.result
        observe = self.tracker.observe
        process = self.rulebase.process
        correlator = self.correlator
        clock = self._clock
        scheduler = self.scheduler
        records = duplicates = 0
        try:
            for event in events:
                records += 1
                if not observe(event):
                    duplicates += 1
                    continue
                ts = event.last_seen or event.first_seen      # Event.time
                if correlator is None:
                    correlator = self._ensure_clock(ts)
                    scheduler = self.scheduler
                    clock = self._clock
                if ts > clock:
                    clock = self._clock = ts
                    assert scheduler is not None
                    scheduler.advance_to(datetime.fromtimestamp(ts, UTC))
                hits = process(event, now=clock)
                if hits:
                    add = correlator.add
                    for hit in hits:
                        add(hit, clock)
        finally:
            result.records += records
            result.duplicates += duplicates

    def finish(self) -> ReplayResult:
        """Let every pending burst run out its quiet period."""
        if self.scheduler is not None:
            with _no_cyclic_gc():
                self.scheduler.advance_to(datetime.fromtimestamp(self._clock + FLUSH_HORIZON, UTC))
        self.result.rulebase = dict(self.rulebase.stats)
        if self.correlator is not None:
            self.result.correlation = dict(self.correlator.stats)
        self.rulebase.close()
        return self.result


def replay_bytes(data: bytes, strategies: Iterable[Strategy],
                 on_incident: Callable[[Incident], None] | None = None) -> ReplayResult:
    replayer = Replayer(strategies, on_incident)
    replayer.feed(read_stream(data))
    return replayer.finish()

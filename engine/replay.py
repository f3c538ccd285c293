"""The offline pipeline: a recorded stream -> intake -> rule base -> correlation, on event time.

The same components as the service, driven by a ``HistoricalScheduler`` whose clock
follows the events' own timestamps, so a day of events replays in seconds and always
gives the same incidents.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from reactivex.scheduler import HistoricalScheduler

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


class Replayer:
    """Feeds decoded stream items through the pipeline on a virtual clock."""

    def __init__(self, strategies: Iterable[Strategy],
                 on_incident: Callable[[Incident], None] | None = None) -> None:
        self.rulebase = RuleBase(strategies)
        self.tracker = OccurrenceTracker()
        self.scheduler: HistoricalScheduler | None = None
        self.correlator: Correlator | None = None
        self.result = ReplayResult()
        self._on_incident = on_incident
        self._clock = 0.0

    def _ensure_clock(self, start: float) -> Correlator:
        if self.correlator is None:
            self.scheduler = HistoricalScheduler(initial_clock=datetime.fromtimestamp(start, UTC))
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
        result = self.result
        tracker, rulebase = self.tracker, self.rulebase
        for line, obj in items:
            if isinstance(obj, MalformedEvent):
                result.dead_letters.append(DeadLetter(line, str(obj)))
                continue
            try:
                events = parse_events(obj)
            except MalformedEvent as exc:
                result.dead_letters.append(DeadLetter(line, str(exc)))
                continue
            if not events:
                result.ignored += 1
                continue
            for event in events:
                self._one(event, tracker, rulebase)

    def feed_events(self, events: Iterable[Event]) -> None:
        """Feed events already parsed (a rehearsal builds them), in time order."""
        for event in events:
            self._one(event, self.tracker, self.rulebase)

    def _one(self, event: Event, tracker: OccurrenceTracker, rulebase: RuleBase) -> None:
        self.result.records += 1
        if not tracker.observe(event):
            self.result.duplicates += 1
            return
        ts = event.time
        correlator = self._ensure_clock(ts)
        if ts > self._clock:
            self._clock = ts
            self.scheduler.advance_to(datetime.fromtimestamp(ts, UTC))  # type: ignore[union-attr]
        for hit in rulebase.process(event, now=self._clock):
            correlator.add(hit, self._clock)

    def finish(self) -> ReplayResult:
        """Let every pending burst run out its quiet period."""
        if self.scheduler is not None:
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

"""Burst correlation: strategy hits become incidents, on a reactivex scheduler.

Hits are grouped by (strategy, correlation key). A group's burst becomes ONE incident once
it has been quiet for ``quiet``, or ``max_window`` after its first hit, whichever comes
first. While the incident is open (its workflow runs), hits for the key attach to it as
*late* events; after it closes, ``cooldown`` keeps attaching them as *suppressed* instead
of opening a new incident, so a flapping workload does not page twice.

The correlator is an rx ``Observer`` of hits and publishes incidents on the ``formed``
Subject. Time comes from the scheduler it is given: ``AsyncIOScheduler`` on the real
clock in the service, ``HistoricalScheduler`` on event time in replay and tests, so the
same code is deterministic and instant offline.

Why not a ``group_by_until`` + ``debounce`` chain per group: that costs a timer
reschedule and several operator hops per event (tens of microseconds); a storm repeats
the same symptom thousands of times. Here a repeat is a dict update, and a group holds
one pending timer that, when it fires, re-arms itself at ``last + quiet`` if hits
arrived meanwhile: the same debounce semantics, a timer per burst instead of per event.
"""

from __future__ import annotations

import itertools
import logging
import operator
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from reactivex import Observer
from reactivex.abc import DisposableBase, SchedulerBase
from reactivex.subject import Subject

from engine.events import Event
from engine.experiments import Assignment, assign
from engine.rulebase import Hit
from engine.rules.model import Strategy
from engine.statuses import IncidentStatus

log = logging.getLogger(__name__)

MAX_SAMPLE_EVENTS = 20
_FORMING, _OPEN, _CLOSED = IncidentStatus.FORMING, IncidentStatus.OPEN, IncidentStatus.CLOSED



_KEY_GETTERS: dict[tuple[str, ...], Callable[[Event], tuple[Any, ...]]] = {}


def key_getter(fields: Iterable[str]) -> Callable[[Event], tuple[Any, ...]]:
    """A function giving an event's values of ``fields``, always as a tuple."""
    names = tuple(fields)
    getter = _KEY_GETTERS.get(names)
    if getter is None:
        if len(names) == 1:
            one = operator.attrgetter(names[0])
            getter = lambda event: (one(event),)  # noqa: E731
        else:
            getter = operator.attrgetter(*names)
        getter = _KEY_GETTERS[names] = getter
    return getter


def correlation_key(strategy: Strategy, event: Event) -> tuple[str, ...]:
    return _key_text(key_getter(strategy.key_fields)(event))


def _key_text(values: tuple[Any, ...]) -> tuple[str, ...]:
    for v in values:
        if type(v) is not str or not v:
            return tuple("-" if v in (None, "") else str(v) for v in values)
    return values


@dataclass
class Incident:
    """One incident: a burst of hits for one strategy and key."""

    id: str
    strategy: Strategy
    key: tuple[str, ...]
    first_seen: float
    last_seen: float
    first_event: Event
    events: int = 0            # occurrences in the burst (Kubernetes count deltas summed)
    records: int = 0           # event records that made up the burst
    late: int = 0              # occurrences attached while open
    suppressed: int = 0        # occurrences attached during cooldown
    inhibited: dict[str, int] = field(default_factory=dict)  # covered strategy -> occurrences
    objects: set[str] = field(default_factory=set)
    sample_ids: list[str] = field(default_factory=list)
    event_ids: list[str] = field(default_factory=list)   # every record of the burst (pending)
    status: IncidentStatus = IncidentStatus.FORMING
    formed_at: float | None = None
    closed_at: float | None = None
    # Where the burst is recorded (set by the service): the incident row its events count
    # towards (its own id, or that of the incident another replica holds or that is cooling
    # down), and whether that row exists yet (until then counts travel with its INSERT).
    record_id: str | None = None
    recorded: bool = False
    # The workflow it runs and, in an experiment, its arm: chosen once, when the burst starts,
    # by the one function that chooses (engine.experiments.assign).
    assignment: Assignment = field(init=False)

    def __post_init__(self) -> None:
        self.assignment = assign(self.strategy, self.first_event)

    @property
    def workflow_id(self) -> str:
        return self.assignment.workflow_id

    @property
    def arm(self) -> str | None:
        return self.assignment.arm

    @property
    def key_text(self) -> str:
        return "/".join(self.key)

    def summary(self) -> dict[str, Any]:
        e = self.first_event
        return {
            "kind": "incident", "id": self.id, "strategy": self.strategy.id,
            "key": self.key_text, "events": self.events, "records": self.records,
            "objects": len(self.objects), "late": self.late, "suppressed": self.suppressed,
            "inhibited": dict(self.inhibited), "first": _iso(self.first_seen),
            "last": _iso(self.last_seen), "workflow": self.workflow_id,
            "severity": self.strategy.severity, "namespace": e.namespace,
            "workload": e.workload, "node": e.node, "reason": e.reason,
            **({"arm": self.arm} if self.arm is not None else {}),
        }

    def events_context(self) -> list[dict[str, Any]]:
        """What workflow expressions see as ``events`` (the first event of the burst)."""
        return [event_context(self.first_event)]

    def context(self) -> dict[str, Any]:
        """What workflow expressions see as ``incident``."""
        e = self.first_event
        return {
            "id": self.id, "strategy": self.strategy.id, "key": self.key_text,
            "namespace": e.namespace, "workload": e.workload, "workload_kind": e.workload_kind,
            "pod": e.pod, "node": e.node, "name": e.name, "kind": e.kind, "reason": e.reason,
            "message": e.message, "container": e.container, "cluster": e.cluster,
            "count": self.events, "severity": self.strategy.severity,
            "first_seen": _iso(self.first_seen), "last_seen": _iso(self.last_seen),
            **({"arm": self.arm} if self.arm is not None else {}),
        }


def event_context(e: Event) -> dict[str, Any]:
    out = {k: v for k, v in e.to_dict().items() if v not in (None, "", {})}
    out["first_seen"], out["last_seen"] = _iso(e.first_seen), _iso(e.time)
    return out


def incident_from_event(e: Event, strategy_id: str = "manual", severity: str | None = None) -> dict[str, Any]:
    """An incident context for one event, for ``aetherius run`` and manual triggers."""
    return {
        "id": f"manual-{e.id}", "strategy": strategy_id,
        "key": f"{e.namespace or '-'}/{e.workload or e.name}",
        "namespace": e.namespace, "workload": e.workload, "workload_kind": e.workload_kind,
        "pod": e.pod, "node": e.node, "name": e.name, "kind": e.kind, "reason": e.reason,
        "message": e.message, "container": e.container, "cluster": e.cluster, "count": e.count,
        "severity": severity or e.severity, "first_seen": _iso(e.first_seen), "last_seen": _iso(e.time),
    }


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


@dataclass
class _Group:
    incident: Incident
    first_hit: float          # scheduler time, which drives quiet and max_window
    last_hit: float
    cooldown_until: float = 0.0
    timer: DisposableBase | None = None


class Correlator(Observer[Hit]):
    """Groups hits into incidents. Call from the scheduler's thread only."""

    def __init__(self, scheduler: SchedulerBase, *, ids: itertools.count | None = None,
                 track_event_ids: bool = False) -> None:
        super().__init__()
        # The service records which events made each incident; replay has no need.
        self.track_event_ids = track_event_ids
        self.scheduler = scheduler
        self.formed: Subject[Incident] = Subject()
        self._groups: dict[tuple[str, tuple[str, ...]], _Group] = {}
        # Per strategy object (by id, kept alive so that the id stays its own): its id and
        # its key's getter, so a hit costs no property calls or tuple building.
        self._keys: dict[int, tuple[Strategy, str, Callable[[Event], tuple[Any, ...]]]] = {}
        self._ids = ids
        self.stats = {"hits": 0, "incidents": 0, "late": 0, "suppressed": 0,
                      "inhibited": 0, "inhibited_orphans": 0}

    # ----------------------------------------------------------------- input

    def now(self) -> float:
        return self.scheduler.now.timestamp()

    def _on_next_core(self, hit: Hit) -> None:
        self.add(hit)

    def add(self, hit: Hit, now: float | None = None) -> Incident | None:
        """Attach a hit; returns the incident (pending, open or closed) it joined.
        ``now`` is the scheduler's time, when the caller already knows it."""
        stats = self.stats
        stats["hits"] += 1
        event = hit.event
        if hit.inhibited_by is not None:
            return self._inhibited(hit)
        strategy = hit.strategy
        known = self._keys.get(id(strategy))
        if known is None or known[0] is not strategy:
            known = self._keys[id(strategy)] = (strategy, strategy.id, key_getter(strategy.key_fields))
        gkey = (known[1], _key_text(known[2](event)))
        group = self._groups.get(gkey)
        if now is None:
            now = self.now()
        if group is None or (group.incident.status is _CLOSED and now >= group.cooldown_until):
            group = self._start(strategy, gkey, event, now)
        incident = group.incident
        count = event.count
        status = incident.status
        if status is _FORMING:
            incident.events += count
            incident.records += 1
            t = event.last_seen or event.first_seen      # Event.time
            if t > incident.last_seen:
                incident.last_seen = t
            incident.objects.add(event.uid or event.object_key)
            if len(incident.sample_ids) < MAX_SAMPLE_EVENTS:
                incident.sample_ids.append(event.id)
            if self.track_event_ids:
                incident.event_ids.append(event.id)
            group.last_hit = now
        elif status is _OPEN:
            incident.late += count
            incident.last_seen = max(incident.last_seen, event.time)
            stats["late"] += count
        else:
            incident.suppressed += count
            self.stats["suppressed"] += count
        return incident

    def _inhibited(self, hit: Hit) -> Incident | None:
        by, value = hit.inhibited_by  # type: ignore[misc]
        count = hit.event.count
        self.stats["inhibited"] += count
        # Inhibitors are keyed by the field they inhibit on (node), so this is one lookup.
        group = self._groups.get((by, (value,)))
        if group is not None:
            covered = group.incident.inhibited
            covered[hit.strategy.id] = covered.get(hit.strategy.id, 0) + count
            return group.incident
        self.stats["inhibited_orphans"] += count
        return None

    def _start(self, strategy: Strategy, gkey: tuple, event: Event, now: float) -> _Group:
        ident = f"inc-{next(self._ids):06d}" if self._ids is not None else f"inc-{uuid.uuid4().hex[:12]}"
        # A first sighting of a repeated Kubernetes event began at its firstTimestamp.
        first = event.first_seen if event.count == event.total_count and event.first_seen else event.time
        incident = Incident(id=ident, strategy=strategy, key=gkey[1], first_seen=first,
                            last_seen=event.time, first_event=event)
        group = _Group(incident, first_hit=now, last_hit=now)
        self._groups[gkey] = group
        self._arm(gkey, group, now + strategy.correlation.quiet)
        return group

    # ----------------------------------------------------------------- timers

    def _arm(self, gkey: tuple, group: _Group, due: float) -> None:
        when = datetime.fromtimestamp(due, UTC)
        group.timer = self.scheduler.schedule_absolute(when, lambda _s, _st: self._due(gkey))

    def _due(self, gkey: tuple) -> None:
        group = self._groups.get(gkey)
        if group is None:
            return
        incident = group.incident
        if incident.status == IncidentStatus.FORMING:
            c = incident.strategy.correlation
            due = min(group.last_hit + c.quiet, group.first_hit + c.max_window)
            now = self.now()
            if now + 1e-9 < due:
                self._arm(gkey, group, due)
                return
            incident.status = IncidentStatus.OPEN
            incident.formed_at = now
            self.stats["incidents"] += 1
            log.info("Strategy matched: %s key=%s events=%d workflow=%s%s",
                     incident.strategy.id, incident.key_text, incident.events, incident.workflow_id,
                     f" arm={incident.arm}" if incident.arm is not None else "",
                     extra={"incident_id": incident.id, "strategy": incident.strategy.id})
            try:
                self.formed.on_next(incident)
            except Exception:  # a subscriber's fault must not stop correlation
                log.exception("incident subscriber failed for %s", incident.id,
                              extra={"incident_id": incident.id})
        elif incident.status == IncidentStatus.CLOSED and self.now() >= group.cooldown_until:
            del self._groups[gkey]  # forget it: memory stays bounded by live groups

    def close(self, incident: Incident) -> None:
        """The incident's workflow ended: start its cooldown."""
        gkey = (incident.strategy.id, incident.key)
        group = self._groups.get(gkey)
        if group is None or group.incident is not incident or incident.status == IncidentStatus.CLOSED:
            return
        now = self.now()
        incident.status = IncidentStatus.CLOSED
        incident.closed_at = now
        group.cooldown_until = now + incident.strategy.correlation.cooldown
        self._arm(gkey, group, group.cooldown_until)

    def open_incidents(self) -> list[Incident]:
        return [g.incident for g in self._groups.values() if g.incident.status != IncidentStatus.CLOSED]

    def group_count(self) -> int:
        return len(self._groups)

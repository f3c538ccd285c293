"""In-memory stand-ins for the service's storage and bus, shipped so that every part of the
service can be unit-tested without a server (and so can code built on it).

- :class:`MemoryRecords` keeps events, dead letters, incidents and replicas the way
  :class:`engine.storage.records.Repository` does, one open incident per (strategy, key)
  and cooldowns included;
- :class:`MemoryExecutionStore` is :class:`engine.store.MemoryStore` that can also be taken
  over (``claim_orphans``);
- :class:`MemoryRuleChanges` is the stored rules' change feed: call :meth:`notify` (a
  NOTIFY) or :meth:`touch` (a change only a poll sees);
- :class:`FakeMessage` is a bus message that remembers whether it was acked.

They implement the protocols of :mod:`engine.service.contracts`; the PostgreSQL ones are
tested against the same behaviour in ``tests/integration``.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.correlation import Incident
from engine.service.bus import Message
from engine.service.contracts import DeadLetter, EventRow
from engine.statuses import FINAL_EXECUTION, ExecutionStatus
from engine.store import Execution, MemoryStore


@dataclass
class IncidentRow:
    id: str
    strategy_id: str
    key: str
    workflow_id: str
    status: str = "open"
    execution_id: str | None = None
    events: int = 0
    late: int = 0
    suppressed: int = 0
    inhibited: dict[str, int] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)
    opened_at: float = field(default_factory=time.time)
    closed_at: float | None = None
    cooldown_until: float | None = None


class MemoryRecords:
    """:class:`engine.storage.records.Repository` in dicts."""

    def __init__(self, replica: str = "test", *, clock: Callable[[], float] = time.time,
                 store: MemoryStore | None = None) -> None:
        self.replica = replica
        self.clock = clock
        self.store = store                     # to know which executions exist
        self.events: dict[str, dict[str, Any]] = {}
        self.dead_letters: list[DeadLetter] = []
        self.incidents: dict[str, IncidentRow] = {}
        self.heartbeats: dict[str, float] = {}
        self.down = False                      # True: every write raises, as with no database
        self.purged: list[float] = []

    def _check(self) -> None:
        if self.down:
            raise ConnectionError("the database is unreachable (MemoryRecords.down)")

    # ------------------------------------------------------------------ events

    async def record_events(self, rows: list[EventRow]) -> set[str]:
        self._check()
        new = set()
        for event, subject, (state, strategy_id, incident_id) in rows:
            if event.id in self.events:
                continue
            self.events[event.id] = {
                "id": event.id, "subject": subject, "state": state, "strategy_id": strategy_id,
                "incident_id": incident_id, "owner": self.replica, "received_at": self.clock(),
                "payload": {**event.to_dict(), "watch_type": event.watch_type}}
            new.add(event.id)
        return new

    async def recent_event_ids(self, seconds: float) -> list[str]:
        since = self.clock() - seconds
        return [i for i, e in self.events.items() if e["received_at"] > since]

    async def set_event_states(self, states: list[tuple[str, str, str | None, str | None]]) -> None:
        for event_id, state, strategy_id, incident_id in states:
            if event_id in self.events:
                self.events[event_id].update(state=state, strategy_id=strategy_id, incident_id=incident_id)

    async def attach_events(self, event_ids: list[str], incident_id: str, state: str = "attached") -> None:
        for event_id in event_ids:
            if event_id in self.events:
                self.events[event_id].update(state=state, incident_id=incident_id)

    async def repoint_events(self, from_incident: str, to_incident: str) -> None:
        for row in self.events.values():
            if row["incident_id"] == from_incident:
                row["incident_id"] = to_incident

    def _alive(self, replica: str | None, lease: float) -> bool:
        return replica is not None and self.heartbeats.get(replica, 0.0) > self.clock() - lease

    async def claim_pending_events(self, lease_seconds: float, *, own: bool) -> list[dict[str, Any]]:
        claimed = []
        for row in self.events.values():
            if row["state"] not in ("pending", "received"):
                continue
            mine = row["owner"] in (None, self.replica)
            if (own and mine) or (not mine and not self._alive(row["owner"], lease_seconds)):
                row["owner"] = self.replica
                claimed.append({k: row[k] for k in ("id", "payload", "received_at", "state")})
        return sorted(claimed, key=lambda r: r["received_at"])

    async def dead_letters_many(self, rows: list[DeadLetter]) -> None:
        self._check()
        self.dead_letters.extend(rows)

    # ------------------------------------------------------------------ incidents

    async def open_incident(self, incident: Incident, execution_id: str | None = None,
                            event_ids: list[str] | None = None) -> tuple[str, str | None]:
        now = self.clock()
        for row in self.incidents.values():
            if row.strategy_id == incident.strategy.id and row.key == incident.key_text:
                if row.status == "open":
                    return "open", row.id
                if row.cooldown_until is not None and row.cooldown_until > now:
                    return "cooling", row.id
        self.incidents[incident.id] = IncidentRow(
            incident.id, incident.strategy.id, incident.key_text, incident.workflow_id,
            execution_id=execution_id, events=incident.events, late=incident.late,
            inhibited=dict(incident.inhibited), context=incident.context())
        await self.attach_events(list(event_ids or []), incident.id)
        return "opened", None

    async def open_incidents(self, batch: Sequence[tuple[Incident, str | None, list[str]]],
                             ) -> list[tuple[str, str | None]]:
        return [await self.open_incident(*item) for item in batch]

    async def close_incidents(self, batch: Sequence[tuple[str, float | None, float]],
                              ) -> list[dict[str, Any] | None]:
        return [await self.close_incident_by_id(incident_id, cooldown) for incident_id, _, cooldown in batch]

    async def claim_incidents_without_execution(self, lease_seconds: float) -> list[dict[str, Any]]:
        known = set(self.store.executions) if self.store is not None else set()
        claimed = []
        for row in self.incidents.values():
            if row.status == "open" and row.opened_at < self.clock() - lease_seconds \
                    and row.execution_id not in known:
                row.execution_id = f"exec-claimed-{row.id}"
                claimed.append({"id": row.id, "strategy_id": row.strategy_id, "key": row.key,
                                "workflow_id": row.workflow_id, "execution_id": row.execution_id,
                                "context": row.context})
        return claimed

    async def close_incident_by_id(self, incident_id: str, cooldown: float) -> dict[str, Any] | None:
        row = self.incidents.get(incident_id)
        if row is None or row.status != "open":
            return None
        row.status, row.closed_at = "closed", self.clock()
        row.cooldown_until = row.closed_at + cooldown
        return {"strategy_id": row.strategy_id, "key": row.key}

    async def open_incident_of(self, execution_id: str) -> dict[str, Any] | None:
        for row in self.incidents.values():
            if row.execution_id == execution_id and row.status == "open":
                return {"id": row.id, "strategy_id": row.strategy_id}
        return None

    async def add_to_incident(self, incident_id: str, events: int = 0, late: int = 0,
                              suppressed: int = 0, inhibited: dict[str, int] | None = None) -> None:
        row = self.incidents.get(incident_id)
        if row is None:
            return
        row.events += events
        row.late += late
        row.suppressed += suppressed
        for strategy_id, count in (inhibited or {}).items():
            row.inhibited[strategy_id] = row.inhibited.get(strategy_id, 0) + count

    async def close_incident(self, incident: Incident) -> None:
        await self.close_incident_by_id(incident.id, incident.strategy.correlation.cooldown)

    # ------------------------------------------------------------------ replicas, retention

    async def heartbeat(self, info: dict[str, Any] | None = None) -> None:
        self.heartbeats[self.replica] = self.clock()

    async def leave(self) -> None:
        self.heartbeats[self.replica] = 0.0

    async def purge(self, older_than_seconds: float, batch: int = 1000) -> int:
        self.purged.append(older_than_seconds)
        cutoff = self.clock() - older_than_seconds
        old = [i for i, e in self.events.items() if e["state"] != "pending" and e["received_at"] < cutoff]
        for event_id in old:
            del self.events[event_id]
        return len(old)


class MemoryExecutionStore(MemoryStore):
    """The in-memory store, with executions owned by replicas that can be taken over."""

    def __init__(self, replica: str = "test") -> None:
        super().__init__()
        self.replica = replica
        self.owners: dict[str, str] = {}
        self.orphans: set[str] = set()         # execution ids whose owner is gone

    async def claim_orphans(self, running_here: list[str], limit: int = 100) -> list[str]:
        claimed = [e.id for e in self.executions.values() if e.status == ExecutionStatus.RUNNING
                   and e.id not in running_here and e.id in self.orphans][:limit]
        for execution_id in claimed:
            self.orphans.discard(execution_id)
            self.owners[execution_id] = self.replica
        return claimed

    def unfinished(self) -> list[str]:
        return [e.id for e in self.executions.values() if e.status not in FINAL_EXECUTION]

    # The admission queue: queued executions are this replica's, or orphans (owner gone).

    async def queue_execution(self, execution: Execution) -> None:
        saved = copy.copy(execution)
        saved.runs = []
        self.executions[execution.id] = saved
        self.owners[execution.id] = self.replica
        self.log.append(("queue_execution", execution.id, None))

    def _queued(self) -> list[Execution]:
        return sorted((e for e in self.executions.values() if e.status == ExecutionStatus.QUEUED),
                      key=lambda e: (e.queued_at or 0.0, e.id))

    async def claim_queued(self, limit: int) -> list[tuple[str, bool, float]]:
        now = time.time()
        out: list[tuple[str, bool, float]] = []
        for saved in self._queued():
            own = self.owners.get(saved.id) == self.replica
            if len(out) >= limit or not (own or saved.id in self.orphans):
                continue
            self.orphans.discard(saved.id)
            self.owners[saved.id] = self.replica
            saved.status, saved.started_at = ExecutionStatus.RUNNING, now
            out.append((saved.id, own, now - (saved.queued_at or now)))
        return out

    async def queued_count(self) -> int:
        return sum(1 for e in self._queued() if self.owners.get(e.id) == self.replica)

    async def cancel_queued(self, execution_id: str, outcome: str) -> bool | None:
        saved = self.executions.get(execution_id)
        if saved is None or saved.status != ExecutionStatus.QUEUED:
            return None
        saved.status, saved.error = ExecutionStatus.CANCELLED, "cancelled while queued"
        saved.outcome = outcome
        saved.finished_at = time.time()
        return self.owners.get(execution_id) == self.replica


class MemoryRuleChanges:
    """A change feed of stored rules: :meth:`notify` is a NOTIFY, :meth:`touch` a silent change."""

    def __init__(self) -> None:
        self.version = 0
        self.listeners: list[Callable[[], None]] = []
        self.connected = True

    async def fingerprint(self) -> tuple[Any, ...]:
        return (self.version,)

    def touch(self) -> None:
        self.version += 1

    def notify(self) -> None:
        self.touch()
        for listener in list(self.listeners):
            listener()

    @contextlib.asynccontextmanager
    async def notifications(self, callback: Callable[[], None]) -> AsyncIterator[Callable[[], bool]]:
        self.listeners.append(callback)
        try:
            yield lambda: self.connected
        finally:
            self.listeners.remove(callback)


class FakeMessage(Message):
    """A bus message that records its ack."""

    acked: bool = False

    async def ack(self) -> None:
        self.acked = True


def message(data: bytes, subject: str = "internal.event.critical", msg_id: str | None = None) -> FakeMessage:
    return FakeMessage(data=data, subject=subject, msg_id=msg_id, headers={})

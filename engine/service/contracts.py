"""What the service's parts need from storage and from each other, as protocols.

PostgreSQL implements them (:mod:`engine.storage`); :mod:`engine.testing` ships in-memory
ones, so every part can be unit-tested without a server.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from engine.correlation import Incident
from engine.events import Event
from engine.rules.generation import Generation
from engine.rules.model import Workflow
from engine.store import Execution, Store

# (event, subject, (state, strategy id, incident id)) as intake records it.
EventRow = tuple[Event, str | None, tuple[str, str | None, str | None]]


class DeadLetter(NamedTuple):
    """An input that could not be taken in, as recorded: at most ``intake.dead_letter_bytes``
    of its raw bytes, with the size and SHA-256 of all of them."""

    source: str
    subject: str | None
    reason: str
    raw: bytes | None
    headers: dict[str, str]
    size: int | None = None       # of the whole raw payload (None: no raw payload)
    sha256: str | None = None     # hex, of the whole raw payload


class Records(Protocol):
    """Events, dead letters, incidents and replicas (:class:`engine.storage.records.Repository`)."""

    async def record_events(self, rows: list[EventRow]) -> set[str]: ...

    async def recent_event_ids(self, seconds: float) -> list[str]: ...

    async def set_event_states(self, states: list[tuple[str, str, str | None, str | None]]) -> None: ...

    async def attach_events(self, event_ids: list[str], incident_id: str,
                            state: str = "attached") -> None: ...

    async def repoint_events(self, from_incident: str, to_incident: str) -> None: ...

    async def claim_pending_events(self, lease_seconds: float, *, own: bool) -> list[dict[str, Any]]: ...

    async def dead_letters_many(self, rows: list[DeadLetter]) -> None: ...

    async def open_incident(self, incident: Incident, execution_id: str | None = None,
                            event_ids: list[str] | None = None) -> tuple[str, str | None]: ...

    async def open_incidents(self, batch: Sequence[tuple[Incident, str | None, list[str]]],
                             ) -> list[tuple[str, str | None]]: ...

    async def close_incidents(self, batch: Sequence[tuple[str, float | None, float]],
                              ) -> list[dict[str, Any] | None]: ...

    async def claim_incidents_without_execution(self, lease_seconds: float) -> list[dict[str, Any]]: ...

    async def close_incident_by_id(self, incident_id: str, cooldown: float) -> dict[str, Any] | None: ...

    async def open_incident_of(self, execution_id: str) -> dict[str, Any] | None: ...

    async def add_to_incident(self, incident_id: str, events: int = 0, late: int = 0,
                              suppressed: int = 0, inhibited: dict[str, int] | None = None) -> None: ...

    async def close_incident(self, incident: Incident) -> None: ...

    async def heartbeat(self, info: dict[str, Any] | None = None) -> None: ...

    async def leave(self) -> None: ...

    async def purge(self, older_than_seconds: float, batch: int = 1000) -> int: ...


class ExecutionStore(Store, Protocol):
    """The runner's store, plus taking over executions of replicas that are gone, plus the
    durable admission queue (:class:`engine.service.executions.Executions`)."""

    async def claim_orphans(self, running_here: list[str], limit: int = 100) -> list[str]: ...

    async def queue_execution(self, execution: Execution) -> None: ...

    async def claim_queued(self, limit: int) -> list[tuple[str, bool, float]]: ...

    async def load_executions(self, execution_ids: list[str]) -> dict[str, Execution]: ...

    async def queued_count(self) -> int: ...

    async def cancel_queued(self, execution_id: str, outcome: str) -> bool | None: ...


class Workflows(Protocol):
    """The active rules as the parts read them (:class:`engine.service.generations.RulesManager`)."""

    @property
    def generation(self) -> Generation | None: ...

    async def workflow(self, workflow_id: str, version: int | None = None) -> Workflow | None: ...


class RuleChanges(Protocol):
    """How a replica hears that stored rules changed (:class:`engine.storage.rules.StoredRules`)."""

    async def fingerprint(self) -> tuple[Any, ...]: ...

    def notifications(self, callback: Callable[[], None]
                      ) -> AbstractAsyncContextManager[Callable[[], bool]]: ...


@dataclass
class Stats:
    """Counters this replica shows in ``/readyz``."""

    events: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    incidents: int = 0
    executions: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


__all__ = ["DeadLetter", "EventRow", "ExecutionStore", "Records",
           "RuleChanges", "Stats", "Workflows"]

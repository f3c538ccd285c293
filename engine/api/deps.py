"""What the HTTP API needs, and nothing more: :class:`ApiDeps`, handed to ``create_app``.

The service is the composition root above the API: it builds an ``ApiDeps`` from its parts
(``Service.api_deps``), so the API never sees the service itself. Each part is typed by a
Protocol defined here, which the service's parts happen to satisfy and a test's fakes can.
A part that is ``None`` is not built yet (the service is starting): a route that needs it
answers 503. Routes take the parts through ``Depends`` (:data:`QueriesDep`, ...).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Protocol

from fastapi import Depends, HTTPException, Request

from engine.metrics import Metrics
from engine.rules.generation import Generation, ReloadStatus
from engine.rules.model import Workflow
from engine.runner import Started
from engine.storage.queries import Queries

STARTING = "the service is starting"


class Rules(Protocol):
    """The active rules and their reloads (``engine.service.generations.RulesManager``)."""

    @property
    def generation(self) -> Generation | None: ...

    @property
    def status(self) -> ReloadStatus: ...

    @property
    def directory(self) -> Path: ...

    async def workflow(self, workflow_id: str, version: int | None = None) -> Workflow | None: ...

    async def reload(self, reason: str) -> bool: ...


class Executions(Protocol):
    """Starts and cancels executions (the service: its runner, plus its own bookkeeping)."""

    async def start(self, workflow: Workflow, *, incident: dict[str, Any], events: list[dict[str, Any]],
                    context: dict[str, Any]) -> Started:
        """Returns once the execution is recorded; its task ends with the final execution."""
        ...

    def cancel(self, execution_id: str) -> bool:
        """False if it is not running here."""
        ...

    def running(self) -> list[str]:
        """Ids of the executions running on this replica."""
        ...


# (raw bytes or decoded JSON, subject, message id, headers), source -> counts: accepted,
# duplicates, dead_letters, ignored. The intake behind NATS and HTTP alike.
IngestItem = tuple[Any, str | None, str | None, dict]
Ingest = Callable[[list[IngestItem], str], Awaitable[dict[str, int]]]
# What /readyz shows: at least ready (bool), checks ({name: ok|down|degraded}), reasons.
Readiness = Callable[[], Awaitable[dict[str, Any]]]
# The generation last published to Redis by any replica (None without Redis).
CachedGeneration = Callable[[], Awaitable[dict[str, Any] | None]]


@dataclass(frozen=True, kw_only=True)
class ApiDeps:
    queries: Queries | None
    rules: Rules | None
    executions: Executions | None
    ingest: Ingest | None
    readiness: Readiness
    cached_generation: CachedGeneration
    metrics: Metrics
    max_event_bytes: int = 256 * 1024              # one event (an NDJSON line)
    max_request_bytes: int = 4 * 1024 * 1024       # one POST /events body
    max_events_per_request: int = 1000             # array items or NDJSON lines
    dead_letter_bytes: int = 64 * 1024             # what a dead letter keeps of an over-long line
    concurrent_event_requests: int = 2             # POST /events bodies read at once
    replica: str = ""


def api_deps(request: Request) -> ApiDeps:
    deps: ApiDeps = request.app.state.deps
    return deps


Deps = Annotated[ApiDeps, Depends(api_deps)]


def _queries(deps: Deps) -> Queries:
    if deps.queries is None:
        raise HTTPException(503, STARTING)
    return deps.queries


def _rules(deps: Deps) -> Rules:
    if deps.rules is None:
        raise HTTPException(503, STARTING)
    return deps.rules


def _executions(deps: Deps) -> Executions:
    if deps.executions is None:
        raise HTTPException(503, STARTING)
    return deps.executions


def _ingest(deps: Deps) -> Ingest:
    if deps.ingest is None:
        raise HTTPException(503, STARTING)
    return deps.ingest


QueriesDep = Annotated[Queries, Depends(_queries)]
RulesDep = Annotated[Rules, Depends(_rules)]
ExecutionsDep = Annotated[Executions, Depends(_executions)]
IngestDep = Annotated[Ingest, Depends(_ingest)]

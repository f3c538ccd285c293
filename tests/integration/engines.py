"""Both workflow engines behind one interface, for the conformance suite.

``engine.open(...)`` yields a runner (the builtin :class:`~engine.runner.WorkflowRunner`, or
a :class:`~engine.temporal.runner.TemporalRunner` with its own worker on its own task queue
of the session's Temporal dev server); ``engine.run(...)`` runs one workflow and returns the
:class:`~engine.store.Execution` as the engine ended it.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from engine.rules.model import Workflow
from engine.runner import WorkflowRunner
from engine.service.transport import make_client
from engine.store import Execution, MemoryStore
from steps.base import Settings

# Short, so a test that kills a worker sees its step run again within a couple of seconds.
HEARTBEAT_TIMEOUT = 2.0


@dataclass(frozen=True)
class Engine:
    name: str                      # "builtin" | "temporal"
    address: str | None = None     # the Temporal dev server's
    incident: dict[str, Any] | None = None   # what run() passes when a test gives none

    def __str__(self) -> str:
        return self.name

    @contextlib.asynccontextmanager
    async def open(self, settings: Settings, *, store: MemoryStore | Any = None, http: Any = None,
                   listeners: tuple[Callable, ...] = (), **options: Any) -> AsyncIterator[WorkflowRunner]:
        store = store if store is not None else MemoryStore()
        if self.name == "builtin":
            runner = WorkflowRunner(store, settings, http=http, **options)
            runner.listeners.extend(listeners)
            yield runner
            return
        from engine.temporal.runner import TemporalRunner, connect

        assert self.address is not None
        client = await connect(self.address)
        runner = TemporalRunner(client, store, settings, http=http,
                                task_queue=f"test-{uuid.uuid4().hex[:12]}",
                                heartbeat_timeout=HEARTBEAT_TIMEOUT, **options)
        runner.listeners.extend(listeners)
        async with runner:
            yield runner

    def run(self, workflow: Workflow, settings: Settings, *, store: MemoryStore | None = None,
            incident: dict[str, Any] | None = None, context: dict[str, Any] | None = None,
            listeners: tuple[Callable, ...] = (), execution_id: str | None = None,
            **options: Any) -> Execution:
        async def go() -> Execution:
            async with make_client() as http, self.open(settings, store=store, http=http, listeners=listeners,
                                                        **options) as runner:
                chosen = incident if incident is not None else self.incident
                return await runner.run(workflow, incident=chosen, context=context, execution_id=execution_id)

        return asyncio.run(go())

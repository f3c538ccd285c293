"""Recovery and takeover on in-memory records and store."""

from __future__ import annotations

import asyncio
import time

from engine.store import Execution, StepRun
from engine.testing import IncidentRow


def test_an_orphaned_execution_is_resumed_and_closes_its_incident(make_parts) -> None:
    async def go() -> None:
        parts = await make_parts()
        workflow = await parts.rules.workflow("note_it")
        assert workflow is not None
        # Another replica died in the middle of it: its wait finished, the note never ran.
        execution = Execution("exec-orphan", "note_it", workflow.version, incident_id="inc-1",
                              context={"incident": {"id": "inc-1"}, "events": [], "vars": {}})
        first = StepRun(seq=1, step_id="pause", step_type="wait")
        await parts.store.create_execution(execution, first)
        first.status, first.branch, first.attempts = "succeeded", ["note"], 1
        await parts.store.finish_step(execution.id, first, [StepRun(seq=2, step_id="note",
                                                                    step_type="notification", parent=1)])
        parts.store.orphans.add(execution.id)
        parts.records.incidents["inc-1"] = IncidentRow("inc-1", "crash", "blog/web", "note_it",
                                                       execution_id="exec-orphan")
        await parts.recovery.tick()
        await parts.settle()
        done = parts.store.executions["exec-orphan"]
        assert done.status == "succeeded"
        assert [(r.step_id, r.status) for r in done.runs] == [("pause", "succeeded"), ("note", "succeeded")]
        row = parts.records.incidents["inc-1"]
        # Closed with its strategy's cooldown (10m), which the database holds for the key.
        assert row.status == "closed" and row.cooldown_until == row.closed_at + 600

    asyncio.run(go())


def test_an_incident_whose_execution_was_never_recorded_gets_one(make_parts) -> None:
    async def go() -> None:
        parts = await make_parts()
        parts.records.incidents["inc-2"] = IncidentRow("inc-2", "crash", "blog/api", "note_it",
                                                       execution_id="exec-lost", opened_at=time.time() - 60,
                                                       context={"id": "inc-2", "namespace": "blog"})
        await parts.recovery.tick()
        await parts.settle()
        row = parts.records.incidents["inc-2"]
        execution = parts.store.executions[row.execution_id]
        assert execution.incident_id == "inc-2" and execution.status == "succeeded"
        assert execution.context["incident"]["namespace"] == "blog"
        assert row.status == "closed"
        # A second tick finds nothing more to do.
        await parts.recovery.tick()
        await parts.settle()
        assert len(parts.store.executions) == 1

    asyncio.run(go())


def test_pending_events_of_a_replica_that_stopped_are_taken_over(make_parts) -> None:
    async def go() -> None:
        from tests.unit.service.conftest import k8s_event

        gone = await make_parts(replica="r-gone")
        await gone.intake.ingest([(k8s_event("db", n), None, None, {}) for n in (1, 2)], "http")
        here = await make_parts(replica="r-here")
        here.records.events = gone.records.events   # one database
        here.records.heartbeats = {"r-gone": time.time() - 60}
        await here.recovery.tick()
        assert {e["owner"] for e in here.records.events.values()} == {"r-here"}
        here.advance(31)
        await here.settle()
        (row,) = here.records.incidents.values()
        assert (row.key, row.events, row.status) == ("blog/db", 2, "closed")

    asyncio.run(go())


def test_a_failing_heartbeat_is_logged_and_the_loop_goes_on(make_parts, caplog) -> None:
    """An outage is said once (not a line per tick); any other error every time."""

    async def go() -> None:
        parts = await make_parts()
        calls = 0
        error: Exception = ConnectionError("database unreachable")

        async def broken(info=None) -> None:
            nonlocal calls
            calls += 1
            raise error

        parts.records.heartbeat = broken
        parts.recovery.lease = 0.03       # a tick every 0.5 s at the least
        task = asyncio.create_task(parts.recovery.run())
        await asyncio.sleep(1.2)
        assert calls == 3
        outage = [r.getMessage() for r in caplog.records if "PostgreSQL is unavailable" in r.getMessage()]
        assert len(outage) == 1 and "ConnectionError" in outage[0]
        error = ValueError("a bug")
        await asyncio.sleep(1.0)
        task.cancel()
        assert calls == 5
        assert sum("heartbeat failed: ValueError: a bug" in r.getMessage() for r in caplog.records) == 2

    asyncio.run(go())

"""Incidents and executions on in-memory records: one incident and one execution per burst."""

from __future__ import annotations

import asyncio

from engine.testing import IncidentRow
from tests.unit.service.conftest import k8s_event


async def burst(parts, workload: str = "web", n: int = 5, start: int = 0) -> dict:
    return await parts.intake.ingest(
        [(k8s_event(workload, start + i + 1), None, None, {}) for i in range(n)], "http")


def test_a_burst_becomes_one_incident_whose_execution_closes_it(make_parts) -> None:
    async def go() -> None:
        parts = await make_parts()
        await burst(parts)
        assert parts.records.incidents == {}
        parts.advance(31)
        await parts.settle()
        (row,) = parts.records.incidents.values()
        assert (row.strategy_id, row.key, row.events) == ("crash", "blog/web", 5)
        assert row.status == "closed" and row.cooldown_until is not None
        (execution,) = parts.store.executions.values()
        assert execution.id == row.execution_id and execution.incident_id == row.id
        assert execution.status == "succeeded"
        assert {e["state"] for e in parts.records.events.values()} == {"attached"}
        assert parts.stats.incidents == 1 and parts.stats.executions == 1
        assert parts.incidents.open_here() == 0
        assert parts.metrics.executions_running._value.get() == 0
        # During the cooldown more of the same is suppressed, and counted on the incident.
        await burst(parts, n=2, start=5)
        await parts.settle()
        assert row.suppressed == 2 and len(parts.records.incidents) == 1

    asyncio.run(go())


def test_a_key_open_on_another_replica_gets_the_events_and_no_second_execution(make_parts) -> None:
    async def go() -> None:
        parts = await make_parts()
        other = IncidentRow("inc-other", "crash", "blog/web", "note_it", execution_id="exec-elsewhere")
        parts.records.incidents["inc-other"] = other
        await burst(parts, n=3)
        parts.advance(31)
        await parts.settle()
        assert list(parts.records.incidents) == ["inc-other"]
        assert parts.store.executions == {}
        assert other.late == 3
        assert {(e["state"], e["incident_id"]) for e in parts.records.events.values()} == {
            ("attached", "inc-other")}
        # Later events of the key count towards the other replica's incident too (closed here,
        # so during this replica's cooldown they count as suppressed).
        await burst(parts, n=2, start=3)
        await parts.settle()
        assert (other.late, other.suppressed) == (3, 2)
        assert parts.store.executions == {}

    asyncio.run(go())


def test_an_incident_cooling_down_in_the_database_suppresses_a_new_burst(make_parts) -> None:
    # Closed by another replica, its cooldown not over: known only to the database.
    async def go() -> None:
        parts = await make_parts()
        parts.records.incidents["inc-before"] = IncidentRow("inc-before", "crash", "blog/web", "note_it",
                                                            status="closed",
                                                            cooldown_until=parts.records.clock() + 600)
        await burst(parts, n=4)
        parts.advance(31)
        await parts.settle()
        assert parts.store.executions == {}
        assert parts.records.incidents["inc-before"].suppressed == 4
        assert {e["state"] for e in parts.records.events.values()} == {"suppressed"}
        assert parts.incidents.correlator.open_incidents() == []

    asyncio.run(go())


def test_a_manual_execution_closes_no_incident(make_parts) -> None:
    async def go() -> None:
        parts = await make_parts()
        parts.records.incidents["inc-real"] = IncidentRow("inc-real", "crash", "blog/web", "note_it",
                                                          execution_id="exec-real")
        workflow = await parts.rules.workflow("note_it")
        started = await parts.executions.start(workflow, incident={"id": "inc-real"})
        assert parts.store.executions[started.id].status == "running"   # recorded when start returns
        assert (await started.task).status == "succeeded"
        await parts.settle()
        assert parts.records.incidents["inc-real"].status == "open"

    asyncio.run(go())

"""Admission: past executions.max_running an execution waits as 'queued' in the store, first
in first out, and starts when a slot is free; a queued one can be cancelled, survives a
restart, and is taken over from a replica that stopped."""

from __future__ import annotations

import asyncio
import time

from engine.testing import MemoryExecutionStore, message
from tests.unit.service.conftest import k8s_event, raw

SLOW = """
strategies:
  - id: crash
    workflow_id: slow
    symptoms: [{conditions: {kind: Pod, reason: BackOff}}]
    correlation: {key: [namespace, workload], quiet: 30s, max_window: 5m, cooldown: 10m}
workflows:
  - id: slow
    steps:
      - {id: pause, type: wait, config: {duration: 150ms}, on_success: [note]}
      - {id: note, type: notification, config: {channel: log, message: "seen"}}
"""


async def until_done(parts, ids: list[str], timeout: float = 10.0) -> int:
    """Wait for every execution to end; returns the most that ran at once meanwhile."""
    most = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        most = max(most, len(parts.executions.running()))
        if all(parts.store.executions[i].status not in ("queued", "running") for i in ids):
            return most
        await asyncio.sleep(0.005)
    raise AssertionError({i: parts.store.executions[i].status for i in ids})


def statuses(parts, ids: list[str]) -> list[str]:
    return [parts.store.executions[i].status for i in ids]


def test_past_max_running_executions_wait_queued_then_all_complete_first_in_first_out(make_parts) -> None:
    async def go() -> None:
        parts = await make_parts(SLOW, max_running=2, virtual_time=False)
        admission = asyncio.create_task(parts.executions.run())
        workflow = await parts.rules.workflow("slow")
        started = [await parts.executions.start(workflow, incident={}) for _ in range(7)]
        ids = [s.id for s in started]
        assert [s.queued for s in started] == [False, False, True, True, True, True, True]
        assert statuses(parts, ids) == ["running"] * 2 + ["queued"] * 5
        assert all(not parts.store.executions[i].runs for i in ids[2:])    # nothing of them ran
        assert parts.metrics.executions_queued._value.get() == 5

        most = await until_done(parts, ids)
        assert most == 2
        assert statuses(parts, ids) == ["succeeded"] * 7
        # First in, first out: they started in the order they were admitted.
        starts = [parts.store.executions[i].started_at for i in ids]
        assert starts == sorted(starts)
        # The workflow's time counts from the real start, not from the admission.
        queued_at = [parts.store.executions[i].queued_at for i in ids[2:]]
        assert all(s > q + 0.1 for s, q in zip(starts[2:], queued_at, strict=True))
        assert parts.metrics.executions_queued._value.get() == 0
        wait = parts.metrics.queue_wait.collect()[0]
        assert next(s.value for s in wait.samples if s.name.endswith("_count")) == 5
        assert parts.stats.executions == 7
        admission.cancel()

    asyncio.run(go())


def test_a_queued_execution_can_be_cancelled_and_never_starts(make_parts) -> None:
    async def go() -> None:
        parts = await make_parts(SLOW, max_running=1, virtual_time=False)
        heard: list[tuple[str, str]] = []

        async def ended(execution) -> None:
            heard.append((execution.id, execution.status))

        parts.executions.listeners.append(ended)
        workflow = await parts.rules.workflow("slow")
        first = await parts.executions.start(workflow, incident={})
        waiting = await parts.executions.start(workflow, incident={})
        assert waiting.queued
        assert await parts.executions.cancel_queued(waiting.id)
        assert not await parts.executions.cancel_queued(waiting.id)       # not queued any more
        assert not await parts.executions.cancel_queued(first.id)         # running: not queued
        admission = asyncio.create_task(parts.executions.run())
        await until_done(parts, [first.id, waiting.id])
        await parts.settle()
        saved = parts.store.executions[waiting.id]
        assert (saved.status, saved.outcome, saved.runs) == ("cancelled", "needs_human", [])
        assert parts.store.executions[first.id].status == "succeeded"
        assert sorted(heard) == sorted([(waiting.id, "cancelled"), (first.id, "succeeded")])
        assert parts.executions.queued == 0
        admission.cancel()

    asyncio.run(go())


def test_after_a_restart_the_queue_from_before_runs_first_and_once(make_parts) -> None:
    async def go() -> None:
        store = MemoryExecutionStore("r1")
        before = await make_parts(SLOW, max_running=1, virtual_time=False, store=store)
        workflow = await before.rules.workflow("slow")
        running = await before.executions.start(workflow, incident={})
        queued = [(await before.executions.start(workflow, incident={})).id for _ in range(3)]
        before.runner.draining = True   # the process dies: its execution stays 'running' in the store
        running.task.cancel()
        await asyncio.gather(running.task, return_exceptions=True)

        after = await make_parts(SLOW, max_running=1, virtual_time=False, store=store)
        await after.executions.recount()
        assert after.executions.queued == 3
        late = await after.executions.start(workflow, incident={})
        assert late.queued                             # behind the queue from before the restart
        store.orphans.add(running.id)
        await after.recovery.resume_orphans()          # admitted before: resumed at once
        admission = asyncio.create_task(after.executions.run())
        await until_done(after, [running.id, *queued, late.id])
        assert statuses(after, [running.id, *queued, late.id]) == ["succeeded"] * 5
        starts = [store.executions[i].started_at for i in [*queued, late.id]]
        assert starts == sorted(starts)
        # Each ran once: one run of each step.
        for execution_id in [*queued, late.id]:
            assert [r.step_id for r in store.executions[execution_id].runs] == ["pause", "note"]
        admission.cancel()

    asyncio.run(go())


def test_the_queue_of_a_replica_that_stopped_is_taken_over(make_parts) -> None:
    async def go() -> None:
        store = MemoryExecutionStore("r-gone")
        gone = await make_parts(SLOW, max_running=1, virtual_time=False, store=store)
        workflow = await gone.rules.workflow("slow")
        first = await gone.executions.start(workflow, incident={})
        theirs = [(await gone.executions.start(workflow, incident={})).id for _ in range(2)]
        await first.task
        # Another replica, on the same store, while r-gone's heartbeat is older than the lease.
        store.replica = "r2"
        other = await make_parts(SLOW, max_running=2, virtual_time=False, store=store)
        assert await other.executions.admit() == 0     # r-gone's, while it is alive
        store.orphans.update(theirs)
        assert await other.executions.admit() == 2
        await until_done(other, theirs)
        assert statuses(other, theirs) == ["succeeded"] * 2
        assert {store.owners[i] for i in theirs} == {"r2"}

    asyncio.run(go())


def test_incidents_past_max_running_wait_and_all_close(make_parts) -> None:
    async def go() -> None:
        parts = await make_parts(SLOW, max_running=1, virtual_time=False)
        admission = asyncio.create_task(parts.executions.run())
        for workload in ("a", "b", "c", "d"):
            await parts.intake.ingest([(k8s_event(workload, 1), None, None, {})], "http")
        parts.advance(31)
        await parts.background.wait(2.0)
        rows = list(parts.records.incidents.values())
        assert len(rows) == 4 and {r.status for r in rows} == {"open"}
        assert sorted(statuses(parts, [r.execution_id for r in rows])) == ["queued"] * 3 + ["running"]
        await until_done(parts, [r.execution_id for r in rows])
        await parts.settle()
        assert {r.status for r in rows} == {"closed"}
        assert statuses(parts, [r.execution_id for r in rows]) == ["succeeded"] * 4
        admission.cancel()

    asyncio.run(go())


def test_a_full_queue_holds_the_bus_intake_back_until_it_drains(make_parts) -> None:
    async def go() -> None:
        parts = await make_parts(SLOW, max_running=1, max_queued=2, virtual_time=False)
        workflow = await parts.rules.workflow("slow")
        ids = [(await parts.executions.start(workflow, incident={})).id for _ in range(3)]
        assert parts.executions.queued == 2
        # The next batch off the bus is processed, then the intake waits before fetching more.
        handled = asyncio.create_task(parts.intake.ingest_messages([message(raw(k8s_event("z", 1)),
                                                                            msg_id="m-1")]))
        await asyncio.sleep(0.1)
        assert not handled.done()
        admission = asyncio.create_task(parts.executions.run())
        await asyncio.wait_for(handled, 5)              # room again once one left the queue
        assert parts.executions.queued < 2
        await until_done(parts, ids)
        admission.cancel()

    asyncio.run(go())


def test_recovery_does_not_take_an_execution_just_taken_from_the_queue_for_an_orphan(make_parts) -> None:
    class Store(MemoryExecutionStore):
        """In PostgreSQL a claimed entry is a running row of this replica: recovery's query
        would take it for one of its own from before a restart, unless it is named running."""

        recovery = None

        async def load_execution(self, execution_id: str):
            saved = self.executions.get(execution_id)
            recovery, self.recovery = self.recovery, None
            if recovery is not None and saved is not None and saved.status == "running" and not saved.runs:
                self.orphans.add(execution_id)
                await recovery.resume_orphans()
                self.orphans.discard(execution_id)
            self.recovery = recovery
            return await super().load_execution(execution_id)

    async def go() -> None:
        store = Store("r1")
        parts = await make_parts(SLOW, max_running=1, virtual_time=False, store=store)
        store.recovery = parts.recovery
        workflow = await parts.rules.workflow("slow")
        ids = [(await parts.executions.start(workflow, incident={})).id for _ in range(3)]
        admission = asyncio.create_task(parts.executions.run())
        await until_done(parts, ids)
        assert statuses(parts, ids) == ["succeeded"] * 3
        for execution_id in ids:
            assert [r.step_id for r in store.executions[execution_id].runs] == ["pause", "note"]
        admission.cancel()

    asyncio.run(go())


def test_an_execution_waiting_for_a_human_holds_no_slot(make_parts) -> None:
    async def go() -> None:
        parts = await make_parts(SLOW, max_running=1, virtual_time=False)
        workflow = await parts.rules.workflow("slow")
        first = await parts.executions.start(workflow, incident={})
        second = await parts.executions.start(workflow, incident={})
        assert second.queued
        parts.executions.waiting_for_humans(1)       # the first now waits for an approval
        assert await parts.executions.admit() == 1
        assert parts.store.executions[second.id].status == "running"
        parts.executions.waiting_for_humans(-1)
        await until_done(parts, [first.id, second.id])

    asyncio.run(go())

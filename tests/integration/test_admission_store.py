"""The admission queue in PostgreSQL: first in first out, each queued execution claimed by
exactly one replica (its own, or a survivor once its heartbeat stops), cancellable while
queued, and kept by retention."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest

from engine.statuses import ExecutionStatus
from engine.storage.db import create_pool, migrate
from engine.storage.executions import PostgresStore
from engine.storage.records import Repository
from engine.store import Execution

pytestmark = pytest.mark.integration


def queued(execution_id: str, at: float) -> Execution:
    return Execution(id=execution_id, workflow_id="wf", workflow_version=1, status=ExecutionStatus.QUEUED,
                     context={"incident": {"id": f"inc-{execution_id}"}, "events": [], "vars": {}},
                     started_at=at, queued_at=at)


async def _stores(dsn: str) -> tuple[asyncpg.Pool, PostgresStore, PostgresStore]:
    pool = await create_pool(dsn, min_size=1, max_size=6)
    await migrate(pool)
    for replica in ("r1", "r2"):
        await Repository(pool, replica).heartbeat()
    return pool, PostgresStore(pool, "r1", lease_seconds=15), PostgresStore(pool, "r2", lease_seconds=15)


def test_queued_executions_are_claimed_first_in_first_out_by_their_replica_then_by_a_survivor(pg_dsn):
    async def go() -> None:
        pool, r1, r2 = await _stores(pg_dsn)
        try:
            now = time.time() - 10
            for i, (store, name) in enumerate([(r1, "a"), (r2, "x"), (r1, "b"), (r1, "c"), (r2, "y")]):
                await store.queue_execution(queued(name, now + i))
            assert (await r1.queued_count(), await r2.queued_count()) == (3, 2)
            rows = await pool.fetch("SELECT id, status, queued_at FROM workflow_executions ORDER BY id")
            assert {r["status"] for r in rows} == {"queued"}

            got = await r1.claim_queued(2)
            assert [(i, own) for i, own, _ in got] == [("a", True), ("b", True)]
            assert all(8 < waited < 20 for _, _, waited in got)
            assert await r1.claim_queued(10) == [("c", True, pytest.approx(7, abs=5))]
            assert await r1.claim_queued(10) == []           # r2 is alive: its queue is its own
            loaded = await r1.load_execution("a")
            assert loaded is not None and loaded.status == "running" and loaded.runs == []
            assert loaded.started_at > now + 5 and loaded.queued_at == pytest.approx(now, abs=0.01)
            assert loaded.context["incident"]["id"] == "inc-a"

            await pool.execute("UPDATE replicas SET heartbeat_at = 'epoch' WHERE id = 'r2'")
            taken = await r1.claim_queued(10)
            assert [(i, own) for i, own, _ in taken] == [("x", False), ("y", False)]
            owners = {r["owner"] for r in await pool.fetch("SELECT owner FROM workflow_executions")}
            assert owners == {"r1"}
            assert await r2.queued_count() == 0
        finally:
            await pool.close()

    asyncio.run(go())


def test_two_replicas_claiming_at_once_take_each_queued_execution_once(pg_dsn):
    async def go() -> None:
        pool, r1, r2 = await _stores(pg_dsn)
        try:
            await pool.execute("UPDATE replicas SET heartbeat_at = 'epoch' WHERE id = 'r-gone'")
            gone = PostgresStore(pool, "r-gone")
            now = time.time()
            for i in range(60):
                await gone.queue_execution(queued(f"e{i:02d}", now + i / 1000))

            async def claim_all(store: PostgresStore) -> list[str]:
                out: list[str] = []
                while True:
                    got = await store.claim_queued(7)
                    if not got:
                        return out
                    out += [i for i, _, _ in got]

            one, two = await asyncio.gather(claim_all(r1), claim_all(r2))
            assert sorted(one + two) == [f"e{i:02d}" for i in range(60)]
            assert not set(one) & set(two)
            assert one == sorted(one) and two == sorted(two)    # each in queue order
        finally:
            await pool.close()

    asyncio.run(go())


def test_a_queued_execution_is_cancelled_once_and_a_started_one_is_not_cancelled_as_queued(pg_dsn):
    async def go() -> None:
        pool, r1, r2 = await _stores(pg_dsn)
        try:
            await r1.queue_execution(queued("q1", time.time()))
            await r1.queue_execution(queued("q2", time.time()))
            assert await r2.cancel_queued("q1", "needs_human") is False     # r1's, cancelled from r2
            assert await r1.cancel_queued("q1", "needs_human") is None      # not queued any more
            row = await pool.fetchrow("SELECT status, error, outcome, finished_at FROM workflow_executions "
                                      "WHERE id = 'q1'")
            assert (row["status"], row["error"], row["outcome"]) == ("cancelled", "cancelled while queued",
                                                                      "needs_human")
            assert row["finished_at"] is not None
            assert [i for i, _, _ in await r1.claim_queued(10)] == ["q2"]   # the cancelled one never starts
            assert await r1.cancel_queued("q2", "needs_human") is None      # running now
            assert await r1.queued_count() == 0
        finally:
            await pool.close()

    asyncio.run(go())


def test_retention_keeps_queued_executions_however_old(pg_dsn):
    async def go() -> None:
        pool, r1, _ = await _stores(pg_dsn)
        try:
            old = time.time() - 10 * 86400
            await r1.queue_execution(queued("old-queued", old))
            assert await Repository(pool, "r1").purge(older_than_seconds=86400) == 0
            assert await pool.fetchval("SELECT status FROM workflow_executions WHERE id = 'old-queued'") == \
                "queued"
            assert await r1.unfinished_executions() == ["old-queued"]
        finally:
            await pool.close()

    asyncio.run(go())

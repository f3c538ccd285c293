"""The runner's store in PostgreSQL, with group commit.

Every transition is committed before the runner goes on (``await`` returns after COMMIT),
so a ``kill -9`` loses nothing the runner has acted on. Commits dominate the cost of a
step, so concurrent transitions from many executions share one transaction: the
:class:`GroupCommitter` takes whatever is queued, writes it in one transaction (same
statements pipelined with ``executemany``), commits, and wakes every waiter.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from functools import partial

import asyncpg

from engine.exceptions import StoreError
from engine.statuses import ExecutionStatus
from engine.storage.outage import Availability, retrying
from engine.store import Execution, StepRun

log = logging.getLogger(__name__)

# Statements, in the order a batch applies them (an execution row before its step rows).
INSERT_EXECUTION = (0, """
    INSERT INTO workflow_executions (id, workflow_id, workflow_version, incident_id, status, dry_run,
                                     context, started_at, owner, queued_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
    ON CONFLICT (id) DO NOTHING""")
_RUN_COLUMNS = ("execution_id", "seq", "step_id", "step_type", "parent", "in_branch_of", "status",
                "attempts", "output", "error", "error_kind", "branch", "started_at",
                "attempt_started_at", "finished_at")
# Step rows, however many a batch holds, in one statement: the rows as one JSON document
# (the pool's jsonb codec encodes it) that PostgreSQL takes apart, instead of one execution
# per row (executemany). They are most of what a batch writes.
UPSERT_RUN = (1, """
    INSERT INTO step_executions (execution_id, seq, step_id, step_type, parent, in_branch_of, status,
                                 attempts, output, error, error_kind, branch, started_at,
                                 attempt_started_at, finished_at)
    SELECT r.execution_id, r.seq, r.step_id, r.step_type, r.parent, r.in_branch_of, r.status,
           r.attempts, r.output, r.error, r.error_kind, coalesce(r.branch, '[]'::jsonb),
           to_timestamp(r.started_at), to_timestamp(r.attempt_started_at), to_timestamp(r.finished_at)
    FROM jsonb_to_recordset($1::jsonb) AS r(
        execution_id text, seq integer, step_id text, step_type text, parent integer,
        in_branch_of integer, status text, attempts integer, output jsonb, error text,
        error_kind text, branch jsonb, started_at float8, attempt_started_at float8,
        finished_at float8)
    ON CONFLICT (execution_id, seq) DO UPDATE SET
        status = EXCLUDED.status, attempts = EXCLUDED.attempts, output = EXCLUDED.output,
        error = EXCLUDED.error, error_kind = EXCLUDED.error_kind, branch = EXCLUDED.branch,
        started_at = EXCLUDED.started_at, attempt_started_at = EXCLUDED.attempt_started_at,
        finished_at = EXCLUDED.finished_at""")
FINISH_EXECUTION = (2, """
    UPDATE workflow_executions SET status = $2, error = $3, finished_at = $4, outcome = $5 WHERE id = $1""")


def _ts(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def _epoch(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def _run_args(execution_id: str, run: StepRun) -> tuple:
    return (execution_id, run.seq, run.step_id, run.step_type, run.parent, run.in_branch_of, run.status,
            run.attempts, run.output, run.error, run.error_kind, run.branch, run.started_at,
            run.attempt_started_at, run.finished_at)


class GroupCommitter:
    """Writes queued statement groups in shared transactions; one writer task."""

    def __init__(self, pool: asyncpg.Pool, max_batch: int = 500, availability: Availability | None = None,
                 stop_wait: float = 10.0) -> None:
        self.pool = pool
        self.max_batch = max_batch
        # An outage is waited out: the writers wait (an execution never moves past a step
        # whose result is not committed), and the batch is written once PostgreSQL is back.
        self.availability = availability or Availability("PostgreSQL")
        self.stop_wait = stop_wait
        self._queue: list[tuple[list[tuple[tuple[int, str], tuple]], asyncio.Future]] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.commits = 0
        self.statements = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="store-group-commit")

    async def stop(self) -> None:
        if self._task is not None:
            # The last state writes are not dropped, unless PostgreSQL stays away: then what
            # was not written is resumed by the next replica (idempotency keys as backstop).
            deadline = time.monotonic() + self.stop_wait
            while self._queue and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
            if self._queue:
                log.error("PostgreSQL did not come back within %.0fs of the stop: %d state write(s) "
                          "not recorded; their executions resume on the next replica", self.stop_wait,
                          len(self._queue))
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def write(self, statements: list[tuple[tuple[int, str], tuple]]) -> None:
        if self._task is None:
            self.start()
        future = asyncio.get_running_loop().create_future()
        self._queue.append((statements, future))
        self._wakeup.set()
        await future

    async def _loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch:]
                grouped: dict[tuple[int, str], list[tuple]] = {}
                for statements, _ in batch:
                    for key, args in statements:
                        grouped.setdefault(key, []).append(args)
                try:
                    await retrying(self.availability, partial(self._commit, grouped))
                except Exception as exc:  # not an outage: every waiter learns of the failure
                    error = StoreError(f"could not record state: {type(exc).__name__}: {exc}")
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(error)
                    continue
                self.commits += 1
                self.statements += sum(len(rows) for rows in grouped.values())
                for _, future in batch:
                    if not future.done():
                        future.set_result(None)


    async def _commit(self, grouped: dict[tuple[int, str], list[tuple]]) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            for key, rows in sorted(grouped.items(), key=lambda kv: kv[0][0]):
                if key == UPSERT_RUN:
                    # One row per step run: a run written twice in the batch keeps its
                    # latest state (a statement may not update one row twice).
                    latest = {(row[0], row[1]): row for row in rows}
                    await conn.execute(key[1], [dict(zip(_RUN_COLUMNS, row, strict=True))
                                                for row in latest.values()])
                else:
                    await conn.executemany(key[1], rows)


class PostgresStore:
    """:class:`engine.store.Store` in PostgreSQL. ``owner`` names this replica (leases)."""

    def __init__(self, pool: asyncpg.Pool, owner: str, lease_seconds: float = 15.0,
                 availability: Availability | None = None) -> None:
        # lease_seconds: how long a silent replica keeps its executions before others take them.
        self.pool = pool
        self.owner = owner
        self.lease_seconds = lease_seconds
        self.writer = GroupCommitter(pool, availability=availability)

    def _insert(self, execution: Execution) -> tuple[tuple[int, str], tuple]:
        return (INSERT_EXECUTION, (execution.id, execution.workflow_id, execution.workflow_version,
                                   execution.incident_id, execution.status, execution.dry_run,
                                   execution.context, _ts(execution.started_at), self.owner,
                                   _ts(execution.queued_at or execution.started_at)))

    async def create_execution(self, execution: Execution, first: StepRun) -> None:
        await self.writer.write([self._insert(execution), (UPSERT_RUN, _run_args(execution.id, first))])

    # ------------------------------------------------------------------ the queue

    async def queue_execution(self, execution: Execution) -> None:
        """Record an execution that waits for a free slot (status ``queued``, no step run)."""
        await self.writer.write([self._insert(execution)])

    async def claim_queued(self, limit: int) -> list[tuple[str, bool, float]]:
        """Take the oldest queued executions (first in, first out) of this replica, and of
        replicas whose heartbeat is older than the lease: each becomes ``running`` here,
        started now, and is claimed by exactly one replica. Returns (id, whether it was this
        replica's, seconds it waited), oldest first."""
        rows = await self.pool.fetch("""
            WITH q AS (
                SELECT e.id, e.owner, e.queued_at FROM workflow_executions e
                WHERE e.status = 'queued' AND (
                    e.owner IS NULL OR e.owner = $1 OR NOT EXISTS (
                        SELECT 1 FROM replicas r WHERE r.id = e.owner
                        AND r.heartbeat_at > now() - make_interval(secs => $2::float8)))
                ORDER BY e.queued_at, e.id LIMIT $3 FOR UPDATE SKIP LOCKED)
            UPDATE workflow_executions w SET status = 'running', owner = $1, started_at = now()
            FROM q WHERE w.id = q.id
            RETURNING w.id, q.owner IS NOT DISTINCT FROM $1 AS own, q.queued_at,
                      extract(epoch FROM now() - q.queued_at)::float8 AS waited""",
            self.owner, self.lease_seconds, limit)
        ordered = sorted(rows, key=lambda r: (r["queued_at"], r["id"]))
        return [(r["id"], r["own"], max(0.0, r["waited"] or 0.0)) for r in ordered]

    async def queued_count(self) -> int:
        """This replica's queued executions."""
        return int(await self.pool.fetchval(
            "SELECT count(*) FROM workflow_executions WHERE status = 'queued' AND owner = $1", self.owner))

    async def cancel_queued(self, execution_id: str, outcome: str) -> bool | None:
        """Cancel an execution still in the queue, whichever replica queued it; returns
        whether it was this replica's, or None if it is not queued (any more)."""
        return await self.pool.fetchval("""
            WITH q AS (SELECT id, owner FROM workflow_executions WHERE id = $1 AND status = 'queued'
                       FOR UPDATE)
            UPDATE workflow_executions w SET status = 'cancelled', error = 'cancelled while queued',
                   finished_at = now(), outcome = $2
            FROM q WHERE w.id = q.id RETURNING q.owner IS NOT DISTINCT FROM $3""",
            execution_id, outcome, self.owner)

    async def schedule_runs(self, execution_id: str, runs: list[StepRun]) -> None:
        await self.writer.write([(UPSERT_RUN, _run_args(execution_id, r)) for r in runs])

    async def start_attempt(self, execution_id: str, run: StepRun) -> None:
        await self.writer.write([(UPSERT_RUN, _run_args(execution_id, run))])

    async def fail_attempt(self, execution_id: str, run: StepRun, error: str, kind: str) -> None:
        await self.writer.write([(UPSERT_RUN, _run_args(execution_id, run))])

    async def finish_step(self, execution_id: str, run: StepRun, scheduled: list[StepRun]) -> None:
        await self.writer.write([(UPSERT_RUN, _run_args(execution_id, r)) for r in (run, *scheduled)])

    async def finish_execution(self, execution: Execution) -> None:
        await self.writer.write([(FINISH_EXECUTION, (execution.id, execution.status, execution.error,
                                                     _ts(execution.finished_at), execution.outcome))])

    async def load_execution(self, execution_id: str) -> Execution | None:
        return (await self.load_executions([execution_id])).get(execution_id)

    async def load_executions(self, execution_ids: list[str]) -> dict[str, Execution]:
        """Several executions with their step runs, in two queries (those found, by id)."""
        async with self.pool.acquire() as conn:
            rows = await conn.fetch("SELECT * FROM workflow_executions WHERE id = ANY($1::text[])",
                                    execution_ids)
            if not rows:
                return {}
            runs = await conn.fetch("SELECT * FROM step_executions WHERE execution_id = ANY($1::text[]) "
                                    "ORDER BY execution_id, seq", [row["id"] for row in rows])
        out = {row["id"]: Execution(
            id=row["id"], workflow_id=row["workflow_id"], workflow_version=row["workflow_version"],
            status=row["status"], incident_id=row["incident_id"], context=row["context"] or {},
            dry_run=row["dry_run"], started_at=_epoch(row["started_at"]) or 0.0,
            finished_at=_epoch(row["finished_at"]), error=row["error"], outcome=row["outcome"],
            queued_at=_epoch(row["queued_at"])) for row in rows}
        for r in runs:
            out[r["execution_id"]].runs.append(StepRun(
                seq=r["seq"], step_id=r["step_id"], step_type=r["step_type"], parent=r["parent"],
                status=r["status"], attempts=r["attempts"], output=r["output"], error=r["error"],
                error_kind=r["error_kind"], branch=list(r["branch"] or []),
                started_at=_epoch(r["started_at"]),
                attempt_started_at=_epoch(r["attempt_started_at"]), finished_at=_epoch(r["finished_at"]),
                in_branch_of=r["in_branch_of"]))
        return out

    async def unfinished_executions(self) -> list[str]:
        rows = await self.pool.fetch("SELECT id FROM workflow_executions WHERE status = ANY($1::text[])",
                                     [ExecutionStatus.RUNNING.value, ExecutionStatus.QUEUED.value])
        return [r["id"] for r in rows]

    # ------------------------------------------------------------------ ownership

    async def claim_orphans(self, running_here: list[str], limit: int = 100) -> list[str]:
        """Take over running executions whose replica stopped its heartbeat (or that were
        this replica's before it restarted), except those this process is running. Each
        is claimed by exactly one replica."""
        rows = await self.pool.fetch("""
            UPDATE workflow_executions SET owner = $1
            WHERE id IN (
                SELECT e.id FROM workflow_executions e
                WHERE e.status = 'running' AND NOT (e.id = ANY($4::text[])) AND (
                    e.owner IS NULL OR e.owner = $1 OR NOT EXISTS (
                        SELECT 1 FROM replicas r WHERE r.id = e.owner
                        AND r.heartbeat_at > now() - make_interval(secs => $2::float8)))
                ORDER BY e.started_at LIMIT $3 FOR UPDATE SKIP LOCKED)
            RETURNING id""", self.owner, self.lease_seconds, limit, running_here)
        return [r["id"] for r in rows]

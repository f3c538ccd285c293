"""The SQL behind the HTTP API (:mod:`engine.api`): reads of executions and incidents,
and writes of workflows and strategies made through the API.

The service's own records are in :mod:`engine.storage.records` and the runner's in
:mod:`engine.storage.executions`; this module only holds what the API alone needs. Lists are newest
first and paginate by ``limit`` + ``offset`` or by a keyset cursor (``(time, id)`` of the
last row of the previous page), which stays stable while new rows arrive.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

from engine.auth import Principal
from engine.storage.actors import acting_as

WORKFLOW_FIELDS = ("name", "description", "trigger_type", "trigger_config", "status", "priority", "timeout",
                   "steps", "definition")
STRATEGY_FIELDS = ("name", "category", "symptoms", "workflow_id", "priority", "enabled", "definition")

EXECUTION_COLUMNS = """
    id, workflow_id, workflow_version, incident_id, status,
    COALESCE(outcome, CASE WHEN status = 'running' AND EXISTS (
        SELECT 1 FROM approvals a WHERE a.execution_id = workflow_executions.id AND a.status = 'pending')
        THEN 'waiting_approval' END) AS outcome, dry_run, error, started_at, finished_at,
    (extract(epoch FROM duration) * 1000)::float8 AS duration_ms, owner, arm, queued_at"""
STEP_COLUMNS = """
    seq, step_id, step_type, parent, in_branch_of, status, attempts, output, error, error_kind, branch,
    started_at, attempt_started_at, finished_at,
    (extract(epoch FROM finished_at - started_at) * 1000)::float8 AS duration_ms"""
INCIDENT_COLUMNS = """
    id, strategy_id, key, status, severity, workflow_id, execution_id,
    (SELECT x.status FROM workflow_executions x WHERE x.id = incidents.execution_id) AS execution_status,
    namespace, workload, node, reason,
    events, late, suppressed, inhibited, first_seen, last_seen, opened_at, closed_at, cooldown_until, arm"""


class BadCursor(ValueError):
    """A pagination cursor that this API did not hand out."""


def encode_cursor(at: datetime, ident: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([at.isoformat(), ident])).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The (time, id) a cursor holds; BadCursor, saying nothing of its content, for one
    this API did not hand out (it is shown to no one, and nothing of it reaches SQL unchecked)."""
    try:
        at, ident = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        moment = aware(datetime.fromisoformat(at))
        if not isinstance(ident, str) or "\x00" in ident or moment is None:
            raise ValueError("not a cursor")
        return moment.astimezone(UTC), ident
    except (ValueError, TypeError, OverflowError):
        raise BadCursor("invalid cursor: pass a next_cursor this API returned") from None


def aware(value: datetime | None) -> datetime | None:
    """Query times without a zone are UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


@dataclass
class Page:
    items: list[dict[str, Any]]
    next_cursor: str | None


class Where:
    """Builds ``WHERE a = $1 AND ...`` with numbered arguments."""

    def __init__(self) -> None:
        self.clauses: list[str] = []
        self.args: list[Any] = []

    def add(self, template: str, *values: Any) -> None:
        names = []
        for value in values:
            self.args.append(value)
            names.append(f"${len(self.args)}")
        self.clauses.append(template.format(*names))

    def arg(self, value: Any) -> str:
        self.args.append(value)
        return f"${len(self.args)}"

    @property
    def sql(self) -> str:
        return f"WHERE {' AND '.join(self.clauses)}" if self.clauses else ""


class Queries:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def ping(self) -> None:
        await self.pool.fetchval("SELECT 1")

    # ------------------------------------------------------------------ workflows

    async def list_workflows(self, status: str | None = None, source: str | None = None) -> list[dict]:
        where = Where()
        if status:
            where.add("status = {}", status)
        if source:
            where.add("source = {}", source)
        rows = await self.pool.fetch(f"""
            SELECT id, name, description, status, trigger_type, priority, version, source, created_at,
                   updated_at FROM workflows {where.sql} ORDER BY id""", *where.args)
        return [dict(r) for r in rows]

    async def get_workflow(self, workflow_id: str) -> dict[str, Any] | None:
        row = await self.pool.fetchrow("SELECT * FROM workflows WHERE id = $1", workflow_id)
        return None if row is None else dict(row)

    async def insert_workflow(self, workflow_id: str, values: dict[str, Any],
                              who: Principal) -> dict[str, Any] | None:
        """Insert as ``source = 'api'``; None if the id is taken. Audited as ``who``'s."""
        async with acting_as(self.pool, who) as conn:
            row = await conn.fetchrow(f"""
                INSERT INTO workflows (id, {", ".join(WORKFLOW_FIELDS)}, source)
                VALUES ($1, {", ".join(f"${i}" for i in range(2, len(WORKFLOW_FIELDS) + 2))}, 'api')
                ON CONFLICT (id) DO NOTHING RETURNING *""",
                workflow_id, *(values[k] for k in WORKFLOW_FIELDS))
        return None if row is None else dict(row)

    async def update_workflow(self, workflow_id: str, values: dict[str, Any],
                              who: Principal) -> dict[str, Any] | None:
        """Replace a workflow not defined in a rule file (its version is bumped by the
        trigger when anything changed); None if there is no such row."""
        sets = ", ".join(f"{k} = ${i}" for i, k in enumerate(WORKFLOW_FIELDS, start=2))
        async with acting_as(self.pool, who) as conn:
            row = await conn.fetchrow(
                f"UPDATE workflows SET {sets} WHERE id = $1 AND source <> 'file' RETURNING *",
                workflow_id, *(values[k] for k in WORKFLOW_FIELDS))
        return None if row is None else dict(row)

    async def delete_workflow(self, workflow_id: str, who: Principal) -> bool:
        """Delete a workflow not defined in a rule file. Its versions stay in
        ``workflow_versions``, so executions that pinned one still resume."""
        async with acting_as(self.pool, who) as conn:
            deleted = await conn.fetchval(
                "DELETE FROM workflows WHERE id = $1 AND source <> 'file' RETURNING id", workflow_id)
        return deleted is not None

    # ------------------------------------------------------------------ strategies

    async def list_strategies(self, enabled: bool | None = None, source: str | None = None) -> list[dict]:
        where = Where()
        if enabled is not None:
            where.add("enabled = {}", enabled)
        if source:
            where.add("source = {}", source)
        rows = await self.pool.fetch(f"""
            SELECT id, name, category, workflow_id, priority, enabled, version, source, created_at,
                   updated_at FROM strategies {where.sql} ORDER BY id""", *where.args)
        return [dict(r) for r in rows]

    async def get_strategy(self, strategy_id: str) -> dict[str, Any] | None:
        row = await self.pool.fetchrow("SELECT * FROM strategies WHERE id = $1", strategy_id)
        return None if row is None else dict(row)

    async def strategies_except(self, ids: list[str]) -> list[dict[str, Any]]:
        """Stored strategies whose id is not in ``ids`` (disabled ones, mostly)."""
        rows = await self.pool.fetch("SELECT * FROM strategies WHERE NOT (id = ANY($1::text[])) ORDER BY id",
                                     ids)
        return [dict(r) for r in rows]

    async def insert_strategy(self, strategy_id: str, values: dict[str, Any],
                              who: Principal) -> dict[str, Any] | None:
        async with acting_as(self.pool, who) as conn:
            row = await conn.fetchrow(f"""
                INSERT INTO strategies (id, {", ".join(STRATEGY_FIELDS)}, source)
                VALUES ($1, {", ".join(f"${i}" for i in range(2, len(STRATEGY_FIELDS) + 2))}, 'api')
                ON CONFLICT (id) DO NOTHING RETURNING *""",
                strategy_id, *(values[k] for k in STRATEGY_FIELDS))
        return None if row is None else dict(row)

    async def update_strategy(self, strategy_id: str, values: dict[str, Any],
                              who: Principal) -> dict[str, Any] | None:
        sets = ", ".join(f"{k} = ${i}" for i, k in enumerate(STRATEGY_FIELDS, start=2))
        async with acting_as(self.pool, who) as conn:
            row = await conn.fetchrow(
                f"UPDATE strategies SET {sets} WHERE id = $1 AND source <> 'file' RETURNING *",
                strategy_id, *(values[k] for k in STRATEGY_FIELDS))
        return None if row is None else dict(row)

    async def delete_strategy(self, strategy_id: str, who: Principal) -> bool:
        async with acting_as(self.pool, who) as conn:
            deleted = await conn.fetchval(
                "DELETE FROM strategies WHERE id = $1 AND source <> 'file' RETURNING id", strategy_id)
        return deleted is not None

    # ------------------------------------------------------------------ executions

    async def list_executions(self, *, workflow_id: str | None = None, status: str | None = None,
                              incident_id: str | None = None, since: datetime | None = None,
                              until: datetime | None = None, limit: int = 50, offset: int = 0,
                              cursor: str | None = None) -> Page:
        return await self._newest_first(
            EXECUTION_COLUMNS, "workflow_executions", "started_at",
            {"workflow_id": workflow_id, "status": status, "incident_id": incident_id},
            since, until, limit, offset, cursor)

    async def _newest_first(self, columns: str, table: str, time_column: str, equal: dict[str, Any],
                            since: datetime | None, until: datetime | None, limit: int, offset: int,
                            cursor: str | None) -> Page:
        """One page of ``table`` filtered by equality and time, newest first, by offset or
        by a cursor (the last row's time and id) that stays stable while rows are added."""
        where = Where()
        for column, value in equal.items():
            if value is not None:
                where.add(f"{column} = {{}}", value)
        if since is not None:
            where.add(f"{time_column} >= {{}}", aware(since))
        if until is not None:
            where.add(f"{time_column} < {{}}", aware(until))
        if cursor:
            at, ident = decode_cursor(cursor)
            where.add(f"({time_column}, id) < ({{}}, {{}})", at, ident)
            offset = 0
        rows = await self.pool.fetch(f"""
            SELECT {columns} FROM {table} {where.sql}
            ORDER BY {time_column} DESC, id DESC LIMIT {where.arg(limit + 1)} OFFSET {where.arg(offset)}""",
            *where.args)
        items = [dict(r) for r in rows[:limit]]
        more = len(rows) > limit
        return Page(items, encode_cursor(items[-1][time_column], items[-1]["id"]) if more else None)

    async def get_execution(self, execution_id: str) -> dict[str, Any] | None:
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(f"SELECT {EXECUTION_COLUMNS}, context FROM workflow_executions "
                                      "WHERE id = $1", execution_id)
            if row is None:
                return None
            steps = await conn.fetch(f"SELECT {STEP_COLUMNS} FROM step_executions WHERE execution_id = $1 "
                                     "ORDER BY seq", execution_id)
            approvals = await conn.fetch(
                "SELECT id, step_id, seq, status, plan_hash, action, requested_at, expires_at, decided_at, "
                "decided_by, channel, comment FROM approvals WHERE execution_id = $1 ORDER BY requested_at",
                execution_id)
        return {**dict(row), "steps": [dict(s) for s in steps], "approvals": [dict(a) for a in approvals]}

    async def execution_status(self, execution_id: str) -> dict[str, Any] | None:
        """{status, owner (the replica), dry_run}, or None if there is no such execution."""
        row = await self.pool.fetchrow("SELECT status, owner, dry_run FROM workflow_executions WHERE id = $1",
                                       execution_id)
        return None if row is None else dict(row)

    # ------------------------------------------------------------------ incidents

    async def list_incidents(self, *, strategy_id: str | None = None, status: str | None = None,
                             namespace: str | None = None, workflow_id: str | None = None,
                             since: datetime | None = None, limit: int = 50, offset: int = 0,
                             cursor: str | None = None) -> Page:
        return await self._newest_first(
            INCIDENT_COLUMNS, "incidents", "opened_at",
            {"strategy_id": strategy_id, "status": status, "namespace": namespace,
             "workflow_id": workflow_id},
            since, None, limit, offset, cursor)

    async def get_incident(self, incident_id: str) -> dict[str, Any] | None:
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(f"SELECT {INCIDENT_COLUMNS}, context FROM incidents WHERE id = $1",
                                      incident_id)
            if row is None:
                return None
            counts = await conn.fetch(
                "SELECT state, count(*) AS n FROM events WHERE incident_id = $1 GROUP BY state"
                " ORDER BY state",
                incident_id)
        return {**dict(row), "event_states": {r["state"]: r["n"] for r in counts}}

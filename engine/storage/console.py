"""The SQL behind the web console (:mod:`engine.ui`): what its pages read that the API's
queries (:mod:`engine.storage.queries`) do not give in one go.

- the incident list with its execution's status and outcome, one page at a time, and the
  counts of every incident the filters match (by status, strategy and outcome);
- an incident's events grouped as a person reads them (per object, reason and state: how
  many records, how many occurrences, first and last);
- where each rule-file rule was last written from (its path), for the rule pages.

Every list is bounded; every filter is a bound parameter.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from engine.storage.queries import Page, Where, aware, decode_cursor, encode_cursor

OUTCOME = """COALESCE(e.outcome, CASE WHEN e.status = 'running' AND EXISTS (
        SELECT 1 FROM approvals a WHERE a.execution_id = e.id AND a.status = 'pending')
        THEN 'waiting_approval' END)"""
LIST_COLUMNS = f"""
    i.id, i.strategy_id, i.key, i.status, i.severity, i.workflow_id, i.execution_id, i.namespace,
    i.workload, i.node, i.reason, i.events, i.late, i.suppressed, i.inhibited, i.first_seen, i.last_seen,
    i.opened_at, i.closed_at, e.status AS execution_status, {OUTCOME} AS outcome"""
MAX_EVENT_GROUPS = 200


@dataclass(frozen=True)
class IncidentFilter:
    strategy_id: str | None = None
    namespace: str | None = None
    status: str | None = None          # open | closed
    since: datetime | None = None      # opened at or after
    until: datetime | None = None      # opened before

    def where(self) -> Where:
        where = Where()
        for column, value in (("i.strategy_id", self.strategy_id), ("i.namespace", self.namespace),
                              ("i.status", self.status)):
            if value:
                where.add(f"{column} = {{}}", value)
        if self.since is not None:
            where.add("i.opened_at >= {}", aware(self.since))
        if self.until is not None:
            where.add("i.opened_at < {}", aware(self.until))
        return where


class ConsoleQueries:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def incidents(self, filters: IncidentFilter, *, limit: int = 100,
                        cursor: str | None = None) -> Page:
        """One page, newest first; the cursor is the API's (time, id) keyset cursor."""
        where = filters.where()
        if cursor:
            at, ident = decode_cursor(cursor)
            where.add("(i.opened_at, i.id) < ({}, {})", at, ident)
        rows = await self.pool.fetch(f"""
            SELECT {LIST_COLUMNS} FROM incidents i LEFT JOIN workflow_executions e ON e.id = i.execution_id
            {where.sql} ORDER BY i.opened_at DESC, i.id DESC LIMIT {where.arg(limit + 1)}""", *where.args)
        items = [dict(r) for r in rows[:limit]]
        more = len(rows) > limit
        return Page(items, encode_cursor(items[-1]["opened_at"], items[-1]["id"]) if more else None)

    async def incident_counts(self, filters: IncidentFilter) -> dict[str, Any]:
        """{total, status: {open: n, ...}, strategy: {id: n} (the 20 largest), outcome: {...}}."""
        where = filters.where()
        rows = await self.pool.fetch(f"""
            SELECT i.status, i.strategy_id, {OUTCOME} AS outcome, count(*) AS n
            FROM incidents i LEFT JOIN workflow_executions e ON e.id = i.execution_id
            {where.sql} GROUP BY 1, 2, 3""", *where.args)
        status: dict[str, int] = {}
        strategy: dict[str, int] = {}
        outcome: dict[str, int] = {}
        for row in rows:
            n = row["n"]
            status[row["status"]] = status.get(row["status"], 0) + n
            strategy[row["strategy_id"]] = strategy.get(row["strategy_id"], 0) + n
            key = row["outcome"] or "none"
            outcome[key] = outcome.get(key, 0) + n
        top = dict(sorted(strategy.items(), key=lambda kv: (-kv[1], kv[0]))[:20])
        return {"total": sum(status.values()), "status": status, "strategy": top,
                "outcome": dict(sorted(outcome.items()))}

    async def choices(self) -> dict[str, list[str]]:
        """The strategies and namespaces incidents have, for the filters' menus (200 of each)."""
        async with self.pool.acquire() as conn:
            strategies = await conn.fetch("SELECT DISTINCT strategy_id FROM incidents ORDER BY 1 LIMIT 200")
            namespaces = await conn.fetch("SELECT DISTINCT namespace FROM incidents "
                                          "WHERE namespace IS NOT NULL ORDER BY 1 LIMIT 200")
        return {"strategies": [r[0] for r in strategies], "namespaces": [r[0] for r in namespaces]}

    async def incident_events(self, incident_id: str) -> list[dict[str, Any]]:
        """The incident's events, grouped per object, reason and state, first seen first."""
        rows = await self.pool.fetch(f"""
            SELECT kind, namespace, name, reason, state, count(*) AS records,
                   sum(CASE WHEN jsonb_typeof(payload->'count') = 'number'
                            THEN (payload->>'count')::numeric ELSE 1 END)::bigint AS occurrences,
                   min(received_at) AS first, max(received_at) AS last,
                   (array_agg(payload->>'message' ORDER BY received_at DESC))[1] AS message,
                   (array_agg(payload->>'type' ORDER BY received_at DESC))[1] AS type
            FROM events WHERE incident_id = $1
            GROUP BY kind, namespace, name, reason, state ORDER BY first LIMIT {MAX_EVENT_GROUPS}""",
            incident_id)
        return [dict(r) for r in rows]

    async def rule_paths(self, kind: str) -> dict[str, str]:
        """Rule id -> the rule file it was last written from (the rule tables' audit trigger
        records a file's change as actor ``file:<path>``)."""
        rows = await self.pool.fetch("""
            SELECT DISTINCT ON (target_id) target_id, actor FROM audit_log
            WHERE target_kind = $1 AND actor_kind = 'file' AND action <> $2
            ORDER BY target_id, at DESC""", kind, f"{kind}.delete")
        return {r["target_id"]: r["actor"] for r in rows}

"""The audit trail (``audit_log``): who did what, when, from where. Append-only: the
table refuses UPDATE, DELETE and TRUNCATE (migration 005) except for its own retention.

Rule changes are written by a trigger on the rule tables, with the actor this process set
for its transaction (:func:`engine.storage.actors.acting_as`), so a change made with psql is audited too, as
``sql``. Everything else is written here, by :meth:`AuditLog.record`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from engine.auth import Principal
from engine.storage.queries import BadCursor, Page, Where, aware, decode_cursor, encode_cursor

COLUMNS = "id, at, actor_kind, actor, actor_role, action, target_kind, target_id, client, detail"


INSERT = ("INSERT INTO audit_log (actor_kind, actor, actor_role, action, target_kind, target_id, "
          "client, detail) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")


def _args(who: Principal, action: str, target_kind: str | None, target_id: str | None,
          detail: dict[str, Any] | None) -> tuple:
    return (who.kind, who.name, str(who.role) if who.role else None, action, target_kind, target_id,
            who.client, detail or {})


class AuditLog:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def record(self, who: Principal, action: str, target_kind: str | None = None,
                     target_id: str | None = None, detail: dict[str, Any] | None = None,
                     conn: asyncpg.Connection | None = None) -> None:
        """Append one record (in ``conn``'s transaction when given, so it commits with the change)."""
        args = _args(who, action, target_kind, target_id, detail)
        if conn is not None:
            await conn.execute(INSERT, *args)
        else:
            await self.pool.execute(INSERT, *args)

    @staticmethod
    def statement(who: Principal, action: str, target_kind: str | None = None, target_id: str | None = None,
                  detail: dict[str, Any] | None = None) -> tuple[tuple[int, str], tuple]:
        """The same record as a statement for :class:`engine.storage.executions.GroupCommitter`,
        which commits it with other writes of the moment (awaited: it is on record once written)."""
        return (9, INSERT), _args(who, action, target_kind, target_id, detail)

    async def page(self, *, actor: str | None = None, action: str | None = None,
                   target_kind: str | None = None, target_id: str | None = None,
                   since: datetime | None = None, until: datetime | None = None, limit: int = 50,
                   offset: int = 0, cursor: str | None = None) -> Page:
        """Newest first; ``action`` matches a prefix (``workflow.`` is every workflow change)."""
        where = Where()
        for column, value in (("actor", actor), ("target_kind", target_kind), ("target_id", target_id)):
            if value is not None:
                where.add(f"{column} = {{}}", value)
        if action is not None:
            where.add("starts_with(action, {})", action)
        if since is not None:
            where.add("at >= {}", aware(since))
        if until is not None:
            where.add("at < {}", aware(until))
        if cursor:
            at, ident = _decode(cursor)
            where.add("(at, id) < ({}, {})", at, ident)
            offset = 0
        rows = await self.pool.fetch(
            f"SELECT {COLUMNS} FROM audit_log {where.sql} ORDER BY at DESC, id DESC "
            f"LIMIT {where.arg(limit + 1)} OFFSET {where.arg(offset)}", *where.args)
        items = [dict(r) for r in rows[:limit]]
        more = len(rows) > limit
        return Page(items, _encode(items[-1]["at"], items[-1]["id"]) if more else None)

    async def purge(self, older_than_seconds: float, batch: int = 1000) -> int:
        """The audit trail's own retention (``audit.retention``), in batches."""
        total = 0
        while True:
            async with self.pool.acquire() as conn, conn.transaction():
                await conn.execute("SET LOCAL aetherius.audit_retention = 'on'")
                status = await conn.execute(
                    "DELETE FROM audit_log WHERE id IN (SELECT id FROM audit_log WHERE at < now() - "
                    "make_interval(secs => $1::float8) ORDER BY id LIMIT $2)", older_than_seconds, batch)
            deleted = int(status.split()[-1])
            total += deleted
            if deleted < batch:
                return total


def _encode(at: datetime, ident: int) -> str:
    return encode_cursor(at, str(ident))


def _decode(cursor: str) -> tuple[datetime, int]:
    at, ident = decode_cursor(cursor)
    try:
        return at, int(ident)
    except ValueError:
        raise BadCursor("invalid cursor: not an audit cursor") from None

"""Stored rules: the ``workflows``, ``strategies`` and ``workflow_versions`` tables, and
their rows turned back into rule-file specs."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg

from engine.auth import Principal
from engine.storage.actors import set_actor

WORKFLOW_COLUMNS = ("id", "name", "description", "trigger_type", "trigger_config", "status", "priority",
                    "timeout", "steps")
STRATEGY_COLUMNS = ("id", "name", "category", "symptoms", "workflow_id", "priority", "enabled")


def workflow_spec(row: dict[str, Any]) -> dict[str, Any]:
    """A stored workflow row (or version snapshot) back to its spec."""
    if row.get("definition"):
        return dict(row["definition"])
    return {k: row[k] for k in WORKFLOW_COLUMNS if row.get(k) not in (None, "")}


def strategy_spec(row: dict[str, Any]) -> dict[str, Any]:
    if row.get("definition"):
        return dict(row["definition"])
    return {k: row[k] for k in STRATEGY_COLUMNS if row.get(k) is not None}


MIRROR_LOCK = 0x4165746866  # one advisory lock id for mirroring rule files into the tables
CHANNEL = "aetherius_rules"  # NOTIFYed by the rule tables' triggers (migration 001)


class StoredRules:
    """The ``workflows``, ``strategies`` and ``workflow_versions`` tables, as the rule
    generations read and write them."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def rows(self, *, stored_only: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(workflow rows, strategy rows) in id order: every row, or only those created
        through the API or SQL (``stored_only``)."""
        where = " WHERE source <> 'file'" if stored_only else ""
        workflows = await self.pool.fetch(f"SELECT * FROM workflows{where} ORDER BY id")
        strategies = await self.pool.fetch(f"SELECT * FROM strategies{where} ORDER BY id")
        return [dict(r) for r in workflows], [dict(r) for r in strategies]

    async def workflow_version(self, workflow_id: str, version: int) -> dict[str, Any] | None:
        """The definition of one kept version of a workflow."""
        row = await self.pool.fetchrow(
            "SELECT definition FROM workflow_versions WHERE workflow_id = $1 AND version = $2",
            workflow_id, version)
        return None if row is None else dict(row["definition"])

    async def mirror(self, workflows: dict[str, dict[str, Any]], strategies: dict[str, dict[str, Any]],
                     paths: dict[tuple[str, str], str] | None = None,
                     directory: str = "rules") -> dict[str, int]:
        """Write the changed file rules (id -> spec) to the tables and delete the file rules
        that are gone; return every workflow's current version. Nothing is written when
        nothing changed (a write NOTIFYs every replica). Each change is audited (by the
        tables' trigger) as made by its rule file (``paths``: (kind, id) -> path), a rule
        whose file is gone as made by ``directory``."""
        origin = paths or {}
        async with self.pool.acquire() as conn, conn.transaction():
            # Replicas starting together mirror the same files: one at a time, in id order.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIRROR_LOCK)
            await self._mirror_table(conn, "workflows", workflows,
                                     lambda spec: {**{c: spec[c] for c in WORKFLOW_COLUMNS[1:]},
                                                   "timeout": f"{spec['timeout']:g}s"},
                                     lambda i: origin.get(("workflow", i), directory))
            await self._mirror_table(conn, "strategies", strategies,
                                     lambda spec: {c: spec[c] for c in STRATEGY_COLUMNS[1:]},
                                     lambda i: origin.get(("strategy", i), directory))
            return {r["id"]: r["version"] for r in await conn.fetch("SELECT id, version FROM workflows")}

    async def _mirror_table(self, conn: asyncpg.Connection, table: str, specs: dict[str, dict[str, Any]],
                            columns_of: Callable[[dict[str, Any]], dict[str, Any]],
                            path_of: Callable[[str], str]) -> None:
        stored = {r["id"]: r for r in await conn.fetch(f"SELECT id, definition, source FROM {table}")}
        for ident in sorted(specs):
            spec = specs[ident]
            row = stored.get(ident)
            if row is not None and row["source"] == "file" and row["definition"] == spec:
                continue
            values = columns_of(spec)
            names = list(values)
            params = ", ".join(f"${i + 2}" for i in range(len(names)))
            await set_actor(conn, Principal("file", path_of(ident)))
            await conn.execute(
                f"INSERT INTO {table} (id, {', '.join(names)}, definition, source) "
                f"VALUES ($1, {params}, ${len(names) + 2}, 'file') "
                f"ON CONFLICT (id) DO UPDATE SET {', '.join(f'{n} = EXCLUDED.{n}' for n in names)}, "
                "definition = EXCLUDED.definition, source = 'file'",
                ident, *values.values(), spec)
        gone = [i for i, r in stored.items() if r["source"] == "file" and i not in specs]
        if gone:
            await set_actor(conn, Principal("file", path_of("")))
            await conn.execute(f"DELETE FROM {table} WHERE id = ANY($1::text[])", gone)

    async def fingerprint(self) -> tuple[Any, ...]:
        """Changes whenever a rule row is added, changed or deleted (the poll behind LISTEN)."""
        row = await self.pool.fetchrow("""
            SELECT (SELECT count(*) FROM workflows) AS w, (SELECT max(updated_at) FROM workflows) AS wu,
                   (SELECT count(*) FROM strategies) AS s, (SELECT max(updated_at) FROM strategies) AS su""")
        return tuple(row.values())

    @contextlib.asynccontextmanager
    async def notifications(self, callback: Callable[[], None]) -> AsyncIterator[Callable[[], bool]]:
        """LISTEN for rule changes on one pooled connection for as long as the context is
        entered; yields a function telling whether the connection is still alive."""
        conn = await self.pool.acquire()

        def notified(*_: Any) -> None:
            callback()

        try:
            await conn.add_listener(CHANNEL, notified)
            def alive() -> bool:
                try:
                    return not conn.is_closed()
                except Exception:    # released or broken underneath us: not alive
                    return False

            yield alive
        finally:
            with contextlib.suppress(Exception):
                await conn.remove_listener(CHANNEL, notified)
            with contextlib.suppress(Exception):
                await self.pool.release(conn)

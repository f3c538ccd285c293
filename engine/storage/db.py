"""PostgreSQL through asyncpg: the pool, versioned migrations, JSON codecs.

Migrations are ``engine/storage/migrations/NNN_name.sql``, applied in order, each in its own
transaction, under a PostgreSQL advisory lock so that several replicas starting at once
apply each exactly once. ``schema_migrations`` records what was applied.
"""

from __future__ import annotations

import logging
import re
from importlib import resources
from typing import Any

import asyncpg
import orjson

from engine.exceptions import StoreError

log = logging.getLogger(__name__)

MIGRATION_LOCK = 0x4165746865  # "Aethe": one advisory lock id for the whole project
_NAME = re.compile(r"^(\d+)_([\w-]+)\.sql$")


def _dumps(value: Any) -> str:
    return orjson.dumps(value, default=str).decode()


async def _init_connection(conn: asyncpg.Connection) -> None:
    for name in ("json", "jsonb"):
        await conn.set_type_codec(name, encoder=_dumps, decoder=orjson.loads, schema="pg_catalog")


async def _no_reset(conn: asyncpg.Connection) -> None:
    """Connections go back to the pool as they are: nothing here leaves session state
    behind (LISTEN is removed by its owner, advisory locks are released explicitly), and
    the default reset costs a round trip on every release."""


async def create_pool(dsn: str, *, min_size: int = 2, max_size: int = 10) -> asyncpg.Pool:
    try:
        return await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size,
                                         init=_init_connection, command_timeout=60, reset=_no_reset)
    except (OSError, asyncpg.PostgresError) as exc:
        raise StoreError(f"cannot connect to PostgreSQL: {type(exc).__name__}: {exc}") from None


def migrations() -> list[tuple[int, str, str]]:
    out = []
    for entry in resources.files("engine.storage.migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            out.append((int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    return sorted(out)


async def migrate(pool: asyncpg.Pool) -> list[int]:
    """Apply missing migrations; return the versions applied by this call."""
    applied: list[int] = []
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())")
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            for version, name, sql in migrations():
                if version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                                       version, name)
                applied.append(version)
                log.info("Applied database migration %03d_%s", version, name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
    return applied

"""Who a transaction acts for: the rule tables' audit trigger (migration 005) reads it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import asyncpg

from engine.auth import Principal


async def set_actor(conn: asyncpg.Connection, who: Principal) -> None:
    """Name the actor of this transaction (read by the rule tables' audit trigger)."""
    await conn.execute(
        "SELECT set_config('aetherius.actor_kind', $1, true), set_config('aetherius.actor', $2, true), "
        "set_config('aetherius.actor_role', $3, true), set_config('aetherius.client', $4, true)",
        who.kind, who.name, str(who.role) if who.role else "", who.client or "")


@contextlib.asynccontextmanager
async def acting_as(pool: asyncpg.Pool, who: Principal) -> AsyncIterator[asyncpg.Connection]:
    """A connection in a transaction whose writes are audited as ``who``'s."""
    async with pool.acquire() as conn, conn.transaction():
        await set_actor(conn, who)
        yield conn

"""The web console's sessions (``console_sessions``, migration 010).

Logging in at ``/ui/login`` with an API token opens a session: a random 256-bit id, sent to
the browser once in an HttpOnly, SameSite=Strict cookie and stored here only as its SHA-256,
so neither a database reader nor a log can replay it. A session is not a role of its own:
each request asks the database (at most every ``cache_seconds``, as :mod:`engine.storage.tokens`
does) for the token it was opened with, so the principal has that token's name and current
role, and a revoked or expired token ends its sessions on every replica within that time.
Logging out deletes the row. Expired rows are deleted when sessions are opened.

The CSRF token of a session is derived from its id (:func:`engine.auth.csrf_token`): only a page that
the session itself loaded can know it.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import OrderedDict
from datetime import UTC, datetime, timedelta

import asyncpg

from engine.auth import Principal, Role, same_hash

CACHE_ENTRIES = 10_000


def session_hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8", "surrogatepass")).hexdigest()


class Sessions:
    def __init__(self, pool: asyncpg.Pool, *, ttl: float = 43200.0, cache_seconds: float = 2.0) -> None:
        self.pool = pool
        self.ttl = ttl
        self.cache_seconds = cache_seconds
        self._cache: OrderedDict[str, tuple[float, Principal | None]] = OrderedDict()

    async def open(self, principal: Principal, token_digest: str) -> str:
        """A new session for the token whose SHA-256 is ``token_digest``; returns its id, once."""
        session_id = secrets.token_urlsafe(32)
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("DELETE FROM console_sessions WHERE expires_at < now()")
            await conn.execute(
                "INSERT INTO console_sessions (id_hash, token_name, token_hash, client, expires_at) "
                "VALUES ($1, $2, $3, $4, $5)", session_hash(session_id), principal.name, token_digest,
                principal.client, datetime.now(UTC) + timedelta(seconds=self.ttl))
        return session_id

    async def principal(self, session_id: str) -> Principal | None:
        """The principal of a live session (its token's name and current role), or None."""
        digest = session_hash(session_id)
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > now:
            self._cache.move_to_end(digest)
            return hit[1]
        row = await self.pool.fetchrow("""
            SELECT s.id_hash, t.name, t.role FROM console_sessions s
            JOIN api_tokens t ON t.name = s.token_name AND t.token_hash = s.token_hash
            WHERE s.id_hash = $1 AND s.expires_at > now()
              AND t.revoked_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > now())""", digest)
        principal = None
        if row is not None and same_hash(row["id_hash"], digest):
            principal = Principal("token", row["name"], Role(row["role"]))
        self._cache[digest] = (now + self.cache_seconds, principal)
        self._cache.move_to_end(digest)
        while len(self._cache) > CACHE_ENTRIES:
            self._cache.popitem(last=False)
        return principal

    async def close(self, session_id: str) -> None:
        digest = session_hash(session_id)
        self._cache.pop(digest, None)
        await self.pool.execute("DELETE FROM console_sessions WHERE id_hash = $1", digest)

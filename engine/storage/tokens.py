"""API tokens (``api_tokens``): only each token's SHA-256 is stored, never the token.

:meth:`Tokens.verify` answers from a small in-process cache for ``cache_seconds`` (2 s), so
a request costs no query; a revoked token stops working on every replica within that time.
The cache is bounded (:data:`CACHE_ENTRIES`, unknown tokens included, so guessing cannot
grow it) and keyed by the token's hash.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from engine.auth import Principal, Role, new_token, same_hash, token_hash
from engine.storage.audit import AuditLog

PUBLIC = "name, role, hint, created_at, created_by, expires_at, revoked_at, last_used_at"
CACHE_ENTRIES = 10_000


class Tokens:
    def __init__(self, pool: asyncpg.Pool, cache_seconds: float = 2.0) -> None:
        self.pool = pool
        self.audit = AuditLog(pool)
        self.cache_seconds = cache_seconds
        self._cache: OrderedDict[str, tuple[float, Principal | None]] = OrderedDict()

    async def issue(self, name: str, role: Role, by: Principal, expires_in: float | None = None,
                    token: str | None = None) -> tuple[str, dict[str, Any]] | None:
        """Make a token (or store the one given: a bootstrap token from the environment);
        returns it with its record, once. None if a live token has that name."""
        token = token or new_token()
        expires_at = datetime.now(UTC) + timedelta(seconds=expires_in) if expires_in else None
        digest = token_hash(token)
        row = await self.create(name, role, digest, token[:9], expires_at, by)
        self._cache.pop(digest, None)     # it may be cached as unknown
        return None if row is None else (token, row)

    async def verify(self, token: str) -> Principal | None:
        """The principal a live token stands for, or None."""
        digest = token_hash(token)
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > now:
            self._cache.move_to_end(digest)
            return hit[1]
        row = await self.pool.fetchrow("""
            UPDATE api_tokens SET last_used_at = now()
            WHERE token_hash = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())
            RETURNING name, role, token_hash, expires_at""", digest)
        principal = None
        if row is not None and same_hash(row["token_hash"], digest):
            principal = Principal("token", row["name"], Role(row["role"]))
        until = now + self.cache_seconds
        if row is not None and row["expires_at"] is not None:   # never cached past its expiry
            until = min(until, now + max(0.0, (row["expires_at"] - datetime.now(UTC)).total_seconds()))
        self._cache[digest] = (until, principal)
        self._cache.move_to_end(digest)
        while len(self._cache) > CACHE_ENTRIES:
            self._cache.popitem(last=False)
        return principal

    def forget(self) -> None:
        """Drop the cache (a revocation made here takes effect here at once)."""
        self._cache.clear()

    async def create(self, name: str, role: Role, digest: str, hint: str, expires_at: datetime | None,
                     by: Principal) -> dict[str, Any] | None:
        """Store a new token (audited, in the same transaction); None if the name is taken by
        a token that is not revoked. A revoked token's name can be used again."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(f"""
                INSERT INTO api_tokens (name, role, token_hash, hint, created_by, expires_at)
                VALUES ($1, $2, $3, $4, $5, $6)
                ON CONFLICT (name) DO UPDATE SET role = EXCLUDED.role, token_hash = EXCLUDED.token_hash,
                    hint = EXCLUDED.hint, created_at = now(), created_by = EXCLUDED.created_by,
                    expires_at = EXCLUDED.expires_at, revoked_at = NULL, last_used_at = NULL
                    WHERE api_tokens.revoked_at IS NOT NULL
                RETURNING {PUBLIC}""", name, str(role), digest, hint, by.label, expires_at)
            if row is None:
                return None
            expires = expires_at.isoformat() if expires_at else None
            await self.audit.record(by, "token.create", "token", name,
                                    {"role": str(role), "expires_at": expires}, conn=conn)
        return dict(row)

    async def list(self) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(f"SELECT {PUBLIC} FROM api_tokens ORDER BY name")
        return [dict(r) for r in rows]

    async def revoke(self, name: str, by: Principal) -> bool:
        async with self.pool.acquire() as conn, conn.transaction():
            revoked = await conn.fetchval(
                "UPDATE api_tokens SET revoked_at = now() WHERE name = $1 AND revoked_at IS NULL "
                "RETURNING name", name)
            if revoked is None:
                return False
            await self.audit.record(by, "token.revoke", "token", name, conn=conn)
        self.forget()
        return True

    async def any_active(self) -> bool:
        return bool(await self.pool.fetchval(
            "SELECT EXISTS (SELECT 1 FROM api_tokens WHERE revoked_at IS NULL "
            "AND (expires_at IS NULL OR expires_at > now()))"))

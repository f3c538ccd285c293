"""Redis: what replicas share that must be fast, with a degraded mode when Redis is down.

- the active rule generation (digest, counts), for ``/readyz`` and for operators;
- remediation rate limits per (action, target);
- per-key locks (:mod:`engine.service.locks`: one remediation per target at a time).

If Redis cannot be reached, every operation falls back to this process alone (local
counters and locks) and the service says so in its log and in ``/readyz``; it never stops.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

# Entries kept for this replica's own rate limits (the fallback without Redis); ended ones
# go first. (Cooldowns are PostgreSQL's alone: aetherius_open_incident decides them.)
LOCAL_ENTRIES = 20_000

PREFIX = "aetherius:"
class Cache:
    def __init__(self, url: str | None, prefix: str = PREFIX) -> None:
        self.url = url
        self.prefix = prefix
        # A blocking pool: a burst of incidents waits for a connection instead of failing
        # (which would look like Redis being down).
        self.client = aioredis.Redis(connection_pool=aioredis.BlockingConnectionPool.from_url(
            url, max_connections=50, timeout=5.0, socket_timeout=1.0,
            socket_connect_timeout=1.0)) if url else None
        self.healthy: bool | None = None   # unknown until the first answer
        self._local_counts: dict[str, list[float]] = {}

    def note_down(self, exc: Exception, what: str) -> None:
        """Redis did not answer (for ``what``): degraded, said once."""
        self._down(exc, what)

    def note_up(self) -> None:
        self._up()

    def _down(self, exc: Exception, what: str) -> None:
        if self.healthy is not False:   # say it once, at start-up too
            log.warning("Redis is unavailable (%s: %s): running degraded (%s)", type(exc).__name__, exc,
                        what)
        self.healthy = False

    def _up(self) -> None:
        if self.healthy is not True:
            log.info("Redis is available at %s", self._where())
        self.healthy = True

    def _where(self) -> str:
        from engine.devservers import redact

        return redact(self.url)

    async def ping(self) -> bool:
        if self.client is None:
            self.healthy = False
            return False
        try:
            await self.client.ping()
        except (RedisError, OSError) as exc:
            self._down(exc, "rate limits fall back to this replica alone; locks to PostgreSQL")
            return False
        self._up()
        return True

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()
            # The client was handed its pool, so it leaves the pool's connections open.
            await self.client.connection_pool.disconnect()

    # ------------------------------------------------------------------ rules

    async def publish_generation(self, info: dict[str, Any]) -> None:
        if self.client is None:
            return
        try:
            await self.client.set(f"{self.prefix}rules:active", orjson.dumps(info))
            self._up()
        except (RedisError, OSError) as exc:
            self._down(exc, "the rule generation is not published")

    async def active_generation(self) -> dict[str, Any] | None:
        if self.client is None:
            return None
        try:
            raw = await self.client.get(f"{self.prefix}rules:active")
            self._up()
        except (RedisError, OSError) as exc:
            self._down(exc, "the rule generation is not published")
            return None
        return orjson.loads(raw) if raw else None

    # ------------------------------------------------------------------ rate limits

    async def allow(self, name: str, limit: int, window: float) -> bool:
        """Count one use of ``name``; False if more than ``limit`` in ``window`` seconds."""
        key = f"{self.prefix}rate:{name}"
        if self.client is not None:
            try:
                count = int(await self.client.incr(key))
                if count == 1:   # the window starts with its first use (works on Redis 6 too)
                    await self.client.pexpire(key, int(window * 1000))
                self._up()
                return count <= limit
            except (RedisError, OSError) as exc:
                self._down(exc, "rate limits fall back to this replica alone")
        now = time.time()
        uses = [t for t in self._local_counts.get(key, []) if t > now - window]
        uses.append(now)
        self._local_counts[key] = uses
        if len(self._local_counts) > LOCAL_ENTRIES:          # bounded: idle keys go first
            for old in [k for k, ts in self._local_counts.items() if not ts or ts[-1] <= now - window]:
                del self._local_counts[old]
            while len(self._local_counts) > LOCAL_ENTRIES:
                del self._local_counts[next(iter(self._local_counts))]
        return len(uses) <= limit

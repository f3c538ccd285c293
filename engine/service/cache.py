"""Redis: what replicas share that must be fast, with a degraded mode when Redis is down.

- the active rule generation (digest, counts), for ``/readyz`` and for operators;
- incident cooldowns (the database stays the truth; Redis answers first);
- remediation rate limits per (action, target);
- per-key locks (one remediation per target at a time, across replicas).

If Redis cannot be reached, every operation falls back to this process alone (local
counters and locks) and the service says so in its log and in ``/readyz``; it never stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

PREFIX = "aetherius:"
_UNLOCK = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end
"""


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
        self._local_locks: dict[str, asyncio.Lock] = {}
        self._local_cooldowns: dict[str, tuple[float, str]] = {}

    def _down(self, exc: Exception, what: str) -> None:
        if self.healthy is not False:   # say it once, at start-up too
            log.warning("Redis is unavailable (%s: %s): running degraded, %s falls back to this "
                        "replica alone", type(exc).__name__, exc, what)
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
            self._down(exc, "everything")
            return False
        self._up()
        return True

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()

    # ------------------------------------------------------------------ rules

    async def publish_generation(self, info: dict[str, Any]) -> None:
        if self.client is None:
            return
        try:
            await self.client.set(f"{self.prefix}rules:active", orjson.dumps(info))
            self._up()
        except (RedisError, OSError) as exc:
            self._down(exc, "the rule generation cache")

    async def active_generation(self) -> dict[str, Any] | None:
        if self.client is None:
            return None
        try:
            raw = await self.client.get(f"{self.prefix}rules:active")
            self._up()
        except (RedisError, OSError) as exc:
            self._down(exc, "the rule generation cache")
            return None
        return orjson.loads(raw) if raw else None

    # ------------------------------------------------------------------ cooldowns

    async def set_cooldown(self, strategy: str, key: str, seconds: float, incident_id: str) -> None:
        name = f"cooldown:{strategy}:{key}"
        self._local_cooldowns[name] = (time.time() + seconds, incident_id)
        if self.client is None or seconds <= 0:
            return
        try:
            await self.client.set(self.prefix + name, incident_id, px=max(1, int(seconds * 1000)))
            self._up()
        except (RedisError, OSError) as exc:
            self._down(exc, "cooldowns")

    async def cooldown(self, strategy: str, key: str) -> tuple[bool, str | None]:
        """(known, incident id). ``known`` is False when Redis could not answer."""
        name = f"cooldown:{strategy}:{key}"
        if self.client is not None:
            try:
                value = await self.client.get(self.prefix + name)
                self._up()
                return True, (value.decode() if isinstance(value, bytes) else value) or None
            except (RedisError, OSError) as exc:
                self._down(exc, "cooldowns")
        until, incident = self._local_cooldowns.get(name, (0.0, None))
        return False, incident if until > time.time() else None

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
                self._down(exc, "remediation rate limits")
        now = time.time()
        uses = [t for t in self._local_counts.get(key, []) if t > now - window]
        uses.append(now)
        self._local_counts[key] = uses
        return len(uses) <= limit

    # ------------------------------------------------------------------ locks

    @contextlib.asynccontextmanager
    async def lock(self, name: str, ttl: float = 60.0, wait: float = 30.0) -> AsyncIterator[None]:
        """A lock across replicas (Redis SET NX PX), or in-process when Redis is down."""
        key, token = f"{self.prefix}lock:{name}", uuid.uuid4().hex
        held_in_redis = False
        if self.client is not None:
            deadline = time.monotonic() + wait
            try:
                while not await self.client.set(key, token, nx=True, px=int(ttl * 1000)):
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"lock {name} is held elsewhere")
                    await asyncio.sleep(0.05)
                held_in_redis = True
                self._up()
            except (RedisError, OSError) as exc:
                self._down(exc, "locks")
        if held_in_redis and self.client is not None:
            try:
                yield
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await self.client.eval(_UNLOCK, 1, key, token)
            return
        local = self._local_locks.setdefault(name, asyncio.Lock())
        async with local:
            yield

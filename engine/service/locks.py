"""Locks across replicas that cannot be walked around: one change to a target at a time.

- **Redis first**: ``SET key token NX PX ttl``. The holder renews the lease every third of
  ``ttl`` while it works, so a long remediation keeps its lock and a dead holder's lock
  ends within ``ttl``; release deletes the key only if it still holds our token.
- **A lock held elsewhere is not an outage**: a waiter that does not get the lock within
  ``wait`` raises :class:`~engine.exceptions.LockBusy` (retryable). It never goes ahead
  without the lock.
- **Redis down**: PostgreSQL serves instead, with a session advisory lock on a pooled
  connection kept for as long as the lock is held (the database releases it if the holder
  dies), so replicas still exclude each other; never a process-local lock. (Should one
  replica reach Redis while another cannot, each would take a different lock: Redis is
  one service for all replicas, so that split is not expected; the PostgreSQL fallback is for
  Redis being down.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from redis.exceptions import RedisError

from engine.exceptions import LockBusy, ServiceUnavailable
from engine.service.cache import Cache

log = logging.getLogger(__name__)

_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end
"""
_UNLOCK = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end
"""
POLL = 0.05
TRY_LOCK = "SELECT pg_try_advisory_lock(hashtext('aetherius-lock:' || $1))"
UNLOCK = "SELECT pg_advisory_unlock(hashtext('aetherius-lock:' || $1))"


class _Lease:
    """Renews a held Redis lock every third of its ttl until :meth:`end`. A timer, not a
    task per lock: most remediations end long before the first renewal, and a task
    created and cancelled for each was a tenth of what taking the lock cost."""

    def __init__(self, client: Any, key: str, token: str, ttl: float) -> None:
        self.client, self.key, self.token, self.ttl = client, key, token, ttl
        self._loop = asyncio.get_running_loop()
        self._renewal: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = self._loop.call_later(ttl / 3, self._due)

    def _due(self) -> None:
        self._timer = None
        self._renewal = self._loop.create_task(self._renew(), name=f"lock-renew:{self.key}")

    async def _renew(self) -> None:
        try:
            if not await self.client.eval(_RENEW, 1, self.key, self.token, int(self.ttl * 1000)):
                log.error("lock %s was lost while held (expired or taken over)", self.key)
                return
        except (RedisError, OSError) as exc:
            log.warning("cannot renew lock %s: %s", self.key, exc)
        self._timer = self._loop.call_later(self.ttl / 3, self._due)

    async def end(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        renewal, self._renewal = self._renewal, None
        if renewal is not None and not renewal.done():
            renewal.cancel()
            with contextlib.suppress(asyncio.CancelledError, RedisError, OSError):
                await renewal


class Locks:
    def __init__(self, cache: Cache, pool: Any) -> None:
        self.cache = cache
        self.pool = pool        # asyncpg pool: the fallback when Redis cannot answer

    @contextlib.asynccontextmanager
    async def hold(self, name: str, ttl: float = 60.0, wait: float = 30.0) -> AsyncIterator[None]:
        deadline = time.monotonic() + wait
        client = self.cache.client
        if client is not None:
            key, token = f"{self.cache.prefix}lock:{name}", uuid.uuid4().hex
            try:
                got = await self._redis_acquire(client, key, token, ttl, deadline)
            except (RedisError, OSError) as exc:
                self.cache.note_down(exc, "locks (PostgreSQL serves them)")
            else:
                if not got:
                    raise LockBusy(f"{name} is held by another replica for longer than {wait:g}s; not done")
                self.cache.note_up()
                lease = _Lease(client, key, token, ttl)
                try:
                    yield
                finally:
                    await lease.end()
                    with contextlib.suppress(RedisError, OSError):
                        await client.eval(_UNLOCK, 1, key, token)
                return
        async with self._postgres(name, deadline, wait):
            yield

    @staticmethod
    async def _redis_acquire(client: Any, key: str, token: str, ttl: float, deadline: float) -> bool:
        while not await client.set(key, token, nx=True, px=int(ttl * 1000)):
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(POLL)
        return True

    @contextlib.asynccontextmanager
    async def _postgres(self, name: str, deadline: float, wait: float) -> AsyncIterator[None]:
        try:
            conn = await self.pool.acquire()
        except Exception as exc:
            raise ServiceUnavailable(f"no lock service: Redis and PostgreSQL are unavailable "
                                     f"({type(exc).__name__})") from None
        try:
            while not await conn.fetchval(TRY_LOCK, name):
                if time.monotonic() > deadline:
                    raise LockBusy(f"{name} is held by another replica for longer than {wait:g}s; not done")
                await asyncio.sleep(POLL)
            try:
                yield
            finally:
                with contextlib.suppress(Exception):
                    await conn.execute(UNLOCK, name)
        finally:
            with contextlib.suppress(Exception):
                await self.pool.release(conn)

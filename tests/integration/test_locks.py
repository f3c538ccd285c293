"""Locks across replicas on the real Redis and PostgreSQL: never two holders at once, a lock
held elsewhere is waited for (then LockBusy, retryable), a long holder keeps its lock, a dead
one loses it, and with Redis down PostgreSQL serves the replicas."""

from __future__ import annotations

import asyncio
import time

import pytest

from engine.exceptions import LockBusy, StepError
from engine.service.cache import Cache
from engine.service.locks import Locks
from engine.storage.db import create_pool
from tests.standins import free_port

pytestmark = pytest.mark.integration


class Target:
    """Counts holders inside the critical section: more than one at a time is the bug."""

    def __init__(self) -> None:
        self.inside = 0
        self.most = 0
        self.done = 0

    async def change(self, locks: Locks, seconds: float, *, ttl: float = 60.0, wait: float = 30.0) -> None:
        async with locks.hold("remediation:Deployment/prod/web", ttl=ttl, wait=wait):
            self.inside += 1
            self.most = max(self.most, self.inside)
            await asyncio.sleep(seconds)
            self.inside -= 1
            self.done += 1


def replicas(redis_url: str | None, prefix: str, dsn: str, n: int = 2):
    async def make() -> list[tuple[Locks, Cache, object]]:
        out = []
        for _ in range(n):
            cache = Cache(redis_url, prefix=prefix)
            pool = await create_pool(dsn, min_size=1, max_size=3)
            out.append((Locks(cache, pool), cache, pool))
        return out

    return make()


async def close(parts) -> None:
    for _locks, cache, pool in parts:
        await cache.close()
        await pool.close()


def test_a_holder_longer_than_the_wait_keeps_the_other_out_and_its_lease_is_renewed(
        redis_url: str, redis_prefix: str, pg_dsn: str) -> None:
    async def go() -> None:
        parts = await replicas(redis_url, redis_prefix, pg_dsn)
        (a, _, _), (b, _, _) = parts
        target = Target()
        try:
            # A holds for 1.5 s with a 0.6 s lease: renewed, never lost. B waits 0.5 s: busy.
            holder = asyncio.create_task(target.change(a, 1.5, ttl=0.6))
            await asyncio.sleep(0.1)
            began = time.monotonic()
            with pytest.raises(LockBusy) as refused:
                await target.change(b, 0.01, wait=0.5)
            assert 0.45 < time.monotonic() - began < 1.0
            assert isinstance(refused.value, StepError) and refused.value.retryable
            # Past A's first lease (0.6 s) B still cannot get in.
            await asyncio.sleep(0.4)
            with pytest.raises(LockBusy):
                await target.change(b, 0.01, wait=0.2)
            await holder
            await target.change(b, 0.01, wait=1.0)      # free now
            assert target.most == 1 and target.done == 2
            # Many at once from both replicas: one at a time, all done.
            await asyncio.gather(*(target.change(locks, 0.02, wait=10)
                                   for locks in (a, b) for _ in range(10)))
            assert target.most == 1 and target.done == 22
        finally:
            await close(parts)

    asyncio.run(go())


def test_a_dead_holders_lock_ends_with_its_lease_and_release_checks_the_token(
        redis_url: str, redis_prefix: str, pg_dsn: str) -> None:
    async def go() -> None:
        parts = await replicas(redis_url, redis_prefix, pg_dsn, n=1)
        ((locks, cache, _),) = parts
        try:
            key = f"{redis_prefix}lock:remediation:Deployment/prod/web"
            assert cache.client is not None
            await cache.client.set(key, "a-replica-that-died", px=400)   # it never releases
            began = time.monotonic()
            async with locks.hold("remediation:Deployment/prod/web", ttl=5, wait=3):
                assert 0.3 < time.monotonic() - began < 1.5
                # Someone deletes and retakes the key meanwhile: our release must not free theirs.
                await cache.client.set(key, "someone-else", px=5000)
            assert await cache.client.get(key) == b"someone-else"
        finally:
            await close(parts)

    asyncio.run(go())


def test_with_redis_down_postgresql_serves_the_replicas(pg_dsn: str) -> None:
    async def go() -> None:
        nowhere = f"redis://127.0.0.1:{free_port()}/0"      # nothing listens there
        parts = await replicas(nowhere, "x:", pg_dsn)
        (a, cache, _), (b, _, _) = parts
        target = Target()
        try:
            holder = asyncio.create_task(target.change(a, 0.8))
            await asyncio.sleep(0.2)
            with pytest.raises(LockBusy):
                await target.change(b, 0.01, wait=0.3)
            await holder
            await asyncio.gather(*(target.change(locks, 0.02, wait=10) for locks in (a, b) for _ in range(5)))
            assert target.most == 1 and target.done == 11
            assert cache.healthy is False       # and it says so
        finally:
            await close(parts)

    asyncio.run(go())

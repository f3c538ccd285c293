"""Without Redis the cache keeps this replica's rate limits itself: bounded."""

from __future__ import annotations

import asyncio

from engine.service import cache as cache_module
from engine.service.cache import Cache


def test_local_rate_limits_are_bounded(monkeypatch) -> None:
    monkeypatch.setattr(cache_module, "LOCAL_ENTRIES", 50)

    async def go() -> None:
        cache = Cache(None)
        for i in range(500):
            assert await cache.allow(f"scale:Deployment/ns/w{i}", 3, 3600)
        assert len(cache._local_counts) <= 50
        # The newest are kept, and still count.
        for _ in range(3):
            await cache.allow("scale:Deployment/ns/w499", 3, 3600)
        assert not await cache.allow("scale:Deployment/ns/w499", 3, 3600)

    asyncio.run(go())

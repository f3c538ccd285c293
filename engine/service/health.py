"""Readiness and status of this replica: what ``/readyz`` answers.

Ready means started (not starting or stopping), PostgreSQL answering and NATS connected;
Redis may be degraded (the service then runs on this replica's own state, and says so).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from engine.correlation import Correlator
from engine.service.bus import Bus
from engine.service.cache import Cache
from engine.service.contracts import Stats
from engine.service.executions import Executions
from engine.service.generations import RulesManager


@dataclass
class Health:
    replica: str
    ping_database: Callable[[], Awaitable[Any]]
    bus: Bus
    cache: Cache
    rules: RulesManager
    executions: Executions
    correlator: Correlator
    stats: Stats
    ready: bool = False
    started_at: float = field(default_factory=time.time)

    async def readiness(self) -> dict[str, Any]:
        """``ready``, ``checks`` (postgres, nats, redis), ``reasons`` and the status details."""
        reasons: list[str] = []
        checks: dict[str, str] = {}
        if not self.ready:
            reasons.append("the service is not ready (starting or stopping)")
        try:
            await asyncio.wait_for(self.ping_database(), 2.0)
            checks["postgres"] = "ok"
        except Exception as exc:
            checks["postgres"] = "down"
            reasons.append(f"PostgreSQL: {type(exc).__name__}: {exc}")
        if self.bus.connected:
            checks["nats"] = "ok"
        else:
            checks["nats"] = "down"
            reasons.append("NATS is not connected")
        await self.cache.ping()
        checks["redis"] = "ok" if self.cache.healthy else "degraded"
        return {**self.status(), "ready": not reasons, "checks": checks, "reasons": reasons}

    def status(self) -> dict[str, Any]:
        return {
            "replica": self.replica, "ready": self.ready, "uptime_s": round(time.time() - self.started_at, 1),
            "nats": {"mode": self.bus.mode, "connected": self.bus.connected},
            "redis": "ok" if self.cache.healthy else "degraded",
            "rules": self.rules.status.as_dict(),
            "running_executions": len(self.executions.running()),
            "queued_executions": self.executions.queued,
            "open_incidents": len(self.correlator.open_incidents()),
            "stats": self.stats.as_dict(),
        }

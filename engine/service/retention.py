"""Retention: finished executions, events and dead letters older than ``service.retention``
are deleted every hour, in batches (no lock is held for long)."""

from __future__ import annotations

import asyncio
import logging

from engine.service.contracts import Records

log = logging.getLogger(__name__)


class Retention:
    def __init__(self, records: Records, older_than: float, interval: float = 3600.0) -> None:
        self.records = records
        self.older_than = older_than
        self.interval = interval

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.once()

    async def once(self) -> int:
        try:
            deleted = await self.records.purge(self.older_than)
        except Exception as exc:
            log.warning("retention failed: %s: %s", type(exc).__name__, exc)
            return 0
        if deleted:
            log.info("Retention: deleted %d old record(s)", deleted)
        return deleted

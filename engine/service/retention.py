"""Retention: finished executions, events and dead letters older than ``service.retention``,
and audit records older than ``audit.retention``, are deleted every hour, in batches (no
lock is held for long)."""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from engine.service.contracts import Records

log = logging.getLogger(__name__)


class AuditPurge(Protocol):
    async def purge(self, older_than_seconds: float, batch: int = 1000) -> int: ...


class Retention:
    def __init__(self, records: Records, older_than: float, audit: AuditPurge | None = None,
                 audit_older_than: float = 365 * 86400.0, interval: float = 3600.0) -> None:
        self.records = records
        self.older_than = older_than
        self.audit = audit
        self.audit_older_than = audit_older_than
        self.interval = interval

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.once()

    async def once(self) -> int:
        try:
            deleted = await self.records.purge(self.older_than)
            if self.audit is not None:
                deleted += await self.audit.purge(self.audit_older_than)
        except Exception as exc:
            log.warning("retention failed: %s: %s", type(exc).__name__, exc)
            return 0
        if deleted:
            log.info("Retention: deleted %d old record(s)", deleted)
        return deleted

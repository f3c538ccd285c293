"""Hot reload: what makes the rules reload, on every replica.

- a change under the rule directory (file watcher), SIGHUP, or ``POST /rules/reload``;
- a change of the stored rules by any replica, the API or SQL: LISTEN/NOTIFY, with a poll
  of the tables' fingerprint as the fallback if the notification connection is lost.

Requests are coalesced (a burst of triggers is one reload). A reload that finds nothing
new keeps the generation (:class:`~engine.service.generations.RulesManager`), so hearing
of our own write costs a read, never a second generation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any, Protocol

from engine.auth import Principal
from engine.experiments import arm_names
from engine.metrics import Metrics
from engine.rules.generation import ReloadStatus
from engine.service.background import Background
from engine.service.cache import Cache
from engine.service.contracts import RuleChanges
from engine.service.generations import RulesManager
from engine.storage.outage import transient

log = logging.getLogger(__name__)


class ReloadAudit(Protocol):
    async def record(self, who: Principal, action: str, target_kind: str | None = None,
                     target_id: str | None = None, detail: dict[str, Any] | None = None) -> None: ...


class Reloads:
    def __init__(self, rules: RulesManager, *, changes: RuleChanges | None, metrics: Metrics, cache: Cache,
                 background: Background, replica: str, audit: ReloadAudit | None = None,
                 coalesce: float = 0.05, poll: float = 10.0) -> None:
        self.rules = rules
        self.changes = changes
        self.metrics = metrics
        self.cache = cache
        self.background = background
        self.replica = replica
        self.audit = audit
        self.coalesce = coalesce
        self.poll = poll
        self._requested = asyncio.Event()
        self._reason = ""
        self._baseline_stale = False
        rules.listeners.append(self._reloaded)

    def request(self, reason: str) -> None:
        self._reason = reason
        self._requested.set()

    async def reload(self, reason: str) -> bool:
        if reason != "SIGHUP" or self.audit is None:
            return await self.rules.reload(reason)
        # Someone with a shell asked: on the record, with the digests before and after.
        before = self.rules.generation.digest if self.rules.generation else None
        ok = await self.rules.reload(reason)
        after = self.rules.generation.digest if self.rules.generation else None
        await self.audit.record(Principal("system", "SIGHUP"), "rules.reload", "rules", None,
                                {"ok": ok, "before": before, "after": after, "replica": self.replica})
        return ok

    def _reloaded(self, ok: bool, status: ReloadStatus) -> None:
        self._baseline_stale = True
        self.metrics.reloads.labels("ok" if ok else "invalid").inc()
        self.metrics.rules_ok.set(1 if ok else 0)
        self.metrics.rules_generation.set(status.generation)
        gen = self.rules.generation
        if gen is not None:   # a failed reload keeps the generation: its rules stay the labels
            self.metrics.rules_changed(gen.strategies, gen.workflows, arm_names(gen.strategies.values()))
        if ok and gen is not None:
            self.background.spawn(self.cache.publish_generation({
                "generation": gen.number, "digest": gen.digest, "strategies": len(gen.strategies),
                "workflows": len(gen.workflows), "replica": self.replica, "loaded_at": gen.loaded_at}))

    async def run(self) -> None:
        """Reload once per burst of requests."""
        while True:
            await self._requested.wait()
            await asyncio.sleep(self.coalesce)
            self._requested.clear()
            try:
                await self.reload(self._reason or "request")
            except Exception as exc:
                if transient(exc):   # the database is away: the poll asks again once it is back
                    log.warning("rule reload (%s) postponed: PostgreSQL is unavailable (%s)",
                                self._reason or "request", type(exc).__name__)
                    self._baseline_stale = False
                else:
                    log.exception("rule reload failed")

    async def watch(self, stop: asyncio.Event) -> None:
        """Reload on changes under the rule directory until ``stop`` is set."""
        from watchfiles import awatch

        directory: Path = self.rules.directory
        if not directory.exists():
            log.warning("rules directory %s does not exist: not watching it", directory)
            await stop.wait()
            return
        # step: how often the watcher thread looks (50 ms keeps reloads well under 1 s
        # without a core's worth of polling).
        async for _changes in awatch(directory, debounce=100, step=50, stop_event=stop, recursive=True):
            self.request("file change")

    async def listen(self) -> None:
        """Reload when the stored rules change: NOTIFY, and a poll as the fallback."""
        if self.changes is None:
            return
        changes = self.changes
        last: tuple[Any, ...] = ()
        with contextlib.suppress(Exception):     # an outage now: the first poll finds out
            last = await changes.fingerprint()
        while True:
            try:
                async with changes.notifications(lambda: self.request("database change")) as alive:
                    while alive():
                        last = await self._poll(last)
                log.warning("the LISTEN connection for rule changes was lost; polling, then listening again")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("LISTEN for rule changes failed (%s: %s); polling", type(exc).__name__, exc)
            try:
                last = await self._poll(last)
            except Exception as exc:
                log.warning("polling for rule changes failed (%s: %s)", type(exc).__name__, exc)

    async def _poll(self, last: tuple[Any, ...]) -> tuple[Any, ...]:
        await asyncio.sleep(self.poll)
        assert self.changes is not None
        current = await self.changes.fingerprint()
        if self._baseline_stale:     # a reload since: what it read is the baseline
            self._baseline_stale = False
            return current
        if current != last:
            self.request("database change (poll)")
        return current

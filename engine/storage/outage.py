"""Riding out a PostgreSQL outage: which errors are an outage (to wait out), and one log line
when the database goes away and one when it is back, with how long, whoever noticed.

A write that meets an outage is retried with backoff and jitter (:func:`retrying`) until it
lands or the caller gives up; a data error (a constraint, a bad value) is not an outage and
is raised at once.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg

log = logging.getLogger(__name__)
T = TypeVar("T")

# SQLSTATE classes and codes of a database that is not there, starting, stopping or full.
_TRANSIENT_STATES = ("08", "57P01", "57P02", "57P03", "53300", "40001", "40P01")


def transient(exc: BaseException) -> bool:
    """True for errors that mean "the database is not answering now", not "this is wrong"."""
    if isinstance(exc, OSError | TimeoutError | asyncpg.InterfaceError | ConnectionError):
        return True
    if isinstance(exc, asyncpg.PostgresError):
        state = getattr(exc, "sqlstate", "") or ""
        return state.startswith(_TRANSIENT_STATES)
    return False


class Availability:
    """One dependency's state, shared by every part that uses it: it logs the transitions."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.down_since: float | None = None
        self.failures = 0

    @property
    def up(self) -> bool:
        return self.down_since is None

    def failed(self, exc: BaseException) -> None:
        self.failures += 1
        if self.down_since is None:
            self.down_since = time.monotonic()
            log.warning("%s is unavailable (%s: %s); waiting for it (writes are retried)", self.name,
                        type(exc).__name__, str(exc)[:200])

    def ok(self) -> None:
        if self.down_since is not None:
            log.warning("%s is back after %.1fs (%d failed attempts meanwhile)", self.name,
                        time.monotonic() - self.down_since, self.failures)
            self.down_since = None
            self.failures = 0


async def retrying(availability: Availability, action: Callable[[], Awaitable[T]], *,
                   first: float = 0.1, cap: float = 5.0, give_up: float | None = None) -> T:
    """``action()`` until it does not meet an outage; ``give_up`` seconds at most (then the
    last error is raised)."""
    delay = first
    began = time.monotonic()
    while True:
        try:
            result = await action()
        except Exception as exc:
            if not transient(exc):
                raise
            availability.failed(exc)
            if give_up is not None and time.monotonic() - began > give_up:
                raise
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(cap, delay * 2)
            continue
        availability.ok()
        return result

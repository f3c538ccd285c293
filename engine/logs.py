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
the standard library, so any layer may import it.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

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


class _Stderr(logging.StreamHandler):
    """stderr as it is when a line is written (tests and tools swap ``sys.stderr``)."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


class _NoTraceback(logging.Filter):
    """nats-py logs every reconnect error with a traceback: keep the line, drop the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            record.msg, record.args = f"{record.getMessage()}: {type(exc).__name__}: {exc}", None
            record.exc_info = record.exc_text = None
        return True


class _RotatingFile(logging.handlers.RotatingFileHandler):
    """The standard rotating file, asking the file system only when a rotation is due: the
    standard check stats the path twice for every line (a tenth of a line's cost here)."""

    def shouldRollover(self, record: logging.LogRecord) -> bool:
        if self.maxBytes <= 0:
            return False
        if self.stream is None:
            self.stream = self._open()
        # The file's end, not a counter: another writer or a truncation is taken into account.
        if self.stream.seek(0, 2) + len(self.format(record)) + 1 < self.maxBytes:
            return False
        return bool(super().shouldRollover(record))


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
        handlers.append(_RotatingFile(
            path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"))
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

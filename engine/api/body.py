"""Request bodies read with a bound, so a client cannot make the service buffer without
limit: a declared ``Content-Length`` over the limit is refused before reading, and a
streamed body is refused as soon as it passes the limit (413 either way).

A JSON body is taken only within the bounds of :mod:`engine.payloads` (UTF-8, no NUL,
64-bit integers, 64 levels deep): 400 otherwise, saying where, never repeating the value.
NDJSON is read as a stream of lines (:func:`ndjson_lines`), one line held at a time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fastapi import HTTPException, Request

from engine.exceptions import BadPayload
from engine.payloads import Excerpt, loads

MAX_RULE_BODY = 1024 * 1024   # a workflow, a strategy or an execute request
READ_TIMEOUT = 60.0           # seconds a client may take to send one body


class TooLarge(HTTPException):
    def __init__(self, detail: str) -> None:
        super().__init__(413, detail)


def refuse_declared(request: Request, limit: int) -> None:
    """413 at once if the declared Content-Length is over ``limit`` (nothing is read)."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise TooLarge(f"the body is {int(length)} bytes; at most {limit} are accepted")


async def _chunks(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The body's chunks, refused (413) once more than ``limit`` bytes came, and (408) if
    the client takes longer than READ_TIMEOUT to send it."""
    refuse_declared(request, limit)
    size = 0
    stream = request.stream().__aiter__()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + READ_TIMEOUT
    while True:
        try:
            async with asyncio.timeout_at(deadline):
                chunk = await anext(stream)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise HTTPException(408, f"the body did not arrive within {READ_TIMEOUT:.0f} s") from None
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"the body exceeds {limit} bytes")
        yield chunk


async def read_limited(request: Request, limit: int) -> bytes:
    body = bytearray()
    async for chunk in _chunks(request, limit):
        body += chunk
    return bytes(body)


async def json_body(request: Request, limit: int = MAX_RULE_BODY, *, empty: Any = ...) -> Any:
    """The body as JSON within bounds (400 if it is not; ``empty`` is returned for an empty
    body if given)."""
    raw = await read_limited(request, limit)
    if empty is not ... and not raw.strip():
        return empty
    try:
        return loads(raw)
    except BadPayload as exc:
        raise HTTPException(400, f"the body is refused: {exc}") from None


async def ndjson_lines(request: Request, *, limit: int, max_line: int,
                       keep: int) -> AsyncIterator[bytes | Excerpt]:
    """The body's non-blank lines, one at a time, as they arrive. A line longer than
    ``max_line`` is not held: it comes as an :class:`~engine.payloads.Excerpt` of its first
    ``keep`` bytes, its size and SHA-256. The body as a whole is bounded by ``limit``."""
    line = bytearray()
    over: Excerpt | None = None
    async for chunk in _chunks(request, limit):
        start = 0
        while start <= len(chunk):
            end = chunk.find(b"\n", start)
            piece = memoryview(chunk)[start:end if end >= 0 else len(chunk)]
            if over is None and len(line) + len(piece) > max_line:
                over = Excerpt(keep)
                over.add(line)
                line = bytearray()
            if over is not None:
                over.add(piece)
            else:
                line += piece
            if end < 0:
                break
            if over is not None:
                yield over
            elif line.strip():
                yield bytes(line)
            line, over = bytearray(), None
            start = end + 1
    if over is not None:
        yield over
    elif line.strip():
        yield bytes(line)

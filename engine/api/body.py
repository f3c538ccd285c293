"""Request bodies read with a bound, so a client cannot make the service buffer without
limit: a declared ``Content-Length`` over the limit is refused before reading, and a
streamed body is refused as soon as it passes the limit (413 either way)."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import HTTPException, Request

MAX_RULE_BODY = 1024 * 1024   # a workflow or strategy document


async def read_limited(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise HTTPException(413, f"the body is {length} bytes; at most {limit} are accepted")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"the body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def json_body(request: Request, limit: int = MAX_RULE_BODY) -> Any:
    """The body as JSON (400 if it is not)."""
    raw = await read_limited(request, limit)
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise HTTPException(400, f"the body is not JSON: {exc}") from None

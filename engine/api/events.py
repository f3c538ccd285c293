"""Event intake over HTTP: the same intake as NATS (``deps.ingest``), from a JSON body
(one event or an array) or NDJSON (one event per line).

A body that is not JSON, or neither an event nor an array, is recorded as a dead letter and
answered 400; in NDJSON each line goes in as bytes, so the intake dead-letters a bad line
and keeps the others.

Bounded, so that no client can make the service hold much (``intake.*`` settings):

- a request is at most ``max_request_bytes`` (and never more than ``max_events_per_request``
  events of ``max_event_bytes``): a declared Content-Length over it is refused (413) before
  anything is read, a streamed body as soon as it passes it;
- a JSON array holds at most ``max_events_per_request`` events (413);
- NDJSON is read line by line as it arrives and taken in batches, so one line of at most
  ``max_event_bytes`` is held at a time; a longer line is kept only as the excerpt its dead
  letter records (first bytes, size, SHA-256). Past the limits it stops with 413, and the
  lines before were taken in (the intake drops them as duplicates if the client resends);
- at most ``concurrent_event_requests`` bodies are read at once; the others wait unread
  (the server stops reading their sockets), up to SLOT_WAIT, then get 503.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import orjson
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse

from engine.api.body import TooLarge, ndjson_lines, read_limited, refuse_declared
from engine.api.deps import ApiDeps, Deps, Ingest, IngestDep, IngestItem
from engine.api.models import BadBody, IngestResult, Message

NDJSON_TYPES = frozenset({"application/x-ndjson", "application/ndjson", "application/jsonl",
                          "application/x-jsonlines", "application/jsonlines"})
BATCH_LINES, BATCH_BYTES = 256, 1024 * 1024   # NDJSON lines taken in at once
SLOT_WAIT = 30.0    # seconds a request waits for its turn to be read

router = APIRouter(tags=["events"])


def request_limit(deps: ApiDeps) -> int:
    """The most one request may carry, in bytes."""
    return min(deps.max_request_bytes, deps.max_event_bytes * deps.max_events_per_request)


async def _turn(request: Request) -> asyncio.Semaphore:
    slots: asyncio.Semaphore = request.app.state.event_slots
    try:
        async with asyncio.timeout(SLOT_WAIT):
            await slots.acquire()
    except TimeoutError:
        raise HTTPException(503, "too many event requests at once; retry later",
                            headers={"Retry-After": "1"}) from None
    return slots


def _dead_body(problem: str, counts: dict[str, int]) -> JSONResponse:
    return JSONResponse(status_code=400, content={"detail": f"{problem} (recorded as a dead letter)",
                                                  "dead_letters": counts.get("dead_letters", 0)})


async def _json(request: Request, ingest: Ingest, deps: ApiDeps) -> Any:
    raw = await read_limited(request, request_limit(deps))
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        counts = await ingest([(raw, None, None, {})], "http")
        return _dead_body("the body is empty" if not raw.strip() else f"the body is not JSON: {exc}", counts)
    del raw
    if isinstance(value, dict):
        values: list[Any] = [value]
    elif isinstance(value, list):
        if len(value) > deps.max_events_per_request:
            raise TooLarge(f"the array holds {len(value)} events; at most {deps.max_events_per_request} "
                           "are accepted per request")
        values = value
    else:
        counts = await ingest([(value, None, None, {})], "http")
        return _dead_body(f"the body is a JSON {type(value).__name__}, neither an event nor an array of "
                          "events", counts)
    items: list[IngestItem] = [(v, None, None, {}) for v in values]
    counts = await ingest(items, "http")
    return {"received": len(items), **counts}


async def _ndjson(request: Request, ingest: Ingest, deps: ApiDeps) -> Any:
    counts: Counter[str] = Counter()
    received = 0
    batch: list[IngestItem] = []
    held = 0

    async def flush() -> None:
        nonlocal batch, held
        if batch:
            counts.update(await ingest(batch, "http"))
        batch, held = [], 0

    try:
        async for line in ndjson_lines(request, limit=request_limit(deps), max_line=deps.max_event_bytes,
                                       keep=deps.dead_letter_bytes):
            if received == deps.max_events_per_request:
                raise TooLarge(f"more than {deps.max_events_per_request} lines; at most "
                               f"{deps.max_events_per_request} are accepted per request")
            received += 1
            batch.append((line, None, None, {}))
            held += len(line) if isinstance(line, bytes) else len(line.head)
            if len(batch) >= BATCH_LINES or held >= BATCH_BYTES:
                await flush()
        await flush()
    except TooLarge as exc:
        await flush()
        raise TooLarge(f"{exc.detail}; the first {received} lines were taken in "
                       f"({counts['accepted']} accepted, {counts['dead_letters']} dead letters)") from None
    return {"received": received, "accepted": counts["accepted"], "duplicates": counts["duplicates"],
            "dead_letters": counts["dead_letters"], "ignored": counts["ignored"]}


@router.post("/events", status_code=202, response_model=IngestResult, summary="Take in events",
             responses={400: {"model": BadBody, "description": "The body is not JSON, or neither an event "
                                                               "nor an array (recorded as a dead letter)"},
                        408: {"model": Message, "description": "The body did not arrive in time"},
                        413: {"model": Message, "description": "The body is too large, or holds too many "
                                                               "events"},
                        503: {"model": Message, "description": "The service is starting, or busy with "
                                                               "other event requests (Retry-After)"}},
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/json": {"schema": {
                     "description": "one event (any shape the intake accepts: a Kubernetes Event of "
                                    "core/v1 or events.k8s.io/v1, a watch line, an agent-manager envelope) "
                                    "or an array of them; an element that is not an event becomes a dead "
                                    "letter",
                     "oneOf": [{"type": "object"}, {"type": "array", "items": {}}]}},
                 "application/x-ndjson": {"schema": {"type": "string",
                                                     "description": "one event per line"}}}}})
async def post_events(request: Request, ingest: IngestDep, deps: Deps) -> Any:
    refuse_declared(request, request_limit(deps))    # before waiting for a turn
    slots = await _turn(request)
    try:
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media in NDJSON_TYPES:
            return await _ndjson(request, ingest, deps)
        return await _json(request, ingest, deps)
    finally:
        slots.release()

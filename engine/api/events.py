"""Event intake over HTTP: the same intake as NATS (``deps.ingest``), from a JSON body
(one event or an array) or NDJSON (one event per line).

A body that is not JSON is recorded as a dead letter and answered 400; in NDJSON each
line goes in as bytes, so the intake dead-letters a bad line and keeps the others.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from engine.api.body import read_limited
from engine.api.deps import Deps, IngestDep, IngestItem
from engine.api.models import UNAVAILABLE, BadBody, IngestResult, Message

NDJSON_TYPES = frozenset({"application/x-ndjson", "application/ndjson", "application/jsonl",
                          "application/x-jsonlines", "application/jsonlines"})
EVENTS_PER_REQUEST = 1000   # the body may be this many times one event's limit

router = APIRouter(tags=["events"])


@router.post("/events", status_code=202, response_model=IngestResult, summary="Take in events",
             responses={400: {"model": BadBody, "description": "The body is not JSON (recorded as a dead "
                                                               "letter)"},
                        413: {"model": Message, "description": "The body is too large"}, **UNAVAILABLE},
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/json": {"schema": {
                     "description": "one event (any shape the intake accepts: a Kubernetes Event of "
                                    "core/v1 or events.k8s.io/v1, a watch line, an agent-manager envelope) "
                                    "or an array of them",
                     "oneOf": [{"type": "object"}, {"type": "array", "items": {"type": "object"}}]}},
                 "application/x-ndjson": {"schema": {"type": "string",
                                                     "description": "one event per line"}}}}})
async def post_events(request: Request, ingest: IngestDep, deps: Deps) -> Any:
    raw = await read_limited(request, deps.max_event_bytes * EVENTS_PER_REQUEST)
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    items: list[IngestItem]
    if media in NDJSON_TYPES:
        items = [(line, None, None, {}) for line in raw.splitlines() if line.strip()]
    else:
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            counts = await ingest([(raw, None, None, {})], "http")
            problem = "the body is empty" if not raw.strip() else f"the body is not JSON: {exc}"
            return JSONResponse(status_code=400, content={
                "detail": f"{problem} (recorded as a dead letter)",
                "dead_letters": counts.get("dead_letters", 0)})
        values = value if isinstance(value, list) else [value]
        items = [(v, None, None, {}) for v in values]
    counts = await ingest(items, "http")
    return {"received": len(items), **counts}

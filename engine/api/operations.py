"""The operational endpoints, outside /api/v1: Prometheus metrics and the two probes."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from engine.api.deps import Deps
from engine.api.models import Health, Readiness

router = APIRouter(tags=["operations"])


@router.get("/metrics", response_class=Response, summary="Prometheus metrics",
            responses={200: {"description": "Prometheus text exposition format", "content": {
                CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}}}})
async def metrics(deps: Deps) -> Response:
    return Response(content=deps.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.get("/healthz", response_model=Health, summary="Liveness: the process serves")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", response_model=Readiness,
            summary="Readiness: started, PostgreSQL answers, NATS connected (Redis may be degraded)",
            responses={503: {"model": Readiness, "description": "Not ready: 'reasons' says why"}})
async def readyz(deps: Deps) -> Any:
    try:
        body = await deps.readiness()
    except Exception as exc:   # a probe answers; it does not raise
        body = {"ready": False, "checks": {}, "reasons": [f"readiness failed: {type(exc).__name__}: {exc}"]}
    return JSONResponse(status_code=200 if body.get("ready") else 503,
                        content=orjson.loads(orjson.dumps(body, default=str)))

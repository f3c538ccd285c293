"""The operational endpoints, outside /api/v1: Prometheus metrics and the two probes.

``/healthz`` is open. ``/readyz`` is open but says only whether the replica is ready
unless the request carries a token that may read (then: replica, checks, reasons,
counters, rule status). ``/metrics`` is open while ``http.metrics_public`` is true.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from engine.api.auth import OPTIONAL_AUTH, Credentials, identify
from engine.api.deps import Deps
from engine.api.models import Health, Readiness
from engine.auth import Permission

router = APIRouter(tags=["operations"])


@router.get("/metrics", response_class=Response, summary="Prometheus metrics", openapi_extra=OPTIONAL_AUTH,
            responses={200: {"description": "Prometheus text exposition format", "content": {
                CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}}}})
async def metrics(request: Request, deps: Deps, credentials: Credentials) -> Response:
    if not deps.metrics_public:
        principal = await identify(request, deps, credentials)
        if principal is None:
            raise HTTPException(401, "a token is required (Authorization: Bearer <token>)",
                                headers={"WWW-Authenticate": 'Bearer realm="aetherius"'})
        if not principal.may(Permission.READ):
            raise HTTPException(403, f"role {principal.role} may not read the metrics")
    return Response(content=deps.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.get("/healthz", response_model=Health, summary="Liveness: the process serves")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", response_model=Readiness, openapi_extra=OPTIONAL_AUTH,
            summary="Readiness: started, PostgreSQL answers, NATS connected (Redis may be degraded)",
            responses={503: {"model": Readiness, "description": "Not ready: 'reasons' says why"}})
async def readyz(request: Request, deps: Deps, credentials: Credentials) -> Any:
    try:
        body = await deps.readiness()
    except Exception as exc:   # a probe answers; it does not raise
        body = {"ready": False, "checks": {}, "reasons": [f"readiness failed: {type(exc).__name__}: {exc}"]}
    status = 200 if body.get("ready") else 503
    # Without a token a probe learns only ready or not: the details (replica, counters, rule
    # problems) are for readers.
    try:
        principal = await identify(request, deps, credentials)
    except HTTPException:
        principal = None
    if principal is None or not principal.may(Permission.READ):
        return JSONResponse(status_code=status, content={"ready": bool(body.get("ready"))})
    return JSONResponse(status_code=status, content=orjson.loads(orjson.dumps(body, default=str)))

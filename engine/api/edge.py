"""The edge of the API: what every request must be before a route sees it, and what an
error may show of it.

- The path and the query string, percent-decoded, are UTF-8 without NUL (PostgreSQL's text
  cannot hold NUL; a parameter that is not UTF-8 would reach it as replacement characters):
  400 otherwise, before any route runs (:class:`CleanParameters`).
- A 422 for a parameter or a body field shows at most a short, escaped excerpt of the value
  it refuses (:func:`validation_failed`), never the whole of what a client sent.
- A 405 names every method of its path in ``Allow`` (:func:`method_not_allowed`).
- Anything unexpected is a 500 that says only that (:func:`internal_error`): no exception
  text, no SQL, no traceback. It is a backstop: bounds are checked where input comes in.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote_to_bytes

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from engine.payloads import shown

BAD_PARAMETER = "A path or query parameter is not UTF-8 or holds a NUL character"


def _problem(raw: bytes, what: str) -> str | None:
    text = unquote_to_bytes(raw.replace(b"+", b" ") if what == "query" else raw)
    if b"\x00" in text:
        return f"the {what} holds a NUL character (%00)"
    try:
        text.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"the {what} is not UTF-8 (byte {exc.start} of it, percent-decoded)"
    return None


def _query_problem(query: bytes) -> str | None:
    for pair in query.split(b"&"):
        name, _, value = pair.partition(b"=")
        problem = _problem(name, "query") or _problem(value, "query")
        if problem is not None:
            readable = unquote_to_bytes(name.replace(b"+", b" ")).decode("utf-8", "replace")
            return problem.replace("the query", f"query parameter {shown(readable)}")
    return None


class CleanParameters:
    """ASGI middleware: 400 for a request whose path or query is not clean UTF-8."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            raw_path = scope.get("raw_path") or scope["path"].encode("utf-8", "surrogateescape")
            problem = _problem(raw_path.split(b"?", 1)[0], "path") or _query_problem(
                scope.get("query_string", b""))
            if problem is not None:
                await JSONResponse(status_code=400, content={"detail": problem})(scope, receive, send)
                return
        await self.app(scope, receive, send)


def clean_errors(errors: Sequence[Any], prefix: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Pydantic's errors as a 422 shows them: type, loc (``prefix`` first), msg, and a short
    excerpt of a refused scalar input; at most 20 of them."""
    return [_clean(error, prefix) for error in errors[:20]]


def _clean(error: Any, prefix: tuple[str, ...]) -> dict[str, Any]:
    out = {key: error[key] for key in ("type", "loc", "msg") if key in error}
    out["loc"] = [part if isinstance(part, int) or len(part) <= 64 else shown(part)
                  for part in (*prefix, *out.get("loc", ()))]
    if len(str(out.get("msg", ""))) > 300:
        out["msg"] = str(out["msg"])[:297] + "..."
    if "input" in error and not isinstance(error["input"], dict | list):
        out["input"] = shown(error["input"])
    ctx = error.get("ctx")
    if isinstance(ctx, dict) and all(isinstance(v, int | float | str) and len(str(v)) <= 64
                                     for v in ctx.values()):
        out["ctx"] = ctx
    return out


async def validation_failed(request: Request, exc: Exception) -> JSONResponse:
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    return JSONResponse(status_code=422, content={"detail": clean_errors(list(errors))})


async def method_not_allowed(request: Request, exc: Exception) -> JSONResponse:
    """405 with an Allow header naming every method the OpenAPI document gives the path
    (Starlette names only those of the first route that matched it, one route per method here)."""
    methods: set[str] = set()
    for template, operations in request.app.openapi().get("paths", {}).items():
        parts = re.split(r"(\{[^}/]+\})", template)
        if re.fullmatch("".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts),
                        request.url.path):
            methods |= {method.upper() for method in operations}
    return JSONResponse(status_code=405, content={"detail": "Method Not Allowed"},
                        headers={"Allow": ", ".join(sorted(methods))})


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    # The server logs the exception with its traceback (Starlette raises it on after this).
    return JSONResponse(status_code=500, content={"detail": "internal error (see the service log)"})

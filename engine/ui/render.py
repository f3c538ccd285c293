"""Pages from Jinja2 templates (``engine/ui/templates``), autoescaped, with the headers every
console page carries: a Content-Security-Policy that allows only this origin's own script
and style (no inline script, nothing from elsewhere, no framing), no caching, no referrer."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, PackageLoader, StrictUndefined

from engine.api.auth import SESSION_COOKIE
from engine.auth import Permission, Principal, csrf_token

HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
                               "base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",     # no-referrer would make Chromium send Origin: null
    "Cache-Control": "no-store",
}


def _when(value: Any) -> str:
    if value is None or value == "":
        return "–"
    if isinstance(value, int | float):
        value = datetime.fromtimestamp(value, UTC)
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def _ms(value: Any) -> str:
    if value is None:
        return "–"
    ms = float(value)
    return f"{ms:.0f} ms" if ms < 1000 else f"{ms / 1000:.1f} s" if ms < 120_000 else f"{ms / 60000:.1f} min"


def _pretty(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=2, ensure_ascii=False, default=str, sort_keys=True)


def _brief(value: Any) -> str:
    """A small mapping on one line (``channel=console comment=...``); '' if it is not small."""
    if not isinstance(value, dict):
        return ""
    parts = [f"{k}={v}" for k, v in value.items() if isinstance(v, str | int | float | bool) and v != ""]
    text = " ".join(parts)
    return text if len(text) <= 240 else text[:239] + "…"


ENV = Environment(loader=PackageLoader("engine.ui", "templates"), autoescape=True, undefined=StrictUndefined,
                  trim_blocks=True, lstrip_blocks=True)
ENV.filters.update(when=_when, ms=_ms, pretty=_pretty, brief=_brief)


def csrf_of(request: Request) -> str:
    session_id = request.cookies.get(SESSION_COOKIE)
    return csrf_token(session_id) if session_id else ""


def page(request: Request, template: str, who: Principal | None, status: int = 200,
         **context: Any) -> HTMLResponse:
    may = {p.value: bool(who and who.may(p)) for p in Permission}
    html = ENV.get_template(template).render(request=request, who=who, may=may, csrf=csrf_of(request),
                                             path=request.url.path, **context)
    return HTMLResponse(html, status_code=status, headers=HEADERS)

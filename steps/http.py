"""JSON over HTTP for the steps, through whatever client the runner was given.

Steps never import an HTTP library: they call :class:`HttpClient` (the service's is
:class:`engine.service.transport.Client`), which raises :class:`TransportError` /
:class:`TransportTimeout` for requests that got no answer. Those, 5xx and 4xx are
translated here into the step errors the runner's retry policy understands.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from engine.exceptions import (
    ServiceRejected,
    ServiceUnavailable,
    StepError,
    TransportError,
    TransportTimeout,
)


class HttpResponse(Protocol):
    @property
    def status_code(self) -> int: ...

    @property
    def content(self) -> bytes: ...

    @property
    def text(self) -> str: ...

    def json(self) -> Any: ...


Pause = Callable[[], AbstractAsyncContextManager[None]]


class HttpClient(Protocol):
    async def post_json(self, url: str, payload: object, timeout: float,
                        wait: Pause | None = None) -> HttpResponse:
        """``wait`` wraps any wait for a free slot of the service (not the request's time)."""
        ...


async def post_json(client: HttpClient | None, url: str, payload: Any, *, timeout: float,
                    service: str, wait: Pause | None = None) -> Any:
    """POST ``payload``; return the decoded JSON answer (None for an empty body).

    Connection problems, timeouts, 5xx and 429 are :class:`ServiceUnavailable` (retryable);
    another 4xx is :class:`ServiceRejected` (not retryable). The URL is never put in messages:
    webhook URLs are secrets.
    """
    if client is None:
        raise StepError(f"{service}: no HTTP client is configured for live calls", retryable=False)
    try:
        response = await client.post_json(url, payload, timeout, wait)
    except TransportTimeout:
        raise ServiceUnavailable(f"{service} did not answer within {timeout:g}s") from None
    except TransportError as exc:
        raise ServiceUnavailable(f"{service} is unreachable: {exc}") from None
    if response.status_code >= 500 or response.status_code == 429:
        # 429: too many requests (PagerDuty, Slack and Teams throttle so): try again later.
        raise ServiceUnavailable(f"{service} answered HTTP {response.status_code}")
    if response.status_code >= 400:
        raise ServiceRejected(f"{service} rejected the request: HTTP {response.status_code} "
                              f"{response.text[:200]}")
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        if service in ("Slack", "webhook", "Teams", "PagerDuty"):
            return {"body": response.text[:200]}
        raise StepError(f"{service} answered with invalid JSON", retryable=False) from None

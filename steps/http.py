"""JSON over HTTP for the steps, with httpx errors translated at this boundary."""

from __future__ import annotations

from typing import Any

import httpx

from engine.exceptions import ServiceRejected, ServiceUnavailable, StepError
from engine.transport import Client


async def post_json(client: httpx.AsyncClient, url: str, payload: Any, *, timeout: float,
                    service: str) -> Any:
    """POST ``payload``; return the decoded JSON answer (None for an empty body).

    Connection problems, timeouts and 5xx are :class:`ServiceUnavailable` (retryable);
    4xx is :class:`ServiceRejected` (not retryable). The URL is never put in messages:
    webhook URLs are secrets.
    """
    try:
        if isinstance(client, Client):
            response = await client.post_json(url, payload, timeout)
        else:
            response = await client.post(url, json=payload, timeout=timeout)
    except httpx.TimeoutException:
        raise ServiceUnavailable(f"{service} did not answer within {timeout:g}s") from None
    except httpx.HTTPError as exc:
        raise ServiceUnavailable(f"{service} is unreachable: {type(exc).__name__}") from None
    if response.status_code >= 500:
        raise ServiceUnavailable(f"{service} answered HTTP {response.status_code}")
    if response.status_code >= 400:
        raise ServiceRejected(f"{service} rejected the request: HTTP {response.status_code} "
                              f"{response.text[:200]}")
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        if service in ("Slack", "webhook"):
            return {"body": response.text[:200]}
        raise StepError(f"{service} answered with invalid JSON", retryable=False) from None

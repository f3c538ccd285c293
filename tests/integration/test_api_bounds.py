"""Input bounds at the API's edge, on a real PostgreSQL (tests/integration/test_api.py's
harness): hostile parameters and bodies get a 4xx that names the problem and shows nothing of
the database; event bodies are bounded in bytes, items and lines; NDJSON is streamed, and a
dead letter keeps only an excerpt of what it refused, with its size and SHA-256."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import orjson
import pytest

from tests.integration.test_api import BACKOFF, harness, seed_copy

pytestmark = pytest.mark.integration

JSON = {"content-type": "application/json"}
EXECUTE = "/api/v1/workflows/diagnose_pod_crashloop/execute"
INTERNALS = ("asyncpg", "postgres", "sql", "select ", "insert ", "traceback", "detail:",
             "invalid byte sequence", "int64 range", "exception", "error:")


def cursor(*parts: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(parts)).encode()).decode()


def event(uid: str, **changes: Any) -> dict[str, Any]:
    return {**BACKOFF, "metadata": {**BACKOFF["metadata"], "uid": uid}, **changes}


case = pytest.param
HOSTILE: list[Any] = [
    # NUL and invalid UTF-8 in path and query parameters
    case("GET", "/api/v1/workflows/a%00b", None, 400, "NUL", id="nul-path-workflow"),
    case("GET", "/api/v1/strategies/a%00b", None, 400, "NUL", id="nul-path-strategy"),
    case("GET", "/api/v1/executions/a%00b", None, 400, "NUL", id="nul-path-execution"),
    case("GET", "/api/v1/incidents/a%00b", None, 400, "NUL", id="nul-path-incident"),
    case("POST", "/api/v1/executions/a%00b/cancel", None, 400, "NUL", id="nul-path-cancel"),
    case("DELETE", "/api/v1/workflows/a%00b", None, 400, "NUL", id="nul-path-delete"),
    case("POST", "/api/v1/workflows/a%00b/execute", None, 400, "NUL", id="nul-path-execute"),
    case("GET", "/api/v1/workflows?status=a%00b", None, 400, "'status' holds a NUL", id="nul-query"),
    case("GET", "/api/v1/executions?workflow_id=a%00", None, 400, "'workflow_id'", id="nul-query-2"),
    case("GET", "/api/v1/incidents?namespace=%00", None, 400, "'namespace'", id="nul-query-3"),
    case("GET", "/api/v1/incidents?name%00=x", None, 400, "NUL", id="nul-query-name"),
    case("GET", "/api/v1/workflows/a%ff%fe", None, 400, "not UTF-8", id="invalid-utf8-path"),
    case("GET", "/api/v1/executions?incident_id=%c3%28", None, 400, "not UTF-8", id="invalid-utf8-query"),
    # unbounded pagination and times PostgreSQL cannot hold
    case("GET", "/api/v1/executions?offset=9223372036854775808", None, 422, "less than or equal",
         id="offset-past-int64"),
    case("GET", "/api/v1/incidents?offset=9223372036854775807", None, 422, "less than or equal",
         id="offset-int64-max"),
    case("GET", "/api/v1/executions?offset=100001", None, 422, "100000", id="offset-past-max"),
    case("GET", "/api/v1/incidents?limit=99999999999999999999", None, 422, "500", id="limit-huge"),
    case("GET", "/api/v1/executions?limit=-9223372036854775809", None, 422, "greater", id="limit-neg"),
    case("GET", "/api/v1/executions?since=0001-01-01T00:00:00%2B14:00", None, 422, "out of range",
         id="since-before-year-1"),
    case("GET", "/api/v1/executions?until=9999-12-31T23:59:59-14:00", None, 422, "out of range",
         id="until-past-9999"),
    case("GET", "/api/v1/incidents?since=9999-12-31T23:59:59-14:00", None, 422, "out of range",
         id="incident-since"),
    case("GET", "/api/v1/executions?cursor=" + cursor("2026-01-01T00:00:00+00:00", "a\u0000"), None,
         400, "invalid cursor", id="cursor-with-nul"),
    case("GET", f"/api/v1/incidents?cursor={cursor('0001-01-01T00:00:00+14:00', 'a')}", None, 400,
         "invalid cursor", id="cursor-out-of-range"),
    case("GET", f"/api/v1/incidents?cursor={cursor(5, ['x'])}", None, 400, "invalid cursor",
         id="cursor-wrong-types"),
    case("GET", "/api/v1/executions?cursor=%%%%", None, 400, "invalid cursor", id="cursor-garbage"),
    # execute bodies
    case("POST", EXECUTE, b'{"context": {"a": "x\\u0000"}}', 400, "at context.a: a string holds a NUL",
         id="execute-nul"),
    case("POST", EXECUTE, b'{"context": {"a\\u0000": 1}}', 400, "a key holds a NUL", id="execute-nul-key"),
    case("POST", EXECUTE, b'{"context": {"a": 123456789012345678901234567890}}', 400, "64-bit",
         id="execute-past-uint64"),
    case("POST", EXECUTE, b'{"context": {"a": 18446744073709551615}}', 400, "64-bit",
         id="execute-uint64"),
    case("POST", EXECUTE, b'{"incident": {"a": 9223372036854775808}}', 400, "64-bit",
         id="execute-incident-past-int64"),
    case("POST", EXECUTE, b'{"context": ' + b"[" * 65 + b"]" * 65 + b"}", 400, "nested deeper than 64",
         id="execute-deep"),
    case("POST", EXECUTE, b'{"context": ' + b"[" * 5000 + b"]" * 5000 + b"}", 400, "not JSON",
         id="execute-very-deep"),
    case("POST", EXECUTE, b'{"context": {"a": "\xff"}}', 400, "not JSON", id="execute-invalid-utf8"),
    case("POST", EXECUTE, b'{"context": "x' + b"y" * 5000 + b'"}', 422, "valid dictionary",
         id="execute-wrong-type"),
    case("POST", EXECUTE, orjson.dumps({"event": event("u1", count=2 ** 63)}), 400, "64-bit",
         id="execute-event-count-past-int64"),
    case("POST", EXECUTE, orjson.dumps({"event": event("u2", count=2 ** 40)}), 422, "at most 2147483647",
         id="execute-event-count-past-int32"),
    case("POST", EXECUTE, b"x" * (1024 * 1024 + 1), 413, "at most", id="execute-too-large"),
    # rule bodies
    case("POST", "/api/v1/workflows", orjson.dumps({**seed_copy("nul"), "description": "a\x00"}), 400,
         "at description: a string holds a NUL", id="workflow-nul"),
    case("POST", "/api/v1/workflows", orjson.dumps(seed_copy("nul\x00")), 400, "at id", id="workflow-nul-id"),
    case("POST", "/api/v1/workflows", orjson.dumps({**seed_copy("big"), "priority": 2 ** 64 - 1}), 400,
         "64-bit", id="workflow-priority-past-int64"),
    case("POST", "/api/v1/workflows", orjson.dumps({**seed_copy("big"), "priority": 2 ** 40}), 422,
         "less than or equal to 1000", id="workflow-priority-large"),
    case("PUT", "/api/v1/workflows/x", b'{"steps": ' + b"[" * 300 + b"]" * 300 + b"}", 400,
         "nested deeper than 64", id="workflow-deep"),
    case("POST", "/api/v1/strategies", b'{"id": "deep", "workflow_id": "diagnose_pod_crashloop", '
         b'"symptoms": [{"conditions": ' + b'{"all": [' * 300 + b'{"reason": "x"}' + b"]}" * 300 + b"}]}",
         400, "nested deeper than 64", id="strategy-conditions-300-deep"),
    case("POST", "/api/v1/strategies", orjson.dumps({"id": "x" * 100_000, "workflow_id": "y"}), 422, "",
         id="strategy-long-id"),
]


def test_hostile_input_is_a_4xx_that_shows_no_internals(pg_dsn: str) -> None:
    """Every case in one harness (one database); the failures are listed together."""

    async def go() -> list[str]:
        failures = []
        async with harness(pg_dsn) as (_, client):
            for case in HOSTILE:
                method, url, body, status, says = case.values
                response = await client.request(method, url, content=body, headers=JSON if body else {})
                text = response.text
                shows = [word for word in INTERNALS if word in text.lower()]
                if response.status_code != status or says not in text or shows or len(text) > 2000:
                    failures.append(f"{case.id}: {response.status_code} {text[:300]}")
        return failures

    assert asyncio.run(go()) == []

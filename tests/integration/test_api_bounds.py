"""Input bounds at the API's edge, on a real PostgreSQL (tests/integration/test_api.py's
harness): hostile parameters and bodies get a 4xx that names the problem and shows nothing of
the database; event bodies are bounded in bytes, items and lines; NDJSON is streamed, and a
dead letter keeps only an excerpt of what it refused, with its size and SHA-256."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from engine.api import events as events_api
from tests.integration.test_api import BACKOFF, harness, seed_copy

pytestmark = pytest.mark.integration

JSON = {"content-type": "application/json"}
NDJSON = {"content-type": "application/x-ndjson"}
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
    case("GET", "/api/v1/executions?since=0.5", None, 422, "ISO 8601", id="since-a-number"),
    case("GET", "/api/v1/incidents?since=1e9", None, 422, "ISO 8601", id="since-a-number-2"),
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
    case("POST", EXECUTE, b"null", 422, "valid dictionary", id="execute-null"),
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


def test_a_declared_body_over_the_limit_is_refused_before_it_is_read(pg_dsn: str) -> None:
    pulled: list[int] = []

    async def body() -> AsyncIterator[bytes]:
        for _ in range(100):
            pulled.append(1)
            yield b"x" * 65536

    async def go() -> None:
        async with harness(pg_dsn) as (api, _), api.client(max_request_bytes=1024 * 1024) as client:
            headers = {**NDJSON, "content-length": str(100 * 65536)}
            response = await client.post("/api/v1/events", content=body(), headers=headers)
            assert response.status_code == 413, response.text
            assert response.json()["detail"] == "the body is 6553600 bytes; at most 1048576 are accepted"
            assert len(pulled) <= 1
            # Without a length, it is counted as it streams, and refused once past the limit.
            pulled.clear()
            response = await client.post("/api/v1/events", content=body(), headers=JSON)
            assert response.status_code == 413 and "exceeds 1048576 bytes" in response.text
            assert len(pulled) == 17
            assert await api.pool.fetchval("SELECT count(*) FROM dead_letters") == 0

    asyncio.run(go())


def test_json_arrays_are_bounded_in_items_and_scalars_are_dead_letters(pg_dsn: str) -> None:
    async def go() -> None:
        async with harness(pg_dsn) as (api, _), api.client(max_events_per_request=10) as client:
            ten = [event(f"arr-{i}") for i in range(10)]
            response = await client.post("/api/v1/events", json=ten)
            assert response.status_code == 202 and response.json()["accepted"] == 10, response.text
            response = await client.post("/api/v1/events", json=[*ten, event("arr-10")])
            assert response.status_code == 413 and "holds 11 events; at most 10" in response.text
            response = await client.post("/api/v1/events", json="BackOff")
            assert response.status_code == 400 and response.json()["dead_letters"] == 1
            assert "neither an event nor an array" in response.json()["detail"]
            deep: Any = {"reason": "x"}
            for _ in range(70):
                deep = [deep]
            deep = {"kind": "Event", "x": deep}
            response = await client.post("/api/v1/events", json=[deep])
            assert response.json()["dead_letters"] == 1
            rows = await api.pool.fetch("SELECT reason FROM dead_letters ORDER BY id")
            reasons = [r["reason"] for r in rows]
            assert reasons[0] == "expected a JSON object, got str"
            assert reasons[1] == "nested deeper than 64 levels"

    asyncio.run(go())


def test_ndjson_is_streamed_and_an_over_long_line_is_kept_as_an_excerpt(pg_dsn: str) -> None:
    long_line = orjson.dumps(event("long", message="y" * 300_000))
    lines = [orjson.dumps(event(f"line-{i}")) for i in range(5)]

    async def body() -> AsyncIterator[bytes]:
        # Chunks that cut lines anywhere, and the long line sent in small pieces.
        parts = [lines[0], lines[1], long_line, lines[2], b"", b"not json", lines[3]]
        stream = b"\n".join(parts) + b"\n" + lines[4]
        for start in range(0, len(stream), 4093):
            yield stream[start:start + 4093]

    async def go() -> None:
        async with harness(pg_dsn) as (api, _), api.client(max_event_bytes=64 * 1024,
                                                           dead_letter_bytes=1000) as client:
            response = await client.post("/api/v1/events", content=body(), headers=NDJSON)
            assert response.status_code == 202, response.text
            assert response.json() == {"received": 7, "accepted": 5, "duplicates": 0, "dead_letters": 2,
                                       "ignored": 0}
            rows = await api.pool.fetch(
                "SELECT reason, raw, raw_size, raw_sha256 FROM dead_letters ORDER BY id")
            long_row = next(r for r in rows if r["raw_size"] == len(long_line))
            assert long_row["reason"] == f"payload of {len(long_line)} bytes exceeds 65536"
            assert long_row["raw"] == long_line[:1000]
            assert long_row["raw_sha256"] == hashlib.sha256(long_line).hexdigest()
            assert {r["raw"] for r in rows} == {long_line[:1000], b"not json"}

    asyncio.run(go())


def test_ndjson_past_its_line_limit_stops_and_says_what_was_taken_in(pg_dsn: str) -> None:
    async def go() -> None:
        async with harness(pg_dsn) as (api, _), api.client(max_events_per_request=3) as client:
            body = b"\n".join(orjson.dumps(event(f"nd-{i}")) for i in range(5))
            response = await client.post("/api/v1/events", content=body, headers=NDJSON)
            assert response.status_code == 413
            assert response.json()["detail"] == (
                "more than 3 lines; at most 3 are accepted per request; the first 3 lines were taken in "
                "(3 accepted, 0 dead letters)")
            assert await api.pool.fetchval("SELECT count(*) FROM events") == 3

    asyncio.run(go())


def test_a_big_body_that_is_not_json_keeps_only_an_excerpt(pg_dsn: str) -> None:
    async def go() -> None:
        async with harness(pg_dsn) as (api, client):
            garbage = b"not json " * 200_000
            response = await client.post("/api/v1/events", content=garbage, headers=JSON)
            assert response.status_code == 400 and response.json()["dead_letters"] == 1
            row = await api.pool.fetchrow("SELECT reason, raw, raw_size, raw_sha256 FROM dead_letters")
            assert row["raw"] == garbage[:65536] and row["raw_size"] == len(garbage)
            assert row["raw_sha256"] == hashlib.sha256(garbage).hexdigest()
            assert row["reason"] == f"payload of {len(garbage)} bytes exceeds 65536"

    asyncio.run(go())


def test_event_requests_wait_for_a_turn_then_get_503(pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events_api, "SLOT_WAIT", 0.3)
    release = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield orjson.dumps(event("slow-1")) + b"\n"
        await release.wait()
        yield orjson.dumps(event("slow-2")) + b"\n"

    async def go() -> None:
        async with harness(pg_dsn) as (api, _), api.client(concurrent_event_requests=1) as client:
            first = asyncio.create_task(client.post("/api/v1/events", content=slow(), headers=NDJSON))
            await asyncio.sleep(0.1)
            waited = await client.post("/api/v1/events", json=event("waits"))
            assert waited.status_code == 503 and waited.headers["retry-after"] == "1"
            release.set()
            assert (await first).json()["accepted"] == 2
            after = await client.post("/api/v1/events", json=event("after"))
            assert after.status_code == 202 and after.json()["accepted"] == 1

    asyncio.run(go())

"""The HTTP API (engine.api) on a real Service object that was never start()ed: real
PostgreSQL (a fresh database per test), the real rule manager on rules/, the real runner
and store; no NATS and no Redis unless a test connects them. Requests go through httpx's
ASGI transport, in the test's own event loop."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from reactivex.scheduler.eventloop import AsyncIOScheduler

from engine.api import RELOAD_HEADER, create_app
from engine.config import Config
from engine.correlation import Correlator
from engine.rulebase import RuleBase
from engine.runner import WorkflowRunner
from engine.service import Service
from engine.service.bus import Bus
from engine.service.cache import Cache
from engine.service.generations import RulesManager
from engine.service.transport import make_client
from engine.storage.db import create_pool, migrate
from engine.storage.executions import PostgresStore
from engine.storage.records import Repository
from steps.base import Settings

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SEED = yaml.safe_load((REPO / "rules" / "workflows" / "diagnose_pod_crashloop.yaml").read_text("utf-8"))
BACKOFF = json.loads((REPO / "tests" / "fixtures" / "core-v1-backoff.json").read_text("utf-8"))
FINAL = {"succeeded", "failed", "cancelled", "timed_out"}


@contextlib.asynccontextmanager
async def harness(dsn: str, *, settings: Settings | None = None,
                  rules_dir: Path = REPO / "rules") -> AsyncIterator[tuple[Service, httpx.AsyncClient]]:
    pool = await create_pool(dsn, min_size=1, max_size=6)
    service = Service(Config.model_validate({"intake": {"max_event_bytes": 64 * 1024}}))
    rulebase = RuleBase([])
    runner = None
    try:
        await migrate(pool)
        service.pool = pool
        service.repo = Repository(pool, service.replica)
        service.store = PostgresStore(pool, service.replica)
        service.rulebase = rulebase
        service.rules = RulesManager(rules_dir, rulebase, pool)
        assert await service.rules.reload("test")
        service.correlator = Correlator(AsyncIOScheduler(asyncio.get_running_loop()), track_event_ids=True)
        http = make_client()
        settings = settings or Settings(live=False, virtual_time=True)
        runner = service.runner = WorkflowRunner(service.store, settings, http=http)
        service.cache = Cache(None)
        service.bus = None
        service.ready = True
        transport = httpx.ASGITransport(app=create_app(service))
        async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
            yield service, client
    finally:
        if runner is not None:
            for execution_id in runner.running():
                runner.cancel(execution_id)
            await runner.drain(5)
            await http.aclose()
        if service._tasks:
            await asyncio.wait(service._tasks, timeout=5)
        if service.store is not None:
            await service.store.writer.stop()
        rulebase.close()
        await pool.close()


async def wait_finished(client: httpx.AsyncClient, execution_id: str, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        response = await client.get(f"/api/v1/executions/{execution_id}")
        assert response.status_code == 200, response.text
        body = response.json()
        if body["status"] in FINAL:
            return body
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.02)


def seed_copy(ident: str) -> dict[str, Any]:
    doc = copy.deepcopy(SEED)
    doc["id"] = ident
    return doc


def locs(response: httpx.Response) -> list[list]:
    assert response.status_code == 422, response.text
    return [item["loc"] for item in response.json()["detail"]]


# ----------------------------------------------------------------------------- workflows


def test_seed_workflow_through_the_api_and_the_seed_sql(pg_dsn: str) -> None:
    async def go() -> None:
        async with harness(pg_dsn) as (service, client):
            generation = service.rules.status.generation
            created = await client.post("/api/v1/workflows", json=seed_copy("crashloop_api"))
            assert created.status_code == 201, created.text
            row = created.json()
            assert (row["id"], row["source"], row["version"], row["status"]) == (
                "crashloop_api", "api", 1, "active")
            assert row["definition"]["steps"] == SEED["steps"]
            assert row["active"] and row["active_version"] == 1
            assert row["reload"]["ok"] and row["reload"]["generation"] > generation
            assert created.headers[RELOAD_HEADER].startswith("ok; generation=")
            assert service.rules.generation.workflows["crashloop_api"].version == 1

            # The seed's own queries, as written.
            rows = await service.pool.fetch("SELECT id, name, status, created_at FROM workflows")
            assert {"crashloop_api", "diagnose_pod_crashloop"} <= {r["id"] for r in rows}
            stored = await service.pool.fetchrow(
                "SELECT trigger_type, trigger_config, priority, timeout, steps FROM workflows WHERE id = $1",
                "crashloop_api")
            assert (stored["trigger_type"], stored["priority"], stored["timeout"]) == ("event", 10, "5m")
            assert stored["trigger_config"] == SEED["trigger_config"] and stored["steps"] == SEED["steps"]

            listed = (await client.get("/api/v1/workflows")).json()["items"]
            assert {"id": "crashloop_api", "source": "api", "version": 1} .items() <= next(
                w for w in listed if w["id"] == "crashloop_api").items()
            assert (await client.get("/api/v1/workflows/crashloop_api")).json()["definition"]["id"] == \
                "crashloop_api"

            started = await client.post("/api/v1/workflows/crashloop_api/execute", json={"event": BACKOFF})
            assert started.status_code == 202, started.text
            accepted = started.json()
            assert accepted["status"] == "running" and accepted["dry_run"] is True
            execution = await wait_finished(client, accepted["execution_id"])
            assert execution["status"] == "succeeded", execution
            assert execution["incident_id"].startswith("manual-")
            assert execution["context"]["incident"]["namespace"] == "shop"
            steps = execution["steps"]
            assert [s["seq"] for s in steps] == sorted(s["seq"] for s in steps)
            assert steps[0]["step_id"] == "collect_logs" and steps[0]["attempts"] == 1
            assert all(s["status"] in ("succeeded", "skipped", "pending") for s in steps), steps
            assert all(s["duration_ms"] is not None for s in steps if s["status"] == "succeeded")
            assert execution["duration_ms"] is not None

            rows = await service.pool.fetch(
                "SELECT id, workflow_id, status, started_at, duration FROM workflow_executions "
                "ORDER BY started_at DESC LIMIT 10")
            assert [(r["id"], r["workflow_id"], r["status"]) for r in rows] == [
                (accepted["execution_id"], "crashloop_api", "succeeded")]
            assert rows[0]["duration"] is not None

            # A strategy naming it: the seed's strategy query shows it.
            strategy = {"id": "crashloop_api_strategy", "name": "Crash loop (API)", "category": "pod_failure",
                        "workflow_id": "crashloop_api", "priority": 3,
                        "symptoms": [{"conditions": {"kind": "Pod", "reason": "CrashLoopBackOff"}}]}
            made = await client.post("/api/v1/strategies", json=strategy)
            assert made.status_code == 201, made.text
            assert made.json()["active"] and made.json()["source"] == "api"
            rows = await service.pool.fetch(
                "SELECT id, name, category, priority FROM strategies WHERE enabled = true")
            assert {"crashloop_api_strategy", "pod_crashloop"} <= {r["id"] for r in rows}
            assert "crashloop_api_strategy" in service.rules.generation.strategies

            # The workflow cannot go while a strategy starts it.
            refused = await client.delete("/api/v1/workflows/crashloop_api")
            assert refused.status_code == 409 and "crashloop_api_strategy" in refused.json()["detail"]

    asyncio.run(go())


def test_invalid_documents_name_the_field(pg_dsn: str) -> None:
    async def go() -> None:
        async with harness(pg_dsn) as (_service, client):
            bad_type = seed_copy("bad_type")
            bad_type["steps"][1]["type"] = "teleport"
            response = await client.post("/api/v1/workflows", json=bad_type)
            assert locs(response) == [["steps", 1, "type"]]
            assert "unknown step type 'teleport'" in response.json()["detail"][0]["msg"]

            sneaky = seed_copy("sneaky")
            sneaky["steps"][3]["config"]["conditions"][0]["if"] = "__import__('os')"
            assert ["steps", 3, "config", "conditions", 0, "if"] in locs(
                await client.post("/api/v1/workflows", json=sneaky))

            bad_config = seed_copy("bad_config")
            del bad_config["steps"][0]["config"]["action"]
            bad_config["priority"] = 5000
            assert sorted(locs(await client.post("/api/v1/workflows", json=bad_config)), key=str) == [
                ["priority"], ["steps", 0, "config", "action"]]
            bad_graph = seed_copy("bad_graph")
            bad_graph["steps"][2]["on_success"] = ["nowhere"]
            bad_graph["steps"][4]["id"] = "collect_logs"
            response = await client.post("/api/v1/workflows", json=bad_graph)
            found = {tuple(loc) for loc in locs(response)}
            assert {("steps", 2, "on_success", 0), ("steps", 4, "id")} <= found
            assert "(first at steps.0.id)" in str(response.json())

            assert locs(await client.post("/api/v1/workflows", json=[1, 2])) == [[]]
            assert (await client.post("/api/v1/workflows", content=b"{not json")).status_code == 400

            strategy = {"id": "orphan", "workflow_id": "no_such_workflow",
                        "symptoms": [{"conditions": {"reason": "BackOff"}}]}
            assert locs(await client.post("/api/v1/strategies", json=strategy)) == [["workflow_id"]]
            strategy["workflow_id"] = "diagnose_pod_crashloop"
            strategy["symptoms"] = [{"conditions": {"count": {"gte": "many"}}}]
            assert locs(await client.post("/api/v1/strategies", json=strategy))[0][:2] == ["symptoms", 0]

            # Nothing was stored.
            assert await _service.pool.fetchval("SELECT count(*) FROM workflows WHERE source = 'api'") == 0
            assert await _service.pool.fetchval("SELECT count(*) FROM strategies WHERE source = 'api'") == 0

    asyncio.run(go())


def test_rule_file_rules_are_read_only_and_api_rules_are_versioned(pg_dsn: str) -> None:
    async def go() -> None:
        async with harness(pg_dsn) as (service, client):
            assert (await client.post("/api/v1/workflows", json=SEED)).status_code == 409
            seed_url = "/api/v1/workflows/diagnose_pod_crashloop"
            assert (await client.put(seed_url, json=SEED)).status_code == 409
            assert (await client.delete(seed_url)).status_code == 409
            builtin = (await client.get("/api/v1/strategies/pod_crashloop")).json()
            assert builtin["source"] == "file"
            assert (await client.put("/api/v1/strategies/pod_crashloop",
                                     json=builtin["definition"])).status_code == 409
            assert (await client.delete("/api/v1/strategies/pod_crashloop")).status_code == 409

            doc = seed_copy("versioned")
            assert (await client.post("/api/v1/workflows", json=doc)).status_code == 201
            assert (await client.post("/api/v1/workflows", json=doc)).status_code == 409
            doc["name"] = "renamed"
            del doc["id"]                        # PUT takes the id from the path
            replaced = await client.put("/api/v1/workflows/versioned", json=doc)
            assert replaced.status_code == 200, replaced.text
            body = replaced.json()
            assert (body["version"], body["name"], body["active_version"]) == (2, "renamed", 2)
            assert replaced.headers[RELOAD_HEADER].startswith("ok")
            assert service.rules.generation.workflows["versioned"].name == "renamed"
            assert await service.pool.fetchval(
                "SELECT count(*) FROM workflow_versions WHERE workflow_id = 'versioned'") == 2
            mismatch = await client.put("/api/v1/workflows/versioned", json={**doc, "id": "other"})
            assert locs(mismatch) == [["id"]]
            assert (await client.put("/api/v1/workflows/nope", json=doc)).status_code == 404

            deleted = await client.delete("/api/v1/workflows/versioned")
            assert deleted.status_code == 204 and deleted.headers[RELOAD_HEADER].startswith("ok")
            assert (await client.get("/api/v1/workflows/versioned")).status_code == 404
            assert "versioned" not in service.rules.generation.workflows
            assert (await client.delete("/api/v1/workflows/versioned")).status_code == 404

    asyncio.run(go())


# ----------------------------------------------------------------------------- executions


WAIT_WORKFLOW = {"id": "slow", "name": "Slow", "trigger_type": "manual",
                 "steps": [{"id": "pause", "type": "wait", "config": {"duration": "10s"},
                            "on_success": ["tell"]},
                           {"id": "tell", "type": "notification", "config": {"channel": "log",
                                                                             "message": "done"}}]}


def test_cancel_a_running_execution(pg_dsn: str) -> None:
    async def go() -> None:
        async with harness(pg_dsn, settings=Settings(live=False, virtual_time=False)) as (service, client):
            assert (await client.post("/api/v1/workflows", json=WAIT_WORKFLOW)).status_code == 201
            started = await client.post("/api/v1/workflows/slow/execute",
                                        json={"incident": {"namespace": "shop"}, "context": {"who": "test"}})
            assert started.status_code == 202, started.text
            execution_id = started.json()["execution_id"]
            running = (await client.get(f"/api/v1/executions/{execution_id}")).json()
            assert running["status"] == "running" and running["running_here"]
            assert running["context"]["vars"] == {"who": "test"}
            assert (await client.get("/api/v1/executions", params={"status": "running"})).json()["items"][0][
                "id"] == execution_id

            began = time.monotonic()
            cancelled = await client.post(f"/api/v1/executions/{execution_id}/cancel")
            assert cancelled.status_code == 200, cancelled.text
            assert cancelled.json() == {"execution_id": execution_id, "status": "cancelled"}
            assert time.monotonic() - began < 5
            detail = (await client.get(f"/api/v1/executions/{execution_id}")).json()
            assert detail["status"] == "cancelled" and not detail["running_here"]
            assert [(s["step_id"], s["status"]) for s in detail["steps"]] == [("pause", "cancelled")]

            assert (await client.post(f"/api/v1/executions/{execution_id}/cancel")).status_code == 409
            assert (await client.post("/api/v1/executions/exec-nope/cancel")).status_code == 404
            assert (await client.get("/api/v1/executions/exec-nope")).status_code == 404
            assert (await client.post("/api/v1/workflows/nope/execute")).status_code == 404
            bad_event = await client.post("/api/v1/workflows/slow/execute", json={"event": {"kind": "Pod"}})
            assert locs(bad_event) == [["body", "event"]]
            assert service.runner.running() == []

    asyncio.run(go())


def test_execution_list_filters_and_pages(pg_dsn: str) -> None:
    async def go() -> None:
        async with harness(pg_dsn) as (_service, client):
            created = await client.post("/api/v1/workflows", json={**WAIT_WORKFLOW, "id": "quick"})
            assert created.status_code == 201
            ids = []
            for _ in range(3):
                started = await client.post("/api/v1/workflows/quick/execute")
                assert started.status_code == 202, started.text
                ids.append(started.json()["execution_id"])
                await wait_finished(client, ids[-1])
            first = (await client.get("/api/v1/executions", params={"limit": 2})).json()
            assert [e["id"] for e in first["items"]] == ids[:0:-1] and first["next_cursor"]
            second = (await client.get("/api/v1/executions",
                                       params={"limit": 2, "cursor": first["next_cursor"]})).json()
            assert [e["id"] for e in second["items"]] == ids[:1] and second["next_cursor"] is None
            by_offset = (await client.get("/api/v1/executions", params={"limit": 2, "offset": 2})).json()
            assert [e["id"] for e in by_offset["items"]] == ids[:1]
            assert (await client.get("/api/v1/executions",
                                     params={"workflow_id": "other"})).json()["items"] == []
            assert len((await client.get("/api/v1/executions",
                                         params={"since": "2000-01-01T00:00:00"})).json()["items"]) == 3
            assert (await client.get("/api/v1/executions",
                                     params={"until": "2000-01-01T00:00:00Z"})).json()["items"] == []
            assert (await client.get("/api/v1/executions", params={"limit": 501})).status_code == 422
            assert (await client.get("/api/v1/executions", params={"cursor": "garbage"})).status_code == 400

    asyncio.run(go())


# ----------------------------------------------------------------------------- events, incidents


def test_events_intake_and_dead_letters(pg_dsn: str) -> None:
    async def go() -> None:
        async with harness(pg_dsn) as (service, client):
            response = await client.post("/api/v1/events", json=BACKOFF)
            assert response.status_code == 202, response.text
            assert response.json() == {"received": 1, "accepted": 1, "duplicates": 0, "dead_letters": 0,
                                       "ignored": 0}
            mixed = await client.post("/api/v1/events", json=[BACKOFF, {"hello": "world"}])
            assert mixed.json() == {"received": 2, "accepted": 0, "duplicates": 1, "dead_letters": 1,
                                    "ignored": 0}
            assert await service.pool.fetchval("SELECT state FROM events") == "pending"

            not_json = await client.post("/api/v1/events", content=b"this is not json",
                                         headers={"content-type": "application/json"})
            assert not_json.status_code == 400 and "not JSON" in not_json.json()["detail"]
            ndjson = b'{"reason": "Pulled", "name": "web-1", "kind": "Pod"}\n\nnot json either\n'
            lines = await client.post("/api/v1/events", content=ndjson,
                                      headers={"content-type": "application/x-ndjson"})
            assert lines.status_code == 202
            assert lines.json()["received"] == 2 and lines.json()["dead_letters"] == 1

            letters = await service.pool.fetch("SELECT source, reason, raw FROM dead_letters ORDER BY id")
            assert [r["source"] for r in letters] == ["http"] * 3
            assert "not an event" in letters[0]["reason"]
            assert letters[1]["raw"] == b"this is not json" and "not JSON" in letters[1]["reason"]

            service.max_event_bytes = 1          # 1000 bytes per request
            too_big = await client.post("/api/v1/events", json={"message": "x" * 2000})
            assert too_big.status_code == 413

            metrics = await client.get("/metrics")
            assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
            assert 'aetherius_events_received_total{source="http"} 3.0' in metrics.text
            assert 'aetherius_dead_letters_total{source="http"} 3.0' in metrics.text

    asyncio.run(go())


def test_incidents(pg_dsn: str) -> None:
    async def go() -> None:
        async with harness(pg_dsn) as (service, client):
            await service.pool.execute("""
                INSERT INTO incidents (id, strategy_id, key, status, workflow_id, execution_id, namespace,
                                       events, opened_at)
                VALUES ('inc-1', 'pod_crashloop', 'shop/checkout', 'closed', 'diagnose_pod_crashloop',
                        'exec-1', 'shop', 3, now() - interval '1 hour'),
                       ('inc-2', 'oom_killed', 'blog/web', 'open', 'diagnose_oom', NULL, 'blog', 1, now())""")
            await service.pool.execute("""
                INSERT INTO events (id, state, incident_id, payload) VALUES
                    ('e1', 'attached', 'inc-1', '{}'), ('e2', 'attached', 'inc-1', '{}'),
                    ('e3', 'suppressed', 'inc-1', '{}')""")
            everything = (await client.get("/api/v1/incidents")).json()
            assert [i["id"] for i in everything["items"]] == ["inc-2", "inc-1"]
            assert [i["id"] for i in (await client.get("/api/v1/incidents", params={
                "strategy_id": "pod_crashloop"})).json()["items"]] == ["inc-1"]
            assert [i["id"] for i in (await client.get("/api/v1/incidents", params={
                "status": "open", "namespace": "blog"})).json()["items"]] == ["inc-2"]
            page = (await client.get("/api/v1/incidents", params={"limit": 1})).json()
            rest = (await client.get("/api/v1/incidents", params={"cursor": page["next_cursor"]})).json()
            assert [i["id"] for i in rest["items"]] == ["inc-1"]
            one = (await client.get("/api/v1/incidents/inc-1")).json()
            assert one["execution_id"] == "exec-1"
            assert one["event_states"] == {"attached": 2, "suppressed": 1}
            assert (await client.get("/api/v1/incidents/inc-9")).status_code == 404

    asyncio.run(go())


# ----------------------------------------------------------------------------- rules, probes


def test_rules_status_and_an_invalid_reload(pg_dsn: str, tmp_path: Path) -> None:
    rules_dir = tmp_path / "rules"
    shutil.copytree(REPO / "rules", rules_dir)

    async def go() -> None:
        async with harness(pg_dsn) as (service, client):
            status = (await client.get("/api/v1/rules/status")).json()
            assert status["ok"] and status["generation"] == service.rules.status.generation
            assert status["workflows"] >= 1 and status["digest"] and status["cached_generation"] is None

            service.rules = RulesManager(rules_dir, service.rulebase, service.pool)
            assert await service.rules.reload("test")
            before = service.rules.status.generation
            ok = await client.post("/api/v1/rules/reload")
            assert ok.status_code == 200 and ok.json()["ok"]
            before = ok.json()["generation"]

            (rules_dir / "broken.yaml").write_text("id: broken\nsteps:\n  - id: a\n    type: teleport\n",
                                                   encoding="utf-8")
            refused = await client.post("/api/v1/rules/reload")
            assert refused.status_code == 422, refused.text
            body = refused.json()
            assert not body["ok"] and body["generation"] == before
            assert any(p.startswith(f"{rules_dir / 'broken.yaml'}:4:") for p in body["problems"]), body
            assert service.rules.status.generation == before
            status = (await client.get("/api/v1/rules/status")).json()
            assert not status["ok"] and status["generation"] == before and status["failures"] == 1

            # A write still answers; its reload fails and says so, the old generation stays.
            written = await client.post("/api/v1/workflows", json={**WAIT_WORKFLOW, "id": "while_broken"})
            assert written.status_code == 201
            assert written.json()["reload"]["ok"] is False
            assert written.headers[RELOAD_HEADER].startswith(f"invalid; generation={before}")

    asyncio.run(go())


def test_probes(pg_dsn: str, nats_url: str, nats_prefix: str) -> None:
    async def go() -> None:
        async with harness(pg_dsn) as (service, client):
            assert (await client.get("/healthz")).json() == {"status": "ok"}

            no_nats = await client.get("/readyz")
            assert no_nats.status_code == 503 and no_nats.json()["checks"]["nats"] == "down"

            bus = Bus(nats_url, [f"{nats_prefix}.events"], stream=nats_prefix, durable=nats_prefix)
            await bus.connect()
            service.bus = bus
            try:
                ready = await client.get("/readyz")
                assert ready.status_code == 200, ready.text
                body = ready.json()
                assert body["ready"] and body["reasons"] == []
                assert body["checks"] == {"postgres": "ok", "nats": "ok", "redis": "degraded"}
                assert body["redis"] == "degraded" and body["replica"] == service.replica

                service.ready = False
                stopping = await client.get("/readyz")
                assert stopping.status_code == 503
                assert stopping.json()["reasons"] == ["the service is not ready (starting or stopping)"]
            finally:
                await bus.close()

            spec = (await client.get("/openapi.json")).json()
            assert {"/api/v1/workflows", "/api/v1/executions/{execution_id}/cancel", "/api/v1/events",
                    "/api/v1/rules/reload", "/metrics", "/healthz", "/readyz"} <= set(spec["paths"])
            assert all(op.get("tags") for path in spec["paths"].values() for op in path.values())
            assert "Workflow" in spec["components"]["schemas"]

    asyncio.run(go())

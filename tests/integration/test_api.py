"""The HTTP API (engine.api) over ApiDeps built here from real parts: PostgreSQL (a fresh
database per test) behind the API's queries, the real rule manager on rules/, the real
runner and store. The intake and the probes are the service's own, read from a Service that
is never start()ed and holds those parts; no NATS and no Redis unless a test connects them.
Requests go through httpx's ASGI transport, in the test's own event loop."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import json
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import yaml
from reactivex.scheduler.eventloop import AsyncIOScheduler

from engine.api import RELOAD_HEADER, ApiDeps, create_app
from engine.auth import Principal, Role
from engine.correlation import Correlator
from engine.metrics import Metrics
from engine.rulebase import RuleBase
from engine.runner import WorkflowRunner
from engine.service.background import Background
from engine.service.bus import Bus
from engine.service.cache import Cache
from engine.service.contracts import Stats
from engine.service.executions import Executions
from engine.service.generations import RulesManager
from engine.service.health import Health
from engine.service.incidents import Incidents
from engine.service.intake import Intake
from engine.service.recorded import Recorded
from engine.service.transport import make_client
from engine.storage.approvals import Approvals
from engine.storage.audit import AuditLog
from engine.storage.db import create_pool, migrate
from engine.storage.executions import PostgresStore
from engine.storage.queries import Queries
from engine.storage.records import Repository
from engine.storage.rules import StoredRules
from engine.storage.tokens import Tokens
from steps.base import Settings

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SEED = yaml.safe_load((REPO / "rules" / "workflows" / "diagnose_pod_crashloop.yaml").read_text("utf-8"))
BACKOFF = json.loads((REPO / "tests" / "fixtures" / "core-v1-backoff.json").read_text("utf-8"))
FINAL = {"succeeded", "failed", "cancelled", "timed_out"}


@dataclasses.dataclass
class Api:
    """The deps an app is built over, and the parts behind them that tests look at."""

    deps: ApiDeps
    pool: asyncpg.Pool
    rules: RulesManager
    rulebase: RuleBase
    runner: WorkflowRunner
    executions: Executions
    stats: Stats
    health: Health

    tokens: Tokens
    token: str            # an admin's

    def client(self, app: Any = None, token: str | None = "admin", **changes: Any) -> httpx.AsyncClient:
        """A client of ``app``, or of an app over these deps with ``changes`` made, sending
        ``token`` (the admin's by default; None: no token)."""
        app = app or create_app(dataclasses.replace(self.deps, **changes))
        token = self.token if token == "admin" else token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=("10.1.2.3", 4567)),
                                 base_url="http://api.test", headers=headers)


@contextlib.asynccontextmanager
async def harness(dsn: str, *, settings: Settings | None = None,
                  rules_dir: Path = REPO / "rules") -> AsyncIterator[tuple[Api, httpx.AsyncClient]]:
    """The service's parts as its composition root wires them for the API (never started:
    no NATS, no Redis, no loops), on a real PostgreSQL."""
    pool = await create_pool(dsn, min_size=1, max_size=6)
    rulebase = RuleBase([])
    background = Background()
    runner = store = http = None
    try:
        await migrate(pool)
        rules = RulesManager(rules_dir, rulebase, StoredRules(pool))
        assert await rules.reload("test")
        store = PostgresStore(pool, "api-test")
        http = make_client()
        runner = WorkflowRunner(store, settings or Settings(live=False, virtual_time=True), http=http)
        cache, metrics, stats = Cache(None), Metrics(), Stats()
        records = Repository(pool, "api-test")
        executions = Executions(runner, metrics=metrics, stats=stats, background=background)
        correlator = Correlator(AsyncIOScheduler(asyncio.get_running_loop()), track_event_ids=True)
        recorded = Recorded()
        Incidents(records=records, workflows=rules, correlator=correlator,
                  executions=executions, metrics=metrics, stats=stats, background=background,
                  recorded=recorded)
        intake = Intake(records=records, rulebase=rulebase, correlator=correlator, metrics=metrics,
                        stats=stats, background=background, recorded=recorded, max_event_bytes=64 * 1024)
        health = Health("api-test", Queries(pool).ping, Bus("nats://127.0.0.1:1", ["unused"]), cache, rules,
                        executions, correlator, stats, ready=True)
        tokens = Tokens(pool, cache_seconds=0)
        issued = await tokens.issue("test-admin", Role.ADMIN, Principal("cli", "pytest"))
        assert issued is not None
        deps = ApiDeps(queries=Queries(pool), rules=rules, executions=executions, ingest=intake.ingest,
                       readiness=health.readiness, cached_generation=cache.active_generation,
                       metrics=metrics, auth=tokens, tokens=tokens, audit=AuditLog(pool),
                       max_event_bytes=64 * 1024, replica="api-test",
                       approvals=Approvals(pool, AuditLog(pool)),
                       slack_signing_secret="api-test-signing-secret",
                       slack_users={"U0TEST": "slack-approver"})
        api = Api(deps, pool, rules, rulebase, runner, executions, stats, health, tokens, issued[0])
        async with api.client() as client:
            yield api, client
    finally:
        if runner is not None:
            for execution_id in runner.running():
                runner.cancel(execution_id)
            await runner.drain(5)
        if http is not None:
            await http.aclose()
        await background.wait(5)
        if store is not None:
            await store.writer.stop()
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
        async with harness(pg_dsn) as (api, client):
            generation = api.rules.status.generation
            created = await client.post("/api/v1/workflows", json=seed_copy("crashloop_api"))
            assert created.status_code == 201, created.text
            row = created.json()
            assert (row["id"], row["source"], row["version"], row["status"]) == (
                "crashloop_api", "api", 1, "active")
            assert row["definition"]["steps"] == SEED["steps"]
            assert row["active"] and row["active_version"] == 1
            assert row["reload"]["ok"] and row["reload"]["generation"] > generation
            assert created.headers[RELOAD_HEADER].startswith("ok; generation=")
            assert api.rules.generation.workflows["crashloop_api"].version == 1

            # The seed's own queries, as written.
            rows = await api.pool.fetch("SELECT id, name, status, created_at FROM workflows")
            assert {"crashloop_api", "diagnose_pod_crashloop"} <= {r["id"] for r in rows}
            stored = await api.pool.fetchrow(
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

            rows = await api.pool.fetch(
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
            rows = await api.pool.fetch(
                "SELECT id, name, category, priority FROM strategies WHERE enabled = true")
            assert {"crashloop_api_strategy", "pod_crashloop"} <= {r["id"] for r in rows}
            assert "crashloop_api_strategy" in api.rules.generation.strategies

            # The workflow cannot go while a strategy starts it.
            refused = await client.delete("/api/v1/workflows/crashloop_api")
            assert refused.status_code == 409 and "crashloop_api_strategy" in refused.json()["detail"]

    asyncio.run(go())


def test_invalid_documents_name_the_field(pg_dsn: str) -> None:
    async def go() -> None:
        async with harness(pg_dsn) as (_api, client):
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
            json_type = {"content-type": "application/json"}
            assert (await client.post("/api/v1/workflows", content=b"{not json", headers=json_type)
                    ).status_code == 400
            # Not declared as JSON (a browser's cross-site form post would be text/plain): refused.
            assert (await client.post("/api/v1/workflows", content=b"{}")).status_code == 415

            strategy = {"id": "orphan", "workflow_id": "no_such_workflow",
                        "symptoms": [{"conditions": {"reason": "BackOff"}}]}
            assert locs(await client.post("/api/v1/strategies", json=strategy)) == [["workflow_id"]]
            strategy["workflow_id"] = "diagnose_pod_crashloop"
            strategy["symptoms"] = [{"conditions": {"count": {"gte": "many"}}}]
            assert locs(await client.post("/api/v1/strategies", json=strategy))[0][:2] == ["symptoms", 0]

            # Nothing was stored.
            assert await _api.pool.fetchval("SELECT count(*) FROM workflows WHERE source = 'api'") == 0
            assert await _api.pool.fetchval("SELECT count(*) FROM strategies WHERE source = 'api'") == 0

    asyncio.run(go())


def test_rule_file_rules_are_read_only_and_api_rules_are_versioned(pg_dsn: str) -> None:
    async def go() -> None:
        async with harness(pg_dsn) as (api, client):
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
            assert api.rules.generation.workflows["versioned"].name == "renamed"
            assert await api.pool.fetchval(
                "SELECT count(*) FROM workflow_versions WHERE workflow_id = 'versioned'") == 2
            mismatch = await client.put("/api/v1/workflows/versioned", json={**doc, "id": "other"})
            assert locs(mismatch) == [["id"]]
            assert (await client.put("/api/v1/workflows/nope", json=doc)).status_code == 404

            deleted = await client.delete("/api/v1/workflows/versioned")
            assert deleted.status_code == 204 and deleted.headers[RELOAD_HEADER].startswith("ok")
            assert (await client.get("/api/v1/workflows/versioned")).status_code == 404
            assert "versioned" not in api.rules.generation.workflows
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
        async with harness(pg_dsn, settings=Settings(live=False, virtual_time=False)) as (api, client):
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
            assert api.runner.running() == []

    asyncio.run(go())


def test_execution_list_filters_and_pages(pg_dsn: str) -> None:
    async def go() -> None:
        async with harness(pg_dsn) as (_api, client):
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
        async with harness(pg_dsn) as (api, client):
            response = await client.post("/api/v1/events", json=BACKOFF)
            assert response.status_code == 202, response.text
            assert response.json() == {"received": 1, "accepted": 1, "duplicates": 0, "dead_letters": 0,
                                       "ignored": 0}
            mixed = await client.post("/api/v1/events", json=[BACKOFF, {"hello": "world"}])
            assert mixed.json() == {"received": 2, "accepted": 0, "duplicates": 1, "dead_letters": 1,
                                    "ignored": 0}
            assert await api.pool.fetchval("SELECT state FROM events") == "pending"

            not_json = await client.post("/api/v1/events", content=b"this is not json",
                                         headers={"content-type": "application/json"})
            assert not_json.status_code == 400 and "not JSON" in not_json.json()["detail"]
            ndjson = b'{"reason": "Pulled", "name": "web-1", "kind": "Pod"}\n\nnot json either\n'
            lines = await client.post("/api/v1/events", content=ndjson,
                                      headers={"content-type": "application/x-ndjson"})
            assert lines.status_code == 202
            assert lines.json()["received"] == 2 and lines.json()["dead_letters"] == 1

            letters = await api.pool.fetch("SELECT source, reason, raw FROM dead_letters ORDER BY id")
            assert [r["source"] for r in letters] == ["http"] * 3
            assert "not an event" in letters[0]["reason"]
            assert letters[1]["raw"] == b"this is not json" and "not JSON" in letters[1]["reason"]

            async with api.client(max_event_bytes=1) as small:     # 1000 bytes per request
                too_big = await small.post("/api/v1/events", json={"message": "x" * 2000})
            assert too_big.status_code == 413

            metrics = await client.get("/metrics")
            assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
            assert 'aetherius_events_received_total{source="http"} 3.0' in metrics.text
            assert 'aetherius_dead_letters_total{source="http"} 3.0' in metrics.text

    asyncio.run(go())


def test_incidents(pg_dsn: str) -> None:
    async def go() -> None:
        async with harness(pg_dsn) as (api, client):
            await api.pool.execute("""
                INSERT INTO incidents (id, strategy_id, key, status, workflow_id, execution_id, namespace,
                                       events, opened_at)
                VALUES ('inc-1', 'pod_crashloop', 'shop/checkout', 'closed', 'diagnose_pod_crashloop',
                        'exec-1', 'shop', 3, now() - interval '1 hour'),
                       ('inc-2', 'oom_killed', 'blog/web', 'open', 'diagnose_oom', NULL, 'blog', 1, now())""")
            await api.pool.execute("""
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
        async with harness(pg_dsn) as (api, client):
            status = (await client.get("/api/v1/rules/status")).json()
            assert status["ok"] and status["generation"] == api.rules.status.generation
            assert status["workflows"] >= 1 and status["digest"] and status["cached_generation"] is None

            rules = RulesManager(rules_dir, api.rulebase, StoredRules(api.pool))
            assert await rules.reload("test")
            before = rules.status.generation
            async with api.client(rules=rules) as client:      # the same API on the copied rules
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
                assert rules.status.generation == before
                status = (await client.get("/api/v1/rules/status")).json()
                assert not status["ok"] and status["generation"] == before and status["failures"] == 1

                # A write still answers; its reload fails and says so, the old generation stays.
                written = await client.post("/api/v1/workflows", json={**WAIT_WORKFLOW, "id": "while_broken"})
                assert written.status_code == 201
                assert written.json()["reload"]["ok"] is False
                assert written.headers[RELOAD_HEADER].startswith(f"invalid; generation={before}")

    asyncio.run(go())


def test_rules_status_shows_the_stored_rules_left_out(pg_dsn: str) -> None:
    async def go() -> None:
        async with harness(pg_dsn) as (api, client):
            assert (await client.get("/api/v1/rules/status")).json()["warnings"] == []
            # As the seed's example INSERT: a stored workflow with no steps.
            await api.pool.execute("INSERT INTO workflows (id, name, trigger_type, steps) "
                                   "VALUES ('placeholder', 'Placeholder', 'manual', '[]')")
            reloaded = await client.post("/api/v1/rules/reload")
            assert reloaded.status_code == 200, reloaded.text
            assert any(w.startswith("db:workflows/placeholder:") and w.endswith(": left out")
                       for w in reloaded.json()["warnings"]), reloaded.json()
            status = (await client.get("/api/v1/rules/status")).json()
            assert status["ok"] and status["warnings"] == api.rules.status.warnings != []
            assert "placeholder" not in api.rules.generation.workflows

    asyncio.run(go())


def test_problem_locations_come_from_the_loader(pg_dsn: str) -> None:
    async def go() -> None:
        async with harness(pg_dsn) as (_api, client):
            bad_graph = seed_copy("bad_graph")
            bad_graph["steps"][2]["on_success"] = ["nowhere"]
            bad_graph["steps"][4]["id"] = "collect_logs"
            detail = (await client.post("/api/v1/workflows", json=bad_graph)).json()["detail"]
            items = {tuple(item["loc"]): item for item in detail}
            # The message names the edge list; loc is the exact item, msg says no place.
            assert items[("steps", 2, "on_success", 0)] == {
                "loc": ["steps", 2, "on_success", 0], "msg": "no step 'nowhere' in workflow 'bad_graph'",
                "type": "rule_error"}
            duplicate = items[("steps", 4, "id")]["msg"]
            assert duplicate == "duplicate step id 'collect_logs' (first at steps.0.id)"
            root = (await client.post("/api/v1/strategies", json=[1])).json()["detail"]
            assert [(item["loc"], item["type"]) for item in root] == [([], "rule_error")]
            assert not root[0]["msg"].startswith("(document)")

    asyncio.run(go())


def test_the_service_counts_the_executions_started_through_its_api(pg_dsn: str) -> None:
    """The API hands executions to the service's Executions part, which counts them (the
    API itself counts nothing: over the bare runner, nothing is counted)."""

    async def go() -> None:
        async with harness(pg_dsn) as (api, client):
            created = await client.post("/api/v1/workflows", json={**WAIT_WORKFLOW, "id": "quick"})
            assert created.status_code == 201
            started = await client.post("/api/v1/workflows/quick/execute")
            assert started.status_code == 202, started.text
            assert api.stats.executions == 1
            await wait_finished(client, started.json()["execution_id"])
            deadline = time.monotonic() + 5
            # Recorded first, then its task ends and the service's callback counts it.
            while "aetherius_executions_running 0.0" not in (metrics := (await client.get("/metrics")).text):
                assert time.monotonic() < deadline, metrics
                await asyncio.sleep(0.01)
            assert 'aetherius_executions_total{status="succeeded",workflow="quick"} 1.0' in metrics

            async with api.client(executions=api.runner) as bare:
                direct = await bare.post("/api/v1/workflows/quick/execute")
                assert direct.status_code == 202
                await wait_finished(bare, direct.json()["execution_id"])
            assert api.stats.executions == 1

    asyncio.run(go())


def test_probes(pg_dsn: str, nats_url: str, nats_prefix: str) -> None:
    async def go() -> None:
        async with harness(pg_dsn) as (api, client):
            assert (await client.get("/healthz")).json() == {"status": "ok"}

            no_nats = await client.get("/readyz")
            assert no_nats.status_code == 503 and no_nats.json()["checks"]["nats"] == "down"

            bus = Bus(nats_url, [f"{nats_prefix}.events"], stream=nats_prefix, durable=nats_prefix)
            await bus.connect()
            api.health.bus = bus
            try:
                ready = await client.get("/readyz")
                assert ready.status_code == 200, ready.text
                body = ready.json()
                assert body["ready"] and body["reasons"] == []
                assert body["checks"] == {"postgres": "ok", "nats": "ok", "redis": "degraded"}
                assert body["redis"] == "degraded" and body["replica"] == "api-test"

                api.health.ready = False
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


def test_a_workflow_whose_trigger_ties_with_a_builtin_strategy_is_shown_in_the_status(pg_dsn: str) -> None:
    """The papercut: posting a workflow triggered by CrashLoopBackOff never ran it, silently.
    The tie is now defined (the explicit strategy wins) and shown where the operator looks."""

    async def go() -> None:
        async with harness(pg_dsn) as (_api, client):
            doc = {**seed_copy("crashloop_mine"), "trigger_config": {"event_reason": "CrashLoopBackOff"}}
            created = await client.post("/api/v1/workflows", json=doc)
            assert created.status_code == 201, created.text
            warnings = (await client.get("/api/v1/rules/status")).json()["warnings"]
            tie = [w for w in warnings if "workflow:crashloop_mine" in w and "pod_crashloop" in w]
            assert tie, warnings

    asyncio.run(go())

"""/metrics stays small however many rules come and go (tests/integration/test_api.py's
harness, with the service's reload listener wired as the service wires it)."""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from engine.auth import Principal
from engine.metrics import MAX_RULE_LABELS
from engine.service.background import Background
from engine.service.cache import Cache
from engine.service.reloads import Reloads
from tests.integration.test_api import BACKOFF, Api, harness

pytestmark = pytest.mark.integration

WORKFLOWS = 1000


def workflow(ident: str) -> dict:
    return {"id": ident, "trigger_type": "manual",
            "steps": [{"id": "note", "type": "notification", "config": {"channel": "log", "message": "x"}}]}


def listen(api: Api) -> Background:
    background = Background()
    Reloads(api.rules, changes=None, metrics=api.deps.metrics, cache=Cache(None), background=background,
            replica="metrics-test")
    return background


async def wait_counted(api: Api, executions: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while api.stats.executions < executions:
        assert time.monotonic() < deadline, api.stats
        await asyncio.sleep(0.05)


def test_a_thousand_workflows_created_and_deleted_leave_metrics_small(pg_dsn: str) -> None:
    async def go() -> None:
        async with harness(pg_dsn) as (api, client):
            background = listen(api)
            await api.rules.reload("test")
            before = (await client.get("/metrics")).text
            # Two through the API's routes; the rest stored by the API's own insert, one reload
            # for all (a POST reloads each time, which would make this test take minutes).
            for ident in ("wf-api-0", "wf-api-1"):
                assert (await client.post("/api/v1/workflows", json=workflow(ident))).status_code == 201
            q = api.deps.queries
            assert q is not None
            for i in range(WORKFLOWS - 2):
                spec = workflow(f"wf-{i:04d}")
                assert await q.insert_workflow(spec["id"], {
                    "name": "", "description": "", "trigger_type": "manual", "trigger_config": {},
                    "status": "active", "priority": 5, "timeout": None, "steps": spec["steps"],
                    "definition": spec}, Principal("cli", "pytest")) is not None
            assert await api.rules.reload("test")
            ids = ["wf-api-0", "wf-api-1", *(f"wf-{i:04d}" for i in range(WORKFLOWS - 2))]
            for ident in ids:
                response = await client.post(f"/api/v1/workflows/{ident}/execute", json={"event": BACKOFF})
                assert response.status_code == 202, response.text
            await wait_counted(api, WORKFLOWS)
            full = (await client.get("/metrics")).text
            labelled = set(re.findall(r'aetherius_executions_total\{status="\w+",workflow="([^"]+)"\}', full))
            # The cap holds: the first ids of the generation (rule files' included), then "other".
            cut = sorted(api.rules.generation.workflows)[:MAX_RULE_LABELS] if api.rules.generation else []
            assert labelled == {"other", *(i for i in cut if i.startswith("wf-"))}

            for ident in ("wf-api-0", "wf-api-1"):
                assert (await client.delete(f"/api/v1/workflows/{ident}")).status_code == 204
            assert "wf-api-0" not in (await client.get("/metrics")).text
            await api.pool.execute("DELETE FROM workflows WHERE id LIKE 'wf-%'")
            assert await api.rules.reload("test")
            after = (await client.get("/metrics")).text
            assert "wf-" not in after
            # What is left: the executions of deleted workflows, counted under "other".
            assert len(after) < len(before) + 1000, (len(before), len(after))
            await background.wait(5)

    asyncio.run(go())


def test_a_deleted_strategy_leaves_no_hit_or_incident_series(pg_dsn: str) -> None:
    strategy = {"id": "api_backoff", "workflow_id": "diagnose_pod_crashloop", "priority": 900,
                "symptoms": [{"conditions": {"reason": "BackOff"}}]}

    async def go() -> None:
        async with harness(pg_dsn) as (api, client):
            background = listen(api)
            assert (await client.post("/api/v1/strategies", json=strategy)).status_code == 201, strategy
            event = {**BACKOFF, "metadata": {**BACKOFF["metadata"], "uid": "metrics-hit"}}
            assert (await client.post("/api/v1/events", json=event)).json()["accepted"] == 1
            assert 'aetherius_strategy_hits_total{outcome="hit",strategy="api_backoff"}' in (
                await client.get("/metrics")).text
            assert (await client.delete("/api/v1/strategies/api_backoff")).status_code == 204
            assert "api_backoff" not in (await client.get("/metrics")).text
            await background.wait(5)

    asyncio.run(go())

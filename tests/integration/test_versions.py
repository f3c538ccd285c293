"""Versions of workflows and strategies on a real PostgreSQL, through the API: every change is
a version with its content, digest, author and time, whoever made it (the API, SQL, a rule
file); two versions diff as YAML; an old version of an API rule is restored (audited, 409 for
rule-file rules); an execution started before a change keeps the version it started with."""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

import asyncpg
import pytest
from test_api import RELOAD_HEADER, SEED, harness, wait_finished

from engine.auth import Principal, Role
from steps.base import Settings

pytestmark = pytest.mark.integration

WF = "versioned_crashloop"
BASE = "/api/v1/workflows"


def seed(ident: str = WF) -> dict[str, Any]:
    doc = copy.deepcopy(SEED)
    doc["id"] = ident
    doc["trigger_type"] = "manual"       # not a second implicit trigger for crash loops
    doc.pop("trigger_config", None)
    return doc


def test_versions_create_change_twice_diff_restore(pg_dsn: str) -> None:
    async def go() -> None:
        async with harness(pg_dsn) as (api, client):
            original = seed()
            assert (await client.post(BASE, json=original)).status_code == 201
            second = {**copy.deepcopy(original), "name": "Crash loop, renamed"}
            assert (await client.put(f"{BASE}/{WF}", json=second)).json()["version"] == 2
            third = copy.deepcopy(second)
            third["steps"][0]["config"]["args"] = ["--tail=500", "--previous"]
            changed = await client.put(f"{BASE}/{WF}", json=third)
            assert changed.status_code == 200 and changed.json()["version"] == 3

            listed = (await client.get(f"{BASE}/{WF}/versions")).json()
            assert (listed["id"], listed["kind"], listed["current_version"], listed["source"]) == (
                WF, "workflow", 3, "api")
            items = listed["items"]
            assert [(v["version"], v["change"], v["author"], v["author_role"], v["source"], v["current"])
                    for v in items] == [
                (1, "create", "token:test-admin", "admin", "api", False),
                (2, "replace", "token:test-admin", "admin", "api", False),
                (3, "replace", "token:test-admin", "admin", "api", True)]
            assert len({v["digest"] for v in items}) == 3
            assert items[0]["created_at"] <= items[1]["created_at"] <= items[2]["created_at"]
            # The digest is the audit trail's: the "after" of the change that made the version.
            audit = await api.pool.fetch(
                "SELECT action, detail FROM audit_log WHERE target_id = $1 ORDER BY id", WF)
            assert [(r["action"], r["detail"]["after"]) for r in audit] == [
                ("workflow.create", items[0]["digest"]), ("workflow.replace", items[1]["digest"]),
                ("workflow.replace", items[2]["digest"])]

            first = (await client.get(f"{BASE}/{WF}/versions/1")).json()
            assert first["content"] == original and first["version"] == 1 and not first["current"]
            assert first["yaml"].startswith(f"id: {WF}\nname: ")

            diff = (await client.get(f"{BASE}/{WF}/versions/3/diff", params={"against": 1})).json()
            assert (diff["from_version"], diff["to_version"], diff["identical"]) == (1, 3, False)
            text = diff["diff"]
            assert text.startswith(f"--- workflow/{WF}@1\n+++ workflow/{WF}@3\n")
            assert f"-name: {original['name']}\n" in text and "+name: Crash loop, renamed\n" in text
            assert "-    - --tail=100\n" in text and "+    - --tail=500\n" in text
            assert "steps:" not in [line[1:] for line in text.splitlines() if line[:1] in "+-"]
            # Without ?against: from the version before.
            previous = (await client.get(f"{BASE}/{WF}/versions/3/diff")).json()
            assert previous["from_version"] == 2
            assert not [line for line in previous["diff"].splitlines() if line.startswith(("-name", "+name"))]
            assert (await client.get(f"{BASE}/{WF}/versions/1/diff")).json()["from_version"] is None

            restored = await client.post(f"{BASE}/{WF}/versions/1/restore")
            assert restored.status_code == 200, restored.text
            body = restored.json()
            assert (body["version"], body["name"], body["definition"]) == (4, original["name"], original)
            assert body["active_version"] == 4 and restored.headers[RELOAD_HEADER].startswith("ok")
            assert api.rules.generation.workflows[WF].name == original["name"]
            assert api.rules.generation.workflows[WF].steps[0].config["args"] == ["--tail=100", "--previous"]
            fourth = (await client.get(f"{BASE}/{WF}/versions/4")).json()
            assert (fourth["change"], fourth["restored_from"], fourth["author"], fourth["current"]) == (
                "restore", 1, "token:test-admin", True)
            assert fourth["digest"] == items[0]["digest"]          # the same content as version 1
            assert (await client.get(f"{BASE}/{WF}/versions/4/diff", params={"against": 1})).json()[
                "identical"]
            record = await api.pool.fetchrow(
                "SELECT actor_kind, actor, actor_role, detail FROM audit_log "
                "WHERE action = 'workflow.restore'")
            assert (record["actor_kind"], record["actor"], record["actor_role"]) == (
                "token", "test-admin", "admin")
            assert (record["detail"]["from_version"], record["detail"]["version"],
                    record["detail"]["before_version"]) == (1, 4, 3)

            # Nothing to find, and who may restore.
            assert (await client.get(f"{BASE}/{WF}/versions/9")).status_code == 404
            assert (await client.get(f"{BASE}/{WF}/versions/9/diff")).status_code == 404
            against_nothing = await client.get(f"{BASE}/{WF}/versions/2/diff", params={"against": 9})
            assert against_nothing.status_code == 404
            assert (await client.post(f"{BASE}/{WF}/versions/9/restore")).status_code == 404
            assert (await client.get(f"{BASE}/nope/versions")).status_code == 404
            issued = await api.tokens.issue("viewer", Role.VIEWER, Principal("cli", "pytest"))
            assert issued is not None
            async with api.client(token=issued[0]) as viewer:
                assert (await viewer.get(f"{BASE}/{WF}/versions")).status_code == 200
                assert (await viewer.post(f"{BASE}/{WF}/versions/2/restore")).status_code == 403

    asyncio.run(go())


def test_strategies_have_versions_too(pg_dsn: str) -> None:
    async def go() -> None:
        async with harness(pg_dsn) as (api, client):
            assert (await client.post(BASE, json=seed())).status_code == 201
            strategy = {"id": "crash_v", "name": "Crash loops", "category": "pod_failure", "workflow_id": WF,
                        "priority": 3,
                        "symptoms": [{"conditions": {"kind": "Pod", "reason": "CrashLoopBackOff"}}]}
            assert (await client.post("/api/v1/strategies", json=strategy)).status_code == 201
            assert (await client.put("/api/v1/strategies/crash_v", json={**strategy, "priority": 4})).json()[
                "version"] == 2
            listed = (await client.get("/api/v1/strategies/crash_v/versions")).json()
            assert [(v["version"], v["change"], v["author"]) for v in listed["items"]] == [
                (1, "create", "token:test-admin"), (2, "replace", "token:test-admin")]
            diff = (await client.get("/api/v1/strategies/crash_v/versions/2/diff")).json()["diff"]
            assert "-priority: 3\n+priority: 4\n" in diff
            restored = await client.post("/api/v1/strategies/crash_v/versions/1/restore")
            assert restored.status_code == 200 and restored.json()["priority"] == 3
            assert restored.json()["version"] == 3
            assert (await client.get("/api/v1/strategies/crash_v/versions/3")).json()["restored_from"] == 1
            # A built-in (rule-file) strategy: its versions are kept, and it is edited in rules/.
            builtin = (await client.get("/api/v1/strategies/pod_crashloop/versions")).json()
            assert builtin["source"] == "file"
            builtin_file = api.rules.directory / "strategies" / "builtin.yaml"
            assert builtin["items"][0]["author"] == f"file:{builtin_file}"
            refused = await client.post("/api/v1/strategies/pod_crashloop/versions/1/restore")
            assert refused.status_code == 409 and "rules" in refused.json()["detail"]

    asyncio.run(go())


def test_sql_and_rule_file_changes_are_versions_with_their_author(pg_dsn: str, tmp_path) -> None:
    async def go() -> None:
        async with harness(pg_dsn) as (api, client):
            seed_wf = (await client.get(f"{BASE}/diagnose_pod_crashloop/versions")).json()
            path = api.rules.directory / "workflows" / "diagnose_pod_crashloop.yaml"
            assert [(v["version"], v["change"], v["author"], v["source"]) for v in seed_wf["items"]] == [
                (1, "create", f"file:{path}", "file")]
            assert (await client.post(f"{BASE}/diagnose_pod_crashloop/versions/1/restore")).status_code == 409

            # The seed's INSERT and a change made with psql: versions by the database user.
            conn = await asyncpg.connect(pg_dsn)
            try:
                await conn.execute(
                    "INSERT INTO workflows (id, name, trigger_type, status, priority, steps) VALUES "
                    "('by_sql', 'Made with SQL', 'manual', 'active', 5, $1::jsonb)",
                    json.dumps(seed()["steps"]))
                await conn.execute("UPDATE workflows SET priority = 9 WHERE id = 'by_sql'")
                user = await conn.fetchval("SELECT session_user")
            finally:
                await conn.close()
            listed = (await client.get(f"{BASE}/by_sql/versions")).json()["items"]
            assert [(v["version"], v["change"], v["author"], v["author_role"], v["source"])
                    for v in listed] == [
                (1, "create", f"sql:{user}", None, "sql"), (2, "replace", f"sql:{user}", None, "sql")]
            diff = (await client.get(f"{BASE}/by_sql/versions/2/diff")).json()
            assert diff["identical"] is False and "-priority: 5\n+priority: 9\n" in diff["diff"]
            # A rule stored with SQL can be restored through the API too.
            assert (await client.post(f"{BASE}/by_sql/versions/1/restore")).json()["priority"] == 5

            assert (await client.post(BASE, json=seed())).status_code == 201

            # A delete is kept as a version; created again, the rule goes on counting, and an
            # old version can bring a deleted rule back.
            assert (await client.delete(f"{BASE}/{WF}")).status_code == 204
            gone = (await client.get(f"{BASE}/{WF}/versions")).json()
            assert gone["current_version"] is None
            assert [(v["version"], v["change"]) for v in gone["items"]] == [(1, "create"), (2, "delete")]
            back = await client.post(f"{BASE}/{WF}/versions/1/restore")
            assert back.status_code == 200, back.text
            assert back.json()["version"] == 3 and back.json()["source"] == "api"
            assert WF in api.rules.generation.workflows
            # The seed's SQL, as written.
            rows = await api.pool.fetch("SELECT id, name, status, created_at FROM workflows")
            assert WF in {r["id"] for r in rows}

    asyncio.run(go())


def test_an_execution_started_before_a_change_keeps_its_version(pg_dsn: str) -> None:
    doc = {"id": "slow_v", "name": "Slow", "trigger_type": "manual",
           "steps": [{"id": "pause", "type": "wait", "config": {"duration": "1s"}, "on_success": ["tell"]},
                     {"id": "tell", "type": "notification", "config": {"channel": "log", "message": "v1"}}]}

    async def go() -> None:
        async with harness(pg_dsn, settings=Settings(live=False, virtual_time=False)) as (api, client):
            assert (await client.post(BASE, json=doc)).status_code == 201
            started = (await client.post(f"{BASE}/slow_v/execute")).json()
            assert started["workflow_version"] == 1
            changed = copy.deepcopy(doc)
            changed["steps"][1] = {"id": "tell_v2", "type": "notification",
                                   "config": {"channel": "log", "message": "v2"}}
            changed["steps"][0]["on_success"] = ["tell_v2"]
            assert (await client.put(f"{BASE}/slow_v", json=changed)).json()["version"] == 2
            changed["name"] = "Slow, again"
            assert (await client.put(f"{BASE}/slow_v", json=changed)).json()["version"] == 3

            finished = await wait_finished(client, started["execution_id"])
            assert finished["status"] == "succeeded" and finished["workflow_version"] == 1
            assert [s["step_id"] for s in finished["steps"]] == ["pause", "tell"]
            assert "\nv1\n" in finished["steps"][1]["output"]["text"]
            listed = (await client.get("/api/v1/executions", params={"workflow_id": "slow_v"})).json()
            assert [e["workflow_version"] for e in listed["items"]] == [1]
            # The version it pinned is read back from the database (a resume on another replica).
            api.rules._versions.clear()
            pinned = await api.rules.workflow("slow_v", 1)
            assert pinned is not None and [s.id for s in pinned.steps] == ["pause", "tell"]
            # A new execution runs the current version.
            again = (await client.post(f"{BASE}/slow_v/execute")).json()
            assert again["workflow_version"] == 3
            assert [s["step_id"] for s in (await wait_finished(client, again["execution_id"]))["steps"]] == [
                "pause", "tell_v2"]

    asyncio.run(go())

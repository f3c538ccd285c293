"""Tokens and the audit trail on a real PostgreSQL, through the API and the CLI: every state
change writes exactly one audit record, with the right actor; nothing edits the trail."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml

from engine.auth import Principal, Role
from engine.rulebase import RuleBase
from engine.service.generations import RulesManager
from engine.storage.db import create_pool, migrate
from engine.storage.rules import StoredRules
from engine.storage.tokens import Tokens
from tests.integration.test_api import WAIT_WORKFLOW, harness, seed_copy, wait_finished

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


async def trail(pool: asyncpg.Pool, since: int = 0) -> list[dict[str, Any]]:
    rows = await pool.fetch("SELECT * FROM audit_log WHERE id > $1 ORDER BY id", since)
    return [dict(r) for r in rows]


async def last_id(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT coalesce(max(id), 0) FROM audit_log"))


def summary(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(r["actor_kind"], r["actor"], r["actor_role"], r["action"], r["target_id"]) for r in rows]


def test_every_api_change_is_one_audit_record_with_its_actor(pg_dsn: str) -> None:
    async def go() -> None:
        async with harness(pg_dsn) as (api, admin):
            pool = api.pool
            issued = await api.tokens.issue("ed", Role.EDITOR, Principal("cli", "pytest"))
            assert issued is not None
            editor_token = issued[0]
            start = await last_id(pool)
            async with api.client(token=editor_token) as editor:
                created = await editor.post("/api/v1/workflows", json=seed_copy("audited"))
                assert created.status_code == 201, created.text
                changed = seed_copy("audited")
                changed["name"] = "renamed"
                assert (await editor.put("/api/v1/workflows/audited", json=changed)).status_code == 200
                # Nothing changed: no record (the trigger compares digests).
                assert (await editor.put("/api/v1/workflows/audited", json=changed)).status_code == 200
                assert (await editor.post("/api/v1/rules/reload")).status_code == 200
                assert (await editor.delete("/api/v1/workflows/audited")).status_code == 204
                # The editor may not execute, nor read the trail: refused, and not recorded.
                assert (await editor.post("/api/v1/workflows/audited/execute")).status_code == 403
                assert (await editor.get("/api/v1/audit")).status_code == 403
            rows = await trail(pool, start)
            assert summary(rows) == [
                ("token", "ed", "editor", "workflow.create", "audited"),
                ("token", "ed", "editor", "workflow.replace", "audited"),
                ("token", "ed", "editor", "rules.reload", None),
                ("token", "ed", "editor", "workflow.delete", "audited"),
            ]
            create, replace, _reload, delete = rows
            assert create["detail"]["before"] is None and create["detail"]["after"]
            assert replace["detail"]["before"] == create["detail"]["after"] != replace["detail"]["after"]
            assert delete["detail"]["before"] == replace["detail"]["after"]
            assert delete["detail"]["after"] is None
            assert {r["client"] for r in rows} == {"10.1.2.3"}

            # An operator's manual execution and cancel; the admin's token changes.
            await admin.post("/api/v1/workflows", json={**WAIT_WORKFLOW, "id": "slow"})
            start = await last_id(pool)
            op_token, _ = await api.tokens.issue("op", Role.OPERATOR, Principal("cli", "pytest")) or ("", {})
            async with api.client(token=op_token) as operator:
                started = await operator.post("/api/v1/workflows/slow/execute",
                                              json={"incident": {"namespace": "prod"}})
                assert started.status_code == 202, started.text
                execution_id = started.json()["execution_id"]
                await wait_finished(operator, execution_id)
            made = await admin.post("/api/v1/tokens",
                                    json={"name": "ci", "role": "viewer", "expires_in": "1h"})
            assert made.status_code == 201 and made.json()["token"].startswith("aeth_")
            assert (await admin.delete("/api/v1/tokens/ci")).status_code == 204
            rows = await trail(pool, start)
            admin_name = "test-admin"
            assert summary(rows) == [
                ("cli", "pytest", None, "token.create", "op"),
                ("token", "op", "operator", "execution.start", execution_id),
                ("token", admin_name, "admin", "token.create", "ci"),
                ("token", admin_name, "admin", "token.revoke", "ci"),
            ]
            assert rows[1]["detail"]["incident_fields"] == ["namespace"]

            # The admin reads it back through the API, filtered.
            page = (await admin.get("/api/v1/audit", params={"action": "token.", "limit": 2})).json()
            assert [i["action"] for i in page["items"]] == ["token.revoke", "token.create"]
            assert page["next_cursor"]
            more = (await admin.get("/api/v1/audit",
                                    params={"action": "token.", "cursor": page["next_cursor"]})).json()
            assert [i["target_id"] for i in more["items"]] == ["op", "ed", "test-admin"]

    asyncio.run(go())


def test_file_and_sql_changes_are_audited_as_such_and_the_trail_cannot_be_edited(pg_dsn: str,
                                                                                 tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(REPO / "rules", rules)

    async def go() -> None:
        pool = await create_pool(pg_dsn, min_size=1, max_size=2)
        rulebase = RuleBase([])
        try:
            await migrate(pool)
            manager = RulesManager(rules, rulebase, StoredRules(pool))
            assert await manager.reload("start")
            first = await trail(pool)
            assert first and {r["actor_kind"] for r in first} == {"file"}
            assert {r["action"] for r in first} == {"workflow.create", "strategy.create"}
            assert all(r["actor"].startswith(str(rules)) for r in first)
            # Reloading the same files writes nothing, so records nothing.
            start = await last_id(pool)
            assert await manager.reload("again")
            assert await trail(pool, start) == []
            # A file edit: one record, naming the file.
            path = rules / "workflows" / "diagnose_pod_crashloop.yaml"
            doc = yaml.safe_load(path.read_text())
            doc["description"] = "edited"
            path.write_text(yaml.safe_dump(doc, allow_unicode=True))
            assert await manager.reload("file change")
            assert summary(await trail(pool, start)) == [
                ("file", str(path), None, "workflow.replace", "diagnose_pod_crashloop")]
            # psql: audited as SQL, by the database user.
            start = await last_id(pool)
            await pool.execute("UPDATE strategies SET priority = 99 WHERE id = 'pod_crashloop'")
            assert summary(await trail(pool, start)) == [
                ("sql", "postgres", None, "strategy.replace", "pod_crashloop")]
            # Append-only.
            for statement in ("UPDATE audit_log SET actor = 'nobody'", "DELETE FROM audit_log",
                              "TRUNCATE audit_log"):
                with pytest.raises(asyncpg.RaiseError, match="append-only"):
                    await pool.execute(statement)
        finally:
            rulebase.close()
            await pool.close()

    asyncio.run(go())


def test_tokens_are_stored_as_hashes_and_expire_and_revoke(pg_dsn: str) -> None:
    async def go() -> None:
        pool = await create_pool(pg_dsn, min_size=1, max_size=2)
        try:
            await migrate(pool)
            tokens = Tokens(pool, cache_seconds=0)
            me = Principal("cli", "pytest")
            token, record = await tokens.issue("short", Role.VIEWER, me, expires_in=1) or ("", {})
            assert record["role"] == "viewer" and record["hint"] == token[:9]
            stored = [dict(r) for r in await pool.fetch("SELECT * FROM api_tokens")]
            assert token not in str(stored) and stored[0]["token_hash"] != token
            assert await tokens.verify(token) == Principal("token", "short", Role.VIEWER)
            assert await tokens.verify(token + "x") is None
            await asyncio.sleep(1.2)
            assert await tokens.verify(token) is None                      # expired
            long, _ = await tokens.issue("long", Role.ADMIN, me) or ("", {})
            assert await tokens.issue("long", Role.VIEWER, me) is None     # a live token has the name
            assert await tokens.revoke("long", me)
            assert await tokens.verify(long) is None                       # revoked
            again, _ = await tokens.issue("long", Role.VIEWER, me) or ("", {})   # the name is free again
            assert await tokens.verify(again) == Principal("token", "long", Role.VIEWER)
        finally:
            await pool.close()

    asyncio.run(go())


def test_the_token_and_audit_commands(pg_dsn: str, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"database": {"dsn": pg_dsn}}))

    def aetherius(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "engine", *args, "--config", str(config)],
                              capture_output=True, text=True, timeout=60, cwd=REPO)

    made = aetherius("token", "create", "deploy-bot", "--role", "ingest", "--expires", "30d")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("aeth_") and "shown this once" in made.stderr
    listed = aetherius("token", "list")
    assert "deploy-bot" in listed.stdout and "ingest" in listed.stdout and token not in listed.stdout
    assert aetherius("token", "create", "deploy-bot", "--role", "admin").returncode == 1
    assert aetherius("token", "revoke", "deploy-bot").returncode == 0
    assert aetherius("token", "revoke", "deploy-bot").returncode == 1
    bad = aetherius("token", "create", "no spaces please", "--role", "viewer")
    assert bad.returncode == 2 and "token name" in bad.stderr
    audit = aetherius("audit", "--action", "token.")
    lines = audit.stdout.splitlines()
    assert len(lines) == 2 and "token.create token/deploy-bot" in lines[0] and "token.revoke" in lines[1]
    assert lines[0].split()[1].startswith("cli:")

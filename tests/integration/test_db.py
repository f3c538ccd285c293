"""PostgreSQL: migrations under concurrency, retention (Repository.purge), and the seed's SQL.

Each test has a fresh database of its own (``pg_dsn``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest

from engine.rulebase import RuleBase
from engine.service.generations import RulesManager
from engine.storage.db import create_pool, migrate, migrations
from engine.storage.records import Repository
from engine.storage.rules import StoredRules

pytestmark = pytest.mark.integration

T = TypeVar("T")
WF = "diagnose_pod_crashloop"

# The seed's examples (orchestrator-README.zh.md, "数据库直接插入" and "添加新策略"), as written.
# The strategy example there reads ``VALUES (...);``: its values are filled in here from the
# seed's first built-in strategy (Pod CrashLoopBackOff, diagnose_pod_crashloop, priority 10).
SEED_INSERT_WORKFLOW = """
INSERT INTO workflows (id, name, description, trigger_type, status, steps, created_at, updated_at)
VALUES (
  'diagnose_pod_crashloop',
  '诊断 Pod CrashLoopBackOff',
  '自动诊断和修复 Pod 崩溃循环问题',
  'event',
  'active',
  '[]'::jsonb,  -- 步骤定义
  NOW(),
  NOW()
);
"""
SEED_INSERT_STRATEGY = """
INSERT INTO strategies (id, name, category, symptoms, workflow_id, priority, enabled)
VALUES ('pod_crashloop', 'Pod CrashLoopBackOff', 'pod_failure',
        '[{"type": "event", "conditions": {"kind": "Pod", "reason": "CrashLoopBackOff"}}]'::jsonb,
        'diagnose_pod_crashloop', 10, true);
"""
SEED_SELECTS = (
    "SELECT id, name, status, created_at FROM workflows;",
    "SELECT id, workflow_id, status, started_at, duration FROM workflow_executions "
    "ORDER BY started_at DESC LIMIT 10;",
    "SELECT id, name, category, priority FROM strategies WHERE enabled = true;",
)
STEPS = [
    {"id": "collect_logs", "type": "command",
     "config": {"action": "logs", "args": ["--tail=100", "--previous"]}, "on_success": ["notify"]},
    {"id": "notify", "type": "notification", "config": {"channel": "log", "message": "crash loop"}},
]


async def _with_pool(dsn: str, body: Callable[[asyncpg.Pool], Awaitable[T]], *, migrated: bool = True) -> T:
    pool = await create_pool(dsn, min_size=1, max_size=4)
    try:
        if migrated:
            await migrate(pool)
        return await body(pool)
    finally:
        await pool.close()


# ---------------------------------------------------------------------------- migrations


def test_concurrent_migrations_apply_each_version_exactly_once(pg_dsn):
    latest = [version for version, _, _ in migrations()]
    assert latest and latest[0] == 1

    async def go() -> None:
        pools = [await create_pool(pg_dsn, min_size=1, max_size=2) for _ in range(3)]
        try:
            results = await asyncio.gather(*(migrate(pool) for pool in pools))
            # One call applied everything; the others waited on the lock and found it done.
            assert sorted(results, key=len) == [[], [], latest], results
            rows = await pools[0].fetch("SELECT version, name FROM schema_migrations ORDER BY version")
            assert [r["version"] for r in rows] == latest
            assert rows[0]["name"] == "init"
            # Again: a no-op, from any pool.
            assert await migrate(pools[1]) == []
            assert await pools[2].fetchval("SELECT count(*) FROM schema_migrations") == len(latest)
            # The schema is there once (a second CREATE TABLE would have failed the migration).
            tables = {r["tablename"] for r in await pools[0].fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
            assert {"workflows", "workflow_versions", "strategies", "incidents", "workflow_executions",
                    "step_executions", "events", "dead_letters", "replicas", "schema_migrations"} <= tables
            # And the advisory lock was released by every caller (pg_locks covers the whole
            # server: only this database's locks count).
            assert await pools[0].fetchval("""
                SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'
                AND database = (SELECT oid FROM pg_database WHERE datname = current_database())""") == 0
        finally:
            for pool in pools:
                await pool.close()

    asyncio.run(go())


# ---------------------------------------------------------------------------- retention


class _Recording:
    """A pool stand-in for Repository that records each statement's status line."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.statuses: list[tuple[str, str]] = []

    async def execute(self, sql: str, *args: Any) -> str:
        status = await self.pool.execute(sql, *args)
        table = sql.split("DELETE FROM", 1)[1].split()[0] if "DELETE FROM" in sql else "?"
        self.statuses.append((table, status))
        return status


OLD = "now() - interval '2 days'"
NEW = "now() - interval '10 minutes'"


async def _seed_retention(pool: asyncpg.Pool) -> None:
    async def execution(ident: str, status: str, started: str, steps: int = 2) -> None:
        await pool.execute(f"""
            INSERT INTO workflow_executions
                   (id, workflow_id, workflow_version, status, started_at, finished_at)
            VALUES ($1, 'wf', 1, $2, {started}, CASE WHEN $2 = 'running' THEN NULL ELSE {started} END)""",
            ident, status)
        for seq in range(steps):
            await pool.execute("""
                INSERT INTO step_executions (execution_id, seq, step_id, step_type, status)
                VALUES ($1, $2, $3, 'command', 'succeeded')""", ident, seq, f"s{seq}")

    for i, status in enumerate(("succeeded", "failed", "cancelled", "timed_out", "succeeded")):
        await execution(f"old-done-{i}", status, OLD)
    await execution("old-running", "running", OLD)
    await execution("new-done", "succeeded", NEW)
    await execution("new-running", "running", NEW)

    async def event(ident: str, state: str, received: str) -> None:
        await pool.execute(f"""
            INSERT INTO events (id, received_at, state, payload) VALUES ($1, {received}, $2, $3)""",
            ident, state, {"id": ident})

    for i, state in enumerate(("attached", "unmatched", "suppressed", "inhibited", "duplicate", "attached")):
        await event(f"old-{state}-{i}", state, OLD)
    await event("old-pending", "pending", OLD)
    await event("new-attached", "attached", NEW)
    await event("new-pending", "pending", NEW)

    for i in range(5):
        await pool.execute(f"""
            INSERT INTO dead_letters (received_at, source, reason, raw) VALUES ({OLD}, 'nats', $1, $2)""",
            f"old {i}", b"{")
    await pool.execute(f"""
        INSERT INTO dead_letters (received_at, source, reason, raw) VALUES ({NEW}, 'nats', 'new', $1)""",
        b"{")


def test_purge_deletes_old_finished_records_in_batches_and_keeps_the_rest(pg_dsn):
    async def body(pool: asyncpg.Pool) -> None:
        await _seed_retention(pool)
        recording = _Recording(pool)
        repo = Repository(recording, "r-test")  # type: ignore[arg-type]
        deleted = await repo.purge(older_than_seconds=86400, batch=2)
        assert deleted == 5 + 6 + 5

        executions = {r["id"] for r in await pool.fetch("SELECT id FROM workflow_executions")}
        assert executions == {"old-running", "new-done", "new-running"}
        # Their step rows went with them (ON DELETE CASCADE); the others' stayed.
        steps = {r["execution_id"] for r in await pool.fetch("SELECT execution_id FROM step_executions")}
        assert steps == executions
        assert await pool.fetchval("SELECT count(*) FROM step_executions") == 2 * len(executions)
        events = {r["id"] for r in await pool.fetch("SELECT id FROM events")}
        assert events == {"old-pending", "new-attached", "new-pending"}
        dead = [r["reason"] for r in await pool.fetch("SELECT reason FROM dead_letters")]
        assert dead == ["new"]

        # In batches of at most 2, until a short batch: 5 -> 2, 2, 1 for each table.
        by_table: dict[str, list[int]] = {}
        for table, status in recording.statuses:
            by_table.setdefault(table, []).append(int(status.split()[-1]))
        assert by_table == {"workflow_executions": [2, 2, 1], "events": [2, 2, 2, 0],
                            "dead_letters": [2, 2, 1]}

        # Nothing more to do: one empty statement per table.
        recording.statuses.clear()
        assert await repo.purge(older_than_seconds=86400, batch=2) == 0
        assert [int(s.split()[-1]) for _, s in recording.statuses] == [0, 0, 0]
        # A shorter age takes the newer finished records too, never running or pending ones.
        assert await repo.purge(older_than_seconds=60, batch=1000) == 1 + 1 + 1
        assert {r["id"] for r in await pool.fetch("SELECT id FROM workflow_executions")} == {
            "old-running", "new-running"}
        assert {r["id"] for r in await pool.fetch("SELECT id FROM events")} == {"old-pending", "new-pending"}
        assert await pool.fetchval("SELECT count(*) FROM dead_letters") == 0

    asyncio.run(_with_pool(pg_dsn, body))


# ---------------------------------------------------------------------------- the seed's SQL


def test_seed_inserts_work_as_written_and_workflow_versions_bump_on_update(pg_dsn, tmp_path: Path):
    async def body(pool: asyncpg.Pool) -> None:
        async with pool.acquire() as conn:
            await conn.execute(SEED_INSERT_WORKFLOW)
            await conn.execute(SEED_INSERT_STRATEGY)
            for query in SEED_SELECTS:          # the seed's reads, as written
                await conn.fetch(query)

        workflows = await pool.fetch(SEED_SELECTS[0])
        assert [(r["id"], r["status"]) for r in workflows] == [("diagnose_pod_crashloop", "active")]
        strategies = await pool.fetch(SEED_SELECTS[2])
        assert [(r["id"], r["category"], r["priority"]) for r in strategies] == [
            ("pod_crashloop", "pod_failure", 10)]
        row = await pool.fetchrow("SELECT version, source, steps FROM workflows WHERE id = $1", WF)
        assert (row["version"], row["source"], row["steps"]) == (1, "sql", [])
        assert await pool.fetchval("SELECT version FROM strategies WHERE id = 'pod_crashloop'") == 1

        async def versions() -> list[tuple[int, Any]]:
            rows = await pool.fetch("SELECT version, definition FROM workflow_versions "
                                    "WHERE workflow_id = 'diagnose_pod_crashloop' ORDER BY version")
            return [(r["version"], r["definition"]) for r in rows]

        first = await versions()
        assert [v for v, _ in first] == [1]
        assert first[0][1]["steps"] == [] and first[0][1]["name"] == "诊断 Pod CrashLoopBackOff"

        # The steps filled in by SQL: version 2, kept alongside version 1.
        before = await pool.fetchval("SELECT updated_at FROM workflows WHERE id = $1", WF)
        await pool.execute("UPDATE workflows SET steps = $2 WHERE id = $1", WF, STEPS)
        row = await pool.fetchrow("SELECT version, updated_at FROM workflows WHERE id = $1", WF)
        assert row["version"] == 2 and row["updated_at"] > before
        second = await versions()
        assert [v for v, _ in second] == [1, 2]
        assert second[0] == first[0]                       # version 1 is unchanged
        assert [s["id"] for s in second[1][1]["steps"]] == ["collect_logs", "notify"]

        # An UPDATE that changes nothing is no new version; another change is version 3.
        await pool.execute("UPDATE workflows SET status = status WHERE id = $1", WF)
        assert [v for v, _ in await versions()] == [1, 2]
        await pool.execute("UPDATE workflows SET priority = 9 WHERE id = $1", WF)
        assert [v for v, _ in await versions()] == [1, 2, 3]
        await pool.execute("UPDATE strategies SET priority = 11 WHERE id = 'pod_crashloop'")
        assert await pool.fetchval("SELECT version FROM strategies WHERE id = 'pod_crashloop'") == 2

        # The service reads the SQL rows as stored rules (no rule files here), at their version,
        # and finds the version an execution pinned earlier.
        (tmp_path / "rules").mkdir()
        rulebase = RuleBase([])
        try:
            manager = RulesManager(tmp_path / "rules", rulebase, StoredRules(pool))
            assert await manager.reload("test"), [str(p) for p in manager.status.problems]
            assert manager.generation is not None
            assert manager.generation.workflows["diagnose_pod_crashloop"].version == 3
            assert manager.generation.strategies["pod_crashloop"].workflow_id == "diagnose_pod_crashloop"
            pinned = await manager.workflow("diagnose_pod_crashloop", 2)
            assert pinned is not None and pinned.version == 2 and pinned.priority != 9
        finally:
            rulebase.close()

    asyncio.run(_with_pool(pg_dsn, body))


def test_seed_workflow_with_its_placeholder_steps_is_reported_not_loaded(pg_dsn, tmp_path: Path):
    """The seed's row as written has ``'[]'`` for its steps: it is left out with a warning
    that names the row (and so is the seed's strategy that starts it), and the rest of the
    rules load: an invalid stored row must not block every rule-file edit."""

    async def body(pool: asyncpg.Pool) -> None:
        await pool.execute(SEED_INSERT_WORKFLOW)
        await pool.execute(SEED_INSERT_STRATEGY)
        (tmp_path / "rules").mkdir()
        rulebase = RuleBase([])
        try:
            manager = RulesManager(tmp_path / "rules", rulebase, StoredRules(pool))
            (tmp_path / "rules" / "ok.yaml").write_text(
                "id: ok\nsteps: [{id: a, type: wait, config: {duration: 1s}}]\n", encoding="utf-8")
            assert await manager.reload("test")
            warnings = manager.status.warnings
            assert any(w.startswith("db:workflows/diagnose_pod_crashloop") and "steps" in w
                       for w in warnings), warnings
            assert "diagnose_pod_crashloop" not in manager.generation.workflows
            assert "ok" in manager.generation.workflows
        finally:
            rulebase.close()

    asyncio.run(_with_pool(pg_dsn, body))


def test_a_recorded_batch_of_events_keeps_every_field_and_its_state(pg_dsn):
    # record_events sends a batch as one JSON document: every column and the whole payload
    # come back as the events were, odd text included; a second recording is not new.
    from engine.events import Event

    odd = Event(id="ev-odd", source="kubernetes", kind="Pod", name="web-1", reason="BackOff",
                namespace=None, message='quote " backslash \\ newline \n unicode 容器 😀',
                count=3, total_count=7, first_seen=1733130000.25, last_seen=1733130009.5,
                labels={"app": "web", "k": ""}, watch_type="MODIFIED")
    plain = Event(id="ev-plain", source="agent-manager", kind="Node", name="node-1", reason="NotReady")
    rows = [(odd, "internal.event.critical", ("pending", "pod_crashloop", None)),
            (plain, None, ("attached", "node_not_ready", "inc-1"))]

    async def go() -> tuple[set[str], set[str], list[asyncpg.Record]]:
        pool = await create_pool(pg_dsn)
        try:
            await migrate(pool)
            repo = Repository(pool, "replica-a")
            first = await repo.record_events(rows)
            again = await repo.record_events(rows[:1])
            stored = await pool.fetch("SELECT * FROM events ORDER BY id")
        finally:
            await pool.close()
        return first, again, stored

    first, again, stored = asyncio.run(go())
    assert first == {"ev-odd", "ev-plain"} and again == set()
    by_id = {r["id"]: r for r in stored}
    for event, subject, (state, strategy_id, incident_id) in rows:
        row = by_id[event.id]
        assert (row["source"], row["subject"], row["kind"], row["namespace"], row["name"], row["reason"],
                row["state"], row["owner"], row["strategy_id"], row["incident_id"]) == (
            event.source, subject, event.kind, event.namespace, event.name, event.reason,
            state, "replica-a", strategy_id, incident_id)
        assert row["payload"] == {**event.to_dict(), "watch_type": event.watch_type}


# ---------------------------------------------------------------------------- incident batches


def test_incidents_opened_and_closed_in_one_batch_answer_each_caller_in_its_order(pg_dsn):
    # A storm opens and closes incidents many per statement: each caller still gets the answer
    # one call of its own would have given, in the order it asked, and its events are attached.
    from engine.correlation import Incident
    from engine.events import Event
    from engine.rules.model import Strategy

    crashloop = Strategy.model_validate({
        "id": "pod_crashloop", "category": "pod_failure", "workflow_id": WF, "severity": "high",
        "symptoms": [{"conditions": {"kind": "Pod", "reason": "BackOff"}}],
        "correlation": {"key": ["namespace", "workload"], "quiet": "30s", "cooldown": "10m"}})

    def incident(n: int, workload: str) -> tuple[Incident, Event]:
        event = Event(id=f"ev-{n}", source="kubernetes", kind="Pod", name=f"{workload}-abc12-x{n}",
                      reason="BackOff", namespace="shop", workload=workload, first_seen=1_790_000_000.0 + n,
                      last_seen=1_790_000_000.0 + n)
        return Incident(id=f"inc-{n}", strategy=crashloop, key=("shop", workload),
                        first_seen=event.first_seen, last_seen=event.last_seen, first_event=event,
                        events=n), event

    async def go() -> tuple[list, list, list, dict]:
        pool = await create_pool(pg_dsn)
        try:
            await migrate(pool)
            repo = Repository(pool, "replica-a")
            made = [incident(n, w) for n, w in enumerate(["cart", "web", "api", "cart", "old"], 1)]
            await repo.record_events([(event, None, ("pending", "pod_crashloop", None)) for _, event in made])
            # "old" opened and closed earlier: it is cooling down when the batch comes.
            old, _ = made[4]
            assert await repo.open_incidents([(old, "exec-old", [])]) == [("opened", None)]
            assert await repo.close_incidents([("inc-5", old.last_seen, 600.0)]) == [
                {"strategy_id": "pod_crashloop", "key": old.key_text}]
            batch = [(made[n][0], f"exec-{n + 1}", [made[n][1].id]) for n in (2, 0, 1, 3)]
            batch.append((incident(6, "old")[0], "exec-6", ["ev-5"]))
            opened = await repo.open_incidents(batch)
            closed = await repo.close_incidents([("inc-2", None, 600.0), ("missing", None, 600.0),
                                                 ("inc-3", None, 600.0), ("inc-5", None, 600.0)])
            rows = await pool.fetch("SELECT id, key, status, execution_id, events FROM incidents ORDER BY id")
            events = await pool.fetch("SELECT id, incident_id FROM events")
            attached = {r["id"]: r["incident_id"] for r in events}
        finally:
            await pool.close()
        return opened, closed, [tuple(r) for r in rows], attached

    opened, closed, rows, attached = asyncio.run(go())
    # api, cart, web are new; the second cart is answered with the first; old is cooling.
    assert opened == [("opened", None), ("opened", None), ("opened", None), ("open", "inc-1"),
                      ("cooling", "inc-5")]
    assert closed == [{"strategy_id": "pod_crashloop", "key": "shop/web"}, None,
                      {"strategy_id": "pod_crashloop", "key": "shop/api"}, None]
    assert rows == [("inc-1", "shop/cart", "open", "exec-1", 1),
                    ("inc-2", "shop/web", "closed", "exec-2", 2),
                    ("inc-3", "shop/api", "closed", "exec-3", 3),
                    ("inc-5", "shop/old", "closed", "exec-old", 5)]
    # Only the opened incidents took their events; the answered ones leave theirs to the caller.
    assert attached == {"ev-1": "inc-1", "ev-2": "inc-2", "ev-3": "inc-3", "ev-4": None, "ev-5": None}


@pytest.mark.parametrize("collation", [None, "en-x-icu"], ids=["database default", "ICU en"])
def test_a_closing_batch_takes_the_keys_locks_in_key_order_as_opening_does(pg_dsn, collation):
    # Opening takes the keys' locks in Python's order (by code point: "shop/Web" before
    # "shop/api"); a closing batch must take them in that order too, whatever the ids' order
    # (inc-a is shop/api) and the keys' collation (in ICU's English "shop/api" comes first).
    # Another session holds the lock of the key that comes last: the batch takes the first
    # key's lock, then waits at the second, the order an opening batch takes them in.
    from engine.correlation import Incident
    from engine.events import Event
    from engine.rules.model import Strategy

    crashloop = Strategy.model_validate({
        "id": "pod_crashloop", "category": "pod_failure", "workflow_id": WF, "severity": "high",
        "symptoms": [{"conditions": {"kind": "Pod", "reason": "BackOff"}}],
        "correlation": {"key": ["namespace", "workload"], "quiet": "30s", "cooldown": "10m"}})

    def incident(ident: str, workload: str) -> Incident:
        event = Event(id=f"ev-{ident}", source="kubernetes", kind="Pod", name=f"{workload}-abc12-x1",
                      reason="BackOff", namespace="shop", workload=workload, first_seen=1_790_000_000.0,
                      last_seen=1_790_000_000.0)
        return Incident(id=ident, strategy=crashloop, key=("shop", workload), first_seen=event.first_seen,
                        last_seen=event.last_seen, first_event=event)

    async def go() -> tuple[int, list]:
        pool = await create_pool(pg_dsn)
        holder = await asyncpg.connect(pg_dsn)
        try:
            await migrate(pool)
            if collation is not None:
                known = await pool.fetchval("SELECT count(*) FROM pg_collation WHERE collname = $1",
                                            collation)
                if not known:
                    pytest.skip(f"this PostgreSQL has no {collation} collation (built without ICU)")
                await pool.execute(f'ALTER TABLE incidents ALTER COLUMN key TYPE text COLLATE "{collation}"')
            repo = Repository(pool, "replica-a")
            assert sorted(["shop/api", "shop/Web"]) == ["shop/Web", "shop/api"]
            assert await repo.open_incidents([(incident("inc-a", "api"), "exec-a", []),
                                              (incident("inc-b", "Web"), "exec-b", [])]) == [
                ("opened", None), ("opened", None)]
            await holder.execute("SELECT pg_advisory_lock(hashtext('incident:pod_crashloop:shop/api'))")
            closing = asyncio.create_task(
                repo.close_incidents([("inc-a", None, 600.0), ("inc-b", None, 600.0)]))
            held = 0
            for _ in range(100):        # until the batch waits for the lock the holder has
                await asyncio.sleep(0.05)
                waiting = await holder.fetchval(
                    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
                if waiting is not None:
                    held = await holder.fetchval(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid = $1",
                        waiting)
                    break
            assert not closing.done()
            await holder.execute("SELECT pg_advisory_unlock_all()")
            return held, await asyncio.wait_for(closing, 10)
        finally:
            await holder.close()
            await pool.close()

    held, closed = asyncio.run(go())
    assert held == 1        # shop/Web's lock, taken before it waited for shop/api's
    assert closed == [{"strategy_id": "pod_crashloop", "key": "shop/api"},
                      {"strategy_id": "pod_crashloop", "key": "shop/Web"}]


def test_step_runs_written_in_one_group_commit_come_back_as_written(pg_dsn):
    # Many executions' step rows go to PostgreSQL as one statement per batch: every field of
    # every run comes back as it was, and a run written twice in a batch keeps its latest state.
    from engine.storage.executions import PostgresStore
    from engine.store import Execution, StepRun

    t0 = 1_790_000_000.123456

    async def go() -> tuple[list, dict[str, Execution]]:
        pool = await create_pool(pg_dsn)
        try:
            await migrate(pool)
            store = PostgresStore(pool, "replica-a")
            executions = [Execution(id=f"exec-{n}", workflow_id=WF, workflow_version=1, started_at=t0 + n)
                          for n in range(3)]
            firsts = [StepRun(seq=1, step_id="collect_logs", step_type="command") for _ in executions]
            pairs = zip(executions, firsts, strict=True)
            await asyncio.gather(*(store.create_execution(e, f) for e, f in pairs))
            done = []
            for n, first in enumerate(firsts):
                first.status, first.attempts, first.branch = "succeeded", 1, ["notify"]
                first.output = {"stdout": f"log {n} 容器 \"quoted\"", "lines": [1, None, 2.5]}
                first.started_at = first.attempt_started_at = t0 + n
                first.finished_at = t0 + n + 0.25
                nxt = StepRun(seq=2, step_id="notify", step_type="notification", parent=1,
                              status="running", attempts=1, attempt_started_at=t0 + n + 0.5)
                done.append(store.finish_step(executions[n].id, first, [nxt]))
            # The same run written twice in the batch (a retry recorded right after): the last wins.
            failed = StepRun(seq=2, step_id="notify", step_type="notification", parent=1, status="failed",
                             attempts=2, error="Slack answered HTTP 500", error_kind="unavailable")
            await asyncio.gather(*done,
                                 store.start_attempt("exec-2", StepRun(seq=2, step_id="notify",
                                                                       step_type="notification", parent=1,
                                                                       status="running", attempts=2)))
            await store.start_attempt("exec-2", failed)
            batches = store.writer.commits
            rows = await pool.fetch("SELECT * FROM step_executions ORDER BY execution_id, seq")
            loaded = {e.id: await store.load_execution(e.id) for e in executions}
        finally:
            await pool.close()
        assert batches < 3 + 3 + 2, "the writes shared commits"
        return [dict(r) for r in rows], loaded

    rows, loaded = asyncio.run(go())
    assert [(r["execution_id"], r["seq"], r["step_id"], r["status"], r["attempts"]) for r in rows] == [
        ("exec-0", 1, "collect_logs", "succeeded", 1), ("exec-0", 2, "notify", "running", 1),
        ("exec-1", 1, "collect_logs", "succeeded", 1), ("exec-1", 2, "notify", "running", 1),
        ("exec-2", 1, "collect_logs", "succeeded", 1), ("exec-2", 2, "notify", "failed", 2)]
    first = rows[2]
    assert first["output"] == {"stdout": "log 1 容器 \"quoted\"", "lines": [1, None, 2.5]}
    assert first["branch"] == ["notify"] and first["parent"] is None and first["error"] is None
    assert abs(first["finished_at"].timestamp() - (t0 + 1.25)) < 1e-5
    assert rows[5]["error"] == "Slack answered HTTP 500" and rows[5]["error_kind"] == "unavailable"
    assert rows[5]["output"] is None and rows[5]["branch"] == []
    run = loaded["exec-1"].runs[1]
    assert (run.step_id, run.parent, run.status) == ("notify", 1, "running")
    assert abs(run.attempt_started_at - (t0 + 1.5)) < 1e-5 and run.finished_at is None

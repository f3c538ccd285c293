"""The approval gate on the real PostgreSQL with a stand-in agent-manager: the plan (a dry run
under its own key) comes first, nothing live leaves before a human approves that very plan,
a denial or an expiry takes the on_failure path, the first decision wins, a resumed run
waits on the same approval, and a changed plan needs a new approval."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest

from engine.approvals import ApprovalDefaults, ApprovalRule, ApprovalStatus
from engine.auth import Principal, Role
from engine.runner import WorkflowRunner
from engine.service.transport import make_client
from engine.statuses import ExecutionStatus, StepStatus
from engine.storage.approvals import Approvals
from engine.storage.audit import AuditLog
from engine.storage.db import create_pool, migrate
from engine.storage.executions import PostgresStore
from steps.base import Settings

pytestmark = pytest.mark.integration

ALICE = Principal("token", "alice", Role.OPERATOR)
BOB = Principal("token", "bob", Role.OPERATOR)
INCIDENT = {"namespace": "shop", "pod": "web-7d9f8c6b5-x2x4k", "workload": "web"}

WORKFLOW = {
    "id": "approve-delete", "timeout": "5m",
    "steps": [
        {"id": "fix", "type": "remediation", "config": {"action": "delete_pod"},
         "on_success": ["said_done"], "on_failure": ["said_not_done"]},
        {"id": "said_done", "type": "notification", "config": {"channel": "log", "message": "deleted"}},
        {"id": "said_not_done", "type": "notification", "config": {"channel": "log", "message": "kept"}},
    ],
}


@dataclasses.dataclass
class Parts:
    pool: Any
    store: PostgresStore
    approvals: Approvals
    audit: AuditLog
    settings: Settings
    http: Any

    def runner(self, **changes: Any) -> WorkflowRunner:
        settings = dataclasses.replace(self.settings, **changes) if changes else self.settings
        return WorkflowRunner(self.store, settings, http=self.http, approvals=self.approvals)

    async def pending(self, timeout: float = 10.0) -> Any:
        async with asyncio.timeout(timeout):
            while True:
                found = await self.approvals.list(status="pending")
                if found:
                    return found[0]
                await asyncio.sleep(0.05)

    async def audit_actions(self, execution_id: str) -> list[str]:
        page = await self.audit.page(target_id=execution_id, action="approval.", limit=50)
        return [item["action"] for item in reversed(page.items)]


@contextlib.asynccontextmanager
async def parts(pg_dsn: str, agent: Any, **approvals: Any) -> AsyncIterator[Parts]:
    pool = await create_pool(pg_dsn, min_size=1, max_size=6)
    await migrate(pool)
    store = PostgresStore(pool, "approvals-test")
    store.writer.start()
    audit = AuditLog(pool)
    gate = Approvals(pool, audit, poll=0.1)
    defaults = ApprovalDefaults(**{"rules": (ApprovalRule(frozenset({"delete_pod"})),), **approvals})
    settings = Settings(agent_manager_url=agent.url, dry_run=False, approvals=defaults)
    http = make_client(max_connections=10)
    try:
        yield Parts(pool, store, gate, audit, settings, http)
    finally:
        await http.aclose()
        await store.writer.stop()
        await pool.close()


def live_requests(agent: Any) -> list[dict[str, Any]]:
    return [r["body"] for r in agent.requests if r["body"].get("dry_run") is False]


def test_nothing_live_leaves_before_the_approval_of_that_plan(pg_dsn, agent, load_workflow) -> None:
    workflow = load_workflow(WORKFLOW)
    agent.stdout["delete_pod"] = 'pod "web-7d9f8c6b5-x2x4k" deleted (server dry run)'

    async def go() -> None:
        async with parts(pg_dsn, agent) as p:
            started = await p.runner().start(workflow, incident=INCIDENT, triggered_by="alice")
            approval = await p.pending()
            # The plan: the request as it will be sent, and agent-manager's dry run of it,
            # asked under its own idempotency key.
            assert [r["body"]["dry_run"] for r in agent.requests] == [True]
            dry = agent.requests[0]["body"]
            assert dry["idempotency_key"].endswith(":plan")
            plan = approval.plan
            assert plan["request"]["dry_run"] is False and plan["request"]["action"] == "delete_pod"
            assert plan["request"]["target"] == {"kind": "Pod", "namespace": "shop",
                                                 "name": "web-7d9f8c6b5-x2x4k"}
            assert "server dry run" in plan["dry_run_result"]["stdout"]
            assert approval.target["name"] == "web-7d9f8c6b5-x2x4k" and approval.triggered_by == "alice"
            row = await p.pool.fetchrow("SELECT status FROM step_executions WHERE execution_id = $1 AND "
                                        "step_id = 'fix'", started.id)
            assert row["status"] == StepStatus.WAITING_APPROVAL
            await asyncio.sleep(0.5)
            assert live_requests(agent) == []          # still nothing live
            decided = await p.approvals.decide(approval, "approve", BOB, "api", "looks right")
            assert decided is not None and decided.status == ApprovalStatus.APPROVED
            execution = await asyncio.wait_for(started.task, 10)
            assert execution.status == ExecutionStatus.SUCCEEDED and execution.outcome == "remediated"
            (live,) = live_requests(agent)
            assert live["idempotency_key"] == plan["request"]["idempotency_key"]
            assert agent.applied[live["idempotency_key"]] == 1
            fix = next(r for r in execution.runs if r.step_id == "fix")
            assert fix.output["approval"]["decided_by"] == "bob"
            assert fix.output["approval"]["plan_hash"] == approval.plan_hash
            assert {r.step_id for r in execution.runs} == {"fix", "said_done"}
            # A late decision changes nothing.
            assert await p.approvals.decide(approval, "deny", ALICE, "api", None) is None
            assert await p.audit_actions(started.id) == ["approval.requested", "approval.approved"]
            record = (await p.audit.page(target_id=started.id, action="approval.approved")).items[0]
            assert record["actor"] == "bob" and record["detail"]["plan_hash"] == approval.plan_hash
            assert record["detail"]["comment"] == "looks right" and record["detail"]["channel"] == "api"

    asyncio.run(go())


def test_a_denial_and_an_expiry_take_the_failure_path_and_send_nothing_live(
        pg_dsn, agent, load_workflow) -> None:
    workflow = load_workflow(WORKFLOW)

    async def go() -> None:
        async with parts(pg_dsn, agent, timeout=1.0) as p:
            runner = p.runner()
            denied = await runner.start(workflow, incident=INCIDENT)
            approval = await p.pending()
            await p.approvals.decide(approval, "deny", BOB, "api", "not during the sale")
            ended = await asyncio.wait_for(denied.task, 10)
            assert ended.status == ExecutionStatus.FAILED and ended.outcome == "failed"
            fix = next(r for r in ended.runs if r.step_id == "fix")
            assert fix.error_kind == "NotApproved" and "denied by bob" in fix.error
            assert "not during the sale" in fix.error and fix.output["sent"] is False
            assert {r.step_id for r in ended.runs} == {"fix", "said_not_done"}

            expired = await runner.run(workflow, incident=INCIDENT)     # nobody decides in 1 s
            fix = next(r for r in expired.runs if r.step_id == "fix")
            assert fix.error_kind == "NotApproved" and "expired" in fix.error
            assert {r.step_id for r in expired.runs} == {"fix", "said_not_done"}
            assert await p.audit_actions(expired.id) == ["approval.requested", "approval.expired"]
            assert live_requests(agent) == []

    asyncio.run(go())


def test_the_first_decision_wins(pg_dsn, agent, load_workflow) -> None:
    workflow = load_workflow(WORKFLOW)

    async def go() -> None:
        async with parts(pg_dsn, agent) as p:
            started = await p.runner().start(workflow, incident=INCIDENT)
            approval = await p.pending()
            results = await asyncio.gather(*(
                p.approvals.decide(approval, "approve" if i % 2 else "deny", who, "api", None)
                for i, who in enumerate([ALICE, BOB] * 10)))
            winners = [r for r in results if r is not None]
            assert len(winners) == 1
            ended = await asyncio.wait_for(started.task, 10)
            sent = live_requests(agent)
            assert len(sent) == (1 if winners[0].status == ApprovalStatus.APPROVED else 0)
            assert ended.status == (ExecutionStatus.SUCCEEDED if sent else ExecutionStatus.FAILED)
            assert len(await p.audit_actions(started.id)) == 2

    asyncio.run(go())


def test_a_resumed_run_waits_on_the_same_approval_and_a_changed_plan_asks_again(
        pg_dsn, agent, load_workflow) -> None:
    scale = {
        "id": "approve-scale", "timeout": "5m",
        "steps": [{"id": "fix", "type": "remediation",
                   "config": {"action": "scale", "params": {"replicas": 6, "current_replicas": 3}}}],
    }
    workflow = load_workflow(scale)

    async def go() -> None:
        async with parts(pg_dsn, agent, rules=(ApprovalRule(frozenset({"scale"})),)) as p:
            first = p.runner()
            started = await first.start(workflow, incident=INCIDENT)
            approval = await p.pending()
            assert await first.drain(0.2) == [started.id]      # a shutdown while it waits
            # Resumed (this or another replica): the same approval, no second dry run.
            second = p.runner()
            loaded = await p.store.load_execution(started.id)
            task = second.resume_loaded(loaded, workflow)
            await asyncio.sleep(0.5)
            assert [a.id for a in await p.approvals.list(status="pending")] == [approval.id]
            assert sum(1 for r in agent.requests if r["body"]["dry_run"]) == 1
            await second.drain(0.2)
            await asyncio.gather(task, return_exceptions=True)
            # The cap on replicas changed meanwhile: the request would differ, so the old
            # approval no longer applies, even once approved.
            await p.approvals.decide(approval, "approve", BOB, "api", None)
            third = p.runner(max_replicas=5)
            loaded = await p.store.load_execution(started.id)
            task = third.resume_loaded(loaded, workflow)
            ended = await asyncio.wait_for(task, 10)
            # replicas: 6 is now over the cap: refused by policy before anyone is asked again.
            assert ended.status == ExecutionStatus.FAILED and live_requests(agent) == []
            rows = await p.pool.fetch("SELECT status FROM approvals WHERE execution_id = $1", started.id)
            assert [r["status"] for r in rows] == ["approved"]

            # A change that stays within policy but differs (the incident was edited while the
            # run waited): the old approval is superseded and a new one asked for.
            before = p.runner()
            started = await before.start(workflow, incident=INCIDENT)
            old = await p.pending()
            await before.drain(0.2)
            loaded = await p.store.load_execution(started.id)
            loaded.context["incident"] = {**INCIDENT, "namespace": "shop-2"}
            after = p.runner()
            task = after.resume_loaded(loaded, workflow)
            async with asyncio.timeout(10):
                while True:
                    rows = await p.pool.fetch("SELECT id, status FROM approvals WHERE execution_id = $1 "
                                              "ORDER BY requested_at", started.id)
                    if len(rows) == 2:
                        break
                    await asyncio.sleep(0.05)
            assert rows[0]["id"] == old.id and rows[0]["status"] == "superseded"
            assert rows[1]["status"] == "pending"
            assert "approval.superseded" in await p.audit_actions(started.id)
            await after.drain(0.1)
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(go())

"""``aetherius serve`` with ``workflow.engine: temporal``, as processes, on the embedded dev server.

The first replica has no ``temporal.address``: it starts ``temporal server start-dev`` itself
(its history in the data directory) and hosts a worker. The sample watch stream is published
to NATS: the crash loop in blog/web becomes an incident whose execution of the seed's
``diagnose_pod_crashloop`` runs on Temporal to its end, and the API shows it with every step.
The node's workflow waits two minutes in a durable timer; a second replica, pointed at the
first one's Temporal server and hosting no worker, cancels it through its own API (the
builtin engine would answer 409 there: another replica's execution).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import TEMPORAL_SKIP
from tests.e2e.harness import ServiceProcess
from tests.e2e.harness import sql as _sql
from tests.integration.test_seed_workflow import SEED, SEED_PATH
from tests.standins import AgentManager, ReasoningService, Slack

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def _temporal_installed() -> None:
    from engine.temporal import available

    if not available():
        pytest.skip(TEMPORAL_SKIP)
    from engine.temporal.devserver import DevServerMissing, binary

    try:
        binary()
    except DevServerMissing:
        pytest.skip(TEMPORAL_SKIP)


@pytest.fixture
def standins():
    agent, reasoning, slack = AgentManager().start(), ReasoningService("OOM").start(), Slack().start()
    yield agent, reasoning, slack
    for s in (agent, reasoning, slack):
        s.stop()


def test_serve_runs_the_seed_workflow_on_temporal_and_any_replica_cancels(
        tmp_path, pg_dsn, redis_url, redis_prefix, nats_url, nats_prefix, standins):
    _temporal_installed()
    agent, reasoning, slack = standins
    common = dict(pg_dsn=pg_dsn, redis_url=redis_url, redis_prefix=redis_prefix, nats_url=nats_url,
                  nats_prefix=nats_prefix, agent_manager=agent.url, reasoning=reasoning.url,
                  slack=f"{slack.url}/services/T000/B000/secret")
    first = ServiceProcess(tmp_path / "a", replica="temporal-a", **common,
                           extra={"workflow": {"engine": "temporal"},
                                  "temporal": {"heartbeat_timeout": "3s"}})
    first.start(timeout=60)
    second = None
    try:
        found = re.search(r"servers: temporal embedded at (127\.0\.0\.1:\d+)", first.log())
        assert found, first.log()[-3000:]
        assert (tmp_path / "a" / "var" / "temporal.db").exists()     # its history outlives the process
        address = found.group(1)

        lines = (FIXTURES / "watch-stream.jsonl").read_bytes().splitlines()
        acks = first.publish(lines)
        assert not [a for a in acks if isinstance(a, Exception)]

        def crash_execution():
            rows = _sql(pg_dsn, "SELECT e.id, e.status FROM workflow_executions e JOIN incidents i "
                                "ON i.execution_id = e.id WHERE i.key = 'blog/web'")
            return rows[0] if rows and rows[0]["status"] not in ("running", "queued") else None

        execution_id = first.wait_for(crash_execution, timeout=40)["id"]
        detail = first.get(f"/api/v1/executions/{execution_id}")
        assert detail["workflow_id"] == SEED
        assert detail["status"] == "succeeded", detail
        steps = [(s["step_id"], s["status"]) for s in detail["steps"]]
        assert [s for s, _ in steps] == SEED_PATH, steps
        assert {status for _, status in steps} == {"succeeded"}
        assert all(s["attempts"] >= 1 and s["finished_at"] for s in detail["steps"])
        # The OOM answer led to the memory patch, applied once; the incident closed.
        assert sum(agent.applied.values()) >= 1 and set(agent.applied.values()) == {1}
        first.wait_for(lambda: _sql(pg_dsn, "SELECT status FROM incidents WHERE key = 'blog/web'")[0]
                       ["status"] == "closed", timeout=10)
        assert "Resuming workflow execution" not in first.log()

        # The node's workflow waits (a Temporal timer): cancel it from another replica.
        node = first.wait_for(lambda: _sql(pg_dsn, "SELECT e.id FROM workflow_executions e JOIN incidents i "
                                                   "ON i.execution_id = e.id WHERE i.key = 'node-3' "
                                                   "AND e.status = 'running'"), timeout=20)[0]["id"]
        second = ServiceProcess(tmp_path / "b", replica="temporal-b", **common,
                                extra={"workflow": {"engine": "temporal"},
                                       "temporal": {"address": address, "worker": False}})
        second.start(timeout=60)
        assert f"servers: temporal external at {address}" in second.log()
        assert second.get(f"/api/v1/executions/{node}")["running_here"] is False
        answer = second.post(f"/api/v1/executions/{node}/cancel")
        assert answer.status_code == 200, answer.text
        assert answer.json()["status"] in ("cancelled", "cancelling")
        cancelled = second.wait_for(
            lambda: (d := second.get(f"/api/v1/executions/{node}"))["status"] == "cancelled" and d,
            timeout=15)
        assert [s["status"] for s in cancelled["steps"]][-1] == "cancelled"
        again = second.post(f"/api/v1/executions/{node}/cancel")
        assert again.status_code == 409
    finally:
        if second is not None:
            assert second.stop() == 0
        assert first.stop() == 0
    assert "Traceback" not in first.log(), first.log()[-3000:]


APPROVAL_RULES = """
id: approve-delete
name: Delete a stuck pod, once a human agrees
trigger_type: manual
timeout: 5m
steps:
  - id: fix
    type: remediation
    config:
      action: delete_pod
    on_success: [said_done]
    on_failure: [said_not_done]
  - id: said_done
    type: notification
    config: {channel: log, message: "pod deleted"}
  - id: said_not_done
    type: notification
    config: {channel: log, message: "pod kept"}
---
id: approve-quick
name: The same with a short approval
trigger_type: manual
timeout: 5m
steps:
  - id: fix
    type: remediation
    config:
      action: delete_pod
      approval: {timeout: 1s}
    on_failure: [said_not_done]
  - id: said_not_done
    type: notification
    config: {channel: log, message: "pod kept"}
"""


def test_an_approval_is_a_temporal_update_whose_validator_refuses_a_wrong_plan(
        tmp_path, pg_dsn, redis_url, redis_prefix, nats_url, nats_prefix):
    """The remediation waits in the workflow for the ``approve`` update: one with a plan hash
    that is not the approval's is refused by its validator (no trace in the history); the
    API's approval is the update, recorded in our approvals table, and the change is made."""
    _temporal_installed()
    import asyncio

    from temporalio.client import Client, WorkflowUpdateFailedError

    agent = AgentManager().start()
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "approve.yaml").write_text(APPROVAL_RULES, encoding="utf-8")
    service = ServiceProcess(tmp_path / "svc", pg_dsn=pg_dsn, redis_url=redis_url, redis_prefix=redis_prefix,
                             nats_url=nats_url, nats_prefix=nats_prefix, agent_manager=agent.url,
                             rules_dir=rules, replica="temporal-appr",
                             extra={"workflow": {"engine": "temporal"},
                                    "approvals": {"required": [{"actions": ["delete_pod"]}], "poll": "0.2s"}})
    service.start(timeout=60)
    try:
        address = re.search(r"servers: temporal embedded at (127\.0\.0\.1:\d+)", service.log()).group(1)
        answer = service.post("/api/v1/tokens", {"name": "op2", "role": "operator"})
        assert answer.status_code == 201, answer.text
        op2 = {"Authorization": f"Bearer {answer.json()['token']}"}
        answer = service.post("/api/v1/workflows/approve-delete/execute",
                              {"incident": {"namespace": "shop", "pod": "web-1"}})
        assert answer.status_code == 202, answer.text
        execution_id = answer.json()["execution_id"]
        approval = service.wait_for(lambda: next((a for a in service.get("/api/v1/approvals")["items"]
                                                  if a["execution_id"] == execution_id), None), 20)
        assert approval["status"] == "pending"

        async def refused() -> str:
            client = await Client.connect(address)
            handle = client.get_workflow_handle(execution_id)
            wrong = {"approval_id": approval["id"], "plan_hash": "0" * 64, "channel": "api", "comment": None,
                     "who": {"kind": "token", "name": "op2", "role": "operator", "client": None}}
            deadline = asyncio.get_running_loop().time() + 10
            while True:
                try:
                    await handle.execute_update("approve", wrong)
                except WorkflowUpdateFailedError as exc:
                    message = str(getattr(exc.cause, "message", exc.cause))
                    if "not waiting" in message and asyncio.get_running_loop().time() < deadline:
                        await asyncio.sleep(0.1)    # the step has not handed its approval over yet
                        continue
                    break
                raise AssertionError("an update with the wrong plan hash was accepted")
            return message

        message = asyncio.run(refused())
        assert "the plan changed" in message, message
        rows = _sql(pg_dsn, "SELECT status FROM approvals WHERE id = $1", approval["id"])
        assert rows[0]["status"] == "pending"

        decided = service.post(f"/api/v1/approvals/{approval['id']}/approve",
                               {"plan_hash": approval["plan_hash"]}, headers=op2)
        assert decided.status_code == 200, decided.text
        assert decided.json()["status"] == "approved" and decided.json()["decided_by"] == "op2"
        done = service.wait_for(lambda: (e := service.get(f"/api/v1/executions/{execution_id}"))["status"]
                                != "running" and e, 20)
        assert done["status"] == "succeeded", done
        assert [s["step_id"] for s in done["steps"]] == ["fix", "said_done"]
        live = [r["body"]["action"] for r in agent.requests if r["body"].get("dry_run") is False]
        assert live == ["delete_pod"]
        (row,) = _sql(pg_dsn, "SELECT status, decided_by, channel FROM approvals WHERE id = $1",
                      approval["id"])
        assert row == {"status": "approved", "decided_by": "op2", "channel": "api"}
        again = service.post(f"/api/v1/approvals/{approval['id']}/approve",
                             {"plan_hash": approval["plan_hash"]}, headers=op2)
        assert again.status_code == 409

        # Nobody decides in time: the workflow's timer ends the wait, the table's on_timeout says no.
        answer = service.post("/api/v1/workflows/approve-quick/execute",
                              {"incident": {"namespace": "shop", "pod": "web-2"}})
        quick = answer.json()["execution_id"]
        ended = service.wait_for(lambda: (e := service.get(f"/api/v1/executions/{quick}"))["status"]
                                 != "running" and e, 20)
        assert [(s["step_id"], s["status"]) for s in ended["steps"]] == [("fix", "failed"),
                                                                         ("said_not_done", "succeeded")]
        rows = _sql(pg_dsn, "SELECT status FROM approvals WHERE execution_id = $1", quick)
        assert rows[0]["status"] == "expired"

        async def accepted_updates() -> int:
            client = await Client.connect(address)
            history = await client.get_workflow_handle(execution_id).fetch_history()
            field = "workflow_execution_update_accepted_event_attributes"
            return sum(1 for e in history.events if e.HasField(field))

        assert asyncio.run(accepted_updates()) == 1      # the refused update left no trace
    finally:
        assert service.stop() == 0
        agent.stop()
    assert "Traceback" not in service.log(), service.log()[-3000:]


def test_after_kill_9_another_replica_follows_the_temporal_run_and_resumes_nothing(
        temporal_server, tmp_path, pg_dsn, redis_url, redis_prefix, nats_url, nats_prefix, standins):
    """Recovery on Temporal: the replica that started an execution dies (kill -9) while the
    execution waits in a timer; the next replica takes it over only to follow it (Temporal
    runs it; no step is resumed or recorded again), and can still cancel it."""
    agent, reasoning, _slack = standins
    import uuid

    temporal = {"address": temporal_server, "task_queue": f"serve-{uuid.uuid4().hex[:8]}",
                "heartbeat_timeout": "2s"}
    common = dict(pg_dsn=pg_dsn, redis_url=redis_url, redis_prefix=redis_prefix, nats_url=nats_url,
                  nats_prefix=nats_prefix, agent_manager=agent.url, reasoning=reasoning.url,
                  extra={"workflow": {"engine": "temporal"}, "temporal": temporal})
    first = ServiceProcess(tmp_path / "a", replica="temporal-k1", **common).start(timeout=60)
    second = None
    try:
        assert f"servers: temporal external at {temporal_server}" in first.log()
        node_event = [line for line in (FIXTURES / "watch-stream.jsonl").read_bytes().splitlines()
                      if b'"name":"node-3"' in line]
        assert node_event
        first.publish(node_event)

        def waiting():
            rows = _sql(pg_dsn, "SELECT e.id FROM workflow_executions e JOIN incidents i "
                                "ON i.execution_id = e.id JOIN step_executions s ON s.execution_id = e.id "
                                "WHERE i.key = 'node-3' AND s.step_type = 'wait' AND s.status = 'running'")
            return rows[0]["id"] if rows else None

        node = first.wait_for(waiting, timeout=30)
        before = first.get(f"/api/v1/executions/{node}")["steps"]
        first.kill()

        second = ServiceProcess(tmp_path / "b", replica="temporal-k2", **common).start(timeout=60)
        second.wait_for(lambda: f"Following workflow execution {node} on Temporal" in second.log(),
                        timeout=20)
        assert "Resuming workflow execution" not in second.log()
        after = second.get(f"/api/v1/executions/{node}")
        assert after["status"] == "running" and after["running_here"] is True
        assert [(s["seq"], s["status"], s["attempts"]) for s in after["steps"]] == \
            [(s["seq"], s["status"], s["attempts"]) for s in before]      # nothing ran again
        answer = second.post(f"/api/v1/executions/{node}/cancel")
        assert answer.status_code == 200, answer.text
        second.wait_for(lambda: second.get(f"/api/v1/executions/{node}")["status"] == "cancelled", timeout=15)
    finally:
        if second is not None:
            assert second.stop() == 0
        first.stop()

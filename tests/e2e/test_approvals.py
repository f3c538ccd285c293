"""The approval flow end to end: ``aetherius serve`` processes against stand-ins for
agent-manager and Slack. A change that policy says needs a human waits, is listed, carries
Approve/Deny buttons to Slack, and is decided once: through the API or a correctly signed
Slack action; a badly signed, stale, unmapped or replayed one is refused. A kill -9 while it
waits loses nothing, and two replicas still make one change."""

from __future__ import annotations

import json
import signal
import time
import urllib.parse
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.approvals import slack_sign
from tests.e2e.harness import ServiceProcess, sql
from tests.standins import AgentManager, Slack

pytestmark = pytest.mark.integration

SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
POD = "web-7d9f8c6b5-x2x4k"
RULES = """
id: approve-delete
name: Delete a stuck pod, once a human agrees
trigger_type: manual
timeout: 10m
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
timeout: 10m
steps:
  - id: fix
    type: remediation
    config:
      action: delete_pod
      approval: {timeout: 2s}
    on_failure: [said_not_done]
  - id: said_not_done
    type: notification
    config: {channel: log, message: "pod kept"}
"""


@pytest.fixture
def stand() -> Any:
    agent, slack = AgentManager().start(), Slack().start()
    agent.stdout["delete_pod"] = f'pod "{POD}" deleted (server dry run)'
    yield agent, slack
    agent.stop()
    slack.stop()


@pytest.fixture
def make(tmp_path: Path, pg_dsn, redis_url, redis_prefix, nats_url, nats_prefix, stand):
    agent, slack = stand
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "approve.yaml").write_text(RULES, encoding="utf-8")
    made: list[ServiceProcess] = []

    def build(replica: str = "appr-1") -> ServiceProcess:
        proc = ServiceProcess(tmp_path / replica, pg_dsn=pg_dsn, redis_url=redis_url,
                              redis_prefix=redis_prefix, nats_url=nats_url, nats_prefix=nats_prefix,
                              agent_manager=agent.url,
                              slack=f"{slack.url}/services/T0/B0/x", replica=replica, rules_dir=rules,
                              extra={"approvals": {"required": [{"actions": ["delete_pod"]}], "poll": "0.2s",
                                                   "slack": {"users": {"U0OPS2": "op2"}}}})
        proc.env["AETHERIUS_APPROVALS__SLACK__SIGNING_SECRET"] = SIGNING_SECRET
        made.append(proc)
        return proc

    yield build
    for proc in made:
        proc.stop(signal.SIGKILL)


def token(service: ServiceProcess, name: str, role: str) -> dict[str, str]:
    answer = service.post("/api/v1/tokens", {"name": name, "role": role})
    assert answer.status_code == 201, answer.text
    return {"Authorization": f"Bearer {answer.json()['token']}"}


def start(service: ServiceProcess, workflow: str = "approve-delete") -> str:
    answer = service.post(f"/api/v1/workflows/{workflow}/execute",
                          {"incident": {"namespace": "shop", "pod": POD}})
    assert answer.status_code == 202, answer.text
    return answer.json()["execution_id"]


def pending(service: ServiceProcess, execution_id: str) -> dict[str, Any]:
    def found() -> Any:
        items = service.get("/api/v1/approvals")["items"]
        return next((a for a in items if a["execution_id"] == execution_id), None)

    return service.wait_for(found, 20)


def finished(service: ServiceProcess, execution_id: str, timeout: float = 20) -> dict[str, Any]:
    return service.wait_for(lambda: (e := service.get(f"/api/v1/executions/{execution_id}"))["status"]
                            != "running" and e, timeout)


def slack_post(service: ServiceProcess, payload: dict[str, Any], *, secret: str = SIGNING_SECRET,
               timestamp: int | None = None, body: bytes | None = None,
               headers: dict[str, str] | None = None) -> httpx.Response:
    body = body if body is not None else urllib.parse.urlencode({"payload": json.dumps(payload)}).encode()
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    sent = headers if headers is not None else {
        "X-Slack-Request-Timestamp": stamp, "X-Slack-Signature": slack_sign(secret, stamp, body)}
    return httpx.post(f"{service.url}/api/v1/approvals/slack", content=body, timeout=10,
                      headers={"Content-Type": "application/x-www-form-urlencoded", **sent})


def button(approval: dict[str, Any], user: str, action: str = "approve") -> dict[str, Any]:
    return {"type": "block_actions", "user": {"id": user, "username": user.lower()},
            "response_url": "https://hooks.slack.com/actions/T0/1/x",
            "actions": [{"action_id": action, "value": f"{approval['id']}:{approval['plan_hash']}"}]}


def live(agent: AgentManager) -> list[dict[str, Any]]:
    return [r["body"] for r in agent.requests if r["body"].get("dry_run") is False]


def test_approved_through_slack_after_every_bad_attempt_is_refused(make, stand, pg_dsn) -> None:
    agent, slack = stand
    service = make().start()
    viewer, op2 = token(service, "viewer1", "viewer"), token(service, "op2", "operator")
    execution_id = start(service)      # by the admin token, by hand
    approval = pending(service, execution_id)
    assert approval["status"] == "pending" and approval["action"] == "delete_pod"
    assert approval["plan"]["request"]["dry_run"] is False
    assert "server dry run" in approval["plan"]["dry_run_result"]["stdout"]
    # The approvers were told, with the buttons; nothing live has left.
    message = service.wait_for(lambda: next((r["body"] for r in slack.requests if isinstance(r["body"], dict)
                                             and "Approval needed" in r["body"].get("text", "")), None))
    buttons = next(b for b in message["blocks"] if b["type"] == "actions")["elements"]
    assert [b["action_id"] for b in buttons] == ["approve", "deny"]
    assert buttons[0]["value"] == f"{approval['id']}:{approval['plan_hash']}"
    assert f"/api/v1/approvals/{approval['id']}" in message["text"]
    shown = service.get(f"/api/v1/executions/{execution_id}")
    assert shown["outcome"] == "waiting_approval"
    assert [s["status"] for s in shown["steps"] if s["step_id"] == "fix"] == ["waiting_approval"]
    assert live(agent) == []

    url = f"{service.url}/api/v1/approvals/{approval['id']}"
    # The admin started it by hand: may not approve it. A viewer may not decide at all.
    own = httpx.post(f"{url}/approve", json={}, headers=service.headers)
    assert own.status_code == 403 and "started this execution" in own.json()["detail"]
    assert httpx.post(f"{url}/deny", json={}, headers=service.headers).status_code == 403
    assert httpx.post(f"{url}/approve", json={}, headers=viewer).status_code == 403
    # A plan hash other than the approval's: refused.
    stale_plan = httpx.post(f"{url}/approve", json={"plan_hash": "0" * 64}, headers=op2)
    assert stale_plan.status_code == 409 and "plan changed" in stale_plan.json()["detail"]
    # Slack: wrong secret, a timestamp 10 minutes old, no signature, an unmapped user.
    assert slack_post(service, button(approval, "U0OPS2"), secret="wrong").status_code == 401
    old = int(time.time()) - 600
    assert slack_post(service, button(approval, "U0OPS2"), timestamp=old).status_code == 401
    assert slack_post(service, button(approval, "U0OPS2"), headers={}).status_code == 401
    assert slack_post(service, button(approval, "U0STRANGER")).status_code == 403
    # A press of a notification's "Open the execution" link button is acknowledged, and decides nothing.
    link = {"type": "block_actions", "user": {"id": "U0STRANGER"},
            "actions": [{"action_id": "open_execution", "type": "button"}]}
    assert slack_post(service, link).status_code == 200
    tampered = urllib.parse.urlencode({"payload": json.dumps(button(approval, "U0OPS2"))}).encode()
    stamp = str(int(time.time()))
    forged = slack_post(service, {}, body=tampered.replace(b"approve", b"deny"),
                        headers={"X-Slack-Request-Timestamp": stamp,
                                 "X-Slack-Signature": slack_sign(SIGNING_SECRET, stamp, tampered)})
    assert forged.status_code == 401
    assert service.get(f"/api/v1/approvals/{approval['id']}")["status"] == "pending"
    assert live(agent) == []

    # The genuine action: approved, once. Its replay changes nothing.
    body = urllib.parse.urlencode({"payload": json.dumps(button(approval, "U0OPS2"))}).encode()
    stamp = str(int(time.time()))
    signed = {"X-Slack-Request-Timestamp": stamp,
              "X-Slack-Signature": slack_sign(SIGNING_SECRET, stamp, body)}
    first = slack_post(service, {}, body=body, headers=signed)
    assert first.status_code == 200 and "Approved by op2" in first.json()["text"]
    replay = slack_post(service, {}, body=body, headers=signed)
    assert replay.status_code == 409
    late = httpx.post(f"{url}/deny", json={"comment": "too late"}, headers=op2)
    assert late.status_code == 409 and "already approved by op2" in late.json()["detail"]

    ended = finished(service, execution_id)
    assert ended["status"] == "succeeded" and ended["outcome"] == "remediated"
    assert [a["status"] for a in ended["approvals"]] == ["approved"]
    assert ended["approvals"][0]["channel"] == "slack" and ended["approvals"][0]["decided_by"] == "op2"
    (sent,) = live(agent)
    assert agent.applied[sent["idempotency_key"]] == 1
    trail = service.get("/api/v1/audit", target_id=execution_id, action="approval.")["items"]
    actions = [r["action"] for r in trail]
    assert actions.count("approval.approved") == 1 and actions.count("approval.requested") == 1
    assert actions.count("approval.refused") >= 4
    approved = next(r for r in trail if r["action"] == "approval.approved")
    assert approved["actor"] == "op2" and approved["actor_kind"] == "slack"
    assert approved["detail"]["plan_hash"] == approval["plan_hash"]
    rows = sql(pg_dsn, "SELECT count(*) AS n FROM approvals")
    assert rows[0]["n"] == 1


def test_denied_or_expired_the_change_is_not_made_and_the_failure_path_runs(make, stand) -> None:
    agent, _ = stand
    service = make().start()
    op2 = token(service, "op2", "operator")
    denied = start(service)
    approval = pending(service, denied)
    answer = httpx.post(f"{service.url}/api/v1/approvals/{approval['id']}/deny",
                        json={"comment": "not during the sale", "plan_hash": approval["plan_hash"]},
                        headers=op2)
    assert answer.status_code == 200 and answer.json()["status"] == "denied"
    ended = finished(service, denied)
    assert ended["status"] == "failed"
    steps = {s["step_id"]: s for s in ended["steps"]}
    assert steps["fix"]["error_kind"] == "NotApproved" and "not during the sale" in steps["fix"]["error"]
    assert steps["said_not_done"]["status"] == "succeeded" and "said_done" not in steps

    expired = start(service, "approve-quick")      # 2 s, nobody decides
    ended = finished(service, expired)
    steps = {s["step_id"]: s for s in ended["steps"]}
    assert "expired" in steps["fix"]["error"] and steps["said_not_done"]["status"] == "succeeded"
    assert [a["status"] for a in ended["approvals"]] == ["expired"]
    assert live(agent) == []


def test_kill_9_while_waiting_then_restart_and_approve_sends_the_change_once(make, stand) -> None:
    agent, _ = stand
    first = make().start()
    op2 = token(first, "op2", "operator")
    execution_id = start(first)
    approval = pending(first, execution_id)
    first.kill()
    second = make().start()       # the same replica id, restarted: it resumes the execution
    again = pending(second, execution_id)
    assert again["id"] == approval["id"]          # the same approval, not a second one
    assert sum(1 for r in agent.requests if r["body"].get("dry_run") is True) == 1
    answer = httpx.post(f"{second.url}/api/v1/approvals/{approval['id']}/approve",
                        json={"plan_hash": approval["plan_hash"]}, headers=op2)
    assert answer.status_code == 200, answer.text
    ended = finished(second, execution_id)
    assert ended["status"] == "succeeded" and ended["outcome"] == "remediated"
    (sent,) = live(agent)
    assert agent.calls[sent["idempotency_key"]] == 1 and agent.applied[sent["idempotency_key"]] == 1


def test_two_replicas_one_approval_one_change_even_when_the_waiting_one_dies(make, stand, pg_dsn) -> None:
    agent, _ = stand
    a = make("appr-a").start()
    b = make("appr-b").start()
    op2 = token(a, "op2", "operator")
    # One waits on replica a; the decisions race on both replicas: one wins.
    execution_id = start(a)
    approval = pending(b, execution_id)       # listed by either replica
    decisions = [httpx.post(f"{r.url}/api/v1/approvals/{approval['id']}/approve", json={}, headers=op2)
                 for r in (b, a, b)]
    assert [d.status_code for d in decisions] == [200, 409, 409]
    ended = finished(a, execution_id)
    assert ended["status"] == "succeeded"
    (sent,) = live(agent)
    assert agent.applied[sent["idempotency_key"]] == 1
    # Another waits on a, and a dies: b takes the execution over and waits on the same approval.
    orphan = start(a)
    approval = pending(a, orphan)
    a.kill()
    b.wait_for(lambda: sql(pg_dsn, "SELECT owner FROM workflow_executions WHERE id = $1",
                           orphan)[0]["owner"] == "appr-b", 30)
    assert pending(b, orphan)["id"] == approval["id"]
    answer = httpx.post(f"{b.url}/api/v1/approvals/{approval['id']}/approve", json={}, headers=op2)
    assert answer.status_code == 200, answer.text
    assert finished(b, orphan)["outcome"] == "remediated"
    keys = [r["idempotency_key"] for r in live(agent)]
    assert len(keys) == 2 and all(agent.applied[k] == 1 and agent.calls[k] == 1 for k in keys)

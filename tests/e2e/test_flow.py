"""The whole path, with the service as a process: NATS -> incident -> workflow -> Slack -> API."""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path

import pytest

from tests.e2e.harness import ServiceProcess
from tests.e2e.harness import sql as _sql
from tests.standins import AgentManager, ReasoningService, Slack

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.fixture
def standins():
    agent, reasoning, slack = AgentManager().start(), ReasoningService("OOM").start(), Slack().start()
    yield agent, reasoning, slack
    for s in (agent, reasoning, slack):
        s.stop()


@pytest.fixture
def service(tmp_path, pg_dsn, redis_url, redis_prefix, nats_url, nats_prefix, standins):
    agent, reasoning, slack = standins
    proc = ServiceProcess(tmp_path, pg_dsn=pg_dsn, redis_url=redis_url, redis_prefix=redis_prefix,
                          nats_url=nats_url, nats_prefix=nats_prefix, agent_manager=agent.url,
                          reasoning=reasoning.url, slack=f"{slack.url}/services/T000/B000/secret")
    proc.start()
    yield proc
    proc.stop()




def test_sample_events_become_incidents_workflows_and_slack_messages(service, standins, pg_dsn):
    agent, _reasoning, slack = standins
    lines = (FIXTURES / "watch-stream.jsonl").read_bytes().splitlines()
    envelope = (FIXTURES / "agent-manager-envelope.json").read_bytes()
    acks = service.publish([*lines, envelope])
    assert not [a for a in acks if isinstance(a, Exception)]

    # Four incidents: the crash loop in blog, the node, the PVC, and agent-manager's envelope.
    # Three close when their workflows end; the node's waits two minutes before rechecking.
    service.wait_for(lambda: len(_sql(pg_dsn, "SELECT id FROM incidents WHERE status = 'closed'")) >= 3)
    incidents = _sql(pg_dsn, "SELECT * FROM incidents")
    assert len(incidents) == 4, [(i["strategy_id"], i["key"], i["events"], i["status"]) for i in incidents]
    keys = {(i["strategy_id"], i["key"]) for i in incidents}
    assert ("pod_crashloop", "blog/web") in keys
    assert ("pod_crashloop", "shop/checkout") in keys
    assert ("node_not_ready", "node-3") in keys
    assert ("pvc_pending", "data/data-db-0") in keys
    crash = next(i for i in incidents if i["key"] == "blog/web")
    assert crash["events"] == 4          # 1 + 1 + (3 - 1); the exact duplicate counts once

    # The seed's queries, as written.
    executions = _sql(pg_dsn, "SELECT id, workflow_id, status, started_at, duration FROM workflow_executions "
                              "ORDER BY started_at DESC LIMIT 10;")
    assert len(executions) == 4
    by_workflow = {e["workflow_id"]: e for e in executions}
    assert by_workflow["diagnose_node_not_ready"]["status"] == "running"   # in its wait step
    finished = [e for e in executions if e["workflow_id"] != "diagnose_node_not_ready"]
    assert all(e["status"] in ("succeeded", "failed") and e["duration"] is not None for e in finished)
    # Only the OOM answer led to a change, applied once per idempotency key.
    assert sum(agent.applied.values()) == 2 and set(agent.applied.values()) == {1}
    # Each remediation request sent is on the audit trail, with its key, target and dry-run flag.
    sent = [r["body"] for r in agent.requests if isinstance(r["body"], dict) and "dry_run" in r["body"]]
    audited = [{**a, "detail": json.loads(a["detail"])} for a in _sql(
        pg_dsn, "SELECT actor_kind, target_id, detail FROM audit_log WHERE action = 'remediation.request' "
                "ORDER BY id")]
    keys = sorted(b["idempotency_key"] for b in sent)
    assert keys and sorted(a["detail"]["idempotency_key"] for a in audited) == keys
    assert {a["actor_kind"] for a in audited} == {"system"}
    for a in audited:
        body = next(b for b in sent if b["idempotency_key"] == a["detail"]["idempotency_key"])
        assert (a["detail"]["target"], a["detail"]["dry_run"], a["target_id"]) == (
            body["target"], body["dry_run"], body["execution_id"])
    assert _sql(pg_dsn, "SELECT id, name, category, priority FROM strategies WHERE enabled = true;")

    # Slack heard about each incident, with a link back to the execution.
    messages = service.wait_for(lambda: len(slack.messages) >= 3 and slack.messages)
    assert any("Pod 问题已自动修复" in m and "OOM" in m for m in messages)
    assert all("/api/v1/executions/exec-" in m for m in messages)
    # The webhook URL is a secret: never in the log.
    assert "secret" not in service.log()

    # The API shows it all.
    crash_exec = crash["execution_id"]
    detail = service.get(f"/api/v1/executions/{crash_exec}")
    assert [s["step_id"] if "step_id" in s else s["id"] for s in detail["steps"]][:2] == [
        "collect_logs", "check_resources"]
    listed = service.get("/api/v1/incidents")
    items = listed["items"] if isinstance(listed, dict) else listed
    assert {i["id"] for i in items} >= {i["id"] for i in incidents}
    metrics = service.get("/metrics")
    assert "aetherius_incidents_opened_total" in metrics

    # The seed's log words, with ids to follow one incident with grep.
    log = service.log()
    assert "Strategy matched" in log and "Workflow execution" in log and "Executing command step" in log
    assert f"incident={crash['id']}" in log or f"incident_id={crash['id']}" in log


def test_sigterm_exits_zero_and_leaves_nothing_unrecorded(service, pg_dsn):
    lines = (FIXTURES / "watch-stream.jsonl").read_bytes().splitlines()
    service.publish(lines)
    service.wait_for(lambda: len(_sql(pg_dsn, "SELECT id FROM events")) >= 6)
    assert service.stop(signal.SIGTERM) == 0
    events = _sql(pg_dsn, "SELECT id, state FROM events")
    assert len(events) == 6
    assert all(e["state"] != "received" for e in events), events
    assert "Aetherius Orchestrator stopped" in Path(service.log_path).read_text()


def test_http_events_go_the_same_way(service, pg_dsn):
    body = json.loads((FIXTURES / "core-v1-backoff.json").read_text())
    response = service.post("/api/v1/events", body)
    assert response.status_code == 202, response.text
    service.wait_for(lambda: _sql(pg_dsn, "SELECT id FROM incidents WHERE key = 'shop/checkout'"))


def test_a_fresh_start_is_generation_one_and_one_api_write_is_one_reload(service):
    """The service hears of its own write through NOTIFY; that is no news, not a second
    generation (and mirroring the rule files at start-up is none either)."""
    def reloads() -> list[tuple[str, str]]:
        return re.findall(r"Rules reloaded: generation (\d+) .*?\[([^,\]]+),", service.log())

    assert reloads() == [("1", "start")]
    assert service.get("/api/v1/rules/status")["generation"] == 1
    note = {"id": "note", "type": "notification", "config": {"channel": "log", "message": "hi"}}
    workflow = {"id": "by_hand", "trigger_type": "manual", "steps": [note]}
    created = service.post("/api/v1/workflows", workflow)
    assert created.status_code == 201, created.text
    assert created.json()["reload"]["generation"] == 2
    time.sleep(1.5)       # NOTIFY arrives within milliseconds; give it ample time
    assert reloads() == [("1", "start"), ("2", "api")]
    assert service.get("/api/v1/rules/status")["generation"] == 2


def test_a_pod_whose_status_shows_an_oom_kill_opens_an_oom_incident(service, pg_dsn):
    """The kubelet emits no OOMKilled Event: the service reads it from the Pod's status."""
    pod = {"type": "MODIFIED", "object": {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "cart-7d9f8c6b5-x2x4k", "namespace": "shop", "uid": "e2e-pod-1"},
        "spec": {"nodeName": "node-a3"},
        "status": {"containerStatuses": [{
            "name": "cart", "restartCount": 2, "state": {"running": {}},
            "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137,
                                         "finishedAt": "2026-11-20T08:12:44Z"}}}]}}}
    response = service.post("/api/v1/events", pod)
    assert response.status_code == 202, response.text
    assert response.json()["accepted"] == 1
    rows = service.wait_for(lambda: _sql(pg_dsn, "SELECT strategy_id, events FROM incidents "
                                                 "WHERE key = 'shop/cart'"))
    assert rows[0]["strategy_id"] == "oom_killed" and rows[0]["events"] == 2
    # The same status again (a relist) adds nothing.
    again = service.post("/api/v1/events", pod)
    assert again.json()["duplicates"] == 1

"""The service as a process pages PagerDuty for the incidents its routes send there: a
trigger when the incident opens, a resolve when it closes after a change was applied, and
an alert left open when the workflow fixed nothing. The shipped rules are used as written
(their steps say ``channel: slack``); Slack gets Block Kit messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.harness import ServiceProcess
from tests.e2e.harness import sql as _sql
from tests.standins import AgentManager, PagerDuty, ReasoningService, Slack

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
ROUTING_KEY = "e93facc04764012d7bfb002500d5d1a6"


@pytest.fixture
def standins():
    started = (AgentManager().start(), ReasoningService("OOM").start(), Slack().start(), PagerDuty().start())
    yield started
    for s in started:
        s.stop()


def test_incidents_the_routes_send_to_pagerduty_are_triggered_then_resolved(
        tmp_path, pg_dsn, redis_url, redis_prefix, nats_url, nats_prefix, standins):
    agent, reasoning, slack, pagerduty = standins
    proc = ServiceProcess(tmp_path, pg_dsn=pg_dsn, redis_url=redis_url, redis_prefix=redis_prefix,
                          nats_url=nats_url, nats_prefix=nats_prefix, agent_manager=agent.url,
                          reasoning=reasoning.url, slack=f"{slack.url}/services/T000/B000/secret", extra={
                              "notifications": {
                                  "pagerduty": {"url": pagerduty.url},
                                  "routes": [
                                      {"match": {"severity": ["high"]}, "channels": ["pagerduty", "slack"]},
                                      {"match": {"strategy": ["pvc_*"]}, "channels": ["pagerduty"]}]}})
    proc.env["AETHERIUS_NOTIFICATIONS__PAGERDUTY__ROUTING_KEY"] = ROUTING_KEY
    proc.start()
    try:
        lines = (FIXTURES / "watch-stream.jsonl").read_bytes().splitlines()
        envelope = (FIXTURES / "agent-manager-envelope.json").read_bytes()
        assert not [a for a in proc.publish([*lines, envelope]) if isinstance(a, Exception)]
        proc.wait_for(lambda: len(_sql(pg_dsn, "SELECT id FROM incidents WHERE status = 'closed'")) >= 3)
        incidents = {(i["strategy_id"], i["key"]): i for i in _sql(pg_dsn, "SELECT * FROM incidents")}
        crash = [incidents[("pod_crashloop", "blog/web")], incidents[("pod_crashloop", "shop/checkout")]]
        pvc = incidents[("pvc_pending", "data/data-db-0")]
        node = incidents[("node_not_ready", "node-3")]

        # The crash loops (severity high) were paged when they opened, and resolved when they
        # closed with a change applied (the OOM fix); dedup_key is the incident id.
        proc.wait_for(lambda: all(pagerduty.alerts.get(i["id"]) == "resolved" for i in crash))
        for incident in crash:
            assert pagerduty.actions(incident["id"]) == ["trigger", "resolve"]
            trigger = next(e for e in pagerduty.events if e["dedup_key"] == incident["id"])
            assert trigger["payload"]["severity"] == "error"
            assert trigger["payload"]["class"] == "pod_crashloop"
            assert trigger["links"][0]["href"] == f"{proc.url}/api/v1/executions/{incident['execution_id']}"
        rows = _sql(pg_dsn, "SELECT id, outcome FROM workflow_executions")
        outcomes = {e["id"]: e["outcome"] for e in rows}
        assert {outcomes[i["execution_id"]] for i in crash} == {"remediated"}
        # The PVC's workflow changed nothing: its alert stays open for a human.
        proc.wait_for(lambda: pvc["id"] in pagerduty.alerts)
        assert pagerduty.actions(pvc["id"]) == ["trigger"] and outcomes[pvc["execution_id"]] != "remediated"
        assert "stays open for a human" in proc.log()
        # The node (critical) matches no route: no page.
        assert pagerduty.actions(node["id"]) == []

        # The shipped workflows' Slack steps, unchanged, now send Block Kit with a link button.
        messages = proc.wait_for(lambda: len(slack.requests) >= 3 and [r["body"] for r in slack.requests])
        for body in messages:
            assert body["blocks"][0]["type"] == "header"
            (button,) = body["blocks"][-1]["elements"]
            assert button["url"].startswith(f"{proc.url}/api/v1/executions/exec-")
        log = proc.log()
        assert ROUTING_KEY not in log and "secret" not in log
    finally:
        proc.stop()

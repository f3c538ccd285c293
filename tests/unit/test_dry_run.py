"""Dry-run (``aetherius run`` without --live, ``replay``) records what the service would do
with the same configuration, and never claims that a call it did not make succeeded."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from engine.rules.check import load_valid
from engine.rules.model import Workflow
from engine.runner import WorkflowRunner
from steps.base import Settings

WORKFLOW = """id: every_call
steps:
  - id: look
    type: command
    config: {action: get}
    on_success: [think]
  - id: think
    type: ai_analysis
    on_success: [fix]
  - id: fix
    type: remediation
    config: {action: restart_rollout}
    on_success: [tell_slack]
  - id: tell_slack
    type: notification
    config: {channel: slack, message: "fixed {{ incident.workload }}"}
    on_success: [tell_ops]
  - id: tell_ops
    type: notification
    config: {channel: webhook, webhook: ops, message: "fixed"}
"""
INCIDENT = {"id": "inc-1", "namespace": "blog", "workload": "web", "workload_kind": "Deployment",
            "pod": "web-1", "kind": "Pod", "reason": "BackOff", "severity": "high", "count": 3}
URLS: dict[str, Any] = {
    "agent_manager_url": "http://agent.test", "reasoning_service_url": "http://reasoning.test",
    "slack_webhook_url": "http://slack.test/hook", "webhooks": {"ops": "http://ops.test/hook"},
}


class _Response:
    status_code = 200

    def __init__(self, body: bytes) -> None:
        self.content = body
        self.text = body.decode()

    def json(self) -> Any:
        import json

        return json.loads(self.content)


class RecordingClient:
    """An HttpClient that answers like the real services and remembers every call."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def post_json(self, url: str, payload: object, timeout: float, wait: Any = None) -> _Response:
        self.calls.append(url)
        if url.endswith("/api/v1/commands"):
            return _Response(b'{"status": "success", "exit_code": 0, "stdout": "ok", "stderr": ""}')
        if url.endswith("/api/v1/analyze"):
            return _Response(b'{"root_cause": "OOM", "confidence": 0.9}')
        return _Response(b"")


@pytest.fixture(scope="module")
def workflow(tmp_path_factory: pytest.TempPathFactory) -> Workflow:
    directory: Path = tmp_path_factory.mktemp("rules")
    (directory / "wf.yaml").write_text(WORKFLOW, encoding="utf-8")
    return load_valid(directory).workflows["every_call"]


def run(workflow: Workflow, settings: Settings, http: RecordingClient | None = None) -> dict[str, Any]:
    async def go() -> Any:
        runner = WorkflowRunner(settings=settings, http=http)
        return await runner.run(workflow, incident=INCIDENT, execution_id="exec-1")

    execution = asyncio.run(go())
    return {"status": execution.status,
            "steps": {r.step_id: (r.status, r.output, r.error) for r in execution.runs}}


def statuses(result: dict[str, Any]) -> dict[str, str]:
    return {sid: status for sid, (status, _, _) in result["steps"].items()}


def test_without_urls_dry_run_and_the_service_agree_step_by_step(workflow):
    service = run(workflow, Settings(live=True), RecordingClient())
    dry = run(workflow, Settings(live=False, virtual_time=True))

    assert statuses(dry) == statuses(service) == {
        "look": "succeeded", "think": "succeeded", "fix": "succeeded",
        "tell_slack": "skipped",     # no Slack webhook: skipped, as the service marks it
        "tell_ops": "failed",        # a named webhook that is not configured is refused
    }
    assert dry["status"] == service["status"] == "failed"
    for sid in ("tell_slack", "tell_ops"):
        assert dry["steps"][sid][1:] == service["steps"][sid][1:]
    slack = dry["steps"]["tell_slack"][1]
    assert slack["sent"] is False
    assert slack["reason"] == "notifications.slack.webhook_url is not configured"
    assert "webhook 'ops' is not configured" in dry["steps"]["tell_ops"][2]
    # Nothing configured: the same words as the service, not "dry-run".
    assert dry["steps"]["look"][1]["reason"] == service["steps"]["look"][1]["reason"] == (
        "agent_manager.url is not configured")
    assert dry["steps"]["think"][1]["fallback_reason"] == service["steps"]["think"][1]["fallback_reason"] == (
        "reasoning-service is not configured")


def test_with_urls_dry_run_calls_nothing_and_says_so(workflow):
    http = RecordingClient()
    dry = run(workflow, Settings(live=False, virtual_time=True, **URLS), http)

    assert http.calls == []
    assert dry["status"] == "succeeded"
    assert set(statuses(dry).values()) == {"succeeded"}
    look, think, fix = (dry["steps"][sid][1] for sid in ("look", "think", "fix"))
    # Was: status "dry_run", dry_run true. A command is a read: its request carries no
    # dry-run flag, so its record says it was not sent, and that it only reads.
    assert look["status"] == "not_sent" and look["sent"] is False and look["read_only"] is True
    assert "dry_run" not in look
    assert look["reason"] == "dry-run: agent-manager not called"
    assert think["source"] == "builtin"
    assert think["fallback_reason"] == "dry-run: reasoning-service not called"
    assert fix["applied"] is False and fix["dry_run"] is True
    for sid in ("tell_slack", "tell_ops"):
        output = dry["steps"][sid][1]
        assert output["sent"] is False and output["dry_run"] is True
        assert output["reason"] == "dry-run: nothing was sent"


def test_with_urls_the_service_calls_every_one(workflow):
    http = RecordingClient()
    live = run(workflow, Settings(live=True, **URLS), http)

    assert live["status"] == "succeeded"
    assert http.calls == ["http://agent.test/api/v1/commands", "http://reasoning.test/api/v1/analyze",
                          "http://agent.test/api/v1/commands", "http://slack.test/hook", "http://ops.test/hook"]
    assert live["steps"]["tell_slack"][1]["sent"] is True
    assert "dry_run" not in live["steps"]["look"][1]

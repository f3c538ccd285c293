"""The seed workflow, exactly as written in rules/, run against the HTTP stand-ins."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from engine.correlation import incident_from_event
from engine.events import parse_event
from engine.rules.check import load_valid
from engine.rules.model import Workflow
from engine.runner import WorkflowRunner, summary
from engine.service.transport import make_client
from engine.store import MemoryStore
from steps.base import Settings

REPO = Path(__file__).resolve().parents[2]
SEED = "diagnose_pod_crashloop"
SEED_PATH = ["collect_logs", "check_resources", "ai_analysis", "decide_action", "execute_remediation",
             "notify_success"]
OOM_DESCRIBE = "Containers:\n  checkout:\n    Last State: Terminated Reason: OOMKilled Exit Code: 137\n"


def seed() -> Workflow:
    return load_valid(REPO / "rules").workflows[SEED]


def incident() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    raw = json.loads((REPO / "tests" / "fixtures" / "core-v1-backoff.json").read_text())
    event = parse_event(raw)
    return incident_from_event(event, "workflow:" + SEED, "high"), [event.to_dict()]


def settings(agent, reasoning, slack, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        agent_manager_url=agent.url, reasoning_service_url=reasoning.url, slack_webhook_url=slack.url,
        dry_run=False, live=True)
    values.update(overrides)
    return Settings(**values)


def run(workflow: Workflow, config: Settings, store: MemoryStore | None = None):
    inc, events = incident()

    async def go():
        http = make_client()
        runner = WorkflowRunner(http=http, store=store, settings=config)
        try:
            return await runner.run(workflow, incident=inc, events=events)
        finally:
            await http.aclose()

    return asyncio.run(go())


def path(execution) -> list[str]:
    return [s["id"] for s in summary(execution)["steps"]]


def statuses(execution) -> dict[str, str]:
    return {s["id"]: s["status"] for s in summary(execution)["steps"]}


def bodies(agent, action: str | None = None) -> list[dict[str, Any]]:
    return [r["body"] for r in agent.requests
            if isinstance(r["body"], dict) and (action is None or r["body"].get("action") == action)]


def output(execution, step_id: str) -> Any:
    (found,) = [r for r in execution.runs if r.step_id == step_id]
    return found.output


# ----------------------------------------------------------------------------- happy path


def test_seed_oom_path_remediates_and_notifies(agent, reasoning, slack):
    execution = run(seed(), settings(agent, reasoning, slack))

    assert execution.status == "succeeded", execution.error
    assert path(execution) == SEED_PATH
    assert set(statuses(execution).values()) == {"succeeded"}
    assert execution.dry_run is False
    assert output(execution, "ai_analysis")["source"] == "reasoning-service"
    assert output(execution, "ai_analysis")["root_cause"] == "OOM"
    assert len(reasoning.requests) == 1

    # Slack: the seed's success text and the root cause.
    assert len(slack.messages) == 1
    assert "Pod 问题已自动修复" in slack.messages[0]
    assert "OOM" in slack.messages[0]

    # agent-manager: logs, describe, then a live increase_memory with an idempotency key.
    assert [b["action"] for b in bodies(agent)] == ["logs", "describe", "increase_memory"]
    (remediation,) = bodies(agent, "increase_memory")
    assert remediation["dry_run"] is False
    assert remediation["idempotency_key"]
    assert remediation["target"]["kind"] == "Deployment"
    assert remediation["target"]["name"] == "checkout"
    assert remediation["target"]["namespace"] == "shop"
    assert agent.applied == {remediation["idempotency_key"]: 1}
    assert execution.outcome == "remediated"
    assert "Changed: execute_remediation applied" in slack.messages[0]
    logs = bodies(agent, "logs")[0]
    assert logs["args"] == ["--tail=100", "--previous"]
    assert logs["target"] == {"namespace": "shop", "kind": "Pod", "name": "checkout-7d9f8c6b5-x2x4k",
                              "container": "checkout"}


def test_seed_requests_carry_the_agent_manager_contract(agent, reasoning, slack):
    execution = run(seed(), settings(agent, reasoning, slack))
    assert execution.status == "succeeded"
    requests = bodies(agent)
    assert len(requests) == 3
    keys = set()
    for body in requests:
        for name in ("execution_id", "step_id", "idempotency_key", "tool", "action", "args", "target",
                     "timeout_s"):
            assert name in body, (name, body)
        assert body["execution_id"] == execution.id
        assert body["tool"] == "kubectl"
        assert isinstance(body["args"], list)
        assert isinstance(body["timeout_s"], int) and body["timeout_s"] > 0
        assert {"namespace", "kind", "name"} <= set(body["target"])
        assert all(body["target"][k] for k in ("namespace", "kind", "name"))
        keys.add(body["idempotency_key"])
    assert [b["step_id"] for b in requests] == ["collect_logs", "check_resources", "execute_remediation"]
    assert len(keys) == 3   # one key per step run
    assert [b["timeout_s"] for b in requests[:2]] == [30, 30]   # the steps' "30s"


# ----------------------------------------------------------------------------- failure path


def test_seed_failed_logs_go_to_notify_failure(agent, reasoning, slack):
    agent.fail_actions = {"logs"}
    execution = run(seed(), settings(agent, reasoning, slack))

    assert execution.status == "failed"
    assert path(execution) == ["collect_logs", "notify_failure"]
    assert statuses(execution) == {"collect_logs": "failed", "notify_failure": "succeeded"}
    (failed,) = [r for r in execution.runs if r.step_id == "collect_logs"]
    assert failed.error_kind == "CommandFailed"
    assert failed.attempts == 1
    assert "collect_logs" in (execution.error or "")
    assert len(slack.messages) == 1
    assert "自动修复失败" in slack.messages[0]
    assert reasoning.requests == []
    assert [b["action"] for b in bodies(agent)] == ["logs"]
    assert not agent.applied


# ----------------------------------------------------------------------------- AI fallback


def test_seed_reasoning_service_503_falls_back_to_builtin(agent, reasoning, slack):
    reasoning.status = 503
    execution = run(seed(), settings(agent, reasoning, slack, ai_max_retries=0))

    assert execution.status == "succeeded", execution.error
    analysis = output(execution, "ai_analysis")
    assert analysis["source"] == "builtin"
    assert "503" in analysis["fallback_reason"]
    assert len(reasoning.requests) == 1
    # The evidence shows no known cause: nothing to patch, the path still completes.
    assert analysis["root_cause"] == "Unknown"
    assert statuses(execution)["execute_remediation"] == "skipped"
    assert path(execution) == SEED_PATH
    assert bodies(agent, "increase_memory") == []
    assert len(slack.messages) == 1
    # The seed's text still says fixed; the line after it says what really happened.
    assert execution.outcome == "needs_human"
    assert "Pod 问题已自动修复" in slack.messages[0]
    assert "Nothing was changed: execute_remediation (the decision" in slack.messages[0]
    assert "a human should look" in slack.messages[0]


def test_seed_reasoning_service_stopped_builtin_reads_oom_from_describe(
        agent, reasoning, slack, stop_standin):
    stop_standin(reasoning)
    agent.stdout = {"describe": OOM_DESCRIBE}
    execution = run(seed(), settings(agent, reasoning, slack, ai_max_retries=0))

    assert execution.status == "succeeded", execution.error
    assert path(execution) == SEED_PATH
    analysis = output(execution, "ai_analysis")
    assert analysis["source"] == "builtin"
    assert "unreachable" in analysis["fallback_reason"]
    assert analysis["root_cause"] == "OOM"
    assert output(execution, "decide_action")["value"] == "increase_memory"
    (remediation,) = bodies(agent, "increase_memory")
    assert remediation["dry_run"] is False
    assert agent.applied[remediation["idempotency_key"]] == 1
    assert "Pod 问题已自动修复" in slack.messages[0]
    assert "built-in classifier" in slack.messages[0]


def test_seed_ai_max_retries_is_honoured(agent, reasoning, slack):
    reasoning.status = 503
    agent.stdout = {"describe": OOM_DESCRIBE}
    execution = run(seed(), settings(agent, reasoning, slack, ai_max_retries=2))

    assert execution.status == "succeeded", execution.error
    analyze = [r for r in reasoning.requests if r["path"] == "/api/v1/analyze"]
    assert len(analyze) == 3   # the first call and two retries
    assert output(execution, "ai_analysis")["source"] == "builtin"
    assert output(execution, "ai_analysis")["root_cause"] == "OOM"
    # The retries happen inside one attempt of the step.
    (run_,) = [r for r in execution.runs if r.step_id == "ai_analysis"]
    assert run_.attempts == 1


def test_seed_ai_timeout_is_honoured(agent, reasoning, slack):
    reasoning.delay = 1.0
    config = settings(agent, reasoning, slack, ai_timeout=0.1, ai_max_retries=0)
    began = time.monotonic()
    execution = run(seed(), config)
    elapsed = time.monotonic() - began

    assert execution.status == "succeeded", execution.error
    analysis = output(execution, "ai_analysis")
    assert analysis["source"] == "builtin"
    assert "did not answer within 0.1s" in analysis["fallback_reason"]
    assert len(reasoning.requests) == 1
    assert elapsed < 0.9


# ----------------------------------------------------------------------------- dry-run


def test_seed_dry_run_setting_keeps_the_cluster_unchanged(agent, reasoning, slack):
    execution = run(seed(), settings(agent, reasoning, slack, dry_run=True))

    assert execution.status == "succeeded", execution.error
    assert execution.dry_run is True
    assert path(execution) == SEED_PATH
    (remediation,) = bodies(agent, "increase_memory")
    assert remediation["dry_run"] is True
    assert not agent.applied
    out = output(execution, "execute_remediation")
    assert out["applied"] is False and out["dry_run"] is True
    assert "increase_memory (dry-run)" in slack.messages[0]
    assert execution.outcome == "dry_run"
    assert "Nothing was changed: execute_remediation ran as a dry run" in slack.messages[0]


def test_seed_workflow_dry_run_true_wins_over_a_live_config(agent, reasoning, slack, tmp_path):
    text = (REPO / "rules" / "workflows" / "diagnose_pod_crashloop.yaml").read_text(encoding="utf-8")
    (tmp_path / "seed.yaml").write_text(text + "\ndry_run: true\n", encoding="utf-8")
    workflow = load_valid(tmp_path).workflows[SEED]
    assert workflow.dry_run is True

    execution = run(workflow, settings(agent, reasoning, slack, dry_run=False))

    assert execution.status == "succeeded", execution.error
    assert execution.dry_run is True
    (remediation,) = bodies(agent, "increase_memory")
    assert remediation["dry_run"] is True
    assert not agent.applied


def test_seed_store_records_every_transition(agent, reasoning, slack):
    store = MemoryStore()
    execution = run(seed(), settings(agent, reasoning, slack), store)
    saved = store.executions[execution.id]
    assert saved.status == "succeeded"
    assert saved.finished_at is not None
    assert sorted(r.step_id for r in saved.runs) == sorted(SEED_PATH)
    assert {r.status for r in saved.runs} == {"succeeded"}
    operations = [op for op, _, _ in store.log]
    assert operations[0] == "create_execution"
    assert operations[-1] == "finish_execution"
    assert operations.count("finish_step") == len(SEED_PATH)

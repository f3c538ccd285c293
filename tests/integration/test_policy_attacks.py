"""The attacks of issue 9, replayed against the runner and the API with an HTTP stand-in
agent-manager (dry-run on, as by default, unless a case says otherwise): none reaches
agent-manager as a write, and what is recorded is what was sent.

1. a command with ``allow_write: true`` sent ``kubectl delete namespace prod``;
2. the read-only check applied only to ``tool: kubectl`` exactly, and read verbs took any flag;
3. an event's ``involvedObject.name`` became a kubectl flag;
4. a manual execute's ``incident`` aimed a ``delete_pod`` (``action_type: bash``, ``force``) at
   ``kube-system/etcd-master-0``.
"""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_api import BACKOFF, harness, wait_finished

from engine.auth import Principal, Role
from engine.correlation import incident_from_event
from engine.events import parse_event
from engine.exceptions import RuleError
from engine.rules.check import load_valid
from engine.rules.model import Workflow
from engine.runner import WorkflowRunner
from engine.service.transport import make_client
from engine.store import MemoryStore
from steps import REGISTRY
from steps.base import Settings

REPO = Path(__file__).resolve().parents[2]
INCIDENT = {"id": "inc-1", "namespace": "shop", "pod": "checkout-7d9f8c6b5-x2x4k", "container": "checkout",
            "workload": "checkout", "workload_kind": "Deployment", "kind": "Pod",
            "name": "checkout-7d9f8c6b5-x2x4k", "reason": "BackOff", "count": 3}


def writes(agent) -> list[dict[str, Any]]:
    """Requests that could have changed the cluster: a remediation not marked dry-run, or any
    request whose verb is not a read."""
    out = []
    for request in agent.requests:
        body = request["body"]
        if not isinstance(body, dict) or (body.get("dry_run") is not True and (
                "dry_run" in body or body.get("action") not in ("logs", "describe", "get"))):
            out.append(body)
    return out


def run(workflow: Workflow, settings: Settings, incident: dict[str, Any] | None = None,
        events: list[dict[str, Any]] | None = None):
    async def go():
        http = make_client()
        try:
            runner = WorkflowRunner(MemoryStore(), settings, http=http)
            return await runner.run(workflow, incident=incident or INCIDENT, events=events or [])
        finally:
            await http.aclose()

    return asyncio.run(go())


def past_the_checks(steps: list[dict[str, Any]]) -> Workflow:
    """A workflow as if load-time checks had a hole: each config parsed by its model only."""
    workflow = Workflow.model_validate({"id": "attack", "steps": copy.deepcopy(steps)})
    for spec in workflow.steps:
        config = {k: v for k, v in spec.config.items() if k != "allow_write"}
        spec._parsed = REGISTRY[spec.type].Config.model_validate(config)
    return workflow


def default(agent, **changes: Any) -> Settings:
    """A default start (dry-run on) pointed at the stand-in."""
    return Settings(**{"agent_manager_url": agent.url, "live": True, **changes})


# ----------------------------------------------------------------------------- 1: allow_write


DELETE_NS = {"id": "wipe", "type": "command",
             "config": {"action": "delete", "args": ["namespace", "prod"], "allow_write": True}}


def test_allow_write_is_refused_when_rules_load(tmp_path):
    (tmp_path / "wipe.yaml").write_text(yaml.safe_dump({"id": "wipe", "steps": [DELETE_NS]}),
                                        encoding="utf-8")
    with pytest.raises(RuleError) as caught:
        load_valid(tmp_path)
    messages = [p.message for p in caught.value.problems]
    assert any("allow_write is gone" in m and "remediation step" in m for m in messages), messages
    # Without it, the verb itself is refused.
    plain = {**DELETE_NS, "config": {"action": "delete", "args": ["namespace", "prod"]}}
    (tmp_path / "wipe.yaml").write_text(yaml.safe_dump({"id": "wipe", "steps": [plain]}), encoding="utf-8")
    with pytest.raises(RuleError) as caught:
        load_valid(tmp_path)
    assert "kubectl delete changes the cluster" in caught.value.problems[0].message


@pytest.mark.parametrize("dry_run", [True, False])
def test_delete_namespace_never_reaches_agent_manager(agent, dry_run):
    execution = run(past_the_checks([DELETE_NS]), default(agent, dry_run=dry_run))
    assert execution.runs[0].error_kind == "NotAllowed"
    assert "use a remediation step" in execution.runs[0].error
    assert agent.requests == []


def test_the_record_says_what_was_sent(agent):
    """Dry-run on: every request is a read without a dry-run flag, or a change with
    dry_run true; the execution says dry-run; each step's record says what its request did."""
    workflow = load_valid(REPO / "rules").workflows["diagnose_oom_killed"]
    agent.stdout = {"describe": "Last State: Terminated Reason: OOMKilled Exit Code: 137"}
    execution = run(workflow, default(agent))
    assert execution.status == "succeeded", execution.error
    assert execution.dry_run is True
    assert writes(agent) == []
    by_step = {r["body"]["step_id"]: r["body"] for r in agent.requests}
    assert set(by_step) == {"check_resources", "collect_logs", "increase_memory"}
    for run_ in execution.runs:
        sent = by_step.get(run_.step_id)
        if sent is None:
            continue
        if "dry_run" in sent:
            assert run_.output["dry_run"] is sent["dry_run"] is True
            assert run_.output["applied"] is False
        else:
            assert run_.output["read_only"] is True and "dry_run" not in run_.output


def test_a_live_change_is_recorded_live(agent):
    workflow = load_valid(REPO / "rules").workflows["diagnose_oom_killed"]
    agent.stdout = {"describe": "Last State: Terminated Reason: OOMKilled Exit Code: 137"}
    execution = run(workflow, default(agent, dry_run=False))
    (change,) = [r["body"] for r in agent.requests if "dry_run" in r["body"]]
    (record,) = [r for r in execution.runs if r.step_id == "increase_memory"]
    assert change["dry_run"] is False and record.output["dry_run"] is False and record.output["applied"]
    assert execution.dry_run is False


# ----------------------------------------------------------------------------- 2: tools and flags


TOOLS_AND_FLAGS = [
    {"tool": "sh", "action": "-c", "args": ["kubectl delete ns prod; id"]},
    {"tool": "helm", "action": "uninstall", "args": ["web"]},
    {"tool": "Kubectl", "action": "delete", "args": ["ns", "prod"]},
    {"tool": "kubectl ", "action": "delete", "args": ["ns", "prod"]},
    {"tool": "/usr/bin/kubectl", "action": "delete", "args": ["ns", "prod"]},
    {"action": "get", "args": ["pods", "--as=system:admin"]},
    {"action": "get", "args": ["secrets", "--all-namespaces", "-o", "yaml"]},
]


@pytest.mark.parametrize("config", TOOLS_AND_FLAGS, ids=lambda c: f"{c.get('tool', 'kubectl')} {c['action']}")
def test_tools_and_flags_are_refused_at_load_and_at_run_time(agent, tmp_path, config):
    step = {"id": "look", "type": "command", "config": config}
    (tmp_path / "wf.yaml").write_text(yaml.safe_dump({"id": "look", "steps": [step]}), encoding="utf-8")
    with pytest.raises(RuleError):
        load_valid(tmp_path)
    execution = run(past_the_checks([step]), default(agent, dry_run=False))
    assert execution.runs[0].error_kind == "NotAllowed"
    assert agent.requests == []


# ----------------------------------------------------------------------------- 3: event values


def hostile_event(name: str = "--kubeconfig=/tmp/evil") -> tuple[dict[str, Any], list[dict[str, Any]]]:
    raw = copy.deepcopy(BACKOFF)
    raw["involvedObject"]["name"] = name
    event = parse_event(raw)
    return incident_from_event(event, "workflow:diagnose_pod_crashloop", "high"), [event.to_dict()]


def test_an_event_name_never_becomes_a_flag(agent, slack):
    incident, events = hostile_event()
    workflow = load_valid(REPO / "rules").workflows["diagnose_pod_crashloop"]
    execution = run(workflow, default(agent, dry_run=False, slack_webhook_url=slack.url), incident, events)
    steps = {r.step_id: r for r in execution.runs}
    assert steps["collect_logs"].error_kind == "NotAllowed"
    assert "--kubeconfig=/tmp/evil" in steps["collect_logs"].error
    assert "notify_failure" in steps
    assert agent.requests == []


def test_an_event_name_in_args_is_refused(agent, load_workflow):
    incident, events = hostile_event()
    workflow = load_workflow({"id": "args", "steps": [
        {"id": "look", "type": "command",
         "config": {"action": "get", "args": ["pod", "{{ incident.pod }}"], "target": {"kind": "Pod"}}}]})
    execution = run(workflow, default(agent, dry_run=False), incident, events)
    assert execution.runs[0].error_kind == "NotAllowed"
    assert "not a Kubernetes name" in execution.runs[0].error
    assert agent.requests == []


# ----------------------------------------------------------------------------- 4: manual execute


ETCD = {"namespace": "kube-system", "pod": "etcd-master-0", "name": "etcd-master-0"}
BASH_DELETE = {"id": "etcd", "name": "etcd", "trigger_type": "manual", "steps": [
    {"id": "delete_pod", "type": "remediation",
     "config": {"action_type": "bash", "action": "delete_pod",
                "params": {"force": True, "grace_period": 0}}}]}
DELETE = {"id": "clean_pod", "name": "clean", "trigger_type": "manual", "steps": [
    {"id": "delete_pod", "type": "remediation", "config": {"action": "delete_pod"}}]}


def test_the_manual_execute_attack(pg_dsn: str, agent) -> None:
    settings = Settings(agent_manager_url=agent.url, live=True)    # dry-run on, as by default

    async def go() -> None:
        async with harness(pg_dsn, settings=settings) as (api, admin):
            made = [await api.tokens.issue(name, role, Principal("cli", "pytest"))
                    for name, role in (("ed", Role.EDITOR), ("op", Role.OPERATOR))]
            editor_token, operator_token = (m[0] for m in made if m is not None)
            async with api.client(token=editor_token) as editor:
                refused = await editor.post("/api/v1/workflows", json=BASH_DELETE)
                assert refused.status_code == 422, refused.text
                detail = {tuple(i["loc"]): i["msg"] for i in refused.json()["detail"]}
                assert "action_type 'bash' is not allowed" in detail[("steps", 0, "config", "action_type")]
                assert "param 'force'" in detail[("steps", 0, "config", "params", "force")]
                assert (await editor.post("/api/v1/workflows", json=DELETE)).status_code == 201

            async with api.client(token=operator_token) as operator:
                denied = await operator.post("/api/v1/workflows/clean_pod/execute",
                                             json={"event": BACKOFF, "incident": ETCD})
                assert denied.status_code == 403, denied.text
                assert "incident.namespace" in denied.json()["detail"]
                assert "policy.override_roles" in denied.json()["detail"]
                # The same workflow on the event alone: its own target, no override.
                own = await operator.post("/api/v1/workflows/clean_pod/execute", json={"event": BACKOFF})
                assert own.status_code == 202, own.text
                await wait_finished(operator, own.json()["execution_id"])

            bad = await admin.post("/api/v1/workflows/clean_pod/execute",
                                   json={"event": BACKOFF, "incident": {"pod": "--kubeconfig=/tmp/evil"}})
            assert bad.status_code == 422, bad.text
            assert bad.json()["detail"][0]["loc"] == ["body", "incident", "pod"]

            allowed = await admin.post("/api/v1/workflows/clean_pod/execute",
                                       json={"event": BACKOFF, "incident": ETCD})
            assert allowed.status_code == 202, allowed.text
            execution = await wait_finished(admin, allowed.json()["execution_id"])
            assert execution["status"] == "failed"
            (step,) = execution["steps"]
            assert step["error_kind"] == "NotAllowed" and "kube-system is protected" in step["error"]

            trail = await api.pool.fetch(
                "SELECT detail FROM audit_log WHERE action = 'execution.start' ORDER BY id")
            starts = [json.loads(r["detail"]) if isinstance(r["detail"], str) else r["detail"] for r in trail]
            # The allowed override is on the record, field by field.
            assert [s["overrides"] for s in starts] == [
                [], ["incident.name", "incident.namespace", "incident.pod"]]

        # Only the operator's own execution reached agent-manager: a dry run, on the event's pod.
        assert writes(agent) == []
        assert [(r["body"]["target"]["namespace"], r["body"]["dry_run"]) for r in agent.requests] == [
            ("shop", True)]

    asyncio.run(go())

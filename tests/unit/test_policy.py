"""The agent-manager policy as a table: each tool x verb x flag x value-from-event case,
refused when rules load (``check``: ``path:line``) and again at run time, on the rendered
request, before anything is sent.

Load time: the case's step is written to a rule file and loaded as ``aetherius check`` does.
Run time: the same step is built *past* the load-time checks (as if they had a hole) and
run by the runner live against a recording HTTP client: the step fails ``NotAllowed`` and
nothing is sent. Values that come from events cannot be judged when rules load: those cases
load and are refused at run time, from a hostile event.
"""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from engine.cli import main
from engine.config import Config
from engine.correlation import incident_from_event
from engine.events import parse_event
from engine.exceptions import NotAllowed, RuleError
from engine.policy import (
    ACTIONS,
    PROTECTED_NAMESPACES,
    WRITE_ACTIONS,
    Policy,
    enforce,
    is_label,
    is_subdomain,
    overrides,
    render_args,
)
from engine.rules.check import load_valid
from engine.rules.model import Workflow
from engine.runner import WorkflowRunner
from steps import REGISTRY
from steps.base import Settings

ROOT = Path(__file__).resolve().parents[2]
INCIDENT = {"id": "inc-1", "namespace": "shop", "pod": "web-7d9f8c6b5-x2x4k", "container": "web",
            "workload": "web", "workload_kind": "Deployment", "kind": "Pod", "name": "web-7d9f8c6b5-x2x4k",
            "node": "node-a3", "reason": "BackOff", "message": "Back-off restarting failed container",
            "count": 3}
SECRETS_OK = Policy(allow_secrets=True)


class RecordingClient:
    """An HttpClient that fails the test's assertions by being called at all."""

    def __init__(self) -> None:
        self.sent: list[Any] = []

    async def post_json(self, url: str, payload: object, timeout: float) -> Any:
        self.sent.append(payload)
        raise AssertionError(f"sent to {url}: {payload}")


def _cmd(**config: Any) -> dict[str, Any]:
    return {"type": "command", "config": config}


def _fix(**config: Any) -> dict[str, Any]:
    return {"type": "remediation", "config": config}


# (case, step, the YAML line it is refused at (a substring of it), phrase, policy)
LITERAL: list[tuple[str, dict[str, Any], str, str, Policy]] = [
    # Tools: by exact name, kubectl only.
    ("tool sh -c", _cmd(tool="sh", action="-c", args=["kubectl delete ns prod; id"]), "tool: sh",
     "tool 'sh' is not allowed", Policy()),
    ("tool helm uninstall", _cmd(tool="helm", action="uninstall", args=["web"]), "tool: helm",
     "tool 'helm' is not allowed", Policy()),
    ("tool Kubectl", _cmd(tool="Kubectl", action="get"), "tool: Kubectl", "tool 'Kubectl' is not allowed",
     Policy()),
    ("tool 'kubectl '", _cmd(tool="kubectl ", action="get"), "tool: 'kubectl '",
     "tool 'kubectl ' is not allowed", Policy()),
    ("tool /usr/bin/kubectl", _cmd(tool="/usr/bin/kubectl", action="get"), "tool: /usr/bin/kubectl",
     "is not allowed", Policy()),
    # Verbs: reads only; writes are remediation steps.
    ("verb delete", _cmd(action="delete", args=["namespace", "prod"]), "action: delete",
     "kubectl delete changes the cluster: a command step only reads; use a remediation step", Policy()),
    ("verb patch", _cmd(action="patch", args=["deploy/web", "-p", "{}"]), "action: patch",
     "use a remediation step", Policy()),
    ("verb exec", _cmd(action="exec", args=["web-0", "--", "sh"]), "action: exec",
     "is not a read verb the policy allows", Policy()),
    ("verb config", _cmd(action="config", args=["view", "--raw"]), "action: config",
     "is not a read verb", Policy()),
    ("verb cluster-info dump", _cmd(action="cluster-info", args=["dump"]), "- dump",
     "takes no arguments", Policy()),
    # Flags that change identity or target.
    *[(f"flag {flag}", _cmd(action="get", args=["pods", flag]), f"- {flag}", "is refused", Policy())
      for flag in ("--as=system:admin", "--as-group=system:masters", "--as-uid=0", "--kubeconfig=/tmp/evil",
                   "--context=prod", "--cluster=prod", "--server=https://evil", "--token=abc",
                   "--user=admin", "--certificate-authority=/tmp/ca", "--client-certificate=/tmp/c",
                   "--client-key=/tmp/k", "--insecure-skip-tls-verify", "--raw=/api/v1/secrets")],
    ("flag -s", _cmd(action="get", args=["pods", "-s", "https://evil"]), "- -s", "flag -s is refused",
     Policy()),
    ("flag --as value apart", _cmd(action="get", args=["pods", "--as", "system:admin"]), "- --as",
     "flag --as is refused: changes who kubectl acts as", Policy()),
    ("flag -f URL", _cmd(action="get", args=["-f", "https://evil.example/x.yaml"]), "- -f",
     "flag -f is refused", Policy()),
    ("flag unknown", _cmd(action="logs", args=["--request-timeout=1s"]), "- --request-timeout",
     "is not one kubectl logs may take", Policy()),
    ("flag -- ends flags", _cmd(action="get", args=["--", "--raw"]), "- --", "flag -- is refused", Policy()),
    ("flag in a shorthand group", _cmd(action="get", args=["-As", "https://evil"]), "- -As",
     "flag -s is refused", Policy()),
    ("output go-template-file", _cmd(action="get", args=["pods", "-o", "go-template-file=/etc/shadow"]),
     "- -o", "output 'go-template-file=/etc/shadow' is refused", Policy()),
    ("namespace flag overrides the target", _cmd(action="get", args=["pods", "-n", "kube-system"]),
     "- -n", "overrides the target's namespace", Policy()),
    ("namespace flag, attached", _cmd(action="get", args=["pods", "--namespace=kube-system"]),
     "--namespace=kube-system", "overrides the target's namespace", Policy()),
    ("flag name from a template", _cmd(action="get", args=["pods", "--{{ context.flag }}"]),
     "context.flag", "a flag's name cannot come from a template", Policy()),
    # Secrets.
    ("get secrets -A -o yaml", _cmd(action="get", args=["secrets", "--all-namespaces", "-o", "yaml"]),
     "- secrets", "reading Secrets is refused", Policy()),
    ("get secret/name", _cmd(action="get", args=["secret/db-password"]), "secret/db-password",
     "reading Secrets is refused", Policy()),
    ("get pods,secrets", _cmd(action="get", args=["pods,secrets"]), "pods,secrets",
     "reading Secrets is refused", Policy()),
    ("describe Secret target", _cmd(action="describe", target={"kind": "Secret", "name": "db"}),
     "kind: Secret", "reading Secrets is refused", Policy()),
    ("secret/<from the event>", _cmd(action="get", args=["secret/{{ incident.name }}"]), "secret/",
     "reading Secrets is refused", Policy()),
    ("-A widens an allowed Secret read", _cmd(action="get", args=["secrets", "-A"]), "- -A",
     "widens a read of Secrets to every namespace", SECRETS_OK),
    # Literal targets and clusters are names.
    ("target name is a flag", _cmd(action="logs", target={"name": "--kubeconfig=/tmp/evil"}),
     "name: --kubeconfig", "target name '--kubeconfig=/tmp/evil' is not a DNS-1123 subdomain", Policy()),
    ("target namespace with a space", _cmd(action="logs", target={"namespace": "prod --as=x"}),
     "namespace: prod", "is not a DNS-1123 label", Policy()),
    ("cluster is a flag", _cmd(action="get", cluster="--server=https://evil"), "cluster:",
     "is not a cluster name", Policy()),
    # Remediation.
    ("remediation action_type bash", _fix(action_type="bash", action="delete_pod"), "action_type: bash",
     "action_type 'bash' is not allowed", Policy()),
    ("remediation force param", _fix(action="delete_pod", params={"force": True, "grace_period": 0}),
     "force:", "param 'force' is not one delete_pod takes", Policy()),
    ("remediation action off the allowlist", _fix(action="delete_pod"), "action: delete_pod",
     "not in remediation.allowed_actions", Policy(allowed_actions=frozenset({"restart_rollout"}))),
    ("remediation wrong kind", _fix(action="scale", params={"kind": "DaemonSet", "replicas": 2}),
     "kind: DaemonSet", "scale does not act on a DaemonSet", Policy()),
    ("remediation pod param is a flag", _fix(action="delete_pod", params={"pod": "--all"}), "pod:",
     "is not a DNS-1123 subdomain", Policy()),
]


def _document(step: dict[str, Any]) -> dict[str, Any]:
    return {"id": "case", "steps": [{"id": "s", **copy.deepcopy(step)}]}


@pytest.mark.parametrize(("case", "step", "needle", "phrase", "policy"), LITERAL, ids=[c[0] for c in LITERAL])
def test_refused_when_rules_load_with_path_and_line(tmp_path, case, step, needle, phrase, policy):
    text = yaml.safe_dump(_document(step), sort_keys=False, default_flow_style=False, allow_unicode=True)
    path = tmp_path / "case.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(RuleError) as caught:
        load_valid(path, policy)
    (line,) = [n for n, row in enumerate(text.splitlines(), 1) if needle in row][:1]
    found = [p for p in caught.value.problems if phrase in p.message]
    assert found, "\n".join(map(str, caught.value.problems))
    assert found[0].path == str(path) and found[0].line == line, (str(found[0]), text)


def _past_the_checks(step: dict[str, Any]) -> Workflow:
    """The step as if load-time checks had let it through: only its config's own model parses it."""
    workflow = Workflow.model_validate(_document(step))
    spec = workflow.steps[0]
    spec._parsed = REGISTRY[spec.type].Config.model_validate(spec.config)
    return workflow


def _run(workflow: Workflow, policy: Policy | None = None, incident: dict[str, Any] | None = None,
         context: dict[str, Any] | None = None, **settings: Any) -> tuple[Any, RecordingClient]:
    http = RecordingClient()
    policy = policy or Policy()
    values: dict[str, Any] = dict(agent_manager_url="http://agent.test", live=True, dry_run=False,
                                  allowed_actions=policy.allowed_actions, allow_secrets=policy.allow_secrets,
                                  protected_namespaces=policy.protected_namespaces)
    values.update(settings)
    runner = WorkflowRunner(settings=Settings(**values), http=http)
    execution = asyncio.run(runner.run(workflow, incident=incident or INCIDENT,
                                        context=context or {"flag": "raw"}))
    return execution, http


@pytest.mark.parametrize(("case", "step", "needle", "phrase", "policy"), LITERAL, ids=[c[0] for c in LITERAL])
def test_refused_at_run_time_before_anything_is_sent(case, step, needle, phrase, policy):
    execution, http = _run(_past_the_checks(step), policy)
    (run,) = execution.runs
    assert run.status == "failed" and run.error_kind == "NotAllowed", (run.error, run.output)
    assert http.sent == []


def test_allow_write_does_not_even_parse():
    with pytest.raises(ValueError, match="allow_write is gone"):
        REGISTRY["command"].Config.model_validate({"action": "get", "allow_write": False})


# ----------------------------------------------------------------------------- values from events


def _event(**involved: Any) -> dict[str, Any]:
    raw = json.loads((ROOT / "tests" / "fixtures" / "core-v1-backoff.json").read_text())
    raw["involvedObject"].update(involved)
    return incident_from_event(parse_event(raw), "test")


# (case, step, incident) : the step loads; the event makes its request refused.
FROM_EVENTS: list[tuple[str, dict[str, Any], dict[str, Any], str]] = [
    ("pod name is a kubeconfig flag (default target)",
     _cmd(tool="kubectl", action="logs", args=["--tail=100"]),
     _event(name="--kubeconfig=/tmp/evil"), "target name '--kubeconfig=/tmp/evil'"),
    ("pod name is a kubeconfig flag (in args)", _cmd(action="get", args=["pod", "{{ incident.pod }}"],
                                                     target={"kind": "Pod"}),
     _event(name="--kubeconfig=/tmp/evil"), "not a Kubernetes name"),
    ("namespace carries a flag", _cmd(action="describe"), _event(namespace="shop --as=system:admin"),
     "is not a DNS-1123 label"),
    ("container carries a flag", _cmd(action="logs"), {**INCIDENT, "container": "--as=admin"},
     "target container"),
    ("cluster from the event points elsewhere", _cmd(action="get", args=["pods"]),
     {**INCIDENT, "cluster": "--server=https://evil"}, "is not a cluster name"),
    ("message in args", _cmd(action="logs", args=["--since={{ incident.message }}"]), INCIDENT,
     "not a Kubernetes name"),
    ("selector value from the event",
     _cmd(action="get", args=["pods", "--selector=app={{ incident.workload }}"]),
     {**INCIDENT, "workload": "x,--raw"}, "not a Kubernetes name"),
    ("templated namespace flag from the event",
     _cmd(action="get", args=["pods", "--namespace={{ incident.node }}"]),
     INCIDENT, "overrides the target's namespace"),
    ("a step's output at the head of an arg", _cmd(action="get", args=["{{ context.flag }}"]),
     INCIDENT, "would become a flag"),
    ("remediation in kube-system", _fix(action="delete_pod"),
     {**INCIDENT, "namespace": "kube-system", "pod": "etcd-master-0"}, "namespace kube-system is protected"),
    ("remediation on a workload kind it does not act on", _fix(action="restart_rollout"),
     {**INCIDENT, "workload_kind": "Job"}, "restart_rollout does not act on a 'Job'"),
    ("remediation param from the event", _fix(action="delete_pod", params={"pod": "{{ incident.message }}"}),
     INCIDENT, "is not a DNS-1123 subdomain"),
    ("remediation without a namespace", _fix(action="restart_rollout"), {**INCIDENT, "namespace": None},
     "names no namespace"),
]


@pytest.mark.parametrize(("case", "step", "incident", "phrase"), FROM_EVENTS, ids=[c[0] for c in FROM_EVENTS])
def test_values_from_events_are_refused_at_run_time(tmp_path, case, step, incident, phrase):
    path = tmp_path / "case.yaml"
    path.write_text(yaml.safe_dump(_document(step), sort_keys=False), encoding="utf-8")
    workflow = load_valid(path).workflows["case"]       # nothing refusable when rules load
    execution, http = _run(workflow, incident=incident, context={"flag": "--raw"})
    (run,) = execution.runs
    assert run.status == "failed" and run.error_kind == "NotAllowed", (run.error, run.output)
    assert phrase in (run.error or "")
    assert http.sent == []


def test_the_seed_workflow_sends_nothing_for_a_hostile_pod_name():
    workflow = load_valid(ROOT / "rules").workflows["diagnose_pod_crashloop"]
    execution, http = _run(workflow, incident=_event(name="--kubeconfig=/tmp/evil"),
                           slack_webhook_url=None)
    steps = {r.step_id: r for r in execution.runs}
    assert steps["collect_logs"].error_kind == "NotAllowed"
    assert "notify_failure" in steps and "check_resources" not in steps
    assert http.sent == []


def test_offline_runs_refuse_what_the_service_would():
    """``aetherius run`` without --live (no calls at all) fails the same step the same way."""
    workflow = _past_the_checks(_cmd(action="get", args=["pods", "--as=system:admin"]))
    execution, http = _run(workflow, live=False)
    assert execution.runs[0].error_kind == "NotAllowed" and http.sent == []


# ----------------------------------------------------------------------------- what is let through


def _request(action: str, args: list[str], target: dict[str, Any] | None = None,
             **extra: Any) -> dict[str, Any]:
    return {"execution_id": "e", "step_id": "s", "idempotency_key": "e:s:1", "cluster": None,
            "tool": "kubectl", "action": action, "args": args, "timeout_s": 30,
            "target": target or {"namespace": "shop", "kind": "Pod", "name": "web-0", "container": "web"},
            **extra}


@pytest.mark.parametrize(("action", "args"), [
    ("logs", ["--tail=100", "--previous"]), ("logs", ["-p", "-c", "web", "--since=5m"]),
    ("get", ["-o", "jsonpath={.status.conditions[?(@.type=='Ready')].status}"]), ("get", ["storageclass"]),
    ("get", ["pods", "-oyaml"]), ("get", ["pods", "-A", "-o", "wide"]), ("get", ["pods", "-n", "shop"]),
    ("describe", ["nodes"]), ("describe", []), ("top", ["pod", "--containers"]),
    ("events", ["--for", "pod/web-0"]), ("explain", ["secrets"]), ("version", ["--client"]),
    ("api-resources", []), ("auth-can-i", ["get", "secrets"]),
])
def test_reads_the_shipped_rules_use_are_let_through(action, args):
    verdict = enforce(_request(action, args), Policy(), writes=False)
    assert verdict.writes is False and verdict.dry_run is None


def test_secrets_may_be_read_when_policy_allows_it():
    assert enforce(_request("get", ["secret/db"]), SECRETS_OK, writes=False).action == "get"
    with pytest.raises(NotAllowed, match="reading Secrets"):
        enforce(_request("get", ["secret/db"]), Policy(), writes=False)


def test_a_read_carries_no_dry_run_flag_and_a_change_must():
    with pytest.raises(NotAllowed, match="a read carries no dry_run"):
        enforce(_request("get", [], dry_run=True), Policy(), writes=False)
    change = _request("restart_rollout", [], {"namespace": "shop", "kind": "Deployment", "name": "web"},
                      params={})
    with pytest.raises(NotAllowed, match="must say whether it is a dry run"):
        enforce(change, Policy(), writes=True)
    assert enforce({**change, "dry_run": False}, Policy(), writes=True).dry_run is False
    with pytest.raises(NotAllowed, match="this execution is a dry run"):
        enforce({**change, "dry_run": False}, Policy(), writes=True, execution_dry_run=True)
    with pytest.raises(NotAllowed, match=r"not in remediation\.allowed_actions"):
        enforce({**change, "action": "logs", "dry_run": True}, Policy(), writes=True)


def test_every_action_and_namespace_of_the_table_is_what_config_knows():
    assert Config().agent_policy() == Settings().policy == Policy()
    assert set(ACTIONS) == {"patch_deployment", *WRITE_ACTIONS}
    assert {"kube-system", "kube-public", "kube-node-lease"} == PROTECTED_NAMESPACES


@pytest.mark.parametrize(("value", "label", "subdomain"), [
    ("web", True, True), ("web-7d9f8c6b5-x2x4k", True, True), ("a.b", False, True), ("-a", False, False),
    ("A", False, False), ("a" * 63, True, True), ("a" * 64, False, True), ("a b", False, False),
    ("a\n", False, False), ("", False, False), ("a_b", False, False),
])
def test_kubernetes_name_rules(value, label, subdomain):
    assert is_label(value) is label
    assert is_subdomain(value) is subdomain


def test_render_args_keeps_literal_flags_and_renders_values():
    names = {"context": {"since": "5m", "tail": 50}, "incident": {"pod": "web-0"}, "steps": {}}
    assert render_args(["--since={{ context.since }}", "--tail={{ context.tail * 2 }}", "{{ incident.pod }}"],
                       names) == ["--since=5m", "--tail=100", "web-0"]


def test_overrides_are_the_fields_that_reach_agent_manager():
    configs = [{"action": "logs", "args": ["--since={{ context.since }}"]},
               {"action": "scale",
                "params": {"replicas": "{{ context.get('n') }}", "x": "{{ incident.reason }}"}}]
    found = overrides({"namespace": "a", "reason": "b", "severity": "c"}, {"since": 1, "n": 2, "who": 3},
                      configs)
    assert found == ["context.n", "context.since", "incident.namespace", "incident.reason"]


def test_check_prints_the_refusals_of_the_shipped_rules_none(capsys):
    assert main(["check", str(ROOT / "rules")]) == 0
    assert capsys.readouterr().out.startswith("OK:")


def test_a_refusal_is_put_on_the_audit_trail():
    records: list[tuple[str, str, dict[str, Any]]] = []

    async def audit(execution: Any, step_id: str, action: str, detail: dict[str, Any]) -> None:
        records.append((step_id, action, detail))

    async def go() -> Any:
        runner = WorkflowRunner(settings=Settings(agent_manager_url="http://agent.test", live=True),
                                http=RecordingClient(), audit=audit)
        return await runner.run(_past_the_checks(_cmd(action="get", args=["pods", "--as=system:admin"])),
                                incident=INCIDENT)

    execution = asyncio.run(go())
    assert execution.runs[0].error_kind == "NotAllowed"
    ((step_id, action, detail),) = records
    assert (step_id, action, detail["writes"], detail["action"]) == ("s", "policy.refused", False, "get")
    assert "--as is refused" in detail["reason"]

"""The shipped rule files, the seed's workflow, implicit strategies, bundles and the schema."""

from __future__ import annotations

import io
import json
import re
from contextlib import redirect_stdout
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from engine.cli import main
from engine.rules.check import effective_strategies, load_valid
from engine.rules.conditions import evaluate

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "rules"
SEED_FILE = RULES / "workflows" / "diagnose_pod_crashloop.yaml"

BUILTIN_STRATEGIES = {
    "pod_crashloop", "node_not_ready", "oom_killed", "pvc_pending", "image_pull_backoff",
    "failed_scheduling", "probe_failures",
}

# The seed specification's workflow, as it must stay in rules/workflows.
SEED = {
    "id": "diagnose_pod_crashloop",
    "name": "诊断 Pod CrashLoopBackOff",
    "description": "自动诊断和修复 Pod 崩溃循环问题",
    "trigger_type": "event",
    "trigger_config": {"event_reason": "CrashLoopBackOff", "severity": "high"},
    "status": "active",
    "priority": 10,
    "timeout": "5m",
    "steps": [
        {"id": "collect_logs", "type": "command", "name": "收集容器日志",
         "config": {"tool": "kubectl", "action": "logs", "args": ["--tail=100", "--previous"]},
         "timeout": "30s", "on_success": ["check_resources"], "on_failure": ["notify_failure"]},
        {"id": "check_resources", "type": "command", "name": "检查资源状态",
         "config": {"tool": "kubectl", "action": "describe"},
         "timeout": "30s", "on_success": ["ai_analysis"]},
        {"id": "ai_analysis", "type": "ai_analysis", "name": "AI 根因分析",
         "config": {"analysis_type": "root_cause"},
         "timeout": "60s", "on_success": ["decide_action"]},
        {"id": "decide_action", "type": "decision", "name": "决策修复动作",
         "config": {"conditions": [
             {"if": "analysis.root_cause == 'OOM'", "then": "increase_memory"},
             {"if": "analysis.root_cause == 'Config'", "then": "notify_owner"},
         ]},
         "on_success": ["execute_remediation"]},
        {"id": "execute_remediation", "type": "remediation", "name": "执行修复",
         "config": {"action_type": "kubectl", "action": "patch_deployment"},
         "on_success": ["notify_success"], "on_failure": ["notify_failure"]},
        {"id": "notify_success", "type": "notification", "name": "成功通知",
         "config": {"channel": "slack", "message": "Pod 问题已自动修复"}},
        {"id": "notify_failure", "type": "notification", "name": "失败通知",
         "config": {"channel": "slack", "message": "自动修复失败,需要人工介入"}},
    ],
}


@pytest.fixture(scope="module")
def shipped():
    return load_valid(RULES)


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------- shipped rules


def test_shipped_rules_pass_check_from_the_repo_root(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    assert main(["check", "rules"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("OK: "), out
    assert err == ""


def test_seed_workflow_file_is_unchanged():
    assert yaml.safe_load(SEED_FILE.read_text(encoding="utf-8")) == SEED


def test_seed_workflow_loads_with_its_steps_and_edges(shipped):
    wf = shipped.workflows["diagnose_pod_crashloop"]
    assert wf.trigger_type == "event"
    assert wf.trigger_config.event_reason == "CrashLoopBackOff"
    assert wf.trigger_config.severity == "high"
    assert wf.timeout == 300.0
    assert [(s.id, s.type) for s in wf.steps] == [
        ("collect_logs", "command"), ("check_resources", "command"),
        ("ai_analysis", "ai_analysis"), ("decide_action", "decision"),
        ("execute_remediation", "remediation"), ("notify_success", "notification"),
        ("notify_failure", "notification"),
    ]
    edges = {s.id: (s.on_success, s.on_failure) for s in wf.steps}
    assert edges == {
        "collect_logs": (["check_resources"], ["notify_failure"]),
        "check_resources": (["ai_analysis"], []),
        "ai_analysis": (["decide_action"], []),
        "decide_action": (["execute_remediation"], []),
        "execute_remediation": (["notify_success"], ["notify_failure"]),
        "notify_success": ([], []),
        "notify_failure": ([], []),
    }
    assert wf.step("collect_logs").timeout == 30.0
    assert wf.step("collect_logs").parsed.args == ["--tail=100", "--previous"]


def test_seed_decision_conditions(shipped):
    decision = shipped.workflows["diagnose_pod_crashloop"].step("decide_action").parsed
    assert [(b.if_, b.then) for b in decision.conditions] == [
        ("analysis.root_cause == 'OOM'", "increase_memory"),
        ("analysis.root_cause == 'Config'", "notify_owner"),
    ]
    assert decision.default is None


def test_builtin_strategies_are_effective_and_start_existing_workflows(shipped):
    strategies = effective_strategies(shipped)
    assert not BUILTIN_STRATEGIES - set(strategies)
    for sid in BUILTIN_STRATEGIES:
        assert strategies[sid].workflow_id in shipped.workflows, sid
    assert strategies["pod_crashloop"].workflow_id == "diagnose_pod_crashloop"


def test_seed_workflow_gets_no_second_implicit_strategy(shipped):
    # pod_crashloop already starts it: one CrashLoopBackOff event must not open two incidents.
    assert "workflow:diagnose_pod_crashloop" not in effective_strategies(shipped)


# ---------------------------------------------------------------- implicit strategies

EVENT_WORKFLOW = """id: evicted
name: Evicted pods
trigger_type: event
trigger_config:
  event_reason: Evicted
  severity: low
priority: 4
steps:
  - id: tell
    type: notification
    config: {message: "pod evicted"}
"""


def test_event_workflow_without_strategy_gets_an_implicit_one(tmp_path):
    write(tmp_path, "wf.yaml", EVENT_WORKFLOW)
    rules = load_valid(tmp_path)
    assert rules.strategies == {}
    strategies = effective_strategies(rules)
    assert list(strategies) == ["workflow:evicted"]
    implicit = strategies["workflow:evicted"]
    assert implicit.workflow_id == "evicted"
    assert implicit.severity == "low"
    assert implicit.priority == 4
    [symptom] = implicit.symptoms
    assert evaluate(symptom.tree, SimpleNamespace(reason="Evicted")) is True
    assert evaluate(symptom.tree, SimpleNamespace(reason="BackOff")) is False


def test_cli_counts_the_implicit_strategy(tmp_path, capsys):
    write(tmp_path, "wf.yaml", EVENT_WORKFLOW)
    assert main(["check", str(tmp_path)]) == 0
    out, _ = capsys.readouterr()
    assert out.strip() == "OK: 1 file(s), 1 strategies (0 explicit), 1 workflows"


def test_explicit_strategy_replaces_the_implicit_one(tmp_path):
    write(tmp_path, "wf.yaml", EVENT_WORKFLOW)
    write(tmp_path, "s.yaml", "id: evictions\nworkflow_id: evicted\nsymptoms:\n"
                              "  - conditions: {reason: Evicted, kind: Pod}\n")
    assert list(effective_strategies(load_valid(tmp_path))) == ["evictions"]


# ---------------------------------------------------------------------------- bundles


def test_bundle_with_strategies_and_workflows_loads(tmp_path):
    write(tmp_path, "bundle.yaml", """strategies:
  - id: evictions
    category: pod_failure
    workflow_id: handle_eviction
    symptoms:
      - conditions: {kind: Pod, reason: Evicted}
    correlation: {key: [node], quiet: 10s, max_window: 2m}
workflows:
  - id: handle_eviction
    trigger_type: event
    steps:
      - id: describe
        type: command
        config: {action: describe}
        on_success: [tell]
      - id: tell
        type: notification
        config: {channel: log, message: "evicted"}
""")
    rules = load_valid(tmp_path)
    assert list(rules.strategies) == ["evictions"]
    assert list(rules.workflows) == ["handle_eviction"]
    strategy = rules.strategies["evictions"]
    assert strategy.key_fields == ["node"]
    assert (strategy.correlation.quiet, strategy.correlation.max_window) == (10.0, 120.0)
    assert [s.id for s in rules.workflows["handle_eviction"].steps] == ["describe", "tell"]


def test_bundle_with_unknown_section_is_reported(tmp_path, capsys):
    path = write(tmp_path, "bundle.yaml", "strategies: []\nworkflows: []\nalerts: []\n")
    assert main(["check", str(tmp_path)]) == 1
    out, _ = capsys.readouterr()
    assert out.strip() == f"{path}:3: unknown field 'alerts'"


# ----------------------------------------------------------------------------- schema


@pytest.fixture(scope="module")
def schema():
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        assert main(["schema"]) == 0
    return json.loads(buffer.getvalue())


def test_schema_command_prints_json(capsys):
    assert main(["schema"]) == 0
    out, _ = capsys.readouterr()
    document = json.loads(out)
    assert document["$schema"].startswith("https://json-schema.org/")


def test_schema_defines_workflow_strategy_and_every_step_config(schema):
    defs = schema["$defs"]
    assert {"Workflow", "Strategy"} <= set(defs)
    for step_type in ("command", "ai_analysis", "decision", "remediation", "notification", "wait",
                      "parallel"):
        assert f"{step_type}_config" in defs, step_type
    assert defs["command_config"]["required"] == ["action"]
    assert defs["command_config"]["additionalProperties"] is False
    # The step's config is checked against its type's schema.
    rules = {r["if"]["properties"]["type"]["const"]: r["then"]["properties"]["config"]["$ref"]
             for r in defs["StepSpec"]["allOf"]}
    assert rules["command"] == "#/$defs/command_config"
    assert set(defs["StepSpec"]["properties"]["type"]["enum"]) == set(rules)


def test_schema_references_all_resolve(schema):
    refs = set(re.findall(r'"#/\$defs/([^"]+)"', json.dumps(schema)))
    assert refs
    assert refs <= set(schema["$defs"])


def test_schema_accepts_duration_strings(schema):
    def accepts_string(prop: dict) -> bool:
        return prop.get("type") == "string" or any(
            accepts_string(alt) for alt in prop.get("anyOf", []))

    defs = schema["$defs"]
    assert accepts_string(defs["Workflow"]["properties"]["timeout"])
    assert accepts_string(defs["StepSpec"]["properties"]["timeout"])
    assert accepts_string(defs["wait_config"]["properties"]["duration"])
    assert accepts_string(defs["Correlation"]["properties"]["quiet"])


def test_every_shipped_rule_file_validates_against_the_schema(schema):
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(schema)
    files = sorted(p for p in RULES.rglob("*.yaml") if "tests" not in p.relative_to(RULES).parts)
    assert files
    for file in files:
        for document in yaml.safe_load_all(file.read_text(encoding="utf-8")):
            errors = [e.message for e in validator.iter_errors(document)]
            assert errors == [], f"{file}: {errors[:3]}"


def test_schema_rejects_an_unknown_step_type_and_a_bad_duration(schema):
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(schema)
    base = {"id": "w", "steps": [{"id": "a", "type": "wait", "config": {"duration": "5s"}}]}
    assert validator.is_valid(base)
    bad_type = {"id": "w", "steps": [{"id": "a", "type": "teleport"}]}
    bad_duration = {"id": "w", "steps": [{"id": "a", "type": "wait", "config": {"duration": "5 minutes"}}]}
    assert not validator.is_valid(bad_type)
    assert not validator.is_valid(bad_duration)

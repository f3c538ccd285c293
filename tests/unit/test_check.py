"""``aetherius check``: every kind of rule-file problem, reported as ``path:line: message``.

Each test writes small rule files into ``tmp_path`` and asserts the file, the exact line an
operator should look at, and the phrase that tells them what is wrong.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from engine.cli import main
from engine.exceptions import Problem, RuleError
from engine.rules.check import load_valid

# A valid step to pad workflows with, and a valid strategy body.
WAIT = "type: wait\n    config: {duration: 1s}"


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def line_of(text: str, needle: str, nth: int = 1) -> int:
    """1-based line of the ``nth`` line containing ``needle`` (the test's own oracle)."""
    hits = [i for i, line in enumerate(text.splitlines(), 1) if needle in line]
    assert len(hits) >= nth, f"{needle!r} occurs {len(hits)} time(s) in the test text"
    return hits[nth - 1]


def problems(directory: Path) -> list[Problem]:
    with pytest.raises(RuleError) as info:
        load_valid(directory)
    assert info.value.problems, "RuleError must list the problems"
    return info.value.problems


def only_problem(directory: Path, name: str, text: str) -> Problem:
    """Write one file, check the directory, and return its single problem."""
    path = write(directory, name, text)
    found = problems(directory)
    assert len(found) == 1, "\n".join(map(str, found))
    assert found[0].path == str(path)
    return found[0]


# ------------------------------------------------------------------------------ YAML


def test_yaml_syntax_error_points_at_the_bad_line(tmp_path):
    text = """id: w
steps:
  - id: a
    type: command
   config: {action: get}
"""
    problem = only_problem(tmp_path, "wf.yaml", text)
    assert problem.line == line_of(text, "   config:")
    assert problem.message.startswith("YAML: ")


def test_duplicate_yaml_key_points_at_the_second_key_and_names_the_first(tmp_path):
    text = """id: w
steps:
  - id: a
    type: wait
    config: {duration: 1s}
    type: command
"""
    problem = only_problem(tmp_path, "wf.yaml", text)
    assert problem.line == line_of(text, "type: command")
    first = line_of(text, "type: wait")
    assert f"duplicate key 'type' (first at line {first})" in problem.message


def test_yaml_error_in_one_file_does_not_hide_another_file(tmp_path):
    broken = write(tmp_path, "a.yaml", "id: [unclosed\n")
    other_text = "id: w\nbogus: 1\nsteps:\n  - id: a\n    " + WAIT + "\n"
    other = write(tmp_path, "b.yaml", other_text)
    found = problems(tmp_path)
    assert [p.path for p in found] == [str(broken), str(other)]
    assert found[1].line == line_of(other_text, "bogus:")


# Two files: the strategies (with a syntax error) and the workflows they start.
BROKEN_STRATEGIES = """strategies:
  - id: crashes
    workflow_id: handle_crash
    symptoms:
      - conditions: {reason: BackOff}
  - id: nodes
    workflow_id: handle_node
    symptoms: [{conditions: {reason: NodeNotReady}}
"""
FIXED_STRATEGIES = BROKEN_STRATEGIES.replace("NodeNotReady}}", "NodeNotReady}}]")
WORKFLOWS = """workflows:
  - id: handle_crash
    trigger_type: event
    steps:
      - id: a
        type: wait
        config: {duration: 1s}
  - id: handle_node
    trigger_type: event
    steps:
      - id: a
        type: wait
        config: {duration: 1s}
      - id: orphan
        type: wait
        config: {duration: 1s}
strategies:
  - id: covered
    workflow_id: handle_crash
    symptoms: [{conditions: {reason: Evicted}}]
    inhibits: [{strategies: [nodes], equal: [node]}]
    correlation: {key: [node]}
  - id: typo
    workflow_id: handle_crahs
    symptoms: [{conditions: {reason: Failed}}]
    inhibits: [{strategies: [noeds], equal: [node]}]
    correlation: {key: [node]}
"""


def test_a_yaml_syntax_error_reports_itself_not_its_consequences(tmp_path):
    broken = write(tmp_path, "strategies.yaml", BROKEN_STRATEGIES)
    workflows = write(tmp_path, "workflows.yaml", WORKFLOWS)
    found = problems(tmp_path)
    # Not reported: the event-triggered workflows the broken file's strategies start, and
    # the inhibition of a strategy defined there. Still reported: what those documents
    # cannot explain (an unreachable step, references to ids the broken file never names).
    assert [(p.path, p.line) for p in found] == [
        (str(broken), line_of(BROKEN_STRATEGIES, "symptoms: [{")),
        (str(workflows), line_of(WORKFLOWS, "id: orphan")),
        (str(workflows), line_of(WORKFLOWS, "workflow_id: handle_crahs")),
        (str(workflows), line_of(WORKFLOWS, "strategies: [noeds]")),
    ], "\n".join(map(str, found))
    assert found[0].message.startswith("YAML: ")
    assert "unreachable" in found[1].message
    assert "names missing workflow 'handle_crahs'" in found[2].message
    assert "no strategy 'noeds'" in found[3].message
    assert not any("neither trigger_config.event_reason" in p.message for p in found)


def test_once_the_syntax_error_is_fixed_the_references_resolve(tmp_path):
    write(tmp_path, "strategies.yaml", FIXED_STRATEGIES)
    write(tmp_path, "workflows.yaml", WORKFLOWS)
    messages = [p.message for p in problems(tmp_path)]
    assert len(messages) == 3, messages     # orphan, handle_crahs, noeds: the real problems
    assert not any("YAML" in m or "neither" in m for m in messages)


def test_a_broken_workflow_file_silences_the_strategies_that_name_its_workflows(tmp_path):
    broken_text = WORKFLOWS.replace("  - id: handle_node\n", "  - id: handle_node: [\n")
    broken = write(tmp_path, "workflows.yaml", broken_text)
    write(tmp_path, "strategies.yaml", FIXED_STRATEGIES
          + "  - id: lost\n    workflow_id: never_written\n    symptoms: [{conditions: {reason: X}}]\n")
    found = problems(tmp_path)
    assert [p.path for p in found] == [str(tmp_path / "strategies.yaml"), str(broken)]
    assert "names missing workflow 'never_written'" in found[0].message
    assert found[1].message.startswith("YAML: ")


def test_an_unreadable_file_silences_every_reference(tmp_path):
    write(tmp_path, "strategies.yaml", FIXED_STRATEGIES)
    (tmp_path / "workflows.yaml").write_bytes(b"\xff\xfe not utf-8")
    found = problems(tmp_path)
    assert len(found) == 1 and found[0].message.startswith("cannot read"), found


def test_a_syntax_error_in_the_shipped_strategies_is_the_only_problem(tmp_path):
    # The report that started it: one error here, six "no strategy that starts it" there.
    rules = Path(__file__).resolve().parents[2] / "rules"
    shutil.copytree(rules, tmp_path / "rules")
    path = tmp_path / "rules" / "strategies" / "builtin.yaml"
    text = path.read_text(encoding="utf-8").replace("  - id: pod_crashloop\n", "  - id: pod_crashloop: [\n")
    path.write_text(text, encoding="utf-8")
    [problem] = problems(tmp_path / "rules")
    assert (problem.path, problem.line) == (str(path), line_of(text, "id: pod_crashloop: ["))
    assert problem.message.startswith("YAML: ")


def test_unclosed_bracket_is_reported_inside_the_file(tmp_path):
    text = "id: w\nsteps: [a, b\n"
    problem = only_problem(tmp_path, "wf.yaml", text)
    assert problem.line == line_of(text, "steps: [a, b")


# ---------------------------------------------------------------------- unknown fields


def test_unknown_top_level_field(tmp_path):
    text = f"""id: w
name: x
trigger: event
steps:
  - id: a
    {WAIT}
"""
    problem = only_problem(tmp_path, "wf.yaml", text)
    assert problem.line == line_of(text, "trigger: event")
    assert "unknown field 'trigger'" in problem.message


def test_unknown_field_in_a_step(tmp_path):
    text = f"""id: w
steps:
  - id: a
    {WAIT}
    on_sucess: [b]
"""
    problem = only_problem(tmp_path, "wf.yaml", text)
    assert problem.line == line_of(text, "on_sucess:")
    assert "steps.0.on_sucess" in problem.message
    assert "unknown field 'on_sucess'" in problem.message


def test_unknown_field_in_a_step_config(tmp_path):
    text = """id: w
steps:
  - id: a
    type: command
    config:
      action: get
      argz: [pods]
"""
    problem = only_problem(tmp_path, "wf.yaml", text)
    assert problem.line == line_of(text, "argz:")
    assert "steps.0.config.argz: unknown field 'argz'" in problem.message


def test_unknown_field_nested_in_a_step_config(tmp_path):
    text = """id: w
steps:
  - id: a
    type: command
    config:
      action: describe
      target:
        kind: Pod
        nmae: web-0
"""
    problem = only_problem(tmp_path, "wf.yaml", text)
    assert problem.line == line_of(text, "nmae:")
    assert "steps.0.config.target.nmae: unknown field 'nmae'" in problem.message


def test_unknown_field_in_a_strategy_correlation(tmp_path):
    write(tmp_path, "wf.yaml", f"id: w\nsteps:\n  - id: a\n    {WAIT}\n")
    text = """id: s
workflow_id: w
symptoms:
  - conditions: {reason: BackOff}
correlation:
  quiet: 10s
  windw: 5m
"""
    path = write(tmp_path, "strategy.yaml", text)
    [problem] = problems(tmp_path)
    assert problem.path == str(path)
    assert problem.line == line_of(text, "windw:")
    assert "correlation.windw: unknown field 'windw'" in problem.message


def test_document_that_is_neither_workflow_nor_strategy(tmp_path):
    problem = only_problem(tmp_path, "x.yaml", "# a note\nid: w\nname: no steps\n")
    assert problem.line == 2
    assert "cannot tell what this document is" in problem.message


# ------------------------------------------------------------------------ step graph


def test_unknown_step_type_lists_the_known_ones(tmp_path):
    text = """id: w
steps:
  - id: a
    type: comand
    config: {action: get}
"""
    problem = only_problem(tmp_path, "wf.yaml", text)
    assert problem.line == line_of(text, "type: comand")
    assert "unknown step type 'comand'" in problem.message
    assert "command" in problem.message.split("known:")[1]


@pytest.mark.parametrize("edge", ["on_success", "on_failure"])
def test_edge_to_a_missing_step(tmp_path, edge):
    text = f"""id: w
steps:
  - id: a
    {WAIT}
    {edge}:
      - b
      - notify_ops
  - id: b
    {WAIT}
"""
    problem = only_problem(tmp_path, "wf.yaml", text)
    assert problem.line == line_of(text, "- notify_ops")
    assert f"steps.0.{edge}: no step 'notify_ops' in workflow 'w'" in problem.message


def test_edge_written_as_a_single_id_is_checked_too(tmp_path):
    text = f"""id: w
steps:
  - id: a
    {WAIT}
    on_success: nowhere
"""
    problem = only_problem(tmp_path, "wf.yaml", text)
    assert problem.line == line_of(text, "on_success: nowhere")
    assert "no step 'nowhere'" in problem.message


def test_unreachable_step(tmp_path):
    text = f"""id: w
steps:
  - id: start
    {WAIT}
  - id: orphan
    {WAIT}
"""
    problem = only_problem(tmp_path, "wf.yaml", text)
    assert problem.line == line_of(text, "id: orphan")
    assert "step 'orphan' is unreachable from the first step 'start'" in problem.message


def test_loop_without_a_wait_step(tmp_path):
    text = """id: w
steps:
  - id: probe
    type: command
    config: {action: get}
    on_success: [again]
  - id: again
    type: command
    config: {action: get}
    on_success: [probe]
"""
    problem = only_problem(tmp_path, "wf.yaml", text)
    assert problem.line == line_of(text, "id: probe")
    assert "loop without a wait step: probe -> again -> probe" in problem.message


def test_loop_through_a_decision_without_a_wait_step(tmp_path):
    text = """id: w
steps:
  - id: probe
    type: command
    config: {action: get}
    on_success: [decide]
  - id: decide
    type: decision
    config:
      conditions:
        - if: "steps.probe.output.stdout == ''"
          then: probe
"""
    problem = only_problem(tmp_path, "wf.yaml", text)
    assert problem.line == line_of(text, "id: probe")
    assert "loop without a wait step: probe -> decide -> probe" in problem.message


def test_loop_through_a_wait_step_is_accepted(tmp_path):
    write(tmp_path, "wf.yaml", """id: poll
steps:
  - id: probe
    type: command
    config: {action: get}
    on_success: [decide]
  - id: decide
    type: decision
    config:
      conditions:
        - if: "steps.probe.output.stdout == 'True'"
          then: done
      default: pause
  - id: pause
    type: wait
    config: {duration: 30s}
    on_success: [probe]
  - id: done
    type: notification
    config: {message: recovered}
""")
    rules = load_valid(tmp_path)
    assert [s.id for s in rules.workflows["poll"].steps] == ["probe", "decide", "pause", "done"]


# ------------------------------------------------------------------------ strategies


def test_strategy_naming_a_missing_workflow(tmp_path):
    text = """id: s
symptoms:
  - conditions: {reason: BackOff}
workflow_id: diagnose_nothing
"""
    problem = only_problem(tmp_path, "strategy.yaml", text)
    assert problem.line == line_of(text, "workflow_id:")
    assert "strategy 's' names missing workflow 'diagnose_nothing'" in problem.message


def test_invalid_regex_in_a_symptom_pattern(tmp_path):
    write(tmp_path, "wf.yaml", f"id: w\nsteps:\n  - id: a\n    {WAIT}\n")
    text = """id: s
workflow_id: w
symptoms:
  - conditions: {reason: BackOff}
  - pattern: "^Back-off (["
"""
    path = write(tmp_path, "strategy.yaml", text)
    [problem] = problems(tmp_path)
    assert problem.path == str(path)
    assert problem.line == line_of(text, "pattern:")
    assert problem.message.startswith("symptoms.1.pattern:")
    assert "invalid regular expression '^Back-off (['" in problem.message


def test_invalid_regex_is_reported_on_the_pattern_line(tmp_path):
    write(tmp_path, "wf.yaml", f"id: w\nsteps:\n  - id: a\n    {WAIT}\n")
    text = """id: s
workflow_id: w
symptoms:
  - type: event
    conditions: {kind: Pod}
    pattern: "^Back-off (["
"""
    write(tmp_path, "strategy.yaml", text)
    [problem] = problems(tmp_path)
    assert problem.line == line_of(text, "pattern:")


def test_invalid_condition_field(tmp_path):
    write(tmp_path, "wf.yaml", f"id: w\nsteps:\n  - id: a\n    {WAIT}\n")
    text = """id: s
workflow_id: w
symptoms:
  - conditions: {kind: Pod, reasn: BackOff}
"""
    path = write(tmp_path, "strategy.yaml", text)
    [problem] = problems(tmp_path)
    assert problem.path == str(path)
    assert problem.line == line_of(text, "reasn:")
    assert "conditions.reasn: unknown event field 'reasn'" in problem.message


def test_invalid_condition_field_is_reported_on_its_own_line(tmp_path):
    write(tmp_path, "wf.yaml", f"id: w\nsteps:\n  - id: a\n    {WAIT}\n")
    text = """id: s
workflow_id: w
symptoms:
  - type: event
    conditions:
      kind: Pod
      reasn: BackOff
"""
    write(tmp_path, "strategy.yaml", text)
    [problem] = problems(tmp_path)
    assert problem.line == line_of(text, "reasn:")


def test_invalid_event_field_in_correlation_key(tmp_path):
    write(tmp_path, "wf.yaml", f"id: w\nsteps:\n  - id: a\n    {WAIT}\n")
    text = """id: s
workflow_id: w
symptoms:
  - conditions: {reason: BackOff}
correlation:
  key: [namespace, deployment]
"""
    path = write(tmp_path, "strategy.yaml", text)
    [problem] = problems(tmp_path)
    assert problem.path == str(path)
    assert problem.line == line_of(text, "key:")
    assert "unknown event field 'deployment'" in problem.message


# ------------------------------------------------------------------- values and configs


@pytest.mark.parametrize(("where", "text"), [
    ("timeout", f"id: w\ntimeout: 5 minutes\nsteps:\n  - id: a\n    {WAIT}\n"),
    ("steps.0.timeout", f"id: w\nsteps:\n  - id: a\n    {WAIT}\n    timeout: 5 minutes\n"),
    ("steps.0.config.duration", "id: w\nsteps:\n  - id: a\n    type: wait\n    config:\n"
                                "      duration: 5 minutes\n"),
])
def test_bad_duration(tmp_path, where, text):
    problem = only_problem(tmp_path, "wf.yaml", text)
    assert problem.line == line_of(text, "5 minutes")
    assert f"{where}: expected a duration like '30s'" in problem.message
    assert "'5 minutes'" in problem.message


def test_bad_duration_in_a_strategy_correlation(tmp_path):
    write(tmp_path, "wf.yaml", f"id: w\nsteps:\n  - id: a\n    {WAIT}\n")
    text = """id: s
workflow_id: w
symptoms:
  - conditions: {reason: BackOff}
correlation:
  quiet: 5 minutes
"""
    write(tmp_path, "strategy.yaml", text)
    [problem] = problems(tmp_path)
    assert problem.line == line_of(text, "quiet:")
    assert "correlation.quiet: expected a duration" in problem.message


@pytest.mark.parametrize(("source", "phrase"), [
    ("__import__('os')", "'__import__' is not allowed"),
    ("().__class__", "attribute '__class__' is not allowed"),
    ("9**9999999", "'**' needs a constant exponent"),
])
def test_decision_expression_refused_by_the_sandbox(tmp_path, source, phrase):
    text = f"""id: w
steps:
  - id: decide
    type: decision
    config:
      conditions:
        - if: "analysis.root_cause == 'OOM'"
          then: fix
        - if: "{source}"
          then: fix
  - id: fix
    type: remediation
    config: {{action: increase_memory}}
"""
    problem = only_problem(tmp_path, "wf.yaml", text)
    assert problem.line == line_of(text, source)
    assert problem.message.startswith("steps.0.config.conditions.1.if: ")
    assert phrase in problem.message


def test_kubectl_write_in_a_command_is_refused(tmp_path):
    # Was: refused at 'config:' with "set allow_write: true to permit it". A command step
    # never writes now, so the message sends the author to a remediation step instead.
    text = """id: w
steps:
  - id: clean
    type: command
    config:
      action: delete
      args: [pod, web-0]
"""
    problem = only_problem(tmp_path, "wf.yaml", text)
    assert problem.line == line_of(text, "action: delete")
    assert "kubectl delete changes the cluster" in problem.message
    assert "use a remediation step" in problem.message


def test_allow_write_is_refused_at_load_time(tmp_path):
    # Was: test_kubectl_write_with_allow_write_is_accepted (the hole: allow_write: true sent
    # any verb past dry-run, the allowlist, the caps and the rate limit).
    text = """id: w
steps:
  - id: clean
    type: command
    config: {action: delete, args: [pod, web-0], allow_write: true}
"""
    write(tmp_path, "wf.yaml", text)
    found = problems(tmp_path)
    assert any("allow_write is gone" in p.message and "use a remediation step" in p.message
               for p in found), found


def test_webhook_notification_without_a_webhook_name(tmp_path):
    text = """id: w
steps:
  - id: tell
    type: notification
    config:
      channel: webhook
      message: pod is crash-looping
"""
    problem = only_problem(tmp_path, "wf.yaml", text)
    assert problem.line == line_of(text, "config:")
    assert "channel webhook needs 'webhook: <name>'" in problem.message


def test_missing_required_step_config_field(tmp_path):
    text = """id: w
steps:
  - id: tell
    type: notification
    config:
      channel: slack
"""
    problem = only_problem(tmp_path, "wf.yaml", text)
    assert problem.line == line_of(text, "config:")
    assert "steps.0.config.message: missing required field 'message'" in problem.message


# --------------------------------------------------------------------- across files


def test_duplicate_workflow_ids_across_two_files(tmp_path):
    first_text = f"# the original\nid: restart\nsteps:\n  - id: a\n    {WAIT}\n"
    second_text = f"steps:\n  - id: a\n    {WAIT}\nid: restart\n"
    first = write(tmp_path, "a.yaml", first_text)
    second = write(tmp_path, "b/b.yml", second_text)
    [problem] = problems(tmp_path)
    assert problem.path == str(second)
    assert problem.line == line_of(second_text, "id: restart")
    first_line = line_of(first_text, "id: restart")
    assert f"duplicate workflow id 'restart' (first at {first}:{first_line})" in problem.message


def test_event_trigger_without_event_reason_or_strategy(tmp_path):
    text = f"""id: w
name: needs a trigger
trigger_type: event
trigger_config:
  severity: high
steps:
  - id: a
    {WAIT}
"""
    problem = only_problem(tmp_path, "wf.yaml", text)
    assert problem.line == line_of(text, "trigger_type:")
    assert "trigger_type event but neither trigger_config.event_reason nor a strategy" in problem.message


def test_event_trigger_started_by_a_strategy_needs_no_event_reason(tmp_path):
    write(tmp_path, "wf.yaml", f"id: w\ntrigger_type: event\nsteps:\n  - id: a\n    {WAIT}\n")
    write(tmp_path, "s.yaml", "id: s\nworkflow_id: w\nsymptoms:\n  - conditions: {reason: BackOff}\n")
    assert load_valid(tmp_path).strategies["s"].workflow_id == "w"


def test_invalid_workflow_does_not_make_its_strategy_report_it_missing(tmp_path):
    write(tmp_path, "wf.yaml", f"id: w\ntimeout: 5 minutes\nsteps:\n  - id: a\n    {WAIT}\n")
    write(tmp_path, "s.yaml", "id: s\nworkflow_id: w\nsymptoms:\n  - conditions: {reason: BackOff}\n")
    found = problems(tmp_path)
    assert not [p for p in found if "missing workflow" in p.message], "\n".join(map(str, found))


def test_workflow_level_problem_does_not_hide_step_config_problems(tmp_path):
    text = """id: w
timeout: 5 minutes
steps:
  - id: clean
    type: command
    config: {action: delete}
"""
    path = write(tmp_path, "wf.yaml", text)
    found = problems(tmp_path)
    assert [(p.path, p.line) for p in found] == [
        (str(path), line_of(text, "timeout:")),
        (str(path), line_of(text, "config:")),
    ]


# ----------------------------------------------------------------- all problems at once

MULTI = {
    "broken.yaml": "id: w0\nsteps:\n  - id: a\n    type: wait\n   config: {duration: 1s}\n",
    "workflows/graph.yaml": """id: graph
steps:
  - id: start
    type: command
    config: {action: get}
    on_success: [missing_step, odd]
  - id: odd
    type: teleport
  - id: orphan
    type: wait
    config: {duration: 1s}
""",
    "workflows/unsafe.yml": """id: unsafe
timeout: 30s
steps:
  - id: decide
    type: decision
    config:
      conditions:
        - if: "().__class__"
          then: drain
  - id: drain
    type: command
    config: {action: drain}
""",
    "strategies/s.yaml": """strategies:
  - id: dangling
    workflow_id: nowhere
    symptoms:
      - conditions: {reason: BackOff}
  - id: bad_regex
    workflow_id: graph
    symptoms:
      - pattern: "(["
""",
}


def expected_multi(root: Path) -> list[tuple[str, int, str]]:
    def at(name: str, needle: str, phrase: str) -> tuple[str, int, str]:
        return str(root / name), line_of(MULTI[name], needle), phrase

    return sorted([
        at("broken.yaml", "   config:", "YAML:"),
        at("strategies/s.yaml", "workflow_id: nowhere", "names missing workflow 'nowhere'"),
        at("strategies/s.yaml", 'pattern: "(["', "invalid regular expression"),
        at("workflows/graph.yaml", "missing_step", "no step 'missing_step'"),
        at("workflows/graph.yaml", "type: teleport", "unknown step type 'teleport'"),
        at("workflows/graph.yaml", "id: orphan", "step 'orphan' is unreachable"),
        at("workflows/unsafe.yml", "().__class__", "attribute '__class__' is not allowed"),
        at("workflows/unsafe.yml", "config: {action: drain}", "kubectl drain changes the cluster"),
    ])


def test_every_problem_of_every_file_is_raised_at_once(tmp_path):
    for name, text in MULTI.items():
        write(tmp_path, name, text)
    found = problems(tmp_path)
    expected = expected_multi(tmp_path)
    assert len(found) == len(expected), "\n".join(map(str, found))
    for problem, (path, line, phrase) in zip(found, expected, strict=True):
        assert (problem.path, problem.line) == (path, line)
        assert phrase in problem.message


def test_cli_check_prints_every_problem_as_path_line_message(tmp_path, capsys):
    for name, text in MULTI.items():
        write(tmp_path, name, text)
    assert main(["check", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    lines = out.splitlines()
    expected = expected_multi(tmp_path)
    assert len(lines) == len(expected), out
    for printed, (path, line, phrase) in zip(lines, expected, strict=True):
        assert printed.startswith(f"{path}:{line}: ")
        assert phrase in printed
    assert f"{len(expected)} problem(s) found in {tmp_path}" in err


def test_cli_check_of_a_missing_directory_fails(tmp_path, capsys):
    missing = tmp_path / "nope"
    assert main(["check", str(missing)]) == 1
    out, _ = capsys.readouterr()
    assert out.strip() == f"{missing}:0: no such file or directory"


# ------------------------------------------------------------------------------ locations as data


def test_problems_keep_the_field_path_and_the_bare_message_apart(tmp_path):
    text = """id: w
steps:
  - id: a
    type: command
    config:
      action: get
      argz: [pods]
    on_success: [nowhere]
"""
    path = write(tmp_path, "wf.yaml", text)
    found = {p.loc: p for p in problems(tmp_path)}
    argz = found[("steps", 0, "config", "argz")]
    assert (argz.msg, argz.named) == ("unknown field 'argz'", "steps.0.config.argz")
    assert str(argz) == f"{path}:{line_of(text, 'argz:')}: steps.0.config.argz: unknown field 'argz'"
    # The message names the edge list; the location is the exact item.
    edge = found[("steps", 0, "on_success", 0)]
    assert edge.msg == "no step 'nowhere' in workflow 'w'"
    assert edge.message == "steps.0.on_success: no step 'nowhere' in workflow 'w'"


def test_a_message_without_a_field_name_still_has_its_location(tmp_path):
    text = f"""id: w
steps:
  - id: start
    {WAIT}
  - id: orphan
    {WAIT}
"""
    problem = only_problem(tmp_path, "wf.yaml", text)
    assert problem.loc == ("steps", 1, "id") and problem.named is None
    assert problem.message == problem.msg == "step 'orphan' is unreachable from the first step 'start'"


def test_bundle_entries_are_located_inside_their_own_document(tmp_path):
    text = f"""workflows:
  - id: w
    steps:
      - id: a
        {WAIT.replace(chr(10) + '    ', chr(10) + '        ')}
        bogus: 1
"""
    problem = only_problem(tmp_path, "bundle.yaml", text)
    assert problem.line == line_of(text, "bogus:")
    assert problem.loc == ("steps", 0, "bogus") and problem.msg == "unknown field 'bogus'"


def test_a_document_without_lines_names_fields_instead_of_lines():
    from engine.rules.check import validate
    from engine.rules.loader import Origin, RuleSet, add_workflow

    rules = RuleSet()
    wait = {"type": "wait", "config": {"duration": "1s"}}
    doc = {"id": "w", "steps": [{"id": "a", **wait, "on_success": ["b"]}, {"id": "b", **wait},
                                {"id": "a", **wait}]}
    add_workflow(rules, doc, Origin("<request body>", None))
    duplicate = next(p for p in validate(rules) if p.loc == ("steps", 2, "id"))
    assert duplicate.msg == "duplicate step id 'a' (first at steps.0.id)"
    assert duplicate.line == 0


def test_problems_sort_as_they_print():
    a = Problem("f.yaml", 3, "zzz", ("b",), "b")
    b = Problem("f.yaml", 3, "yyy", ("a",), "c")
    assert sorted([b, a]) == [a, b]   # "b: zzz" < "c: yyy"
    assert Problem("f.yaml", 2, "x") < a

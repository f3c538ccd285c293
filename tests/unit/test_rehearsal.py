"""``aetherius test``: the shipped rehearsals pass and cover every rule; a wrong expectation
fails with a diff naming the test, the incident and the step; JUnit parses; an invalid file
exits 2 with ``path:line``; repeats count like the kubelet's patched Events."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path
from xml.etree import ElementTree

import pytest

from engine.cli import main
from engine.rehearsal import EPOCH, Case, expand

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "rules" / "tests"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["test", "--rules", str(REPO / "rules"), *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_shipped_rehearsals_pass_and_reach_every_strategy_workflow_and_step(capsys) -> None:
    code, out, err = run(capsys, "--fail-on-untested", str(TESTS))
    assert code == 0, out + err
    assert "FAIL" not in out and "every strategy, workflow and step is reached" in out
    assert " 0 failed" in err


def test_a_wrong_expectation_fails_with_a_diff_naming_the_test_incident_and_step(tmp_path, capsys) -> None:
    text = (TESTS / "pod_crashloop.yaml").read_text(encoding="utf-8")
    wrong = (text.replace("events: 6", "events: 7", 1)
                 .replace("decisions: {decide_action: increase_memory}",
                          "decisions: {decide_action: scale}", 1)
                 .replace("steps: [{collect_logs: failed}, {notify_failure: succeeded}]",
                          "steps: [{collect_logs: failed}, check_resources, {notify_failure: succeeded}]", 1))
    assert wrong != text
    (tmp_path / "wrong.yaml").write_text(wrong, encoding="utf-8")
    code, out, _ = run(capsys, str(tmp_path / "wrong.yaml"))
    assert code == 1
    assert f"FAIL {tmp_path / 'wrong.yaml'}:4: a crash-looping deployment" in out
    assert "incident pod_crashloop shop/checkout: events: expected 7, got 6" in out
    assert ("incident pod_crashloop shop/checkout, step decide_action: decision: expected 'scale', "
            "got 'increase_memory'") in out
    assert "-check_resources" in out and "collect_logs: kubectl logs failed" in out
    # The same as JUnit: it parses, and says which case failed and why.
    code, out, _ = run(capsys, "--format", "junit", str(tmp_path / "wrong.yaml"))
    assert code == 1
    suite = ElementTree.fromstring(out.split("?>", 1)[1])
    assert suite.get("tests") == "3" and suite.get("failures") == "2"
    failed = [c for c in suite.iter("testcase") if c.find("failure") is not None]
    assert failed[0].get("name").startswith("a crash-looping deployment")
    assert "events: expected 7, got 6" in failed[0].find("failure").text


def test_an_invalid_file_exits_2_with_path_and_line(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(textwrap.dedent("""\
        tests:
          - name: nonsense
            events:
              - t: soon
                event: {kind: Event}
            expect:
              incidents: [{strategy: pod_crashloop}]
        """), encoding="utf-8")
    code, _, err = run(capsys, str(bad))
    assert code == 2
    assert f"{bad}:4: tests.0.events.0.t:" in err
    assert f"{bad}:7: tests.0.expect.incidents.0.key: Field required" in err
    bad.write_text(textwrap.dedent("""        tests:
          - name: not an event
            events:
              - t: 1s
                event: {kind: Event}
            expect: {incidents: []}
        """), encoding="utf-8")
    code, _, err = run(capsys, str(bad))
    assert code == 2 and f"{bad}:5: not an event" in err
    (tmp_path / "syntax.yaml").write_text("tests: [\n", encoding="utf-8")
    code, _, err = run(capsys, str(tmp_path / "syntax.yaml"))
    assert code == 2 and "syntax.yaml:2: YAML" in err


def test_untested_rules_are_listed_and_can_fail_the_run(tmp_path, capsys) -> None:
    shutil.copy(TESTS / "pod_crashloop.yaml", tmp_path)
    code, out, _ = run(capsys, "--coverage", str(tmp_path))
    assert code == 0
    assert "untested strategies: failed_scheduling, image_pull_backoff, node_not_ready" in out
    assert "diagnose_node_not_ready.cordon" in out
    code, _, _ = run(capsys, "--fail-on-untested", str(tmp_path))
    assert code == 1


def test_repeats_patch_one_event_as_the_kubelet_does() -> None:
    case = Case.model_validate({"name": "x", "expect": {}, "events": [
        {"t": "0s", "repeat": 3, "every": "10s", "event": {
            "kind": "Event", "reason": "BackOff", "count": 1, "message": "Back-off restarting",
            "metadata": {"name": "a.1", "namespace": "ns", "uid": "e-1"},
            "involvedObject": {"kind": "Pod", "name": "web-7d9f8c6b5-x2x4k", "namespace": "ns"}}},
        {"t": "1m", "repeat": 2, "every": "5s", "event": {
            "kind": "Event", "reason": "BackOff", "count": 1, "message": "Back-off restarting",
            "metadata": {"name": "a.1", "namespace": "ns", "uid": "e-1"},
            "involvedObject": {"kind": "Pod", "name": "web-7d9f8c6b5-x2x4k", "namespace": "ns"}}},
    ]})
    events = expand(case)
    assert [round(at - EPOCH) for at, _, _ in events] == [0, 10, 20, 60, 65]
    # One Event object: its count goes on growing across the two inputs, never repeats.
    assert [e.total_count for _, _, e in events] == [1, 2, 3, 4, 5]
    assert len({e.id for _, _, e in events}) == 5

"""The built-in classifier scored on the fixture set (tests/fixtures/classifier/cases.yaml):
per-class figures, every answer explained by the line it used, and Unknown kept Unknown."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from steps.classifier import SUMMARY, classify

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "classifier" / "cases.yaml"
CASES: list[dict[str, Any]] = yaml.safe_load(FIXTURES.read_text(encoding="utf-8"))


def answer(case: dict[str, Any]) -> dict[str, Any]:
    evidence = case.get("evidence") or {}
    actions = {step: output.get("action", "") for step, output in evidence.items()}
    outputs = {step: {k: v for k, v in output.items() if k != "action"} for step, output in evidence.items()}
    return classify(case["incident"], case.get("events") or [], outputs, actions)


def test_the_fixture_set_covers_every_cause() -> None:
    assert {c["cause"] for c in CASES} == set(SUMMARY)


def test_per_class_figures(capsys) -> None:
    truth, right, said = Counter(), Counter(), Counter()
    wrong = []
    for case in CASES:
        got = answer(case)["root_cause"]
        truth[case["cause"]] += 1
        said[got] += 1
        if got == case["cause"]:
            right[got] += 1
        else:
            wrong.append(f"{case['name']}: expected {case['cause']}, got {got}")
    with capsys.disabled():
        print("\nclass        cases  recall  precision")
        for cause in SUMMARY:
            recall = right[cause] / truth[cause] if truth[cause] else 0.0
            precision = right[cause] / said[cause] if said[cause] else 0.0
            print(f"{cause:<12} {truth[cause]:>5}  {recall:>6.2f}  {precision:>9.2f}")
        print(f"accuracy {sum(right.values())}/{len(CASES)}")
    assert wrong == []


@pytest.mark.parametrize("case", [c for c in CASES if c["cause"] != "Unknown"], ids=lambda c: c["name"])
def test_each_answer_names_the_line_it_used(case) -> None:
    got = answer(case)
    assert got["root_cause"] == case["cause"]
    line = got["evidence"]
    assert line and len(line) <= 300
    sources = [case["incident"].get("message", ""), *(e.get("message", "") for e in case.get("events") or [])]
    sources += [o.get("stdout", "") for o in (case.get("evidence") or {}).values()]
    # The line as the cluster said it (an event's line is "reason: message"; a container
    # state from pod status JSON is put in words).
    said = line.split(": ", 1)[1] if line.startswith(case["incident"].get("reason", "") + ": ") else line
    from_events = any(said in f"{e.get('message', '')}" for e in case.get("events") or [])
    assert any(said in text for text in sources) or from_events or " lastState " in line, line
    assert 0.35 <= got["confidence"] <= 0.97


def test_strong_signals_are_more_confident_than_weak_ones() -> None:
    by_name = {c["name"]: answer(c) for c in CASES}
    assert by_name["OOMKilled in describe, BackOff event"]["confidence"] >= 0.9
    assert by_name["unhandled application exception with exit 1"]["confidence"] <= 0.6
    assert by_name["a crash loop with nothing to go on"]["confidence"] <= 0.1
    # A kill by the liveness probe shows as exit code 137, yet the probe is the cause.
    probe = by_name["probe kill shows as 137 but is a probe"]
    assert probe["root_cause"] == "Probe" and "OOM" in probe["others"]

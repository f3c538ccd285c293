"""Which strategy gets an event several match (engine.rules.precedence), what the rule base
does with it, and the warning ``aetherius check`` prints for a tie."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import pytest

from engine.cli import main
from engine.events import Event
from engine.rulebase import RuleBase
from engine.rules.check import effective_strategies, load_valid, rule_warnings
from engine.rules.model import Strategy
from engine.rules.precedence import by_precedence, may_match_same_event

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "rules"
T0 = 1_790_000_000.0
_ids = itertools.count(1)

# A workflow as posted through the API: an event trigger on the reason pod_crashloop also
# matches, at pod_crashloop's priority.
API_WORKFLOW = """id: crash_api
name: Crash loops, the API's way
trigger_type: event
trigger_config: {{event_reason: CrashLoopBackOff}}
priority: {priority}
steps:
  - id: tell
    type: notification
    config: {{channel: log, message: crash loop}}
"""


def strategy(ident: str, priority: int = 5, **conditions: object) -> Strategy:
    return Strategy.model_validate({"id": ident, "workflow_id": "w", "priority": priority,
                                    "symptoms": [{"conditions": conditions or {"reason": "BackOff"}}]})


def implicit(ident: str, priority: int = 5, reason: str = "BackOff") -> Strategy:
    s = strategy(f"workflow:{ident}", priority, reason=reason)
    s._implicit = True
    return s


def event(**changes: object) -> Event:
    fields: dict = {"id": f"ev-{next(_ids)}", "source": "kubernetes", "kind": "Pod", "name": "web-1",
                    "reason": "CrashLoopBackOff", "namespace": "blog", "uid": "p1", "message": "",
                    "type": "Warning", "count": 1, "total_count": 1, "node": "node-1", "pod": "web-1",
                    "workload": "web", "workload_kind": "Deployment", "container": "web",
                    "component": "kubelet", "first_seen": T0, "last_seen": T0}
    fields.update(changes)
    return Event(**fields)


def winner(strategies: list[Strategy], ev: Event) -> list[str]:
    rb = RuleBase(strategies)
    try:
        return [hit.strategy.id for hit in rb.process(ev, now=T0)]
    finally:
        rb.close()


@pytest.fixture
def with_api_workflow(tmp_path: Path):
    """The shipped rules plus the API's workflow at a given priority."""

    def make(priority: int) -> Path:
        tree = tmp_path / f"rules-{priority}"
        shutil.copytree(RULES, tree)
        (tree / "workflows" / "crash_api.yaml").write_text(API_WORKFLOW.format(priority=priority),
                                                           encoding="utf-8")
        return tree

    return make


# ------------------------------------------------------------------------ the order


def test_higher_priority_then_explicit_then_id():
    strategies = [implicit("a", 10), strategy("b", 10), strategy("a", 10), strategy("z", 11),
                  implicit("b", 12)]
    expected = ["workflow:b", "z", "a", "b", "workflow:a"]
    for order in itertools.permutations(strategies):
        assert [s.id for s in by_precedence(order)] == expected


@pytest.mark.parametrize("reverse", [False, True])
def test_at_equal_priority_the_explicit_strategy_gets_the_event_whatever_the_order(reverse):
    strategies = [implicit("crash", 10, "CrashLoopBackOff"), strategy("pod", 10, reason="CrashLoopBackOff")]
    assert winner(strategies[::-1] if reverse else strategies, event()) == ["pod"]


@pytest.mark.parametrize("reverse", [False, True])
def test_between_two_explicit_strategies_the_smaller_id_wins_whatever_the_order(reverse):
    strategies = [strategy("b_second", 7, reason="CrashLoopBackOff"),
                  strategy("a_first", 7, reason="CrashLoopBackOff")]
    assert winner(strategies[::-1] if reverse else strategies, event()) == ["a_first"]


def test_priority_still_beats_everything():
    strategies = [strategy("pod", 10, reason="CrashLoopBackOff"), implicit("crash", 11, "CrashLoopBackOff")]
    assert winner(strategies, event()) == ["workflow:crash"]


def test_shipped_pod_crashloop_beats_the_api_workflow_at_equal_priority(with_api_workflow):
    strategies = list(effective_strategies(load_valid(with_api_workflow(10))).values())
    assert "workflow:crash_api" in {s.id for s in strategies}
    assert winner(strategies, event()) == ["pod_crashloop"]


def test_raising_the_workflow_priority_lets_it_run(with_api_workflow):
    rules = load_valid(with_api_workflow(11))
    assert winner(list(effective_strategies(rules).values()), event()) == ["workflow:crash_api"]
    assert rule_warnings(rules) == []


# ------------------------------------------------------------------------ the warning


def test_shipped_rules_have_no_ties():
    assert rule_warnings(load_valid(RULES)) == []


def test_the_crashloop_tie_is_warned_with_both_locations(with_api_workflow):
    tree = with_api_workflow(10)
    [warning] = rule_warnings(load_valid(tree))
    api_file = str(tree / "workflows" / "crash_api.yaml")
    builtin = str(tree / "strategies" / "builtin.yaml")
    assert (warning.path, warning.line) == (api_file, 5)          # the workflow's priority line
    assert (warning.winner, warning.loser, warning.priority) == ("pod_crashloop", "workflow:crash_api", 10)
    assert (warning.winner_path, warning.winner_line) == (builtin, 9)
    assert dict(warning.example) == {"reason": "CrashLoopBackOff", "kind": "Pod"}
    text = str(warning)
    assert text.startswith(f"{api_file}:5: warning: ")
    assert f"{builtin}:9" in text and f"{api_file}:5" in text
    assert "'pod_crashloop' wins" in text
    assert "explicit strategy beats a workflow's implicit trigger" in text
    assert "raise the workflow's priority above 10" in text
    assert warning.loc == ("priority",)
    assert warning.as_dict()["winner"] == "pod_crashloop" and warning.as_dict()["loc"] == ["priority"]


def test_check_prints_the_warning_and_still_exits_0(with_api_workflow, capsys):
    tree = with_api_workflow(10)
    assert main(["check", str(tree)]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].startswith(f"{tree / 'workflows' / 'crash_api.yaml'}:5: warning: ")
    assert lines[-1].startswith("OK: ") and lines[-1].endswith(", 1 warning(s)")
    assert err == ""


def test_a_disabled_strategy_is_not_warned_about(tmp_path):
    (tmp_path / "rules.yaml").write_text("""strategies:
  - {id: a, workflow_id: w, priority: 3, symptoms: [{conditions: {reason: BackOff}}]}
  - {id: b, workflow_id: w, priority: 3, enabled: false, symptoms: [{conditions: {reason: BackOff}}]}
  - {id: c, workflow_id: w, priority: 3, symptoms: [{conditions: {reason: BackOff, kind: Node}}]}
workflows:
  - {id: w, steps: [{id: s, type: notification, config: {message: hi}}]}
""", encoding="utf-8")
    [warning] = rule_warnings(load_valid(tmp_path))
    assert (warning.winner, warning.loser, warning.line) == ("a", "c", 4)
    assert "the smaller id wins" in str(warning)
    assert "raise its priority above 3" in str(warning)


# ------------------------------------------------------------------------ overlap


def seq(ident: str, *reasons: str) -> Strategy:
    return Strategy.model_validate({"id": ident, "workflow_id": "w", "match": "sequence",
                                    "symptoms": [{"conditions": {"reason": r}} for r in reasons]})


@pytest.mark.parametrize(("a", "b", "overlap"), [
    ({"reason": "BackOff"}, {"reason": "BackOff"}, {"reason": "BackOff"}),
    ({"reason": "BackOff"}, {"reason": "Failed"}, None),
    ({"reason": {"in": ["A", "B"]}}, {"reason": {"in": ["B", "C"]}}, {"reason": "B"}),
    ({"reason": "A", "kind": "Pod"}, {"reason": "A", "kind": "Node"}, None),
    ({"reason": "A", "kind": "Pod"}, {"kind": "Pod"}, {"reason": "A", "kind": "Pod"}),   # unpinned reason
    ({"reason": "A"}, {"reason": {"ne": "A"}}, None),
    ({"reason": "A"}, {"reason": {"not_in": ["A", "B"]}}, None),
    ({"reason": "A", "node": {"exists": True}}, {"reason": "A", "node": {"exists": False}}, None),
    ({"reason": "A", "node": "n1"}, {"reason": "A", "node": {"exists": False}}, None),
    # Over-approximations: numeric ranges and regexes are not compared.
    ({"reason": "A", "count": {"gte": 3}}, {"reason": "A", "count": {"lt": 2}}, {"reason": "A"}),
    ({"reason": "A", "message": {"regex": "^x"}}, {"reason": "A", "message": {"regex": "^y"}},
     {"reason": "A"}),
    ({"any": [{"reason": "A"}, {"reason": "B"}]}, {"reason": "B"}, {"reason": "B"}),
])
def test_may_match_same_event(a, b, overlap):
    left, right = strategy("a", **a), strategy("b", **b)
    assert may_match_same_event(left, right) == overlap
    assert may_match_same_event(right, left) == overlap


def test_only_the_last_symptom_of_a_sequence_competes():
    assert may_match_same_event(seq("s", "OOMKilled", "BackOff"), strategy("o", reason="OOMKilled")) is None
    assert may_match_same_event(seq("s", "OOMKilled", "BackOff"), strategy("b", reason="BackOff")) == {
        "reason": "BackOff"}

"""The symptom condition language: parsing, reference evaluation, and the faults reported."""

from __future__ import annotations

import pytest
import yaml

from engine.events import Event
from engine.rules.conditions import AllOf, AnyOf, ConditionProblem, evaluate, leaves, parse_conditions
from engine.rules.conditions import Test as Leaf  # aliased so pytest does not try to collect it


def make_event(**changes: object) -> Event:
    fields: dict = {
        "id": "e1@1", "source": "kubernetes", "kind": "Pod", "name": "web-7d9f8c6b5-x2x4k",
        "reason": "BackOff", "namespace": "blog", "uid": "p1",
        "message": "Back-off restarting failed container web: exit code 137",
        "type": "Warning", "count": 5, "total_count": 5, "node": "node-1",
        "pod": "web-7d9f8c6b5-x2x4k", "workload": "web", "workload_kind": "Deployment",
        "container": "web", "component": "kubelet",
    }
    fields.update(changes)
    return Event(**fields)


def check(conditions: dict, event: Event | None = None) -> bool:
    return evaluate(parse_conditions(conditions), event or make_event())


# ----------------------------------------------------------------------------- operators


@pytest.mark.parametrize(
    ("conditions", "expected"),
    [
        ({"reason": "BackOff"}, True),
        ({"reason": "OOMKilled"}, False),
        ({"reason": {"eq": "BackOff"}}, True),
        ({"count": 5}, True),
        ({"count": 6}, False),
        ({"reason": {"ne": "BackOff"}}, False),
        ({"reason": {"ne": "OOMKilled"}}, True),
        ({"kind": {"in": ["Pod", "Node"]}}, True),
        ({"kind": {"in": ["Node"]}}, False),
        ({"kind": {"not_in": ["Node", "PersistentVolumeClaim"]}}, True),
        ({"kind": {"not_in": ["Pod"]}}, False),
        ({"count": {"in": [1, 5]}}, True),
    ],
)
def test_equality_and_membership(conditions, expected):
    assert check(conditions) is expected


@pytest.mark.parametrize(
    ("op", "operand", "expected"),
    [
        ("gt", 4, True), ("gt", 5, False),
        ("gte", 5, True), ("gte", 6, False),
        ("lt", 6, True), ("lt", 5, False),
        ("lte", 5, True), ("lte", 4, False),
        ("gte", 4.5, True), ("lt", 5.5, True),
    ],
)
def test_numeric_comparisons(op, operand, expected):
    assert check({"count": {op: operand}}) is expected


def test_several_operators_on_one_field_must_all_hold():
    conditions = {"count": {"gte": 3, "lt": 10}}

    assert check(conditions, make_event(count=3)) is True
    assert check(conditions, make_event(count=9)) is True
    assert check(conditions, make_event(count=10)) is False
    assert check(conditions, make_event(count=2)) is False


def test_several_fields_must_all_hold():
    conditions = {"reason": "BackOff", "type": "Warning", "count": {"gte": 3}}

    assert check(conditions) is True
    assert check(conditions, make_event(type="Normal")) is False


@pytest.mark.parametrize(
    ("node", "exists", "expected"),
    [
        ("node-1", True, True),
        ("node-1", False, False),
        (None, True, False),
        (None, False, True),
        ("", True, False),
        ("", False, True),
    ],
)
def test_exists(node, exists, expected):
    assert check({"node": {"exists": exists}}, make_event(node=node)) is expected


def test_absent_field_matches_only_negative_operators():
    event = make_event(severity=None)

    assert check({"severity": "high"}, event) is False
    assert check({"severity": {"in": ["high"]}}, event) is False
    assert check({"severity": {"regex": ".*"}}, event) is False
    assert check({"severity": {"ne": "high"}}, event) is True
    assert check({"severity": {"not_in": ["high"]}}, event) is True


def test_numeric_operator_on_absent_field_is_false():
    class NoCount:
        count = None

    tree = parse_conditions({"count": {"lt": 100}})

    assert evaluate(tree, NoCount()) is False


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        (r"exit code \d+", True),          # \d is a Python digit class, not a literal 'd'
        (r"exit code \d{4}", False),
        (r"^Back-off restarting", True),
        (r"^restarting", False),           # anchors hold
        (r"restarting failed", True),      # search, not match: anywhere in the message
        (r"(?i)BACK-OFF", True),
        (r"\bweb\b", True),
    ],
)
def test_regex_is_python_search(pattern, expected):
    assert check({"message": {"regex": pattern}}) is expected


def test_regex_digit_class_does_not_match_letters():
    conditions = {"message": {"regex": r"exit code \d+$"}}

    assert check(conditions, make_event(message="exit code 1")) is True
    assert check(conditions, make_event(message="exit code d")) is False


def test_regex_written_in_yaml_keeps_backslash_d():
    # As an operator writes it in a rule file.
    raw = yaml.safe_load(r"message: {regex: 'exit code \d+'}")

    assert raw == {"message": {"regex": r"exit code \d+"}}
    assert check(raw) is True
    assert check(raw, make_event(message="exit code none")) is False


def test_regex_on_a_number_field_reads_its_text():
    assert check({"count": {"regex": r"^\d$"}}) is True
    assert check({"count": {"regex": r"^\d$"}}, make_event(count=12)) is False


# ----------------------------------------------------------------------------- any / all


def test_nested_any_and_all():
    conditions = {
        "kind": "Pod",
        "any": [
            {"severity": "high"},
            {"all": [{"type": "Warning"}, {"count": {"gte": 3}}]},
        ],
    }
    tree = parse_conditions(conditions)

    assert isinstance(tree, AllOf)
    assert evaluate(tree, make_event()) is True                             # Warning and count 5
    assert evaluate(tree, make_event(count=1)) is False                     # neither branch
    assert evaluate(tree, make_event(count=1, severity="high")) is True     # first branch
    assert evaluate(tree, make_event(kind="Node", severity="high")) is False  # top-level kind


def test_any_alone_is_an_any_node():
    tree = parse_conditions({"any": [{"reason": "BackOff"}, {"reason": "OOMKilled"}]})

    assert isinstance(tree, AnyOf)
    assert evaluate(tree, make_event(reason="OOMKilled")) is True
    assert evaluate(tree, make_event(reason="Pulled")) is False


def test_single_condition_is_a_plain_test_and_leaves_lists_every_test():
    assert parse_conditions({"reason": "BackOff"}) == Leaf("reason", "eq", "BackOff")

    tree = parse_conditions({"kind": {"in": ["Pod"]},
                             "any": [{"count": {"gt": 1}}, {"node": {"exists": True}}]})

    assert leaves(tree) == [
        Leaf("kind", "in", ("Pod",)), Leaf("count", "gt", 1), Leaf("node", "exists", True),
    ]


# ----------------------------------------------------------------------------- problems


@pytest.mark.parametrize(
    ("conditions", "path", "pattern"),
    [
        pytest.param({"reasn": "BackOff"}, ("reasn",), r"unknown event field 'reasn'", id="unknown-field"),
        pytest.param({"labels": {"app": "web"}}, ("labels",), r"unknown event field",
                     id="labels-not-a-field"),
        pytest.param({"any": [{"reason": "X"}, {"podname": "y"}]}, ("any", 1, "podname"),
                     r"unknown event field 'podname'", id="unknown-field-nested"),
        pytest.param({"count": {"greater_than": 3}}, ("count", "greater_than"),
                     r"unknown operator 'greater_than'", id="unknown-operator"),
        pytest.param({"reason": {"matches": "Back"}}, ("reason", "matches"), r"unknown operator",
                     id="unknown-operator-matches"),
        pytest.param({"message": {"regex": "(unclosed"}}, ("message", "regex"),
                     r"invalid regular expression '\(unclosed'", id="invalid-regex"),
        pytest.param({"all": [{"message": {"regex": "[z-a]"}}]}, ("all", 0, "message", "regex"),
                     r"invalid regular expression", id="invalid-regex-nested"),
        pytest.param({"count": {"gt": "3"}}, ("count", "gt"), r"'gt' takes a number", id="gt-str"),
        pytest.param({"count": {"lte": True}}, ("count", "lte"), r"'lte' takes a number", id="lte-bool"),
        pytest.param({"count": {"gte": None}}, ("count", "gte"), r"'gte' takes a number", id="gte-none"),
        pytest.param({"kind": {"in": "Pod"}}, ("kind", "in"), r"'in' takes a non-empty list", id="in-str"),
        pytest.param({"kind": {"in": []}}, ("kind", "in"), r"non-empty list", id="in-empty"),
        pytest.param({"kind": {"not_in": [["Pod"]]}}, ("kind", "not_in"), r"'not_in' takes a non-empty list",
                     id="not-in-nested-list"),
        pytest.param({"kind": {"in": ["Pod", None]}}, ("kind", "in"), r"non-empty list", id="in-none"),
        pytest.param({"node": {"exists": "yes"}}, ("node", "exists"), r"'exists' takes true or false",
                     id="exists-str"),
        pytest.param({"message": {"regex": 5}}, ("message", "regex"), r"'regex' takes a string",
                     id="regex-int"),
        pytest.param({"reason": ["BackOff", "OOMKilled"]}, ("reason",),
                     r"expected a single value for 'reason'", id="eq-list"),
        pytest.param({"reason": None}, ("reason",), r"expected a single value", id="eq-none"),
        pytest.param({"reason": {"ne": {"x": 1}}}, ("reason", "ne"), r"expected a single value",
                     id="ne-dict"),
        pytest.param({"count": {}}, ("count",), r"empty operator map", id="empty-operators"),
        pytest.param({"any": []}, ("any",), r"'any' takes a non-empty list", id="any-empty"),
        pytest.param({"all": {"reason": "X"}}, ("all",), r"'all' takes a non-empty list", id="all-map"),
        pytest.param({"any": [{"reason": "X"}, "type: Warning"]}, ("any", 1), r"must be a mapping",
                     id="any-item-str"),
        pytest.param({"any": [{}]}, ("any", 0), r"conditions are empty", id="any-item-empty"),
        pytest.param({}, (), r"conditions are empty", id="empty"),
        pytest.param(["reason", "BackOff"], (), r"must be a mapping", id="not-a-mapping"),
    ],
)
def test_condition_problems_name_the_path(conditions, path, pattern):
    with pytest.raises(ConditionProblem, match=pattern) as info:
        parse_conditions(conditions)

    assert info.value.path == path


def test_condition_problem_is_a_value_error():
    with pytest.raises(ValueError, match="unknown event field"):
        parse_conditions({"nope": 1})


def test_unknown_field_message_lists_known_fields():
    with pytest.raises(ConditionProblem) as info:
        parse_conditions({"reasn": "BackOff"})

    assert "reason" in str(info.value)
    assert "workload" in str(info.value)


@pytest.mark.parametrize(
    ("conditions", "path"),
    [
        pytest.param({"count": "3"}, ("count",), id="count-eq-str"),
        pytest.param({"reason": {"gt": 3}}, ("reason", "gt"), id="reason-gt-number"),
    ],
)
def test_operand_type_must_suit_the_field(conditions, path):
    with pytest.raises(ConditionProblem) as info:
        parse_conditions(conditions)

    assert info.value.path == path

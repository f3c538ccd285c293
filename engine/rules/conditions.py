"""The condition language of symptoms, shared by the checker and the rule compiler.

A symptom's ``conditions`` map an event field to a value (equality) or to operators::

    conditions:
      reason: BackOff                         # equality
      kind: {in: [Pod]}                       # membership
      count: {gte: 3}                         # numeric comparison (gt, gte, lt, lte, ne)
      node: {exists: true}                    # presence
      message: {regex: "^Back-off restarting"} # Python regular expression (search)
      any:                                    # nested any / all
        - {severity: high}
        - {type: Warning}

All keys of one map must hold (all). ``pattern`` on the symptom is shorthand for
``message: {regex: ...}``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# Event fields a condition may name; values are the type the field holds.
CONDITION_FIELDS: dict[str, type | tuple[type, ...]] = {
    "source": str, "cluster": str, "kind": str, "namespace": str, "name": str, "uid": str,
    "reason": str, "message": str, "type": str, "severity": str, "count": int,
    "total_count": int, "node": str, "pod": str, "workload": str, "workload_kind": str,
    "container": str, "component": str,
}
NUMERIC_OPS = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
OPERATORS = frozenset({"eq", "ne", "in", "not_in", "exists", "regex", *NUMERIC_OPS})


@dataclass(frozen=True)
class Test:
    """One leaf test: ``field op value``."""

    field: str
    op: str
    value: Any


@dataclass(frozen=True)
class AllOf:
    parts: tuple[Any, ...]


@dataclass(frozen=True)
class AnyOf:
    parts: tuple[Any, ...]


Node = Test | AllOf | AnyOf


class ConditionProblem(ValueError):
    def __init__(self, path: tuple, message: str) -> None:
        super().__init__(message)
        self.path = path


def parse_conditions(raw: Any, path: tuple = ()) -> Node:
    """Parse a conditions map into a tree. Raises ConditionProblem at the first fault;
    the checker calls it per symptom so every symptom's faults are reported."""
    if not isinstance(raw, dict):
        raise ConditionProblem(path, "conditions must be a mapping of field: value")
    parts: list[Node] = []
    for key, value in raw.items():
        here = (*path, key)
        if key in ("any", "all"):
            if not isinstance(value, list) or not value:
                raise ConditionProblem(here, f"'{key}' takes a non-empty list of condition maps")
            subs = tuple(parse_conditions(v, (*here, i)) for i, v in enumerate(value))
            parts.append(AnyOf(subs) if key == "any" else AllOf(subs))
            continue
        if key not in CONDITION_FIELDS:
            known = ", ".join(sorted(CONDITION_FIELDS))
            raise ConditionProblem(here, f"unknown event field {key!r}; known fields: {known}")
        if isinstance(value, dict):
            if not value:
                raise ConditionProblem(here, "empty operator map")
            for op, operand in value.items():
                parts.append(_leaf(key, op, operand, (*here, op)))
        else:
            parts.append(_leaf(key, "eq", value, here))
    if not parts:
        raise ConditionProblem(path, "conditions are empty")
    return parts[0] if len(parts) == 1 else AllOf(tuple(parts))


def _scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool) and value is not None


def _check_type(field: str, value: Any, path: tuple) -> None:
    expected = CONDITION_FIELDS[field]
    if expected is int:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    else:
        ok = isinstance(value, str)
    if not ok:
        want = "a number" if expected is int else "a string"
        raise ConditionProblem(path, f"{field!r} holds {want}, so {value!r} can never match")


def _leaf(field: str, op: str, value: Any, path: tuple) -> Test:
    if op not in OPERATORS:
        raise ConditionProblem(path, f"unknown operator {op!r}; known: {', '.join(sorted(OPERATORS))}")
    if op in ("in", "not_in"):
        if not isinstance(value, list) or not value or not all(_scalar(v) for v in value):
            raise ConditionProblem(path, f"'{op}' takes a non-empty list of values")
        for i, item in enumerate(value):
            _check_type(field, item, (*path, i))
        return Test(field, op, tuple(value))
    if op == "exists":
        if not isinstance(value, bool):
            raise ConditionProblem(path, "'exists' takes true or false")
        return Test(field, op, value)
    if op == "regex":
        if not isinstance(value, str):
            raise ConditionProblem(path, "'regex' takes a string")
        try:
            re.compile(value)
        except re.error as exc:
            raise ConditionProblem(path, f"invalid regular expression {value!r}: {exc}") from None
        return Test(field, op, value)
    if op in NUMERIC_OPS:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConditionProblem(path, f"'{op}' takes a number")
        if CONDITION_FIELDS[field] is not int:
            raise ConditionProblem(path, f"'{op}' compares numbers, and {field!r} holds a string")
        return Test(field, op, value)
    if not _scalar(value):
        raise ConditionProblem(path, f"expected a single value for {field!r}, got {type(value).__name__}")
    _check_type(field, value, path)
    return Test(field, op, value)


def leaves(node: Node) -> list[Test]:
    if isinstance(node, Test):
        return [node]
    return [leaf for part in node.parts for leaf in leaves(part)]


def evaluate(node: Node, event: Any) -> bool:
    """Reference semantics in plain Python (tests check the compiled rules against it)."""
    if isinstance(node, AllOf):
        return all(evaluate(p, event) for p in node.parts)
    if isinstance(node, AnyOf):
        return any(evaluate(p, event) for p in node.parts)
    value = getattr(event, node.field, None)
    op = node.op
    if op == "exists":
        return (value is not None and value != "") == node.value
    if value is None:
        return op in ("ne", "not_in")
    if op == "eq":
        return value == node.value
    if op == "ne":
        return value != node.value
    if op == "in":
        return value in node.value
    if op == "not_in":
        return value not in node.value
    if op == "regex":
        return re.search(node.value, str(value)) is not None
    if not isinstance(value, int | float):
        return False
    return {"gt": value > node.value, "gte": value >= node.value,
            "lt": value < node.value, "lte": value <= node.value}[op]


def conjuncts(node: Node) -> list[Node]:
    """The symptom as alternatives without any OR (disjunctive normal form); ``in`` is
    an OR of equalities. Bounded: a symptom with more than 64 alternatives is refused."""

    def expand(n: Node) -> list[list[Test]]:
        if isinstance(n, Test):
            if n.op == "in":
                return [[Test(n.field, "eq", v)] for v in n.value]
            if n.op == "ne":      # absent, or present and different
                return [[Test(n.field, "exists", False)], [Test(n.field, "differs", n.value)]]
            if n.op == "not_in":
                return [[Test(n.field, "exists", False)],
                        [Test(n.field, "differs", v) for v in n.value]]
            return [[n]]
        if isinstance(n, AnyOf):
            return [alt for part in n.parts for alt in expand(part)]
        out: list[list[Test]] = [[]]
        for part in n.parts:
            out = [left + right for left in out for right in expand(part)]
            if len(out) > 64:
                raise ValueError("symptom too complex to join: more than 64 alternatives")
        return out

    return [alt[0] if len(alt) == 1 else AllOf(tuple(alt)) for alt in expand(node)]

"""Strategies compiled into one durable-rules rule set: a :class:`CompiledRuleSet`.

What the rule base (:mod:`engine.rulebase`) posts and how it reads what fired are decided
here, once per generation of strategies:

- **Priorities.** durable-rules gives an event to the one rule with the lowest ``pri``.
  Each strategy gets a band of ten ``pri`` values from its rank in
  :func:`engine.rules.precedence.by_precedence` (the one place that breaks ties), so no two
  strategies share a ``pri`` and the winner never depends on declaration order. In a
  band: ``+0`` a hit, ``-1`` a hit inhibited by another strategy, ``+5`` a resolve symptom.
  Sequence stages fire before everything (``pri 0``) and re-post a flagged copy; the drain
  of unmatched final-stage events fires after every band.
- **Markers.** Every event carries ``ev=1`` and no fact does, so a fact can never match an
  event pattern. Regexes are evaluated in Python and posted as ``rx<N>`` flags.
- **Joins** (inhibition, sequence stages) are one rule per alternative of the symptom
  (its DNF): durable-rules drops join tests that follow an ``$or``.
- **Views.** Per event reason, the fields the rules that can match it read: what is
  posted, and the key of the rule base's memo. A view also knows which of them only
  joins read (a sequence's ``same``, an inhibition's ``equal``) and which only regexes
  read: while no fact is live no join can fire, so the memo keys on the others and on
  the regexes' answers (:attr:`View.free_fields`), and a storm of one symptom on
  thousands of pods is posted once, not once per pod.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from durable import lang as dl

from engine.rules.conditions import AllOf, AnyOf, Node, Test, conjuncts, leaves
from engine.rules.model import Strategy
from engine.rules.precedence import by_precedence


@dataclass(frozen=True)
class View:
    fields: tuple[str, ...]
    regexes: tuple[tuple[str, str, re.Pattern], ...]  # (flag name, field, pattern)
    # The fields a rule reads other than through a join or a regex (always ``reason``):
    # with the regexes' answers, all an event's outcome depends on while no fact is live.
    free_fields: tuple[str, ...] = ("reason",)
    # The memo key while no fact is live: the free fields' values and the regexes' answers.
    free_key: Callable[[Any], Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "free_key", _free_key(self.free_fields, self.regexes))


def regex_flag(pattern: re.Pattern, value: Any) -> bool:
    """A symptom's regex on a field, as posted to the engine (an ``rx<N>`` flag)."""
    return value is not None and pattern.search(value if type(value) is str else str(value)) is not None


def _free_key(fields: tuple[str, ...],
              regexes: tuple[tuple[str, str, re.Pattern], ...]) -> Callable[[Any], Any]:
    # attrgetter returns a bare value for one field, a tuple for several: either is a key
    # (the reason is always among them, and a reason has one view).
    values = operator.attrgetter(*fields)
    if not regexes:
        return values
    tests = tuple((operator.attrgetter(fname), pattern) for _, fname, pattern in regexes)
    if len(tests) == 1:
        (get1, p1), = tests
        return lambda event: (values(event), regex_flag(p1, get1(event)))
    if len(tests) == 2:       # (the shipped BackOff view: crash loop or image pull)
        (get1, p1), (get2, p2) = tests
        return lambda event: (values(event), regex_flag(p1, get1(event)), regex_flag(p2, get2(event)))
    return lambda event: (values(event), *[regex_flag(pattern, get(event)) for get, pattern in tests])


@dataclass
class CompiledRuleSet:
    """One generation of strategies as a durable-rules rule set, and what its rules mean."""

    number: int
    name: str
    strategies: dict[str, Strategy]
    # Per event reason: the fields the rules that can match it read (posted to the
    # engine, and the memo key) and the regexes to evaluate; ``default`` for the rest.
    views: dict[str, View]
    default: View
    inhibitors: dict[str, Strategy]
    sequences: dict[str, Strategy]
    definition: dict[str, Any] = field(default_factory=dict)   # what durable-rules registers
    handle: Any = None                                         # set once registered
    # Per rule name (r_0, r_1, ...): (kind, strategy id, "m" | "e", *extra), what a firing means.
    meta: dict[str, tuple] = field(default_factory=dict)
    memo: dict = field(default_factory=dict)
    # The memo while no fact is live, keyed on a view's free fields and regex answers.
    free_memo: dict = field(default_factory=dict)

    def forget(self) -> None:
        """Drop every memoized outcome (a fact changed)."""
        self.memo.clear()
        self.free_memo.clear()


def stage_flag(strategy_id: str, k: int) -> str:
    """The flag a re-posted copy carries once stage ``k`` of a sequence took it."""
    return f"seq_{_safe(strategy_id)}_{k}"


def compile_rules(number: int, strategies: dict[str, Strategy]) -> CompiledRuleSet:
    """Compile ``strategies`` into rule set ``aetherius_g<number>`` (not yet registered)."""
    name = f"aetherius_g{number}"
    regexes: dict[tuple[str, str], int] = {}
    by_reason: dict[str, set[str]] = {}
    plain_by_reason: dict[str, set[str]] = {}      # read by a test that is not a regex
    rx_by_reason: dict[str, set[tuple[str, str]]] = {}
    unpinned: set[str] = set()
    plain_unpinned: set[str] = set()
    rx_unpinned: set[tuple[str, str]] = set()
    inhibitors = {s.id: s for s in strategies.values() if s.inhibits}
    sequences = {s.id: s for s in strategies.values() if s.match == "sequence"}
    # Inhibition joins on its field whatever the reason, so every view carries it.
    joins = {f for s in inhibitors.values() for rule in s.inhibits for f in rule.equal}
    for s in strategies.values():
        for symptom in [*s.symptoms, *s.resolve]:
            used = {"reason"} | (set(s.same) if s.match == "sequence" else set())
            plain = {"reason"}
            rx: set[tuple[str, str]] = set()
            for leaf in leaves(symptom.tree):
                used.add(leaf.field)
                if leaf.op == "regex":
                    regexes.setdefault((leaf.field, leaf.value), len(regexes))
                    rx.add((leaf.field, leaf.value))
                else:
                    plain.add(leaf.field)
            reasons = _pinned_reasons(symptom.tree)
            if reasons is None:
                unpinned |= used
                plain_unpinned |= plain
                rx_unpinned |= rx
            else:
                for reason in reasons:
                    by_reason.setdefault(reason, set()).update(used)
                    plain_by_reason.setdefault(reason, set()).update(plain)
                    rx_by_reason.setdefault(reason, set()).update(rx)

    def view(fields: set[str], plain: set[str], rx: set[tuple[str, str]]) -> View:
        ordered = sorted(rx, key=lambda k: regexes[k])
        return View(tuple(sorted(fields | unpinned | joins)),
                    tuple((f"rx{regexes[k]}", k[0], re.compile(k[1])) for k in ordered),
                    tuple(sorted(plain | plain_unpinned)))

    compiled = CompiledRuleSet(
        number=number, name=name, strategies=strategies,
        views={r: view(f, plain_by_reason[r], rx_by_reason.get(r, set()) | rx_unpinned)
               for r, f in by_reason.items()},
        default=view({"reason"}, {"reason"}, rx_unpinned),
        inhibitors=inhibitors, sequences=sequences,
    )
    rx_index = dict(regexes)
    meta: list[tuple] = []  # per rule, in definition order: what its firing means

    def cond(node: Node) -> Any:
        # Every event carries ev=1 and no fact does, so a fact can never match an event
        # pattern (a symptom of only negative tests would otherwise match any fact).
        # The marker goes last: durable's `a & b` flattens only a left-hand $and, and a
        # nested $and loses the join tests that follow it.
        return _compile_node(node, rx_index) & (dl.m.ev == 1)

    ranked = by_precedence(strategies.values())
    drain = _band(len(ranked) + 1)   # after every strategy's band
    rs = dl.ruleset(name)
    with rs:
        for rank, s in enumerate(ranked):
            base = _band(rank)
            if s.match == "sequence":
                _compile_sequence(s, base, drain, cond, meta)
                continue
            targets = [(i, rule) for i in inhibitors.values() for rule in i.inhibits
                       if s.category in rule.categories or s.id in rule.strategies]
            for symptom in s.symptoms:
                when = cond(symptom.tree)
                dl.when_all(dl.pri(base), when)(_action(meta, "hit", s.id, "m"))
                for inhibitor, rule in targets:
                    eq = rule.equal[0]
                    # durable-rules drops join tests that follow an $or, so a joined
                    # pattern is one rule per alternative of the symptom (its DNF).
                    for conj in conjuncts(symptom.tree):
                        dl.when_all(
                            dl.pri(base - 1),
                            dl.c.f << ((dl.m.t == "inhibit") & (dl.m.by == inhibitor.id)),
                            dl.c.e << (cond(conj) & (getattr(dl.m, eq) == dl.c.f.value)),
                        )(_action(meta, "inhibited", s.id, "e", inhibitor.id))
            for symptom in s.resolve:
                dl.when_all(dl.pri(base + 5), cond(symptom.tree))(_action(meta, "resolve", s.id, "m"))
    _, compiled.definition = rs.define()
    dl._rulesets.pop(name, None)
    # define() names rules r_0, r_1, ... in the order they were declared.
    compiled.meta = {f"r_{i}": m for i, m in enumerate(meta)}
    return compiled


def _band(rank: int) -> int:
    """The ``pri`` of the hits of the strategy ranked ``rank`` (0 wins): above the stages'
    0, ten apart so that its inhibited (-1) and resolve (+5) rules fit in between."""
    return 10 * (rank + 1)


def _compile_sequence(s: Strategy, base: int, drain: int, cond: Callable[[Node], Any], meta: list) -> None:
    n = len(s.symptoms)
    for k, symptom in enumerate(s.symptoms):
        flag = stage_flag(s.id, k)
        if k < n - 1:
            # The flag keeps the re-posted copy from entering the same stage again.
            when = cond(symptom.tree) & -getattr(dl.m, flag)
            if k == 0:
                dl.when_all(dl.pri(0), when)(_action(meta, "stage", s.id, "m", k))
            else:
                for conj in conjuncts(symptom.tree):   # see the inhibited rules: no $or in joins
                    joined = cond(conj) & -getattr(dl.m, flag) & _same(s)
                    dl.when_all(dl.pri(0), _stage_fact(s, k - 1), dl.c.e << joined)(
                        _action(meta, "stage", s.id, "e", k))
        else:
            for conj in conjuncts(symptom.tree):
                dl.when_all(dl.pri(base), _stage_fact(s, k - 1), dl.c.e << (cond(conj) & _same(s)))(
                    _action(meta, "hit", s.id, "e"))
            # Consume unmatched final-symptom events so none waits in the engine for a
            # stage fact that arrives later (order matters: symptom 1 comes first).
            dl.when_all(dl.pri(drain), cond(symptom.tree))(_action(meta, "drain", s.id, "m"))


def _safe(ident: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", ident)


def _pinned_reasons(node: Node) -> set[str] | None:
    if isinstance(node, Test):
        if node.field == "reason" and node.op == "eq":
            return {node.value}
        if node.field == "reason" and node.op == "in":
            return set(node.value)
        return None
    if isinstance(node, AllOf):
        for part in node.parts:
            found = _pinned_reasons(part)
            if found is not None:
                return found
        return None
    found_all: set[str] = set()
    for part in node.parts:
        found = _pinned_reasons(part)
        if found is None:
            return None
        found_all |= found
    return found_all


def _stage_fact(s: Strategy, k: int) -> Any:
    return dl.c.f << ((dl.m.t == "stage") & (dl.m.s == s.id) & (dl.m.k == k))


def _same(s: Strategy) -> Any:
    expr = None
    for f in s.same:
        part = getattr(dl.m, f) == getattr(dl.c.f, f"j_{f}")
        expr = part if expr is None else expr & part
    return expr


def _compile_node(node: Node, rx_index: dict) -> Any:
    if isinstance(node, AllOf | AnyOf):
        parts = [_compile_node(p, rx_index) for p in node.parts]
        expr = parts[0]
        for part in parts[1:]:
            expr = (expr & part) if isinstance(node, AllOf) else (expr | part)
        return expr
    attr = getattr(dl.m, node.field)
    op, value = node.op, node.value
    if op == "eq":
        return attr == value
    if op == "ne":
        return (-getattr(dl.m, node.field)) | (attr != value)
    if op == "differs":   # internal: present and not equal (a branch of ne / not_in)
        return attr != value
    if op == "in":
        expr = attr == value[0]
        for v in value[1:]:
            expr = expr | (getattr(dl.m, node.field) == v)
        return expr
    if op == "not_in":
        expr = -getattr(dl.m, node.field)
        inner = getattr(dl.m, node.field) != value[0]
        for v in value[1:]:
            inner = inner & (getattr(dl.m, node.field) != v)
        return expr | inner
    if op == "exists":
        return +attr if value else -attr
    if op == "regex":
        return getattr(dl.m, f"rx{rx_index[(node.field, value)]}") == 1
    return {"gt": attr > value, "gte": attr >= value, "lt": attr < value, "lte": attr <= value}[op]


def _action(meta: list, kind: str, sid: str, ref: str, *extra: Any) -> Callable[[Any], None]:
    """Record what a rule's firing means. The engine loop reads it by rule name; the
    callable itself never runs (durable-rules only requires one)."""
    meta.append((kind, sid, ref, *extra))

    def action(c: Any) -> None:  # pragma: no cover - never called, see _assert_event
        raise AssertionError("rule actions are dispatched by RuleBase._assert_event")

    return action

"""Which strategy gets an event that several strategies match, and which pairs tie.

One event is a hit for at most one strategy (so it opens at most one incident). When the
symptoms of several enabled strategies match it, the winner is the first in this order:

1. the higher ``priority``;
2. at equal priority, an explicit strategy before a workflow's implicit trigger
   (``workflow:<id>``, derived from ``trigger_config.event_reason``);
3. then the smaller id, in string order.

Why explicit before implicit: an explicit strategy was written for its symptom, with its
kind, message pattern, correlation key and inhibition chosen on purpose; an implicit
trigger is the seed's shorthand for "any event with this reason". Adding a workflow (a file
or an API call) must not silently take events away from a tuned strategy; when an operator
wants that, raising the workflow's priority says so, and ``aetherius check`` warns about
every tie so that nobody has to know this order by heart. The id comes last only so the
outcome never depends on file order, load order or database row order.

:func:`by_precedence` is the one place this order is written: the rule compiler ranks
strategies with it (:mod:`engine.rulecompiler`). :func:`may_match_same_event` says which
pairs can compete at all, for the warnings of :func:`engine.rules.check.rule_warnings`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

from engine.rules.conditions import AllOf, Node, Test, conjuncts
from engine.rules.model import Strategy


def precedence_key(strategy: Strategy) -> tuple[int, bool, str]:
    """Sorts the winner first: higher priority, then explicit before implicit, then id."""
    return (-strategy.priority, strategy.implicit, strategy.id)


def by_precedence(strategies: Iterable[Strategy]) -> list[Strategy]:
    """The strategies in the order in which they claim an event they all match."""
    return sorted(strategies, key=precedence_key)


def tie_reason(winner: Strategy, loser: Strategy) -> str:
    """Why ``winner`` beats ``loser`` at equal priority, in words for the operator."""
    if winner.implicit != loser.implicit:
        return "at equal priority an explicit strategy beats a workflow's implicit trigger"
    return "at equal priority the smaller id wins"


# ------------------------------------------------------------------------ overlap


def may_match_same_event(a: Strategy, b: Strategy) -> dict[str, Any] | None:
    """Whether one event can be a hit for both ``a`` and ``b``; if so, the ``reason`` and
    ``kind`` such an event has where the symptoms pin them (an example for the operator).

    Sound, not exact: None means no event can match both; a result means one may. Only
    equalities (``reason: X``, ``kind: {in: [...]}``), ``ne`` / ``not_in`` and ``exists``
    are compared, so it over-approximates when the symptoms differ only by a regex
    (``pattern``), by numeric comparisons (``count: {gte: 3}`` against ``{lt: 2}``), or,
    for a sequence, by whether its earlier stages were seen (only its last symptom makes
    a hit, so only that one is compared). A symptom too complex to expand (more than 64
    alternatives) is taken to match anything.
    """
    for left in _hit_alternatives(a):
        for right in _hit_alternatives(b):
            if left is None or right is None:
                return {}
            pins = _compatible(left, right)
            if pins is not None:
                return {f: pins[f] for f in ("reason", "kind") if f in pins}
    return None


def _hit_alternatives(strategy: Strategy) -> list[list[Test] | None]:
    """Each way an event can be a hit, as a list of tests that must all hold (None: any)."""
    symptoms = strategy.symptoms if strategy.match == "any" else strategy.symptoms[-1:]
    out: list[list[Test] | None] = []
    for symptom in symptoms:
        try:
            out.extend(_tests(conj) for conj in conjuncts(symptom.tree))
        except ValueError:
            out.append(None)
    return out


def _tests(node: Node) -> list[Test]:
    if isinstance(node, Test):
        return [node]
    assert isinstance(node, AllOf)   # conjuncts() returns no AnyOf
    return [part for part in node.parts if isinstance(part, Test)]


def _compatible(left: list[Test], right: list[Test]) -> dict[str, Any] | None:
    """The equalities both sides pin, or None if they contradict on some field."""
    pins: dict[str, Any] = {}
    differs: dict[str, list[Any]] = {}
    present: set[str] = set()
    absent: set[str] = set()
    for test in [*left, *right]:
        if test.op == "exists":
            (present if test.value else absent).add(test.field)
            continue
        if test.op == "eq":
            if test.field in pins and pins[test.field] != test.value:
                return None
            pins[test.field] = test.value
            if test.value == "":      # "" reads as absent to exists: false
                continue
        elif test.op == "differs":
            differs.setdefault(test.field, []).append(test.value)
        present.add(test.field)       # every other test needs the field to be there
    if present & absent:
        return None
    for name, values in differs.items():
        if name in pins and any(pins[name] == v for v in values):
            return None
    return pins


# ------------------------------------------------------------------------ warnings


@dataclass(frozen=True, order=True)
class TieWarning:
    """Two enabled strategies can match the same event at equal priority; ``winner`` gets
    it. Located (``path``, ``line``) at the loser's priority: what an operator would raise."""

    path: str
    line: int
    message: str
    loser: str
    winner: str
    priority: int
    winner_path: str
    winner_line: int
    example: tuple[tuple[str, Any], ...] = ()   # (field, value) such an event has, e.g. reason
    # The field inside the loser's document (as Problem.loc): a strategy's or the workflow's.
    loc: tuple[str | int, ...] = ("priority",)

    kind: ClassVar[str] = "tie"

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: warning: {self.message}"

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.path, "line": self.line, "message": self.message,
                "loser": self.loser, "winner": self.winner, "priority": self.priority,
                "winner_path": self.winner_path, "winner_line": self.winner_line,
                "example": dict(self.example), "loc": list(self.loc)}


Locate = Callable[[Strategy], tuple[str, int, str]]   # -> (path, line, how to name it)


def tie_warnings(strategies: Iterable[Strategy], locate: Locate) -> list[TieWarning]:
    """A warning for each pair of ``strategies`` (the enabled ones, implicit included) that
    may match the same event at equal priority, sorted by location."""
    by_priority: dict[int, list[Strategy]] = {}
    for strategy in by_precedence(strategies):
        by_priority.setdefault(strategy.priority, []).append(strategy)
    out = []
    for priority, group in by_priority.items():
        for i, winner in enumerate(group):
            for loser in group[i + 1:]:
                example = may_match_same_event(winner, loser)
                if example is None:
                    continue
                w_path, w_line, w_name = locate(winner)
                l_path, l_line, l_name = locate(loser)
                such = f" (e.g. {', '.join(f'{k} {v}' for k, v in example.items())})" if example else ""
                raise_what = "the workflow's priority" if loser.implicit else "its priority"
                message = (f"{l_name} ({l_path}:{l_line}) and {w_name} ({w_path}:{w_line}) can match "
                           f"the same event{such} at priority {priority}: {winner.id!r} wins "
                           f"({tie_reason(winner, loser)}); to let {loser.id!r} win, raise "
                           f"{raise_what} above {priority}")
                out.append(TieWarning(l_path, l_line, message, loser.id, winner.id, priority,
                                      w_path, w_line, tuple(example.items())))
    return sorted(out)

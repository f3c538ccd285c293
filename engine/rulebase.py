"""The rule base: strategies compiled into a durable-rules rule set, one generation at a time.

Each event is posted to the current generation as a durable-rules *event*; rules compiled
from the strategies fire and say which strategy it is a hit for. Facts hold the state that
outlives one event:

- **inhibit** facts, derived when an inhibiting strategy (NodeNotReady) matches: while
  ``{t: inhibit, by: node_not_ready, value: node-3}`` holds, the target strategies' hits
  on node-3 become *inhibited* hits (the node incident covers them). A ``resolve``
  symptom (NodeReady) or ``inhibit_ttl`` retracts it.
- **stage** facts of sequence strategies: symptom 1 seen on an object, waiting for
  symptom 2 within ``within``.

Sharp edges of durable-rules handled here (see DESIGN.md): an event is consumed by the one
highest-priority rule (``pri``: lower fires first), so sequence stages re-post a flagged
copy for the other rules; regexes are evaluated in Python and posted as ``rx<N>`` flags;
every post carries a unique id; no timer threads (``_Host``); a rule set cannot be
replaced, so a new generation is registered under a new name, live facts are carried
over, and the old one is deleted.

Repeats of a known symptom skip the engine: the outcome of a post depends only on the
fields read by the rules that can match the event's reason, and on the facts; so it is
memoized on those fields, and the memo is dropped whenever a fact changes.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import durable_rules_engine
import orjson
from durable import engine as durable_engine
from durable import lang as dl

from engine.events import Event
from engine.rules.conditions import AllOf, AnyOf, Node, Test, conjuncts, leaves
from engine.rules.model import Strategy

log = logging.getLogger(__name__)

MEMO_LIMIT = 200_000


class _Host(durable_engine.Host):
    """A durable-rules host without the timer threads: everything runs on the caller's
    thread (durable-rules is not thread-safe), and we use no durable timers."""

    def _run(self) -> None:
        return None


@dataclass(frozen=True, slots=True)
class Hit:
    """An event that is a symptom of a strategy. ``inhibited_by`` names the inhibiting
    (strategy id, value) when another strategy's incident covers it."""

    strategy: Strategy
    event: Event
    inhibited_by: tuple[str, str] | None = None


@dataclass
class _Fact:
    body: dict[str, Any]
    expires: float


@dataclass(frozen=True)
class _View:
    fields: tuple[str, ...]
    regexes: tuple[tuple[str, str, re.Pattern], ...]  # (flag name, field, pattern)


@dataclass
class Generation:
    number: int
    name: str
    strategies: dict[str, Strategy]
    # Per event reason: the fields the rules that can match it read (posted to the
    # engine, and the memo key) and the regexes to evaluate; ``default`` for the rest.
    views: dict[str, _View]
    default: _View
    inhibitors: dict[str, Strategy]
    sequences: dict[str, Strategy]
    handle: Any = None
    meta: dict[str, tuple] = field(default_factory=dict)
    memo: dict = field(default_factory=dict)


class RuleBase:
    """Matches events against the current generation of strategies.

    Single-threaded by design: call it from one thread (the event loop's).
    """

    _names = itertools.count(1)

    def __init__(self, strategies: Iterable[Strategy] = ()) -> None:
        self._host = _Host()
        self._facts: dict[str, _Fact] = {}
        self._expiry: list[tuple[float, str]] = []
        self._seq_ids = itertools.count()
        self.generation: Generation | None = None
        self.stats = {"posted": 0, "memo_hits": 0, "hits": 0, "inhibited": 0, "unmatched": 0}
        self.swap(strategies)

    # ------------------------------------------------------------------ generations

    def swap(self, strategies: Iterable[Strategy]) -> Generation:
        """Compile and activate a new generation; carry live facts over; drop the old one.

        Raises nothing for valid strategies (validate them with :mod:`engine.rules.check` first);
        if compilation fails, the current generation stays active and the error propagates.
        """
        number = next(self._names)
        gen = self._compile(number, {s.id: s for s in strategies})
        old = self.generation
        self.generation = gen
        carried = 0
        for key, fact in list(self._facts.items()):
            if self._fact_applies(gen, fact.body):
                self._engine_fact(gen, fact.body)
                carried += 1
            else:
                del self._facts[key]
        if old is not None:
            self._drop(old)
        log.debug("rule base generation %d active (%d strategies, %d facts carried)",
                  number, len(gen.strategies), carried)
        return gen

    def _drop(self, gen: Generation) -> None:
        ruleset = self._host._ruleset_directory.pop(gen.name, None)
        if ruleset is not None:
            self._host._ruleset_list.remove(ruleset)
            durable_rules_engine.delete_ruleset(ruleset._handle)
        gen.memo.clear()

    @staticmethod
    def _fact_applies(gen: Generation, body: dict) -> bool:
        if body["t"] == "inhibit":
            return body["by"] in gen.inhibitors
        return body["s"] in gen.sequences

    # ------------------------------------------------------------------ compile

    def _compile(self, number: int, strategies: dict[str, Strategy]) -> Generation:
        name = f"aetherius_g{number}"
        regexes: dict[tuple[str, str], int] = {}
        by_reason: dict[str, set[str]] = {}
        rx_by_reason: dict[str, set[tuple[str, str]]] = {}
        unpinned: set[str] = set()
        rx_unpinned: set[tuple[str, str]] = set()
        inhibitors = {s.id: s for s in strategies.values() if s.inhibits}
        sequences = {s.id: s for s in strategies.values() if s.match == "sequence"}
        # Inhibition joins on its field whatever the reason, so every view carries it.
        joins = {f for s in inhibitors.values() for rule in s.inhibits for f in rule.equal}
        for s in strategies.values():
            for symptom in [*s.symptoms, *s.resolve]:
                used = {"reason"} | (set(s.same) if s.match == "sequence" else set())
                rx: set[tuple[str, str]] = set()
                for leaf in leaves(symptom.tree):
                    used.add(leaf.field)
                    if leaf.op == "regex":
                        regexes.setdefault((leaf.field, leaf.value), len(regexes))
                        rx.add((leaf.field, leaf.value))
                reasons = _pinned_reasons(symptom.tree)
                if reasons is None:
                    unpinned |= used
                    rx_unpinned |= rx
                else:
                    for reason in reasons:
                        by_reason.setdefault(reason, set()).update(used)
                        rx_by_reason.setdefault(reason, set()).update(rx)

        def view(fields: set[str], rx: set[tuple[str, str]]) -> _View:
            ordered = sorted(rx, key=lambda k: regexes[k])
            return _View(tuple(sorted(fields | unpinned | joins)),
                         tuple((f"rx{regexes[k]}", k[0], re.compile(k[1])) for k in ordered))

        gen = Generation(
            number=number, name=name, strategies=strategies,
            views={r: view(f, rx_by_reason.get(r, set()) | rx_unpinned) for r, f in by_reason.items()},
            default=view({"reason"}, rx_unpinned),
            inhibitors=inhibitors, sequences=sequences,
        )
        rx_index = {key: i for key, i in regexes.items()}
        meta: list[tuple] = []  # per rule, in definition order: what its firing means

        def cond(node: Node):
            # Every event carries ev=1 and no fact does, so a fact can never match an event
            # pattern (a symptom of only negative tests would otherwise match any fact).
            # The marker goes last: durable's `a & b` flattens only a left-hand $and, and a
            # nested $and loses the join tests that follow it.
            return _compile_node(node, rx_index) & (dl.m.ev == 1)

        rs = dl.ruleset(name)
        with rs:
            for s in strategies.values():
                base = (1000 - s.priority) * 10
                if s.match == "sequence":
                    self._compile_sequence(s, base, cond, meta)
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
        _, definition = rs.define()
        dl._rulesets.pop(name, None)
        # define() names rules r_0, r_1, ... in the order they were declared.
        gen.meta = {f"r_{i}": m for i, m in enumerate(meta)}
        self._host.register_rulesets({name: definition})
        gen.handle = self._host._ruleset_directory[name]._handle
        return gen

    def _compile_sequence(self, s: Strategy, base: int, cond, meta: list) -> None:
        n = len(s.symptoms)
        for k, symptom in enumerate(s.symptoms):
            flag = f"seq_{_safe(s.id)}_{k}"
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
                dl.when_all(dl.pri(1_000_000), cond(symptom.tree))(_action(meta, "drain", s.id, "m"))

    # ------------------------------------------------------------------ matching

    def process(self, event: Event, now: float | None = None) -> list[Hit]:
        """Match one event; return its hits (usually zero or one)."""
        gen = self.generation
        assert gen is not None
        now = event.time if now is None else now
        if self._expiry and self._expiry[0][0] <= now:
            self._expire(now)
        view = gen.views.get(event.reason, gen.default)
        # A repeat of a known symptom (same values in the fields its rules read, same
        # facts) has the same outcome: it skips the engine.
        memo_key = (event.reason, *[getattr(event, f) for f in view.fields])
        cached = gen.memo.get(memo_key)
        if cached is not None:
            self.stats["memo_hits"] += 1
            return self._hits(gen, event, cached)
        outcome, pure = self._post(gen, view, event, now)
        if pure:
            if len(gen.memo) >= MEMO_LIMIT:
                gen.memo.clear()
            gen.memo[memo_key] = tuple(outcome)
        return self._hits(gen, event, outcome)

    def _hits(self, gen: Generation, event: Event, outcome: Iterable[tuple]) -> list[Hit]:
        hits = []
        for kind, sid, *rest in outcome:
            if kind == "hit":
                hits.append(Hit(gen.strategies[sid], event))
                self.stats["hits"] += 1
            elif kind == "inhibited":
                by, value = rest
                hits.append(Hit(gen.strategies[sid], event, (by, value)))
                self.stats["inhibited"] += 1
        if not hits:
            self.stats["unmatched"] += 1
        return hits

    def _message(self, view: _View, event: Event, flags: dict) -> dict:
        msg: dict[str, Any] = {"id": f"{event.id}#{next(self._seq_ids)}", "ev": 1}
        for name in view.fields:
            value = getattr(event, name)
            if value is not None and value != "":
                msg[name] = value
        for flag, fname, pattern in view.regexes:
            value = getattr(event, fname)
            if value is not None and pattern.search(str(value)):
                msg[flag] = 1
        msg.update(flags)
        return msg

    def _assert_event(self, gen: Generation, message: dict) -> list[tuple]:
        """Post one event and return what fired, as (kind, sid, fact, *extra) tuples.

        This is ``Host.post`` + ``do_actions`` without their per-action Python closures
        and stdlib json round trips: the rules' actions only ever recorded what fired,
        so we read the fired rule names straight from the engine's action queue.
        """
        handle = gen.handle
        code, state = durable_rules_engine.assert_event(handle, orjson.dumps(message).decode())
        if code == 1:  # MessageNotHandled: no rule matched, the normal case for noise
            return []
        if code == 2:  # MessageObserved: a duplicate id; ids are unique, so a bug
            raise RuntimeError(f"durable-rules saw event id {message['id']!r} twice")
        fired: list[tuple] = []
        result = durable_rules_engine.start_action_for_state(handle, state)
        payload = result[1] if result else None
        while payload:
            for rule_name, matched in orjson.loads(payload).items():
                kind, sid, ref, *extra = gen.meta[rule_name]
                fact = matched.get("f") if ref == "e" else None
                fired.append((kind, sid, fact, *extra))
            payload = durable_rules_engine.complete_and_start_action(handle, state)
        return fired

    def _engine_fact(self, gen: Generation, body: dict, retract: bool = False) -> None:
        """Assert or retract a fact. No rule fires on a fact alone (every event pattern
        needs ev=1), but if one ever did, its action is drained here rather than hang."""
        call = durable_rules_engine.retract_fact if retract else durable_rules_engine.assert_fact
        code, state = call(gen.handle, orjson.dumps(body).decode())
        if code in (1, 2):   # nothing matched / already known: both fine for facts
            return
        result = durable_rules_engine.start_action_for_state(gen.handle, state)
        payload = result[1] if result else None
        while payload:
            log.warning("a rule fired on a fact alone (ignored): %s", payload[:200])
            payload = durable_rules_engine.complete_and_start_action(gen.handle, state)

    def _post(self, gen: Generation, view: _View, event: Event, now: float) -> tuple[list[tuple], bool]:
        """Post until no stage re-posts; return (outcome, pure). ``pure`` is False when
        the post changed facts, so its outcome must not be memoized."""
        outcome: list[tuple] = []
        flags: dict[str, int] = {}
        pure = True
        while True:
            self.stats["posted"] += 1
            fired = self._assert_event(gen, self._message(view, event, flags))
            again = False
            for kind, sid, fact_ref, *rest in fired:
                strategy = gen.strategies[sid]
                if kind == "stage":
                    k = rest[0]
                    self._add_stage_fact(gen, strategy, k, event, now)
                    flags[f"seq_{_safe(sid)}_{k}"] = 1
                    pure = False
                    again = True  # the event goes on to the other rules, flagged
                elif kind == "hit":
                    outcome.append(("hit", sid))
                    if strategy.match == "sequence":
                        self._retract(fact_ref["id"])
                        pure = False
                    if strategy.inhibits:
                        self._add_inhibit_facts(gen, strategy, event, now)
                        pure = False
                elif kind == "inhibited":
                    outcome.append(("inhibited", sid, fact_ref["by"], fact_ref["value"]))
                elif kind == "resolve":
                    self._resolve(strategy, event)
                    pure = False
            if not again:
                return outcome, pure

    # ------------------------------------------------------------------ facts

    def _assert(self, key: str, body: dict, expires: float) -> None:
        gen = self.generation
        if key in self._facts:
            self._facts[key].expires = max(self._facts[key].expires, expires)
        else:
            self._facts[key] = _Fact(body, expires)
            self._engine_fact(gen, body)
            gen.memo.clear()
        heapq.heappush(self._expiry, (expires, key))

    def _retract(self, key: str) -> None:
        fact = self._facts.pop(key, None)
        if fact is not None:
            self._engine_fact(self.generation, fact.body, retract=True)
            self.generation.memo.clear()

    def _expire(self, now: float) -> None:
        while self._expiry and self._expiry[0][0] <= now:
            _, key = heapq.heappop(self._expiry)
            fact = self._facts.get(key)
            if fact is not None and fact.expires <= now:
                self._retract(key)

    def _add_inhibit_facts(self, gen: Generation, s: Strategy, event: Event, now: float) -> None:
        for rule in s.inhibits:
            value = getattr(event, rule.equal[0])
            if value:
                key = f"inhibit:{s.id}:{value}"
                self._assert(key, {"id": key, "t": "inhibit", "by": s.id, "value": value},
                             now + s.inhibit_ttl)

    def _resolve(self, s: Strategy, event: Event) -> None:
        for rule in s.inhibits:
            value = getattr(event, rule.equal[0])
            if value:
                self._retract(f"inhibit:{s.id}:{value}")

    def _add_stage_fact(self, gen: Generation, s: Strategy, k: int, event: Event, now: float) -> None:
        same = {f: getattr(event, f) for f in s.same}
        key = f"stage:{s.id}:{k}:" + "/".join(str(v) for v in same.values())
        joins = {f"j_{f}": v for f, v in same.items() if v is not None}
        body = {"id": key, "t": "stage", "s": s.id, "k": k, **joins}
        self._assert(key, body, now + s.within)

    def active_facts(self) -> list[dict]:
        return [f.body for f in self._facts.values()]

    def close(self) -> None:
        if self.generation is not None:
            self._drop(self.generation)
            self.generation = None


# ---------------------------------------------------------------------- compile helpers


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


def _stage_fact(s: Strategy, k: int):
    return dl.c.f << ((dl.m.t == "stage") & (dl.m.s == s.id) & (dl.m.k == k))


def _same(s: Strategy):
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


def _action(meta: list, kind: str, sid: str, ref: str, *extra: Any):
    """Record what a rule's firing means. The engine loop reads it by rule name; the
    callable itself never runs (durable-rules only requires one)."""
    meta.append((kind, sid, ref, *extra))

    def action(c: Any) -> None:  # pragma: no cover - never called, see _assert_event
        raise AssertionError("rule actions are dispatched by RuleBase._assert_event")

    return action

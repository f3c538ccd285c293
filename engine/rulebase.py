"""The rule base: strategies compiled into a durable-rules rule set, one generation at a time.

Each event is posted to the current generation (a :class:`~engine.rulecompiler.CompiledRuleSet`,
compiled by :mod:`engine.rulecompiler`) as a durable-rules *event*; its rules fire and say
which strategy it is a hit for. Facts hold the state that
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
memoized on those fields, and the memo is dropped whenever a fact changes. While no fact
is live, no join can fire: the outcome then depends only on the fields the rules test
directly and on the answers of their regexes, and the memo keys on those
(:attr:`~engine.rulecompiler.View.free_fields`): a storm of one symptom over ten thousand
pods is posted once per distinct answer, not once per pod.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import durable_rules_engine
import orjson
from durable import engine as durable_engine

from engine.events import Event
from engine.rulecompiler import CompiledRuleSet, View, compile_rules, regex_flag, stage_flag
from engine.rules.model import Strategy

log = logging.getLogger(__name__)

# Outcomes memoized per symptom values (README, *Memory bounds*): cleared when it holds this
# many, and on every fact change. Real repeats come close together, so a small memo serves them.
MEMO_LIMIT = 20_000


# What a post's outcome means, resolved once (and memoized as such): the hits as
# (strategy, inhibited_by) pairs, and how many are plain and inhibited hits.
_Plan = tuple[tuple[tuple[Strategy, "tuple[str, str] | None"], ...], int, int]


def _plan(gen: CompiledRuleSet, outcome: Iterable[tuple]) -> _Plan:
    pairs: list[tuple[Strategy, tuple[str, str] | None]] = []
    for kind, sid, *rest in outcome:
        if kind == "hit":
            pairs.append((gen.strategies[sid], None))
        elif kind == "inhibited":
            pairs.append((gen.strategies[sid], (rest[0], rest[1])))
    hits = sum(1 for _, by in pairs if by is None)
    return tuple(pairs), hits, len(pairs) - hits


class _Host(durable_engine.Host):
    """A durable-rules host without the timer threads: everything runs on the caller's
    thread (durable-rules is not thread-safe), and we use no durable timers."""

    def _run(self) -> None:
        return None


@dataclass(slots=True)
class Hit:
    """An event that is a symptom of a strategy. ``inhibited_by`` names the inhibiting
    (strategy id, value) when another strategy's incident covers it.

    Not frozen, though nothing changes one: a frozen dataclass sets each field through
    ``object.__setattr__``, and a storm makes one Hit per matching event."""

    strategy: Strategy
    event: Event
    inhibited_by: tuple[str, str] | None = None


@dataclass
class _Fact:
    body: dict[str, Any]
    expires: float


class RuleBase:
    """Matches events against the current generation of strategies.

    Single-threaded by design: call it from one thread (the event loop's).
    """

    _names = itertools.count(1)

    def __init__(self, strategies: Iterable[Strategy] = (), *, memo: bool = True) -> None:
        # memo=False posts every event to the engine: the reference the memo is tested against.
        self._memo = memo
        self._host = _Host()
        self._facts: dict[str, _Fact] = {}
        self._expiry: list[tuple[float, str]] = []
        self._seq_ids = itertools.count()
        self.generation: CompiledRuleSet | None = None
        self.stats = {"posted": 0, "memo_hits": 0, "hits": 0, "inhibited": 0, "unmatched": 0}
        self.swap(strategies)

    # ------------------------------------------------------------------ generations

    def swap(self, strategies: Iterable[Strategy]) -> CompiledRuleSet:
        """Compile and activate a new generation; carry live facts over; drop the old one.

        Raises nothing for valid strategies (validate them with :mod:`engine.rules.check` first);
        if compilation fails, the current generation stays active and the error propagates.
        """
        number = next(self._names)
        gen = compile_rules(number, {s.id: s for s in strategies})
        self._host.register_rulesets({gen.name: gen.definition})
        gen.handle = self._host._ruleset_directory[gen.name]._handle
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

    def _drop(self, gen: CompiledRuleSet) -> None:
        ruleset = self._host._ruleset_directory.pop(gen.name, None)
        if ruleset is not None:
            self._host._ruleset_list.remove(ruleset)
            durable_rules_engine.delete_ruleset(ruleset._handle)
        gen.forget()

    @staticmethod
    def _fact_applies(gen: CompiledRuleSet, body: dict) -> bool:
        if body["t"] == "inhibit":
            return body["by"] in gen.inhibitors
        return body["s"] in gen.sequences

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
        memo_key: tuple
        if self._facts:
            memo = gen.memo
            memo_key = (event.reason, *[getattr(event, f) for f in view.fields])
        else:
            # No fact: joins cannot fire, so only the directly tested fields and the
            # regexes' answers (what _message posts as rx flags) decide.
            memo = gen.free_memo
            memo_key = view.free_key(event)
        plan = memo.get(memo_key) if self._memo else None
        if plan is not None:
            self.stats["memo_hits"] += 1
        else:
            outcome, pure = self._post(gen, view, event, now)
            plan = _plan(gen, outcome)
            if pure and self._memo:
                # _post changed no fact, so the memo chosen above is still the right one.
                if len(memo) >= MEMO_LIMIT:
                    memo.clear()
                memo[memo_key] = plan
        pairs, hits, inhibited = plan
        stats = self.stats
        if not pairs:
            stats["unmatched"] += 1
            return []
        if hits:
            stats["hits"] += hits
        if inhibited:
            stats["inhibited"] += inhibited
        return [Hit(strategy, event, by) for strategy, by in pairs]

    def _message(self, view: View, event: Event, flags: dict) -> dict:
        msg: dict[str, Any] = {"id": f"{event.id}#{next(self._seq_ids)}", "ev": 1}
        for name in view.fields:
            value = getattr(event, name)
            if value is not None and value != "":
                msg[name] = value
        for flag, fname, pattern in view.regexes:
            if regex_flag(pattern, getattr(event, fname)):
                msg[flag] = 1
        msg.update(flags)
        return msg

    def _assert_event(self, gen: CompiledRuleSet, message: dict) -> list[tuple]:
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

    def _engine_fact(self, gen: CompiledRuleSet, body: dict, retract: bool = False) -> None:
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

    def _post(self, gen: CompiledRuleSet, view: View, event: Event, now: float) -> tuple[list[tuple], bool]:
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
                    flags[stage_flag(sid, k)] = 1
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

    @property
    def _active(self) -> CompiledRuleSet:
        if self.generation is None:
            raise RuntimeError("the rule base is closed")
        return self.generation

    def _assert(self, key: str, body: dict, expires: float) -> None:
        gen = self._active
        if key in self._facts:
            self._facts[key].expires = max(self._facts[key].expires, expires)
        else:
            self._facts[key] = _Fact(body, expires)
            self._engine_fact(gen, body)
            gen.forget()
        heapq.heappush(self._expiry, (expires, key))

    def _retract(self, key: str) -> None:
        fact = self._facts.pop(key, None)
        if fact is not None:
            gen = self._active
            self._engine_fact(gen, fact.body, retract=True)
            gen.forget()

    def _expire(self, now: float) -> None:
        while self._expiry and self._expiry[0][0] <= now:
            _, key = heapq.heappop(self._expiry)
            fact = self._facts.get(key)
            if fact is not None and fact.expires <= now:
                self._retract(key)

    def _add_inhibit_facts(self, gen: CompiledRuleSet, s: Strategy, event: Event, now: float) -> None:
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

    def _add_stage_fact(self, gen: CompiledRuleSet, s: Strategy, k: int, event: Event, now: float) -> None:
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

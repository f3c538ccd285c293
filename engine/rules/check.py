"""Whole-set validation behind ``aetherius check``: every problem, with ``path:line``.

:mod:`engine.rules.loader` already reports YAML syntax, unknown fields, bad values, unknown step
types and invalid step configs. This module adds what needs the whole set: edges to
missing steps, unreachable steps, loops without a wait, strategies naming missing
workflows, inhibit rules naming missing strategies, sandbox refusals of expressions, and
what the agent-manager policy (:mod:`engine.policy`) refuses in a step's literal parts.
It also derives the implicit strategy of a workflow with ``trigger_type: event``, and
warns (:func:`rule_warnings`) about strategies that tie for the same event.
"""

from __future__ import annotations

from pathlib import Path

from engine.exceptions import ExpressionError, Problem, RuleError
from engine.expressions import Expression
from engine.policy import Policy
from engine.rules.conditions import conjuncts
from engine.rules.loader import Origin, RuleSet, load_rules
from engine.rules.model import Correlation, StepSpec, Strategy, Symptom, Workflow
from engine.rules.precedence import TieWarning, tie_warnings
from engine.templates import placeholders, walk_strings
from steps import REGISTRY


def implicit_strategy(wf: Workflow) -> Strategy:
    """The seed's ``trigger_config`` (event_reason, severity) as a strategy."""
    reason = wf.trigger_config.event_reason
    strategy = Strategy(
        id=f"workflow:{wf.id}", name=wf.name or wf.id, category="workflow_trigger",
        symptoms=[Symptom(conditions={"reason": reason})], workflow_id=wf.id,
        priority=wf.priority, severity=wf.trigger_config.severity, correlation=Correlation(),
    )
    strategy._implicit = True
    return strategy


def effective_strategies(rules: RuleSet) -> dict[str, Strategy]:
    """Enabled strategies, plus implicit ones for event-triggered workflows that no
    explicit strategy already starts (so one event never opens two incidents)."""
    out = {sid: s for sid, s in rules.strategies.items() if s.enabled}
    started = {s.workflow_id for s in rules.strategies.values()}
    for wf in rules.workflows.values():
        if (wf.trigger_type == "event" and wf.status == "active"
                and wf.trigger_config.event_reason and wf.id not in started):
            strategy = implicit_strategy(wf)
            out[strategy.id] = strategy
    return out


def _locate(rules: RuleSet, strategy: Strategy) -> tuple[str, int, str]:
    """Where an operator changes the strategy's priority, and how to name it."""
    if strategy.implicit:
        origin = rules.origin("workflow", strategy.workflow_id)
        name = f"the implicit trigger {strategy.id!r} of workflow {strategy.workflow_id!r}"
    else:
        origin = rules.origin("strategy", strategy.id)
        name = f"strategy {strategy.id!r}"
    return origin.path, origin.line("priority"), name


def rule_warnings(rules: RuleSet) -> list[TieWarning]:
    """What ``aetherius check`` warns about without refusing the rules (it still exits 0),
    as data with locations: pairs of enabled strategies that can match the same event at
    equal priority, and which of them wins (:mod:`engine.rules.precedence`)."""
    return tie_warnings(effective_strategies(rules).values(), lambda s: _locate(rules, s))


def _edges(step) -> list[tuple[tuple, str]]:
    edges = [(("on_success", i), t) for i, t in enumerate(step.on_success)]
    edges += [(("on_failure", i), t) for i, t in enumerate(step.on_failure)]
    return edges


def _check_policy(rules: RuleSet, origin: Origin, i: int, step: StepSpec, policy: Policy) -> None:
    """What the agent-manager policy would refuse when the step runs, for its literal parts."""
    step_type = REGISTRY.get(step.type)
    if step_type is None or step._parsed is None:
        return
    for sub, message in step_type.refusals(step.parsed, policy):
        rules.problem(origin, ("steps", i, "config", *sub), message,
                      named=f"steps.{i}.config.{'.'.join(map(str, sub))}")


def _check_workflow(rules: RuleSet, wf: Workflow, policy: Policy) -> None:
    origin = rules.origin("workflow", wf.id)
    index: dict[str, int] = {}
    for i, step in enumerate(wf.steps):
        if step.id in index:
            first = origin.where("steps", index[step.id], "id")
            rules.problem(origin, ("steps", i, "id"), f"duplicate step id {step.id!r} (first at {first})")
        else:
            index[step.id] = i
    graph: dict[str, list[str]] = {}
    in_branch: set[str] = set()
    for i, step in enumerate(wf.steps):
        targets: list[str] = []
        for sub, target in _edges(step):
            if target not in index:
                rules.problem(origin, ("steps", i, *sub), f"no step {target!r} in workflow {wf.id!r}",
                              named=f"steps.{i}.{sub[0]}")
            else:
                targets.append(target)
        step_type = REGISTRY.get(step.type)
        if step_type is not None and step._parsed is not None:
            branch_steps = step_type.branch_steps(step.parsed)
            for target in step_type.targets(step.parsed):
                if target in index:
                    targets.append(target)
                elif target in branch_steps:   # a decision's then may be a value; a branch may not
                    rules.problem(origin, ("steps", i, "config", "branches"),
                                  f"no step {target!r} in workflow {wf.id!r}",
                                  named=f"steps.{i}.config.branches")
            in_branch.update(branch_steps)
            _check_policy(rules, origin, i, step, policy)
            approval = getattr(step.parsed, "approval", None)
            if approval is not None and approval.timeout is not None and approval.timeout >= wf.timeout:
                rules.problem(origin, ("steps", i, "config", "approval", "timeout"),
                              f"approval timeout {approval.timeout:g}s must be shorter than the workflow "
                              f"timeout {wf.timeout:g}s (the wait for a human counts against it)",
                              named=f"steps.{i}.config.approval.timeout")
            for sub, source in step_type.expressions(step.parsed):
                try:
                    Expression(source)
                except ExpressionError as exc:
                    rules.problem(origin, ("steps", i, "config", *sub), str(exc),
                                  named=f"steps.{i}.config.{'.'.join(map(str, sub))}")
            for sub, text in walk_strings(step.config):
                for source in placeholders(text):
                    try:
                        Expression(source)
                    except ExpressionError as exc:
                        rules.problem(origin, ("steps", i, "config", *sub), f"template: {exc}",
                                      named=f"steps.{i}.config.{'.'.join(map(str, sub))}")
        graph[step.id] = targets
    for step_id in in_branch:
        if step_id in index:
            step = wf.steps[index[step_id]]
            if step.on_success or step.on_failure:
                rules.problem(origin, ("steps", index[step_id]),
                              f"step {step_id!r} runs in a parallel branch: its order comes from "
                              "the branch, so it cannot have on_success/on_failure")
    # Reachability from the first step.
    seen: set[str] = set()
    stack = [wf.steps[0].id]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        stack.extend(graph.get(node, []))
    for step_id, i in index.items():
        if step_id not in seen:
            rules.problem(origin, ("steps", i, "id"),
                          f"step {step_id!r} is unreachable from the first step {wf.steps[0].id!r}")
    _check_loops(rules, wf, graph, index)


def _check_loops(rules: RuleSet, wf: Workflow, graph: dict[str, list[str]], index: dict[str, int]) -> None:
    """A cycle is legal only if a step on it lets time pass (``wait``)."""
    origin = rules.origin("workflow", wf.id)
    pauses = {s.id for s in wf.steps if (t := REGISTRY.get(s.type)) is not None and t.is_pause()}
    # Drop pause steps and look for any remaining cycle (iterative DFS, colours).
    live = {n: [t for t in ts if t not in pauses] for n, ts in graph.items() if n not in pauses}
    colour: dict[str, int] = {}
    reported: set[frozenset] = set()
    for start in live:
        if colour.get(start):
            continue
        path: list[str] = []
        stack = [(start, iter(live[start]))]
        colour[start] = 1
        path.append(start)
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                colour[node] = 2
                stack.pop()
                path.pop()
                continue
            if colour.get(child) == 1:
                cycle = path[path.index(child):]
                key = frozenset(cycle)
                if key not in reported:
                    reported.add(key)
                    loop = " -> ".join([*cycle, child])
                    rules.problem(origin, ("steps", index[child], "id"),
                                  f"loop without a wait step: {loop}")
            elif not colour.get(child):
                colour[child] = 1
                path.append(child)
                stack.append((child, iter(live.get(child, []))))


def validate(rules: RuleSet, policy: Policy | None = None) -> list[Problem]:
    """Add the whole-set problems to ``rules.problems`` and return them all, sorted.

    ``policy`` (default: an empty configuration's) is what steps are checked against: what
    it would refuse when a step runs, for the step's literal parts, is a problem here.

    A reference to an id that a file with a syntax error may define (``rules.may_define``)
    is not reported: the syntax error is, once, and fixing it may well settle the reference.
    Problems that cannot come from the missing documents (inside one workflow, a reference
    to an id that file never names) are reported as usual."""
    policy = policy if policy is not None else Policy()
    for wf in rules.workflows.values():
        _check_workflow(rules, wf, policy)
        origin = rules.origin("workflow", wf.id)
        if (wf.trigger_type == "event" and not wf.trigger_config.event_reason
                and not any(s.workflow_id == wf.id for s in rules.strategies.values())
                and not rules.may_define(wf.id)):
            rules.problem(origin, ("trigger_type",),
                          f"workflow {wf.id!r} has trigger_type event but neither "
                          "trigger_config.event_reason nor a strategy that starts it")
    for origin, i, step in rules.loose_steps:
        _check_policy(rules, origin, i, step, policy)
    for strategy in rules.strategies.values():
        origin = rules.origin("strategy", strategy.id)
        if (strategy.workflow_id not in rules.workflows
                and ("workflow", strategy.workflow_id) not in rules.invalid
                and not rules.may_define(strategy.workflow_id)):
            rules.problem(origin, ("workflow_id",),
                          f"strategy {strategy.id!r} names missing workflow {strategy.workflow_id!r}")
        for i, symptom in enumerate(strategy.symptoms):
            try:
                conjuncts(symptom.tree)
            except ValueError as exc:
                rules.problem(origin, ("symptoms", i), str(exc), named=f"symptoms.{i}")
        for i, rule in enumerate(strategy.inhibits):
            if strategy.key_fields != rule.equal:
                rules.problem(origin, ("inhibits", i, "equal"),
                              "an inhibiting strategy must be correlated by the same field "
                              f"(correlation.key: {rule.equal})", named=f"inhibits.{i}.equal")
            for j, target in enumerate(rule.strategies):
                if (target not in rules.strategies and ("strategy", target) not in rules.invalid
                        and not rules.may_define(target)):
                    rules.problem(origin, ("inhibits", i, "strategies", j), f"no strategy {target!r}",
                                  named=f"inhibits.{i}.strategies")
    rules.problems.sort()
    return rules.problems


def load_valid(directory: str | Path, policy: Policy | None = None) -> RuleSet:
    """Load and validate; raise RuleError listing every problem if there is any."""
    rules = load_rules(directory)
    # Whole-set checks run even after file problems: operators want every problem at once.
    if validate(rules, policy):
        raise RuleError(rules.problems)
    return rules

"""Rule files: read, parsed and validated into a :class:`RuleSet`, every problem collected.

A rule directory holds any number of ``*.yaml`` / ``*.yml`` files, in any tree. Each YAML
document in a file is one of:

- a workflow (it has ``steps``), exactly in the seed's format;
- a strategy (it has ``symptoms``);
- a bundle ``{strategies: [...], workflows: [...]}``.

:func:`load_rules` reads them all and returns a :class:`RuleSet` plus every problem found,
each with ``path:line``. Cross-file checks (graphs, references) live in :mod:`engine.rules.check`.
A file with a YAML syntax error contributes that one problem and no documents; it is
remembered in ``RuleSet.unparsed`` so that the checks do not report what its missing
documents would have defined as missing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from engine.exceptions import Problem
from engine.rules.model import LocatedError, StepSpec, Strategy, Workflow
from engine.rules.yamlsource import LineMap, load_documents, yaml_error_line
from steps import REGISTRY


@dataclass
class Origin:
    """Where a spec came from, to point problems at lines.

    ``lines`` is None for a document that has no text lines (a JSON request body): its
    problems have line 0, and a message pointing at another field of it names the field."""

    path: str
    lines: LineMap | None
    prefix: tuple = ()

    def line(self, *sub: str | int) -> int:
        return self.lines.line((*self.prefix, *sub)) if self.lines is not None else 0

    def at(self, *sub: str | int) -> str:
        return f"{self.path}:{self.line(*sub)}"

    def where(self, *sub: str | int) -> str:
        """A field of this document as a message names it: its line, or its field path."""
        if self.lines is None:
            return format_loc(sub) if sub else "the top"
        return f"line {self.line(*sub)}"


@dataclass
class RuleSet:
    """Everything loaded from one rule directory (valid or not; see ``problems``)."""

    strategies: dict[str, Strategy] = field(default_factory=dict)
    workflows: dict[str, Workflow] = field(default_factory=dict)
    origins: dict[tuple[str, str], Origin] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    invalid: set[tuple[str, str]] = field(default_factory=set)  # ids whose spec has problems
    # Files whose documents are missing (a YAML syntax error: their text; unreadable: None).
    unparsed: dict[str, str | None] = field(default_factory=dict)
    # Steps of workflows that did not validate as a whole, whose configs did: the checks
    # that need the whole set (the agent-manager policy) still look at them.
    loose_steps: list[tuple[Origin, int, StepSpec]] = field(default_factory=list)

    def may_define(self, ident: str) -> bool:
        """Whether a file that could not be parsed may hold ``ident`` (a workflow or strategy
        id, defined or referred to there): its text names it as a word, or it could not even
        be read. Cross-file checks stay silent about such ids: an error about them would be
        a consequence of the syntax error, already reported."""
        if not self.unparsed:
            return False
        word = re.compile(rf"(?<![A-Za-z0-9_]){re.escape(ident)}(?![A-Za-z0-9_])")
        return any(text is None or word.search(text) for text in self.unparsed.values())

    def origin(self, kind: str, ident: str) -> Origin:
        return self.origins.get((kind, ident)) or Origin("<api>", LineMap())

    def problem(self, origin: Origin, sub: tuple, msg: str, *, named: str | None = None) -> None:
        """Record a problem at field ``sub`` of ``origin``'s rule; ``named``: the field as the
        printed message names it before ``msg`` (see :class:`Problem`)."""
        self.problems.append(Problem(origin.path, origin.line(*sub), msg, tuple(sub), named))


def format_loc(loc: tuple) -> str:
    """A field path as messages name it: ``steps.3.config.action``."""
    return ".".join(str(p) for p in loc) or "(document)"


def _pydantic_problems(
    rules: RuleSet, exc: ValidationError, origin: Origin, extra: tuple = ()
) -> None:
    for err in exc.errors():
        loc = (*extra, *tuple(err["loc"]))
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, LocatedError):
            loc = (*loc, *cause.path)
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = f"unknown field {loc[-1]!r}"
        elif err["type"] == "missing":
            msg = f"missing required field {loc[-1]!r}"
        rules.problem(origin, loc, msg, named=format_loc(loc))


def add_workflow(rules: RuleSet, raw: Any, origin: Origin) -> None:
    try:
        wf = Workflow.model_validate(raw)
    except ValidationError as exc:
        _pydantic_problems(rules, exc, origin)
        # Keep going on what can be checked alone, so one run reports everything, and
        # remember the id so strategies naming it do not report it missing.
        if isinstance(raw, dict):
            if isinstance(raw.get("id"), str):
                rules.invalid.add(("workflow", raw["id"]))
            failed = {err["loc"][1] for err in exc.errors()
                      if len(err["loc"]) > 1 and err["loc"][0] == "steps"}
            for i, step in enumerate(raw.get("steps") or [] if isinstance(raw.get("steps"), list) else []):
                if i not in failed and isinstance(step, dict):
                    spec = StepSpec.model_validate(step)
                    _check_step_config(rules, spec, i, origin)
                    if spec._parsed is not None:
                        rules.loose_steps.append((origin, i, spec))
        return
    for i, step in enumerate(wf.steps):
        _check_step_config(rules, step, i, origin)
    if wf.id in rules.workflows:
        first = rules.origin("workflow", wf.id)
        rules.problem(origin, ("id",), f"duplicate workflow id {wf.id!r} (first at {first.at('id')})")
        return
    # Kept even with step problems, so strategies naming it do not cascade errors.
    rules.workflows[wf.id] = wf
    rules.origins[("workflow", wf.id)] = origin


def _check_step_config(rules: RuleSet, step: StepSpec, i: int, origin: Origin) -> None:
    step_type = REGISTRY.get(step.type)
    if step_type is None:
        known = ", ".join(sorted(REGISTRY))
        rules.problem(origin, ("steps", i, "type"), f"unknown step type {step.type!r} (known: {known})",
                      named=f"steps.{i}.type")
        return
    try:
        step._parsed = step_type.Config.model_validate(step.config)
    except ValidationError as exc:
        _pydantic_problems(rules, exc, origin, ("steps", i, "config"))


def add_strategy(rules: RuleSet, raw: Any, origin: Origin) -> None:
    try:
        strategy = Strategy.model_validate(raw)
    except ValidationError as exc:
        _pydantic_problems(rules, exc, origin)
        if isinstance(raw, dict) and isinstance(raw.get("id"), str):
            rules.invalid.add(("strategy", raw["id"]))
        return
    if strategy.id in rules.strategies:
        first = rules.origin("strategy", strategy.id)
        rules.problem(origin, ("id",),
                      f"duplicate strategy id {strategy.id!r} (first at {first.at('id')})")
        return
    rules.strategies[strategy.id] = strategy
    rules.origins[("strategy", strategy.id)] = origin


def _add_document(rules: RuleSet, data: Any, path: str, lines: LineMap) -> None:
    if not isinstance(data, dict):
        rules.problems.append(Problem(path, lines.line(()), "a rule document must be a mapping"))
        return
    if "strategies" in data or "workflows" in data:
        unknown = set(data) - {"strategies", "workflows"}
        for key in sorted(unknown):
            rules.problems.append(Problem(path, lines.line((key,)), f"unknown field {key!r}", (key,)))
        for kind, adder in (("strategies", add_strategy), ("workflows", add_workflow)):
            items = data.get(kind) or []
            if not isinstance(items, list):
                rules.problems.append(Problem(path, lines.line((kind,)), f"'{kind}' must be a list", (kind,)))
                continue
            for i, item in enumerate(items):
                adder(rules, item, Origin(path, lines, (kind, i)))
    elif "steps" in data:
        add_workflow(rules, data, Origin(path, lines))
    elif "symptoms" in data:
        add_strategy(rules, data, Origin(path, lines))
    else:
        rules.problems.append(Problem(
            path, lines.line(()),
            "cannot tell what this document is: a workflow has 'steps', a strategy has "
            "'symptoms', a bundle has 'strategies'/'workflows'"))


TESTS_DIR = "tests"   # rule rehearsals (``aetherius test``) live in RULES/tests/, not rules


def rule_files(directory: Path) -> list[Path]:
    if directory.is_file():
        return [directory]
    return sorted(p for p in directory.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file()
                  and p.relative_to(directory).parts[0] != TESTS_DIR)


def load_text(rules: RuleSet, text: str, path: str) -> None:
    """Add the documents of one file's text to ``rules`` (problems included)."""
    rules.files.append(path)
    try:
        documents = load_documents(text)
    except yaml.YAMLError as exc:
        line, message = yaml_error_line(exc, text)
        rules.problems.append(Problem(path, line, message))
        rules.unparsed[path] = text
        return
    for data, lines in documents:
        _add_document(rules, data, path, lines)


def load_rules(directory: str | Path) -> RuleSet:
    """Read every rule file under ``directory`` (or one file). Never raises for content:
    problems are collected in ``RuleSet.problems``."""
    root = Path(directory)
    rules = RuleSet()
    if not root.exists():
        rules.problems.append(Problem(str(root), 0, "no such file or directory"))
        return rules
    for file in rule_files(root):
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            rules.problems.append(Problem(str(file), 0, f"cannot read: {exc}"))
            rules.unparsed[str(file)] = None
            continue
        load_text(rules, text, str(file))
    return rules

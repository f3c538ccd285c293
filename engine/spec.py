"""Rule files: strategies and workflows as operators write them, validated.

A rule directory holds any number of ``*.yaml`` / ``*.yml`` files, in any tree. Each YAML
document in a file is one of:

- a workflow (it has ``steps``), exactly in the seed's format;
- a strategy (it has ``symptoms``);
- a bundle ``{strategies: [...], workflows: [...]}``.

:func:`load_rules` reads them all and returns a :class:`RuleSet` plus every problem found,
each with ``path:line``. Cross-file checks (graphs, references) live in :mod:`engine.check`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from engine.conditions import CONDITION_FIELDS, ConditionProblem, Node, parse_conditions
from engine.durations import Duration
from engine.exceptions import Problem
from engine.yamlsource import LineMap, load_documents, yaml_error_line
from steps import REGISTRY
from steps.base import StepConfig


def _id_list(value: object) -> object:
    # The seed writes lists; a single id is accepted for convenience.
    return [value] if isinstance(value, str) else value


StepIds = Annotated[
    list[str],
    BeforeValidator(_id_list),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}),
]


class LocatedError(ValueError):
    """A validation error that knows where below the model it happened."""

    def __init__(self, path: tuple, message: str) -> None:
        super().__init__(message)
        self.path = path


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# ----------------------------------------------------------------------------- strategies


class Symptom(Spec):
    """What one event must look like. ``pattern`` is a Python regex on the message."""

    type: Literal["event"] = "event"
    pattern: str | None = None
    conditions: dict[str, Any] = Field(default_factory=dict)
    _tree: Node | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _compile(self) -> Symptom:
        raw = dict(self.conditions)
        if self.pattern is not None:
            if "message" in raw:
                raise ValueError("give either 'pattern' or a 'message' condition, not both")
            raw["message"] = {"regex": self.pattern}
        if not raw:
            raise ValueError("a symptom needs 'conditions' or a 'pattern'")
        try:
            self._tree = parse_conditions(raw)
        except ConditionProblem as exc:
            if self.pattern is not None and exc.path[:1] == ("message",):
                raise LocatedError(("pattern",), str(exc)) from None
            raise LocatedError(("conditions", *exc.path), str(exc)) from None
        return self

    @property
    def tree(self) -> Node:
        assert self._tree is not None
        return self._tree


def _event_fields(value: list[str]) -> list[str]:
    for name in value:
        if name not in CONDITION_FIELDS:
            raise ValueError(f"unknown event field {name!r}")
    return value


class Correlation(Spec):
    """How hits become incidents: grouped by ``key``; an incident forms after ``quiet``
    without new events, or at the latest ``max_window`` after the first; after it closes,
    ``cooldown`` keeps the same key from opening a new one."""

    key: list[str] | None = None
    quiet: Duration = 30.0
    max_window: Duration = 300.0
    cooldown: Duration = 600.0

    @field_validator("key")
    @classmethod
    def _key_fields(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else _event_fields(value)

    @model_validator(mode="after")
    def _window(self) -> Correlation:
        if self.max_window < self.quiet:
            raise ValueError("max_window must not be shorter than quiet")
        return self


class Inhibit(Spec):
    """While this strategy's condition holds for a value of ``equal`` (e.g. a node),
    hits of the target strategies with the same value open no incident of their own."""

    categories: list[str] = Field(default_factory=list)
    strategies: list[str] = Field(default_factory=list)
    equal: list[str] = Field(default_factory=lambda: ["node"])

    _e = field_validator("equal")(classmethod(lambda cls, v: _event_fields(v)))

    @model_validator(mode="after")
    def _has_target(self) -> Inhibit:
        if not self.categories and not self.strategies:
            raise ValueError("an inhibit rule needs 'categories' or 'strategies'")
        if len(self.equal) != 1:
            raise ValueError("'equal' takes exactly one field (for example [node])")
        return self


class Strategy(Spec):
    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
    name: str = ""
    category: str = "general"
    description: str = ""
    symptoms: list[Symptom] = Field(min_length=1)
    workflow_id: str
    priority: int = Field(default=5, ge=0, le=1000)
    enabled: bool = True
    severity: str | None = None
    # any: one matching event is a hit. sequence: the symptoms in order, on events with
    # the same ``same`` fields, within ``within`` seconds; the last event is the hit.
    match: Literal["any", "sequence"] = "any"
    within: Duration = 600.0
    same: list[str] = Field(default_factory=lambda: ["uid"])
    correlation: Correlation = Field(default_factory=Correlation)
    inhibits: list[Inhibit] = Field(default_factory=list)
    resolve: list[Symptom] = Field(default_factory=list)
    inhibit_ttl: Duration = 3600.0
    _s = field_validator("same")(classmethod(lambda cls, v: _event_fields(v)))

    @model_validator(mode="after")
    def _sequence(self) -> Strategy:
        if self.match == "sequence" and len(self.symptoms) < 2:
            raise ValueError("match: sequence needs at least two symptoms")
        return self

    @property
    def key_fields(self) -> list[str]:
        if self.correlation.key:
            return self.correlation.key
        return ["node"] if self.category == "node_issue" else ["namespace", "workload"]


# ------------------------------------------------------------------------------ workflows


class RetryPolicy(Spec):
    """Exponential backoff with jitter: attempt n waits
    ``min(initial_interval * multiplier**(n-1), max_interval) * (1 ± jitter)``."""

    max_attempts: int = Field(default=1, ge=1, le=100)
    initial_interval: Duration = 1.0
    multiplier: float = Field(default=2.0, ge=1.0, le=10.0)
    max_interval: Duration = 30.0
    jitter: float = Field(default=0.2, ge=0.0, le=1.0)
    non_retryable: list[str] = Field(default_factory=list)


class StepSpec(Spec):
    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    type: str
    name: str = ""
    config: dict[str, Any] = Field(default_factory=dict)
    timeout: Duration | None = None
    on_success: StepIds = Field(default_factory=list)
    on_failure: StepIds = Field(default_factory=list)
    retry: RetryPolicy | None = None
    _parsed: StepConfig | None = PrivateAttr(default=None)

    @property
    def parsed(self) -> StepConfig:
        assert self._parsed is not None, "step config is validated when rules load"
        return self._parsed


class TriggerConfig(Spec):
    model_config = ConfigDict(extra="allow")
    event_reason: str | None = None
    severity: str | None = None


class Workflow(Spec):
    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
    name: str = ""
    description: str = ""
    trigger_type: Literal["event", "manual", "schedule"] = "manual"
    trigger_config: TriggerConfig = Field(default_factory=TriggerConfig)
    status: Literal["active", "inactive", "draft", "disabled"] = "active"
    priority: int = Field(default=5, ge=0, le=1000)
    timeout: Duration = 300.0
    dry_run: bool | None = None
    retry: RetryPolicy | None = None
    version: int = Field(default=1, ge=1)
    steps: list[StepSpec] = Field(min_length=1)

    def step(self, step_id: str) -> StepSpec:
        for step in self.steps:
            if step.id == step_id:
                return step
        raise KeyError(step_id)


# ------------------------------------------------------------------------------- loading


@dataclass
class Origin:
    """Where a spec came from, to point problems at lines."""

    path: str
    lines: LineMap
    prefix: tuple = ()

    def line(self, *sub: str | int) -> int:
        return self.lines.line((*self.prefix, *sub))

    def at(self, *sub: str | int) -> str:
        return f"{self.path}:{self.line(*sub)}"


@dataclass
class RuleSet:
    """Everything loaded from one rule directory (valid or not; see ``problems``)."""

    strategies: dict[str, Strategy] = field(default_factory=dict)
    workflows: dict[str, Workflow] = field(default_factory=dict)
    origins: dict[tuple[str, str], Origin] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    invalid: set[tuple[str, str]] = field(default_factory=set)  # ids whose spec has problems

    def origin(self, kind: str, ident: str) -> Origin:
        return self.origins.get((kind, ident)) or Origin("<api>", LineMap())

    def problem(self, origin: Origin, sub: tuple, message: str) -> None:
        self.problems.append(Problem(origin.path, origin.line(*sub), message))


def _format_loc(loc: tuple) -> str:
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
        rules.problem(origin, loc, f"{_format_loc(loc)}: {msg}")


def _add_workflow(rules: RuleSet, raw: Any, origin: Origin) -> None:
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
                    _check_step_config(rules, StepSpec.model_validate(step), i, origin)
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
        rules.problem(origin, ("steps", i, "type"),
                      f"steps.{i}.type: unknown step type {step.type!r} (known: {known})")
        return
    try:
        step._parsed = step_type.Config.model_validate(step.config)
    except ValidationError as exc:
        _pydantic_problems(rules, exc, origin, ("steps", i, "config"))


def _add_strategy(rules: RuleSet, raw: Any, origin: Origin) -> None:
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
            rules.problems.append(Problem(path, lines.line((key,)), f"unknown field {key!r}"))
        for kind, adder in (("strategies", _add_strategy), ("workflows", _add_workflow)):
            items = data.get(kind) or []
            if not isinstance(items, list):
                rules.problems.append(Problem(path, lines.line((kind,)), f"'{kind}' must be a list"))
                continue
            for i, item in enumerate(items):
                adder(rules, item, Origin(path, lines, (kind, i)))
    elif "steps" in data:
        _add_workflow(rules, data, Origin(path, lines))
    elif "symptoms" in data:
        _add_strategy(rules, data, Origin(path, lines))
    else:
        rules.problems.append(Problem(
            path, lines.line(()),
            "cannot tell what this document is: a workflow has 'steps', a strategy has "
            "'symptoms', a bundle has 'strategies'/'workflows'"))


def rule_files(directory: Path) -> list[Path]:
    if directory.is_file():
        return [directory]
    return sorted(p for p in directory.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())


def load_text(rules: RuleSet, text: str, path: str) -> None:
    """Add the documents of one file's text to ``rules`` (problems included)."""
    rules.files.append(path)
    try:
        documents = load_documents(text)
    except yaml.YAMLError as exc:
        line, message = yaml_error_line(exc, text)
        rules.problems.append(Problem(path, line, message))
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
            continue
        load_text(rules, text, str(file))
    return rules

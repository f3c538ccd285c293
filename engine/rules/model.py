"""The rule language: strategies and workflows as operators write them, as pydantic models.

Each model validates one document on its own (types, ranges, expressions parsed once);
reading files and collecting problems with ``path:line`` is :mod:`engine.rules.loader`,
and cross-document checks (graphs, references) are :mod:`engine.rules.check`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from engine.durations import Duration
from engine.rules.conditions import CONDITION_FIELDS, ConditionProblem, Node, parse_conditions
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


class Arm(Spec):
    """One workflow of an experiment, and its share of the incidents (``weight`` out of the
    arms' total)."""

    workflow: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
    weight: float = Field(gt=0, le=1_000_000)
    name: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$",
                             description="the arm's name in the API and metrics (default: the workflow id)")

    @property
    def label(self) -> str:
        return self.name or self.workflow


class Experiment(Spec):
    """Incidents of the strategy split between workflows: each incident goes to one arm, chosen
    by a stable hash of the strategy id and the ``key`` fields of its first event
    (:func:`engine.experiments.assign`), so repeat incidents of one workload stay in one arm."""

    arms: list[Arm] = Field(min_length=2, max_length=20)
    key: list[str] | None = Field(default=None, min_length=1,
                                  description="event fields (default: the strategy's correlation key)")

    @field_validator("key")
    @classmethod
    def _key_fields(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else _event_fields(value)

    @model_validator(mode="after")
    def _distinct(self) -> Experiment:
        seen: dict[str, int] = {}
        for i, arm in enumerate(self.arms):
            if arm.label in seen:
                raise LocatedError(("arms", i, "name" if arm.name else "workflow"),
                                   f"two arms named {arm.label!r} (arms {seen[arm.label]} and {i}): "
                                   "give each arm its own workflow or name")
            seen[arm.label] = i
        return self


class Strategy(Spec):
    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
    name: str = ""
    category: str = "general"
    description: str = ""
    symptoms: list[Symptom] = Field(min_length=1)
    # With an experiment, its arms choose the workflow; workflow_id defaults to the first arm's.
    workflow_id: str = ""
    experiment: Experiment | None = None
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
    # Set on the strategy a workflow's trigger_config implies (engine.rules.check), never
    # read from a rule file: it loses ties to explicit strategies (engine.rules.precedence).
    _implicit: bool = PrivateAttr(default=False)
    _s = field_validator("same")(classmethod(lambda cls, v: _event_fields(v)))

    @model_validator(mode="after")
    def _sequence(self) -> Strategy:
        if self.match == "sequence" and len(self.symptoms) < 2:
            raise ValueError("match: sequence needs at least two symptoms")
        if not self.workflow_id:
            if self.experiment is None:
                raise LocatedError(("workflow_id",), "missing required field 'workflow_id'")
            self.workflow_id = self.experiment.arms[0].workflow
        return self

    @property
    def workflow_ids(self) -> list[str]:
        """Every workflow this strategy may start: its workflow_id, and its experiment's arms."""
        arms = [arm.workflow for arm in self.experiment.arms] if self.experiment is not None else []
        return list(dict.fromkeys([self.workflow_id, *arms]))

    @property
    def implicit(self) -> bool:
        """True for a workflow's implicit trigger ``workflow:<id>``."""
        return self._implicit

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



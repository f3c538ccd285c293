"""Prometheus metrics of the service (``GET /metrics``).

Each service instance has its own registry, so tests can run several in one process.

Every label takes its values from a bounded set, so no client and no rule churn can make
the exposition grow without limit:

- ``source``, ``outcome``, ``status``, ``result``: fixed sets (the intake's sources, the
  statuses of :mod:`engine.statuses`); ``type``: the registered step types;
- ``strategy``, ``workflow`` and ``arm``: the ids (arm names) of the active rule generation, at most
  :data:`MAX_RULE_LABELS` of each (the first ones in id order). :meth:`Metrics.rules_changed`
  sets them on every reload and removes the series of rules that are gone, so a rule deleted
  through the API or from the files leaves nothing behind. Until the first generation is
  known, any id is taken, up to the same cap.

A value outside its set is counted under ``other``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics import MetricWrapperBase

from engine.outcomes import Outcome
from engine.statuses import ExecutionStatus, StepStatus
from steps import REGISTRY

OTHER = "other"
MAX_RULE_LABELS = 500   # strategy (and workflow) label values; the rest count as "other"
SOURCES = ("nats", "http")

M = TypeVar("M", bound=MetricWrapperBase)


class Values:
    """The values one label may take: a fixed set, or rule ids that change with the rules."""

    def __init__(self, values: Iterable[str] | None = None, *, cap: int = MAX_RULE_LABELS) -> None:
        self.cap = cap
        self.fixed = values is not None
        self.allowed: set[str] = {str(v) for v in values or ()}
        self.known = self.fixed   # rule ids: False until the first generation sets them

    def fold(self, value: str) -> str:
        value = str(value)
        if value in self.allowed:
            return value
        if not self.known and len(self.allowed) < self.cap:
            self.allowed.add(value)
            return value
        return OTHER

    def set(self, ids: Iterable[str]) -> None:
        self.allowed = set(sorted(set(ids))[:self.cap])
        self.known = True


class Bounded(Generic[M]):
    """A labelled metric whose label values are folded into their :class:`Values`; it
    remembers the series it made, so those whose values left their set can be removed."""

    def __init__(self, metric: M, *values: Values) -> None:
        self.metric = metric
        self.values = values
        self._series: set[tuple[str, ...]] = set()

    def labels(self, *values: str) -> M:
        key = tuple(allowed.fold(value) for allowed, value in zip(self.values, values, strict=True))
        self._series.add(key)
        return self.metric.labels(*key)

    def prune(self) -> None:
        """Remove the series with a value no longer allowed."""
        gone = [key for key in self._series if any(
            value != OTHER and value not in allowed.allowed
            for allowed, value in zip(self.values, key, strict=True))]
        for key in gone:
            self.metric.remove(*key)
            self._series.discard(key)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.strategy_ids, self.workflow_ids, self.arm_names = Values(), Values(), Values()
        sources = Values(SOURCES)
        self.events_in = Bounded(Counter("aetherius_events_received_total", "Events taken in", ["source"],
                                         registry=r), sources)
        self.events_dedup = Counter("aetherius_events_duplicate_total", "Duplicate events dropped",
                                    registry=r)
        self.events_redelivered = Counter("aetherius_events_redelivered_total",
                                          "Messages NATS delivered again because they were not acked",
                                          registry=r)
        self.dead_letters = Bounded(Counter("aetherius_dead_letters_total",
                                            "Malformed inputs recorded as dead letters", ["source"],
                                            registry=r), sources)
        self.hits = Bounded(Counter("aetherius_strategy_hits_total", "Events that matched a strategy",
                                    ["strategy", "outcome"], registry=r),
                            self.strategy_ids, Values(("hit", "inhibited")))
        self.incidents = Bounded(Counter("aetherius_incidents_opened_total", "Incidents opened", ["strategy"],
                                         registry=r), self.strategy_ids)
        self.executions = Bounded(Counter("aetherius_executions_total", "Workflow executions by final status",
                                          ["workflow", "status"], registry=r),
                                  self.workflow_ids, Values(ExecutionStatus))
        self.outcomes = Bounded(Counter("aetherius_execution_outcomes_total",
                                        "Executions by what they did to the cluster (engine.outcomes)",
                                        ["outcome"], registry=r), Values(Outcome))
        self.executions_running = Gauge("aetherius_executions_running", "Executions running here",
                                        registry=r)
        self.executions_queued = Gauge("aetherius_executions_queued",
                                       "Executions waiting in this replica's admission queue "
                                       "(executions.max_running run already)", registry=r)
        self.queue_wait = Histogram(
            "aetherius_execution_queue_wait_seconds", "Time an execution waited in the admission queue "
            "before it started", registry=r,
            buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600))
        self.approvals = Bounded(Counter("aetherius_approvals_total",
                                         "Approvals requested and how they ended (engine.approvals)",
                                         ["event"], registry=r),
                                 Values(("requested", "approved", "denied", "expired")))
        self.approvals_waiting = Gauge("aetherius_approvals_waiting",
                                       "Remediations waiting here for a human's approval", registry=r)
        self.step_seconds = Bounded(Histogram(
            "aetherius_step_duration_seconds", "Step run duration", ["type", "status"], registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)),
            Values(REGISTRY), Values(StepStatus))
        self.reloads = Bounded(Counter("aetherius_rules_reloads_total", "Rule reloads", ["result"],
                                       registry=r), Values(("ok", "invalid")))
        self.rules_ok = Gauge("aetherius_rules_valid", "1 if the last reload was valid, 0 if it failed",
                              registry=r)
        self.rules_generation = Gauge("aetherius_rules_generation", "Active rule generation", registry=r)
        self.publish_to_start = Histogram(
            "aetherius_event_to_execution_seconds", "From an incident's first event to its execution's "
            "admission (started, or queued: see aetherius_execution_queue_wait_seconds)",
            registry=r, buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600))

        # Experiments (engine.experiments): per strategy and arm.
        arm_labels = (self.strategy_ids, self.arm_names)
        self.experiment_incidents = Bounded(Counter(
            "aetherius_experiment_incidents_total", "Incidents opened, by experiment arm",
            ["strategy", "arm"], registry=r), *arm_labels)
        self.experiment_outcomes = Bounded(Counter(
            "aetherius_experiment_executions_total",
            "Executions of experiment arms that ended, by outcome (engine.outcomes)",
            ["strategy", "arm", "outcome"], registry=r), *arm_labels, Values(Outcome))
        self.experiment_open_seconds = Bounded(Histogram(
            "aetherius_experiment_incident_open_seconds", "From an incident's opening to its close, by arm",
            ["strategy", "arm"], registry=r,
            buckets=(1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)), *arm_labels)
        self.experiment_suppressed = Bounded(Counter(
            "aetherius_experiment_suppressed_events_total",
            "Events of an arm's incidents that fired again within the cooldown (suppressed)",
            ["strategy", "arm"], registry=r), *arm_labels)
        self.experiment_metrics = (self.experiment_incidents, self.experiment_outcomes,
                                   self.experiment_open_seconds, self.experiment_suppressed)

    def rules_changed(self, strategies: Iterable[str], workflows: Iterable[str],
                      arms: Iterable[str] = ()) -> None:
        """The active generation's rule ids (and experiment arm names): from now on only these
        are labels, and the series of the others (deleted rules, ended experiments) are removed."""
        self.strategy_ids.set(strategies)
        self.workflow_ids.set(workflows)
        self.arm_names.set(arms)
        for metric in (self.hits, self.incidents, self.executions, *self.experiment_metrics):
            metric.prune()

    def render(self) -> bytes:
        return generate_latest(self.registry)

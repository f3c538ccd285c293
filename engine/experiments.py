"""Experiments: which workflow an incident runs, when its strategy splits incidents between arms.

:func:`assign` is the one place an incident's workflow is chosen. The correlator calls it
when a burst starts (:class:`engine.correlation.Incident`), so the service and ``aetherius
replay`` (and anything else built on the correlator) choose alike.

The choice is deterministic: the SHA-256 of the strategy id and the values of the
experiment's key fields in the incident's first event, read as a number in [0, 1), falls
into one arm's slice of the cumulative weights (arms in the order written). So:

- repeat incidents of one key (a workload, by default) always land in the same arm;
- the same key may land in different arms of two strategies (the strategy id is hashed too);
- changing a weight moves only the keys near a slice boundary, and adding an arm at the end
  moves only keys into it.

Python's ``hash()`` is salted per process and would give each replica its own split.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from engine.rules.model import Strategy

SEPARATOR = "\x1f"   # between the hashed parts: ("a", "bc") and ("ab", "c") differ


@dataclass(frozen=True)
class Assignment:
    """The workflow an incident runs, and the arm (None: the strategy has no experiment)."""

    workflow_id: str
    arm: str | None = None


def key_values(fields: Sequence[str], event: Any) -> tuple[str, ...]:
    """The key of an event as hashed: each field's value as text, ``-`` for none."""
    out = []
    for name in fields:
        value = getattr(event, name, None)
        out.append("-" if value in (None, "") else str(value))
    return tuple(out)


def point(strategy_id: str, values: Sequence[str]) -> float:
    """Where a key falls in [0, 1): the first 8 bytes of a SHA-256, as an unsigned integer."""
    digest = hashlib.sha256(SEPARATOR.join((strategy_id, *values)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def assign(strategy: Strategy, event: Any) -> Assignment:
    """The workflow (and arm) for an incident of ``strategy`` whose first event is ``event``."""
    experiment = strategy.experiment
    if experiment is None:
        return Assignment(strategy.workflow_id)
    fields = experiment.key or strategy.key_fields
    total = sum(arm.weight for arm in experiment.arms)
    at = point(strategy.id, key_values(fields, event)) * total
    upto = 0.0
    for arm in experiment.arms:
        upto += arm.weight
        if at < upto:
            return Assignment(arm.workflow, arm.label)
    last = experiment.arms[-1]     # only float rounding at the very top gets here
    return Assignment(last.workflow, last.label)


def arm_names(strategies: Iterable[Strategy]) -> set[str]:
    """The arm names of the strategies' experiments (the metrics' ``arm`` label values)."""
    return {arm.label for s in strategies if s.experiment is not None for arm in s.experiment.arms}


def arms_of(strategy: Strategy | None) -> list[dict[str, Any]]:
    """The arms as configured, with each one's share of the weights (empty: no experiment)."""
    if strategy is None or strategy.experiment is None:
        return []
    total = sum(arm.weight for arm in strategy.experiment.arms)
    return [{"arm": arm.label, "workflow_id": arm.workflow, "weight": arm.weight, "share": arm.weight / total}
            for arm in strategy.experiment.arms]

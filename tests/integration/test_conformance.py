"""The conformance suite: the runner's behaviours, the same test bodies on both engines.

Each test runs once on the builtin runner and once on Temporal (``engine`` fixture): the
path a workflow takes, retries and their backoff, timeouts, parallel joins, waits,
decisions, cancel, and resuming after a crash without repeating a finished step. What is
checked is what an operator would: statuses, which steps ran and how often, their outputs,
the requests that reached agent-manager, and what the store recorded.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import pytest
from test_runner import (
    DECISION,
    DESCRIBE,
    INCIDENT,
    LOGS,
    NO_JITTER,
    SHORT,
    SLOW,
    bodies,
    command,
    live,
    note,
    one,
    parallel,
    path,
    remediation,
    runs,
    wait,
    wait_until,
)

from engine.service.transport import make_client
from engine.store import MemoryStore


def ran(store: MemoryStore, execution_id: str) -> dict[str, str]:
    return {r.step_id: r.status for r in store.executions[execution_id].runs}


# ----------------------------------------------------------------------------- a path, branches


def test_a_path_runs_its_steps_in_order_and_each_once(engine, agent, load_workflow):
    store = MemoryStore()
    workflow = load_workflow({"id": "linear", "steps": [
        command("logs", "logs", on_success=["describe"]), command("describe", "describe", on_success=["tell"]),
        note("tell", "logs said {{ steps.logs.output.stdout }}")]})

    execution = engine.run(workflow, live(agent), store=store)

    assert execution.status == "succeeded", execution.error
    assert execution.outcome == "no_action"
    assert path(execution) == ["logs", "describe", "tell"]
    assert [b["action"] for b in bodies(agent)] == ["logs", "describe"]
    assert one(execution, "tell").output["text"].splitlines()[1] == "logs said logs ok"
    assert ran(store, execution.id) == {"logs": "succeeded", "describe": "succeeded", "tell": "succeeded"}
    assert store.executions[execution.id].status == "succeeded"


def test_a_failed_step_takes_on_failure_and_fails_the_execution(engine, agent, load_workflow):
    agent.fail_actions = {"logs"}
    workflow = load_workflow({"id": "onfail", "steps": [
        command("logs", "logs", on_success=["ok"], on_failure=["alert"]), note("ok"), note("alert")]})

    execution = engine.run(workflow, live(agent))

    assert execution.status == "failed"
    assert execution.error == "step(s) failed: logs"
    assert path(execution) == ["logs", "alert"]
    assert one(execution, "logs").error_kind == "CommandFailed"
    assert runs(execution, "ok") == []

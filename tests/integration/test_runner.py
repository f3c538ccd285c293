"""The builtin runner on small workflows, loaded like rule files, against the HTTP stand-ins.

The behaviours both engines share (paths, retries and backoff, timeouts, waits, cancel,
parallel joins, decisions, templates) are in ``test_conformance.py``, run on each engine;
what is here is the builtin engine's own (resume from its store, submitted cancels, caps
and allowlists through the runner, ``check``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from engine.cli import main
from engine.rules.model import Workflow
from engine.runner import WorkflowRunner, summary
from engine.service.transport import make_client
from engine.store import MemoryStore
from steps.base import Settings

INCIDENT = {
    "id": "inc-1", "strategy": "test", "key": "shop/checkout", "namespace": "shop", "workload": "checkout",
    "workload_kind": "Deployment", "pod": "checkout-7d9f8c6b5-x2x4k", "container": "checkout",
    "node": "node-a3", "reason": "BackOff", "message": "Back-off restarting failed container",
    "count": 3, "severity": "high",
}
NO_JITTER = {"initial_interval": "10ms", "jitter": 0}


def live(agent, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(agent_manager_url=agent.url, dry_run=False, live=True)
    values.update(overrides)
    return Settings(**values)


def run(workflow: Workflow, settings: Settings, *, store: MemoryStore | None = None,
        incident: dict[str, Any] | None = None, context: dict[str, Any] | None = None,
        listeners: tuple[Callable, ...] = ()):
    async def go():
        http = make_client()
        runner = WorkflowRunner(http=http, store=store, settings=settings)
        runner.listeners.extend(listeners)
        try:
            return await runner.run(workflow, incident=incident or INCIDENT, context=context)
        finally:
            await http.aclose()

    return asyncio.run(go())


def bodies(agent, action: str | None = None) -> list[dict[str, Any]]:
    return [r["body"] for r in agent.requests
            if isinstance(r["body"], dict) and (action is None or r["body"].get("action") == action)]


def runs(execution, step_id: str) -> list:
    return [r for r in execution.runs if r.step_id == step_id]


def one(execution, step_id: str):
    (found,) = runs(execution, step_id)
    return found


def path(execution) -> list[str]:
    return [s["id"] for s in summary(execution)["steps"]]


def command(step_id: str, action: str, **extra: Any) -> dict[str, Any]:
    return {"id": step_id, "type": "command", "config": {"action": action}, **extra}


def note(step_id: str, message: str = "done", **extra: Any) -> dict[str, Any]:
    return {"id": step_id, "type": "notification", "config": {"channel": "log", "message": message}, **extra}


def wait(step_id: str, duration: str, **extra: Any) -> dict[str, Any]:
    return {"id": step_id, "type": "wait", "config": {"duration": duration}, **extra}


def remediation(step_id: str, action: str, params: dict[str, Any] | None = None, **extra: Any):
    return {"id": step_id, "type": "remediation",
            "config": {"action": action, "params": params or {}}, **extra}


async def wait_until(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


# ----------------------------------------------------------------------------- loading


def test_step_configs_are_parsed_only_by_the_load_path(load_workflow):
    doc = {"id": "plain", "steps": [command("logs", "logs")]}
    bare = Workflow.model_validate(doc)
    with pytest.raises(AssertionError):
        _ = bare.steps[0].parsed
    loaded = load_workflow(doc)
    assert loaded.steps[0].parsed.action == "logs"


# ----------------------------------------------------------------------------- retries


# ----------------------------------------------------------------------------- timeouts


# ----------------------------------------------------------------------------- cancel


def test_cancel_a_submitted_execution(agent, load_workflow):
    store = MemoryStore()
    workflow = load_workflow({"id": "long", "steps": [wait("pause", "10s", on_success=["after"]),
                                                      note("after")]})

    async def go() -> float:
        http = make_client()
        runner = WorkflowRunner(http=http, store=store, settings=live(agent))
        try:
            task = (await runner.start(workflow, incident=INCIDENT, execution_id="exec-cancel-me")).task
            await wait_until(lambda: ("start_attempt", "exec-cancel-me", ("pause", 1)) in store.log)
            assert runner.running() == ["exec-cancel-me"]
            began = time.monotonic()
            assert runner.cancel("exec-cancel-me") is True
            with pytest.raises(asyncio.CancelledError):
                await task
            took = time.monotonic() - began
            assert runner.running() == []
            assert runner.cancel("exec-cancel-me") is False
            return took
        finally:
            await http.aclose()

    took = asyncio.run(go())

    assert took < 0.5
    saved = store.executions["exec-cancel-me"]
    assert saved.status == "cancelled"
    assert saved.finished_at is not None
    assert [(r.step_id, r.status) for r in saved.runs] == [("pause", "cancelled")]
    assert store.log[-1] == ("finish_execution", "exec-cancel-me", "cancelled")


# ----------------------------------------------------------------------------- parallel


def parallel(branches: list, join: str = "all", on_branch_failure: str = "fail", **steps: dict):
    """A workflow: fan (parallel) -> joined / broken, plus the branch steps given."""
    return {"id": "fan_out", "steps": [
        {"id": "fan", "type": "parallel",
         "config": {"branches": branches, "join": join, "on_branch_failure": on_branch_failure},
         "on_success": ["joined"], "on_failure": ["broken"]},
        *({"id": sid, **spec} for sid, spec in steps.items()),
        note("joined"), note("broken")]}


LOGS = {"type": "command", "config": {"action": "logs"}}
DESCRIBE = {"type": "command", "config": {"action": "describe"}}
GET = {"type": "command", "config": {"action": "get"}}
SLOW = {"type": "wait", "config": {"duration": "5s"}}
SHORT = {"type": "wait", "config": {"duration": "50ms"}}


def test_parallel_join_any_fail_fails_at_the_first_failed_branch(agent, load_workflow):
    agent.fail_actions = {"logs"}
    workflow = load_workflow(parallel([["a"], ["slow"]], join="any", a=LOGS, slow=SLOW))

    execution = run(workflow, live(agent))

    assert execution.status == "failed"
    assert one(execution, "fan").output == {"join": "any", "succeeded": [], "failed": [0], "cancelled": [1]}
    assert path(execution)[-1] == "broken"


def test_parallel_cancelled_branch_child_is_recorded_as_cancelled(agent, load_workflow):
    store = MemoryStore()
    workflow = load_workflow(parallel([["a"], ["slow"]], join="any", a=LOGS, slow=SLOW))

    execution = run(workflow, live(agent), store=store)

    assert execution.status == "succeeded"
    assert one(execution, "fan").output["cancelled"] == [1]
    statuses = {r.step_id: r.status for r in store.executions[execution.id].runs}
    assert statuses["slow"] == "cancelled"
    assert one(execution, "slow").status == "cancelled"


# ----------------------------------------------------------------------------- remediation safety


def test_allowlist_refuses_an_action_not_allowed(agent, load_workflow):
    workflow = load_workflow({"id": "allow", "steps": [
        remediation("fix", "increase_memory", on_success=["fixed"], on_failure=["alert"]),
        note("fixed"), note("alert")]})

    execution = run(workflow, live(agent, allowed_actions=frozenset({"restart_rollout"})))

    assert execution.status == "failed"
    step = one(execution, "fix")
    assert step.status == "failed"
    assert step.error_kind == "NotAllowed"
    assert "allowed_actions" in step.error
    assert "increase_memory" in step.error
    assert bodies(agent, "increase_memory") == []
    assert agent.requests == []
    assert path(execution) == ["fix", "alert"]


def test_allowlist_lets_an_allowed_action_through(agent, load_workflow):
    workflow = load_workflow({"id": "allow_ok", "steps": [remediation("fix", "restart_rollout")]})

    execution = run(workflow, live(agent, allowed_actions=frozenset({"restart_rollout"})))

    assert execution.status == "succeeded", execution.error
    (body,) = bodies(agent, "restart_rollout")
    assert body["dry_run"] is False
    assert body["target"]["name"] == "checkout"
    assert agent.applied == {body["idempotency_key"]: 1}


@pytest.mark.parametrize(("action", "params", "message"), [
    ("increase_memory", {"factor": 3}, "exceeds the cap x2"),
    ("increase_memory", {"memory_mib": 99999}, "exceeds the maximum 16384 MiB"),
    ("increase_memory", {"current_memory_mib": 512, "memory_mib": 2048}, "more than x2 of 512 MiB"),
    ("increase_memory", {"factor": 1}, "would not increase memory"),
    ("increase_memory", {"factor": 0}, "would not increase memory"),
    ("scale", {"replicas": 51}, "exceeds the maximum 50"),
    ("scale", {"replicas": 10, "current_replicas": 3}, "more than doubles"),
    ("scale", {}, "needs params.replicas"),
])
def test_change_caps_refuse_big_changes(agent, load_workflow, action, params, message):
    workflow = load_workflow({"id": "capped", "steps": [remediation("fix", action, params)]})

    execution = run(workflow, live(agent))

    assert execution.status == "failed"
    step = one(execution, "fix")
    assert step.error_kind == "NotAllowed"
    assert message in step.error
    assert agent.requests == []


def test_change_within_the_caps_is_sent_capped(agent, load_workflow):
    workflow = load_workflow({"id": "capped_ok", "steps": [
        remediation("fix", "increase_memory", {"current_memory_mib": 512, "factor": 2})]})

    execution = run(workflow, live(agent, max_memory_mib=4096))

    assert execution.status == "succeeded", execution.error
    (body,) = bodies(agent, "increase_memory")
    assert body["params"] == {"current_memory_mib": 512, "factor": 2.0, "max_memory_mib": 4096,
                              "memory_mib": 1024}


# ----------------------------------------------------------------------------- templates


def test_templates_are_rendered_before_reaching_agent_manager(agent, load_workflow):
    workflow = load_workflow({"id": "templated", "steps": [
        {"id": "logs", "type": "command", "on_success": ["again"], "config": {
            "action": "logs",
            "target": {"kind": "Pod", "name": "{{ incident.pod }}", "namespace": "{{ incident.namespace }}"},
            "args": ["--since={{ context.since }}", "--tail={{ context.tail * 2 }}"]}},
        {"id": "again", "type": "command", "config": {
            "action": "get", "args": ["{{ steps.logs.output.stdout }}", "{{ workflow.id }}"]}}]})

    execution = run(workflow, live(agent), context={"since": "5m", "tail": 50})

    assert execution.status == "succeeded", execution.error
    (logs,) = bodies(agent, "logs")
    assert logs["target"]["name"] == INCIDENT["pod"]
    assert logs["target"]["namespace"] == "shop"
    assert logs["target"]["kind"] == "Pod"
    assert logs["args"] == ["--since=5m", "--tail=100"]
    (get,) = bodies(agent, "get")
    assert get["args"] == ["logs ok", "templated"]


# ----------------------------------------------------------------------------- decision


DECISION = {"id": "decide_wf", "steps": [
    {"id": "decide", "type": "decision", "on_success": ["after"], "config": {
        "conditions": [{"if": "incident.reason == 'OOMKilled'", "then": "jump_here"},
                       {"if": "incident.reason == 'BackOff' and incident.count > 2", "then": "restart_it"}],
        "default": "fallback_value"}},
    note("jump_here", "jumped"),
    note("after", "decision={{ decision }}")]}


# ----------------------------------------------------------------------------- sandbox at check time


ESCAPES = ["__import__('os')", "().__class__", "9**9999999"]


@pytest.mark.parametrize("source", ESCAPES)
def test_check_refuses_an_escaping_decision_expression(tmp_path, capsys, source):
    rules = tmp_path / "rules"
    rules.mkdir()
    file = rules / "escape.yaml"
    file.write_text(
        "id: escape\n"
        "steps:\n"
        "  - id: decide\n"
        "    type: decision\n"
        "    config:\n"
        "      conditions:\n"
        f"        - if: \"{source}\"\n"
        "          then: x\n", encoding="utf-8")

    assert main(["check", str(rules)]) == 1

    out = capsys.readouterr().out
    assert f"{file}:7: steps.0.config.conditions.0.if:" in out
    assert "not allowed" in out or "exponent" in out


@pytest.mark.parametrize("source", ESCAPES)
def test_check_refuses_an_escaping_template(tmp_path, capsys, source):
    rules = tmp_path / "rules"
    rules.mkdir()
    file = rules / "escape.yaml"
    file.write_text(
        "id: escape\n"
        "steps:\n"
        "  - id: logs\n"
        "    type: command\n"
        "    config:\n"
        "      action: logs\n"
        "      args:\n"
        f"        - \"--since={{{{ {source} }}}}\"\n", encoding="utf-8")

    assert main(["check", str(rules)]) == 1

    out = capsys.readouterr().out
    assert f"{file}:8: steps.0.config.args.0: template:" in out


def test_check_accepts_the_same_files_without_the_escape(tmp_path, capsys):
    file = tmp_path / "fine.yaml"
    file.write_text(
        "id: fine\n"
        "steps:\n"
        "  - id: logs\n"
        "    type: command\n"
        "    config: {action: logs, args: [\"--since={{ context.since }}\"]}\n", encoding="utf-8")
    assert main(["check", str(file)]) == 0
    assert capsys.readouterr().out.startswith("OK: 1 file(s)")


# ----------------------------------------------------------------------------- resume


def test_resume_after_a_crash_reruns_only_the_unfinished_step(agent, load_workflow):
    store = MemoryStore()
    agent.delay = {"describe": 0.5}
    workflow = load_workflow({"id": "resumable", "steps": [
        command("first", "logs", on_success=["second"]),
        command("second", "describe", on_success=["third"]),
        command("third", "get")]})
    exec_id = "exec-crash"

    async def crash() -> None:
        http = make_client()
        runner = WorkflowRunner(http=http, store=store, settings=live(agent))
        try:
            task = (await runner.start(workflow, incident=INCIDENT, execution_id=exec_id)).task
            await wait_until(lambda: len(bodies(agent, "describe")) == 1)
            task.cancel()   # the process dies while "second" runs
            with pytest.raises(asyncio.CancelledError):
                await task
        finally:
            await http.aclose()

    asyncio.run(crash())

    # What a crashed process leaves behind: the execution and its current run 'running'.
    saved = store.executions[exec_id]
    saved.status, saved.error, saved.finished_at = "running", None, None
    second = next(r for r in saved.runs if r.step_id == "second")
    second.status = "running"
    assert {r.step_id: r.status for r in saved.runs} == {"first": "succeeded", "second": "running"}
    assert asyncio.run(store.unfinished_executions()) == [exec_id]
    first_key = bodies(agent, "describe")[0]["idempotency_key"]
    agent.delay.clear()

    async def resume():
        http = make_client()
        runner = WorkflowRunner(http=http, store=store, settings=live(agent))
        try:
            return await runner.resume(exec_id, workflow)
        finally:
            await http.aclose()

    execution = asyncio.run(resume())

    assert execution is not None
    assert execution.status == "succeeded", execution.error
    assert [b["action"] for b in bodies(agent)] == ["logs", "describe", "describe", "get"]
    assert len(bodies(agent, "logs")) == 1          # finished: not run again
    keys = [b["idempotency_key"] for b in bodies(agent, "describe")]
    assert keys == [first_key, first_key]            # unfinished: run again, same key
    assert store.executions[exec_id].status == "succeeded"
    assert {r.step_id: r.status for r in store.executions[exec_id].runs} == {
        "first": "succeeded", "second": "succeeded", "third": "succeeded"}
    assert asyncio.run(store.unfinished_executions()) == []


def test_resume_leaves_a_finished_execution_alone(agent, load_workflow):
    store = MemoryStore()
    workflow = load_workflow({"id": "done_already", "steps": [command("first", "logs")]})
    execution = run(workflow, live(agent), store=store)
    assert execution.status == "succeeded"

    async def resume():
        http = make_client()
        runner = WorkflowRunner(http=http, store=store, settings=live(agent))
        try:
            return await runner.resume(execution.id, workflow)
        finally:
            await http.aclose()

    again = asyncio.run(resume())
    assert again is not None and again.status == "succeeded"
    assert len(agent.requests) == 1


def test_a_step_timeout_counts_its_own_request_not_the_wait_for_a_connection_slot(agent, load_workflow):
    """Issue 10: at 100 concurrent executions against a slow agent-manager, executions timed
    out waiting for one of the client's connections. Here one slot, 0.3 s per request, a
    1 s step timeout and six executions at once: the last waits 1.5 s for its slot, and none
    times out; the slot is never exceeded."""
    agent.delay["get"] = 0.3
    step = command("look", "get")
    step["timeout"] = "1s"
    workflow = load_workflow({"id": "slow_agent", "steps": [step]})

    async def go():
        async with make_client(max_connections=1) as http:
            runner = WorkflowRunner(settings=live(agent), http=http)
            return await asyncio.gather(*(runner.run(workflow, incident=INCIDENT) for _ in range(6)))

    executions = asyncio.run(go())
    assert [e.status for e in executions] == ["succeeded"] * 6, [e.error for e in executions]
    starts = sorted(r["at"] for r in agent.requests)
    assert starts[-1] - starts[0] > 1.4          # one at a time: they really waited

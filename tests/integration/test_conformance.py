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
        command("logs", "logs", on_success=["describe"]),
        command("describe", "describe", on_success=["tell"]),
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


# ----------------------------------------------------------------------------- retries


def test_retry_with_exponential_backoff(engine, agent, load_workflow):
    agent.fail_actions = {"logs"}
    store = MemoryStore()
    workflow = load_workflow({"id": "retry", "steps": [command(
        "logs", "logs",
        retry={"max_attempts": 4, "initial_interval": "0.05s", "multiplier": 2, "jitter": 0})]})

    execution = engine.run(workflow, live(agent), store=store)

    assert execution.status == "failed"
    step = one(execution, "logs")
    assert (step.status, step.attempts, step.error_kind) == ("failed", 4, "CommandFailed")
    assert store.executions[execution.id].runs[0].attempts == 4
    assert [d for op, _, d in store.log if op == "fail_attempt"] == [
        ("logs", 1, "CommandFailed"), ("logs", 2, "CommandFailed"), ("logs", 3, "CommandFailed")]
    assert [d for op, _, d in store.log if op == "start_attempt"] == [("logs", n) for n in (1, 2, 3, 4)]
    # Four requests, one idempotency key; the gaps between them grow (0.05, 0.1, 0.2 s).
    requests = [r for r in agent.requests if r["body"]["action"] == "logs"]
    assert len(requests) == 4
    assert len({r["body"]["idempotency_key"] for r in requests}) == 1
    gaps = [b - a for a, b in itertools.pairwise(r["at"] for r in requests)]
    for gap, backoff in zip(gaps, (0.05, 0.1, 0.2), strict=True):
        assert gap >= backoff * 0.9, gaps
    assert gaps[-1] < 0.9, gaps        # the backoff is the policy's, not a server's rounding to 1 s


def test_workflow_retry_applies_when_the_step_has_none_and_a_retry_can_succeed(engine, agent, load_workflow):
    agent.fail_actions = {"logs"}
    workflow = load_workflow({"id": "wf_retry", "retry": {"max_attempts": 3, **NO_JITTER},
                              "steps": [command("logs", "logs", on_success=["after"]), note("after")]})

    def heal(what: str, execution, run_) -> None:
        if what == "step_started" and run_.step_id == "logs" and run_.attempts == 2:
            agent.fail_actions.clear()

    execution = engine.run(workflow, live(agent), listeners=(heal,))

    assert execution.status == "succeeded", execution.error
    assert one(execution, "logs").attempts == 2
    assert one(execution, "logs").error is None
    assert path(execution) == ["logs", "after"]
    assert len(bodies(agent, "logs")) == 2


def test_non_retryable_kind_is_tried_once(engine, agent, load_workflow):
    agent.fail_actions = {"logs"}
    workflow = load_workflow({"id": "nonretry", "steps": [command(
        "logs", "logs", retry={"max_attempts": 4, **NO_JITTER, "non_retryable": ["CommandFailed"]})]})

    execution = engine.run(workflow, live(agent))

    assert execution.status == "failed"
    assert one(execution, "logs").attempts == 1
    assert one(execution, "logs").error_kind == "CommandFailed"
    assert len(bodies(agent, "logs")) == 1


def test_not_allowed_is_never_retried(engine, agent, load_workflow):
    workflow = load_workflow({"id": "refused", "steps": [remediation(
        "fix", "increase_memory", retry={"max_attempts": 5, **NO_JITTER})]})

    execution = engine.run(workflow, live(agent, allowed_actions=frozenset({"restart_rollout"})))

    assert execution.status == "failed"
    step = one(execution, "fix")
    assert (step.attempts, step.error_kind) == (1, "NotAllowed")
    assert agent.requests == []


def test_without_a_retry_policy_an_outage_of_agent_manager_is_waited_out(engine, agent, load_workflow):
    from engine.rules.model import RetryPolicy

    workflow = load_workflow({"id": "plain",
                              "steps": [command("look", "get", on_success=["tell"]), note("tell")]})
    outage = RetryPolicy(max_attempts=5, initial_interval=0.01, max_interval=0.02, jitter=0)

    agent.unavailable = 3
    execution = engine.run(workflow, live(agent), outage_retry=outage)
    assert execution.status == "succeeded"
    assert one(execution, "look").attempts == 4
    agent.unavailable = 0
    agent.fail_actions.add("get")          # a command that ran and failed: not an outage
    failed = engine.run(workflow, live(agent), outage_retry=outage)
    assert failed.status == "failed" and one(failed, "look").attempts == 1


def test_idempotency_key_is_the_same_on_every_attempt(engine, agent, load_workflow):
    agent.delay = {"increase_memory": 0.4}
    workflow = load_workflow({"id": "idem", "steps": [remediation(
        "fix", "increase_memory", timeout="0.1s", retry={"max_attempts": 3, **NO_JITTER})]})

    def answer_quickly_from_now_on(what: str, execution, run_) -> None:
        if what == "step_started" and run_.step_id == "fix" and run_.attempts == 2:
            agent.delay.clear()

    execution = engine.run(workflow, live(agent), listeners=(answer_quickly_from_now_on,))

    assert execution.status == "succeeded", execution.error
    step = one(execution, "fix")
    assert step.attempts == 2
    sent = bodies(agent, "increase_memory")
    assert len(sent) == 2
    key = sent[0]["idempotency_key"]
    assert key == f"{execution.id}:fix:{step.seq}"
    assert all(b["idempotency_key"] == key for b in sent)
    deadline = time.monotonic() + 2
    while agent.calls[key] < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.45)
    assert agent.applied == {key: 1}


# ----------------------------------------------------------------------------- timeouts


def test_step_timeout_fails_the_attempt_and_takes_on_failure(engine, agent, load_workflow):
    agent.delay = {"logs": 2}
    workflow = load_workflow({"id": "slow", "steps": [
        command("logs", "logs", timeout="0.2s", on_success=["ok"], on_failure=["alert"]),
        note("ok"), note("alert", "logs timed out")]})

    began = time.monotonic()
    execution = engine.run(workflow, live(agent))
    elapsed = time.monotonic() - began

    assert execution.status == "failed"
    step = one(execution, "logs")
    assert (step.status, step.error_kind, step.error) == ("failed", "StepTimeout", "step timeout 0.2s")
    assert path(execution) == ["logs", "alert"]
    assert one(execution, "alert").status == "succeeded"
    assert runs(execution, "ok") == []
    assert elapsed < 1.5


def test_workflow_timeout_ends_the_execution_as_timed_out(engine, agent, load_workflow):
    store = MemoryStore()
    workflow = load_workflow({"id": "too_long", "timeout": "0.3s",
                              "steps": [wait("pause", "5s", on_success=["after"]), note("after")]})

    began = time.monotonic()
    execution = engine.run(workflow, live(agent), store=store)
    elapsed = time.monotonic() - began

    assert execution.status == "timed_out"
    assert "timeout" in execution.error
    assert elapsed < 1.5
    assert one(execution, "pause").status == "timed_out"
    assert runs(execution, "after") == []
    saved = store.executions[execution.id]
    assert saved.status == "timed_out"
    assert saved.runs[0].status == "timed_out"


# ----------------------------------------------------------------------------- waits


def test_a_wait_lets_its_time_pass_then_the_path_goes_on(engine, agent, load_workflow):
    workflow = load_workflow({"id": "waits", "steps": [
        wait("pause", "300ms", on_success=["look"]), command("look", "get")]})

    began = time.monotonic()
    execution = engine.run(workflow, live(agent))
    elapsed = time.monotonic() - began

    assert execution.status == "succeeded", execution.error
    assert path(execution) == ["pause", "look"]
    assert one(execution, "pause").output == {"waited_s": 0.3, "resumed_with_s": 0.3}
    (request,) = agent.requests
    pause = one(execution, "pause")
    assert request["at"] > 0 and pause.finished_at - pause.started_at >= 0.29
    assert 0.29 <= elapsed < 2.0


# ----------------------------------------------------------------------------- cancel


def test_cancel_a_running_execution(engine, agent, load_workflow):
    store = MemoryStore()
    workflow = load_workflow({"id": "long", "steps": [wait("pause", "10s", on_success=["after"]),
                                                      note("after")]})

    async def go() -> float:
        async with make_client() as http, engine.open(live(agent), store=store, http=http) as runner:
            task = (await runner.start(workflow, incident=INCIDENT, execution_id="exec-cancel-me")).task
            assert task is not None
            await wait_until(lambda: ("start_attempt", "exec-cancel-me", ("pause", 1)) in store.log, 5.0)
            assert runner.running() == ["exec-cancel-me"]
            began = time.monotonic()
            assert runner.cancel("exec-cancel-me") is True
            with pytest.raises(asyncio.CancelledError):
                await task
            took = time.monotonic() - began
            assert runner.running() == []
            assert runner.cancel("exec-cancel-me") is False
            return took

    took = asyncio.run(go())

    assert took < 1.0
    saved = store.executions["exec-cancel-me"]
    assert saved.status == "cancelled"
    assert saved.outcome == "needs_human"       # nobody finished the job
    assert saved.finished_at is not None
    assert [(r.step_id, r.status) for r in saved.runs] == [("pause", "cancelled")]
    assert store.log[-1] == ("finish_execution", "exec-cancel-me", "cancelled")


# ----------------------------------------------------------------------------- parallel


def test_parallel_join_all_runs_every_branch(engine, agent, load_workflow):
    workflow = load_workflow(parallel([["a"], ["b", "c"]], a=LOGS, b=DESCRIBE, c={
        "type": "command", "config": {"action": "get"}}))

    execution = engine.run(workflow, live(agent))

    assert execution.status == "succeeded", execution.error
    fan = one(execution, "fan")
    assert fan.output == {"join": "all", "succeeded": [0, 1], "failed": [], "cancelled": []}
    for sid in ("a", "b", "c"):
        assert one(execution, sid).status == "succeeded"
        assert one(execution, sid).in_branch_of == fan.seq
    actions = [b["action"] for b in bodies(agent)]
    assert sorted(actions) == ["describe", "get", "logs"]
    assert actions.index("describe") < actions.index("get")   # a branch runs in order
    assert path(execution)[-1] == "joined"
    assert runs(execution, "broken") == []


def test_parallel_join_all_fail_stops_at_the_first_failed_branch(engine, agent, load_workflow):
    agent.fail_actions = {"logs"}
    store = MemoryStore()
    workflow = load_workflow(parallel([["a"], ["slow"]], a=LOGS, slow=SLOW))

    began = time.monotonic()
    execution = engine.run(workflow, live(agent), store=store)
    elapsed = time.monotonic() - began

    assert elapsed < 1.5
    assert execution.status == "failed"
    fan = one(execution, "fan")
    assert fan.output == {"join": "all", "succeeded": [], "failed": [0], "cancelled": [1]}
    assert one(execution, "a").status == "failed"
    assert ran(store, execution.id)["slow"] == "cancelled"
    assert path(execution)[-1] == "broken"
    assert runs(execution, "joined") == []
    assert execution.error == "step(s) failed: fan"


def test_parallel_join_all_continue_lets_the_other_branches_finish(engine, agent, load_workflow):
    agent.fail_actions = {"logs"}
    workflow = load_workflow(parallel([["a"], ["pause", "b"]], on_branch_failure="continue",
                                      a=LOGS, pause=SHORT, b=DESCRIBE))

    execution = engine.run(workflow, live(agent))

    assert execution.status == "failed"
    fan = one(execution, "fan")
    assert fan.output == {"join": "all", "succeeded": [1], "failed": [0], "cancelled": []}
    assert one(execution, "b").status == "succeeded"
    assert len(bodies(agent, "describe")) == 1
    assert path(execution)[-1] == "broken"


def test_parallel_join_any_succeeds_with_the_first_branch(engine, agent, load_workflow):
    store = MemoryStore()
    workflow = load_workflow(parallel([["a"], ["slow"]], join="any", a=LOGS, slow=SLOW))

    began = time.monotonic()
    execution = engine.run(workflow, live(agent), store=store)
    elapsed = time.monotonic() - began

    assert elapsed < 1.5
    assert execution.status == "succeeded", execution.error
    assert one(execution, "fan").output == {"join": "any", "succeeded": [0], "failed": [], "cancelled": [1]}
    assert one(execution, "slow").status == "cancelled"
    assert ran(store, execution.id)["slow"] == "cancelled"
    assert path(execution)[-1] == "joined"


def test_parallel_join_any_continue_tolerates_a_failed_branch(engine, agent, load_workflow):
    agent.fail_actions = {"logs"}
    workflow = load_workflow(parallel([["a"], ["pause", "b"]], join="any", on_branch_failure="continue",
                                      a=LOGS, pause=SHORT, b=DESCRIBE))

    execution = engine.run(workflow, live(agent))

    assert execution.status == "succeeded", execution.error
    assert one(execution, "fan").output == {"join": "any", "succeeded": [1], "failed": [0], "cancelled": []}
    assert one(execution, "a").status == "failed"
    assert path(execution)[-1] == "joined"


def test_parallel_join_any_continue_fails_when_no_branch_succeeds(engine, agent, load_workflow):
    agent.fail_actions = {"logs", "describe"}
    workflow = load_workflow(parallel([["a"], ["b"]], join="any", on_branch_failure="continue",
                                      a=LOGS, b=DESCRIBE))

    execution = engine.run(workflow, live(agent))

    assert execution.status == "failed"
    fan = one(execution, "fan")
    assert fan.output == {"join": "any", "succeeded": [], "failed": [0, 1], "cancelled": []}
    assert fan.error == "parallel branches failed: [0, 1]"


# ----------------------------------------------------------------------------- decisions


def test_decision_jumps_to_a_named_step(engine, agent, load_workflow):
    execution = engine.run(load_workflow(DECISION), live(agent), incident={**INCIDENT, "reason": "OOMKilled"})

    assert execution.status == "succeeded"
    assert path(execution) == ["decide", "jump_here"]
    assert one(execution, "decide").output == {"value": "jump_here", "matched": 0,
                                               "condition": "incident.reason == 'OOMKilled'",
                                               "jump": "jump_here"}
    assert one(execution, "decide").branch == ["jump_here"]


def test_decision_value_is_read_by_later_steps(engine, agent, load_workflow):
    execution = engine.run(load_workflow(DECISION), live(agent), incident=INCIDENT)

    assert path(execution) == ["decide", "after"]
    out = one(execution, "decide").output
    assert out["value"] == "restart_it" and out["matched"] == 1 and "jump" not in out
    assert one(execution, "after").output["text"].splitlines()[1] == "decision=restart_it"


def test_decision_default_branch(engine, agent, load_workflow):
    execution = engine.run(load_workflow(DECISION), live(agent), incident={**INCIDENT, "count": 1})

    assert path(execution) == ["decide", "after"]
    assert one(execution, "decide").output == {"value": "fallback_value", "matched": None,
                                               "condition": "default"}
    assert one(execution, "after").output["text"].splitlines()[1] == "decision=fallback_value"


def test_decision_value_steers_a_remediation(engine, agent, load_workflow):
    workflow = load_workflow({"id": "steer", "steps": [
        {"id": "decide", "type": "decision", "on_success": ["fix"], "config": {
            "conditions": [{"if": "incident.reason == 'BackOff'", "then": "restart_rollout"}]}},
        remediation("fix", "patch_deployment")]})

    execution = engine.run(workflow, live(agent), incident=INCIDENT)

    assert execution.status == "succeeded", execution.error
    (body,) = bodies(agent)
    assert body["action"] == "restart_rollout"
    assert body["dry_run"] is False


def test_templates_see_the_context_and_earlier_outputs(engine, agent, load_workflow):
    workflow = load_workflow({"id": "templated", "steps": [
        {"id": "logs", "type": "command", "on_success": ["again"], "config": {
            "action": "logs",
            "target": {"kind": "Pod", "name": "{{ incident.pod }}", "namespace": "{{ incident.namespace }}"},
            "args": ["--since={{ context.since }}", "--tail={{ context.tail * 2 }}"]}},
        {"id": "again", "type": "command", "config": {
            "action": "get", "args": ["{{ steps.logs.output.stdout }}", "{{ workflow.id }}"]}}]})

    execution = engine.run(workflow, live(agent), incident=INCIDENT, context={"since": "5m", "tail": 50})

    assert execution.status == "succeeded", execution.error
    (logs,) = bodies(agent, "logs")
    assert logs["target"]["name"] == INCIDENT["pod"]
    assert logs["args"] == ["--since=5m", "--tail=100"]
    (get,) = bodies(agent, "get")
    assert get["args"] == ["logs ok", "templated"]


# ----------------------------------------------------------------------------- the seed's workflow


def test_the_seed_workflow_runs_unchanged(engine, agent, reasoning, slack):
    """rules/workflows/diagnose_pod_crashloop.yaml as written: the OOM path remediates once
    and notifies, and the store holds every transition."""
    from test_seed_workflow import SEED_PATH, incident, seed, settings

    store = MemoryStore()
    inc, events = incident()

    async def go():
        async with make_client() as http, engine.open(settings(agent, reasoning, slack), store=store,
                                                      http=http) as runner:
            return await runner.run(seed(), incident=inc, events=events)

    execution = asyncio.run(go())

    assert execution.status == "succeeded", execution.error
    assert execution.outcome == "remediated"
    assert path(execution) == SEED_PATH
    assert {r.status for r in execution.runs} == {"succeeded"}
    assert one(execution, "ai_analysis").output["root_cause"] == "OOM"
    assert one(execution, "decide_action").output["value"] == "increase_memory"
    assert [b["action"] for b in bodies(agent)] == ["logs", "describe", "increase_memory"]
    assert [b["step_id"] for b in bodies(agent)] == ["collect_logs", "check_resources", "execute_remediation"]
    (change,) = bodies(agent, "increase_memory")
    assert change["dry_run"] is False and change["target"]["name"] == "checkout"
    assert agent.applied == {change["idempotency_key"]: 1}
    assert len(reasoning.requests) == 1
    assert len(slack.messages) == 1 and "Pod 问题已自动修复" in slack.messages[0]
    saved = store.executions[execution.id]
    assert (saved.status, saved.outcome) == ("succeeded", "remediated")
    assert sorted(r.step_id for r in saved.runs) == sorted(SEED_PATH)
    operations = [op for op, _, _ in store.log]
    assert operations[0] == "create_execution" and operations[-1] == "finish_execution"
    assert operations.count("finish_step") == len(SEED_PATH)

"""Crash and restart of the service as a process, with executions mid-flight.

50 incidents each start a workflow; half of them sit in a ``wait`` step, half in a slow
``command`` (the stand-in agent-manager takes 4 s to answer ``describe``). The service is
then stopped, hard (SIGKILL) or gracefully (SIGTERM), more events are published while it
is down, and a second process with the same replica id is started. Everything must
complete, no step recorded as finished may run again (the stand-in counts calls per
idempotency key ``execution:step:seq``), every remediation is applied once, the waits go
on with the time they had left, and no event published before the stop is lost.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from tests.e2e.harness import ServiceProcess
from tests.standins import AgentManager

WAIT_S = 4.0            # the wait step of crash_wait_wf
SLOW_S = 4.0            # agent-manager's delay for ``describe`` (crash_slow_wf's first step)
GRACE_S = 5.0           # service.shutdown_grace in the harness config
NAMESPACE = "ns"
REPLICA = "crash-1"
FLIGHT = 50             # executions in flight when the service stops

RULES = f"""
strategies:
  - id: crash_wait
    name: Crash test (wait)
    category: crash_test
    workflow_id: crash_wait_wf
    priority: 500
    severity: high
    symptoms:
      - type: event
        conditions: {{kind: Pod, reason: CrashTestWait}}
    correlation: {{key: [namespace, workload], quiet: 500ms, max_window: 5s, cooldown: 1s}}
  - id: crash_slow
    name: Crash test (slow command)
    category: crash_test
    workflow_id: crash_slow_wf
    priority: 500
    severity: high
    symptoms:
      - type: event
        conditions: {{kind: Pod, reason: CrashTestSlow}}
    correlation: {{key: [namespace, workload], quiet: 500ms, max_window: 5s, cooldown: 1s}}
workflows:
  - id: crash_wait_wf
    name: logs, wait, restart, notify
    trigger_type: manual
    timeout: 5m
    steps:
      - id: logs
        type: command
        config: {{action: logs, args: ["--tail=10"]}}
        timeout: 30s
        on_success: [pause]
      - id: pause
        type: wait
        config: {{duration: {WAIT_S:g}s}}
        on_success: [restart]
      - id: restart
        type: remediation
        config: {{action: restart_rollout}}
        timeout: 30s
        on_success: [notify]
      - id: notify
        type: notification
        config: {{channel: log, message: "{{{{ incident.workload }}}} restarted"}}
  - id: crash_slow_wf
    name: slow describe, restart, notify
    trigger_type: manual
    timeout: 5m
    steps:
      - id: describe
        type: command
        config: {{action: describe}}
        timeout: 30s
        on_success: [restart]
      - id: restart
        type: remediation
        config: {{action: restart_rollout}}
        timeout: 30s
        on_success: [notify]
      - id: notify
        type: notification
        config: {{channel: log, message: "{{{{ incident.workload }}}} restarted"}}
"""

# The step each workflow is in while "mid-flight", and the steps each one runs.
IN_FLIGHT_STEP = {"crash_wait_wf": "pause", "crash_slow_wf": "describe"}
STEPS = {"crash_wait_wf": ["logs", "pause", "restart", "notify"],
         "crash_slow_wf": ["describe", "restart", "notify"]}
REASONS = ("CrashTestWait", "CrashTestSlow")


# ---------------------------------------------------------------------------- helpers


def _sql(dsn: str, *queries: str) -> list[list[dict[str, Any]]]:
    async def go() -> list[list[dict[str, Any]]]:
        conn = await asyncpg.connect(dsn)
        try:
            return [[dict(r) for r in await conn.fetch(q)] for q in queries]
        finally:
            await conn.close()

    return asyncio.run(go())


@dataclass
class Snapshot:
    """workflow_executions, step_executions, incidents and events at one moment."""

    executions: dict[str, dict[str, Any]]
    runs: dict[tuple[str, int], dict[str, Any]]
    incidents: list[dict[str, Any]]
    events: dict[str, dict[str, Any]]

    @classmethod
    def take(cls, dsn: str) -> Snapshot:
        executions, runs, incidents, events = _sql(
            dsn,
            "SELECT id, workflow_id, incident_id, status, error FROM workflow_executions",
            "SELECT execution_id, seq, step_id, step_type, status, attempts, output, started_at, "
            "finished_at FROM step_executions",
            "SELECT id, strategy_id, key, status, execution_id, workload FROM incidents",
            "SELECT id, state, incident_id, strategy_id FROM events")
        for run in runs:            # jsonb reads as text on a plain connection
            run["output"] = json.loads(run["output"]) if isinstance(run["output"], str) else run["output"]
        return cls({e["id"]: e for e in executions}, {(r["execution_id"], r["seq"]): r for r in runs},
                   incidents, {e["id"]: e for e in events})

    def runs_of(self, execution_id: str) -> list[dict[str, Any]]:
        return sorted((r for (eid, _), r in self.runs.items() if eid == execution_id), key=lambda r: r["seq"])

    def run_of(self, execution_id: str, step_id: str) -> dict[str, Any] | None:
        return next((r for r in self.runs_of(execution_id) if r["step_id"] == step_id), None)

    def executions_of(self, event_ids: Any) -> set[str]:
        """The executions of the incidents these events went into."""
        incidents = {i["id"]: i["execution_id"] for i in self.incidents}
        return {incidents[e["incident_id"]] for i, e in self.events.items()
                if i in event_ids and incidents.get(e["incident_id"])}

    def mid_flight(self) -> list[str]:
        """Running executions whose wait / slow command has started and not finished."""
        out = []
        for eid, e in self.executions.items():
            run = self.run_of(eid, IN_FLIGHT_STEP.get(e["workflow_id"], ""))
            if e["status"] == "running" and run is not None and run["status"] == "running":
                out.append(eid)
        return out


def _key(run: dict[str, Any]) -> str:
    return f"{run['execution_id']}:{run['step_id']}:{run['seq']}"


def _counter(counter: Counter) -> dict[str, int]:
    # The stand-in's thread may be adding to it: copy until the copy succeeds.
    for _ in range(50):
        try:
            return dict(counter)
        except RuntimeError:
            time.sleep(0.01)
    return dict(counter)


def _envelope(reason: str, workload: str, ident: str) -> bytes:
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    return json.dumps({
        "id": ident, "source": "agent-manager", "cluster": "crash-test", "severity": "high",
        "reason": reason, "message": f"{reason} on {workload}", "namespace": NAMESPACE, "kind": "Pod",
        "name": f"{workload}-7d9f8c6b5-abcde", "count": 1, "first_seen": now, "last_seen": now,
    }).encode()


def _publish(service: ServiceProcess, tag: str, workloads: list[str]) -> dict[str, str]:
    """One event per workload, reasons alternating; returns {event id: workload}."""
    ids = [f"{tag}-{w}" for w in workloads]
    payloads = [_envelope(REASONS[i % 2], w, mid) for i, (w, mid) in enumerate(zip(workloads, ids,
                                                                                  strict=True))]
    acks = service.publish(payloads, msg_ids=list(ids))
    failed = [a for a in acks if isinstance(a, Exception) or getattr(a, "duplicate", False)]
    assert not failed, failed
    return dict(zip(ids, workloads, strict=True))


def _wait(predicate: Any, timeout: float, what: str, service: ServiceProcess | None = None,
          interval: float = 0.1) -> Any:
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    tail = service.log()[-4000:] if service is not None else ""
    raise AssertionError(f"{what}: not within {timeout}s\n{tail}")


def _ts(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture
def agent():
    manager = AgentManager().start()
    manager.delay = {"describe": SLOW_S}
    yield manager
    manager.stop()


@pytest.fixture
def services(tmp_path, pg_dsn, redis_url, redis_prefix, nats_url, nats_prefix, agent):
    """make(name) -> a ServiceProcess on the test's servers, same rules, same replica id."""
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "crash.yaml").write_text(RULES, encoding="utf-8")
    made: list[ServiceProcess] = []

    def make(name: str) -> ServiceProcess:
        proc = ServiceProcess(tmp_path / name, pg_dsn=pg_dsn, redis_url=redis_url, redis_prefix=redis_prefix,
                              nats_url=nats_url, nats_prefix=nats_prefix, agent_manager=agent.url,
                              replica=REPLICA, rules_dir=rules)
        made.append(proc)
        return proc

    yield make
    for proc in made:
        proc.stop(signal.SIGKILL)


# ---------------------------------------------------------------------------- the scenario


@dataclass
class Stopped:
    """What the first process left behind when it ended."""

    flight: dict[str, str]              # event id -> workload: the 50 executions in flight
    before: dict[str, str]              # published just before the stop
    after: dict[str, str]               # published while no service ran
    stop_at: float                      # when the signal was sent
    stop_seconds: float                 # how long the process took to end
    exit_code: int
    at_stop: Snapshot                   # the store once the process had ended
    calls_at_stop: dict[str, int]       # agent-manager calls per idempotency key by then

    @property
    def published(self) -> dict[str, str]:
        return {**self.flight, **self.before, **self.after}


def _run_until_stopped(make: Any, agent: AgentManager, pg_dsn: str, sig: int) -> Stopped:
    first = make("first")
    first.start()
    t0 = time.time()
    flight = _publish(first, "flight", [f"w{i}" for i in range(FLIGHT)])

    # All 50 executions exist and are in their wait or slow command (started, not finished).
    _wait(lambda: len(Snapshot.take(pg_dsn).mid_flight()) == FLIGHT, WAIT_S - 1,
          f"{FLIGHT} executions mid-flight", first, interval=0.05)
    t_flight = time.time() - t0

    # A few more just before the stop: recorded with their bursts still pending (quiet is
    # 500 ms), or not yet fetched from NATS.
    before = _publish(first, "before", [f"p{i}" for i in range(6)])
    deadline = time.time() + 0.3
    while time.time() < deadline and not set(before) <= set(Snapshot.take(pg_dsn).events):
        time.sleep(0.02)
    snap = Snapshot.take(pg_dsn)
    before_states = Counter((snap.events.get(i) or {}).get("state") or "not recorded" for i in before)
    assert len(snap.mid_flight()) == FLIGHT, "the stop came too late: a step in flight had finished"

    stop_at = time.time()
    if sig == signal.SIGKILL:
        first.kill()
        code = -signal.SIGKILL
    else:
        code = first.stop(signal.SIGTERM, timeout=GRACE_S + 10)
    stop_seconds = time.time() - stop_at
    time.sleep(0.3)                     # requests already on the wire reach the stand-in
    at_stop = Snapshot.take(pg_dsn)
    calls = _counter(agent.calls)

    # Published while no service runs: JetStream keeps them for the next one.
    after = _publish(first, "after", [f"a{i}" for i in range(20)])
    print(f"\n{signal.Signals(sig).name}: {FLIGHT} executions mid-flight {t_flight:.2f}s after the start; "
          f"pre-stop events at the stop: {dict(before_states)}; the process ended in "
          f"{stop_seconds:.2f}s (exit {code})")
    return Stopped(flight, before, after, stop_at, stop_seconds, code, at_stop, calls)


def _restart_and_finish(make: Any, pg_dsn: str, stopped: Stopped) -> tuple[Snapshot, ServiceProcess]:
    """Start a second process (same replica id, database, Redis and NATS prefixes, rules)
    and wait until every execution has ended."""
    second = make("second")
    t0 = time.time()
    second.start()
    ready = time.time() - t0
    total = len(set(stopped.published.values()))

    def finished() -> Snapshot | None:
        snap = Snapshot.take(pg_dsn)
        running = [e for e in snap.executions.values() if e["status"] == "running"]
        return snap if len(snap.executions) >= total and not running else None

    _wait(finished, 40, f"all {total} executions ended", second, interval=0.2)
    time.sleep(0.5)                     # closing the incidents follows the executions' end
    final = Snapshot.take(pg_dsn)
    print(f"restart: ready in {ready:.2f}s; all {total} executions ended {time.time() - t0:.2f}s "
          "after the start")
    return final, second


def _check_everything_completed_once(stopped: Stopped, final: Snapshot, agent: AgentManager,
                                     second: ServiceProcess) -> None:
    """What must hold after any stop and restart."""
    published = stopped.published
    workloads = set(published.values())

    # Every execution completed, and succeeded.
    failed = {eid: (e["workflow_id"], e["status"], e["error"]) for eid, e in final.executions.items()
              if e["status"] != "succeeded"}
    assert not failed, failed

    # One incident per workload, each with exactly one execution, and closed.
    by_workload = Counter(i["workload"] for i in final.incidents)
    assert set(by_workload) == workloads and set(by_workload.values()) == {1}, by_workload
    assert len(final.executions) == len(workloads)
    per_incident = Counter(e["incident_id"] for e in final.executions.values())
    assert set(per_incident.values()) == {1}, per_incident
    for incident in final.incidents:
        assert incident["execution_id"] in final.executions, incident
        assert final.executions[incident["execution_id"]]["incident_id"] == incident["id"], incident
        assert incident["status"] == "closed", incident

    # No event published before (or during) the stop is lost: each is recorded and went into
    # the incident of its own workload; none is left received or pending.
    assert not set(published) - set(final.events), sorted(set(published) - set(final.events))
    stuck = {i: e["state"] for i, e in final.events.items() if e["state"] in ("received", "pending")}
    assert not stuck, stuck
    incidents = {i["id"]: i for i in final.incidents}
    for ident, workload in published.items():
        event = final.events[ident]
        assert event["state"] == "attached", event
        assert incidents[event["incident_id"]]["workload"] == workload, event

    # Each execution ran each step of its workflow once: one recorded run per step (a resume
    # continues the recorded run, with its seq; it never schedules another).
    for eid, e in final.executions.items():
        runs = final.runs_of(eid)
        assert [r["step_id"] for r in runs] == STEPS[e["workflow_id"]], (eid, runs)
        assert all(r["status"] == "succeeded" for r in runs), (eid, runs)

    # Each remediation: one idempotency key per execution, applied once; and one live restart
    # per workload among all the requests agent-manager saw.
    restart_keys = {_key(final.run_of(eid, "restart")) for eid in final.executions}
    assert set(agent.applied) == restart_keys
    assert set(agent.applied.values()) == {1}
    calls = _counter(agent.calls)
    assert {k: calls[k] for k in restart_keys if calls.get(k) != 1} == {}
    live = Counter(r["body"]["target"]["name"] for r in list(agent.requests)
                   if isinstance(r["body"], dict) and r["body"].get("action") == "restart_rollout"
                   and r["body"].get("dry_run") is False)
    assert set(live) == workloads and set(live.values()) == {1}, live

    # Every call agent-manager saw belongs to a recorded step run.
    run_keys = {_key(r) for r in final.runs.values()}
    assert set(calls) <= run_keys, set(calls) - run_keys

    # The second process resumed each execution left running, once.
    left = [eid for eid, e in stopped.at_stop.executions.items() if e["status"] == "running"]
    log = second.log()
    assert log.count("Resuming workflow execution") == len(left), log[-3000:]
    for eid in left:
        assert log.count(f"Resuming workflow execution {eid} ") == 1, eid


def _check_finished_runs_untouched(stopped: Stopped, final: Snapshot, agent: AgentManager) -> list[str]:
    """No step run recorded as succeeded when the process ended ran again."""
    calls = _counter(agent.calls)
    keys = []
    for (eid, seq), run in stopped.at_stop.runs.items():
        if run["status"] != "succeeded":
            continue
        now = final.runs[(eid, seq)]
        for column in ("step_id", "status", "attempts", "output", "started_at", "finished_at"):
            assert now[column] == run[column], (eid, seq, column, run[column], now[column])
        key = _key(run)
        keys.append(key)
        if run["step_type"] in ("command", "remediation"):
            assert stopped.calls_at_stop.get(key) == 1, (key, stopped.calls_at_stop.get(key))
            assert calls.get(key) == 1, (key, calls.get(key))
    return keys


# ---------------------------------------------------------------------------- tests


def test_sigkill_mid_flight_then_restart_completes_everything_once(services, agent, pg_dsn):
    stopped = _run_until_stopped(services, agent, pg_dsn, signal.SIGKILL)
    at_stop = stopped.at_stop

    # The kill found the 50 in flight: running, in their wait or slow command.
    flight = set(at_stop.mid_flight())
    assert len(flight) == FLIGHT
    assert Counter(at_stop.executions[e]["workflow_id"] for e in flight) == {
        "crash_wait_wf": FLIGHT // 2, "crash_slow_wf": FLIGHT // 2}
    # A step the kill interrupted had already reached agent-manager: it will be asked again.
    for eid in flight:
        run = at_stop.run_of(eid, "describe")
        if run is not None:
            assert stopped.calls_at_stop.get(_key(run)) == 1, run

    final, second = _restart_and_finish(services, pg_dsn, stopped)

    _check_everything_completed_once(stopped, final, agent, second)
    untouched = _check_finished_runs_untouched(stopped, final, agent)
    # At least the ``logs`` step of each wait workflow had finished before the kill.
    assert len(untouched) >= FLIGHT // 2

    calls = _counter(agent.calls)
    for eid in flight:
        e = final.executions[eid]
        run = final.run_of(eid, IN_FLIGHT_STEP[e["workflow_id"]])
        started = _ts(run["started_at"])
        assert started == _ts(at_stop.run_of(eid, run["step_id"])["started_at"]), run
        if e["workflow_id"] == "crash_wait_wf":
            # The wait went on with the time it had left, counted from its first start.
            left = run["output"]["resumed_with_s"]
            assert 0 <= left < WAIT_S, run
            assert left <= WAIT_S - (stopped.stop_at - started) + 0.05, (run, stopped.stop_at)
            assert _ts(run["finished_at"]) - started >= WAIT_S - 0.05, run
        else:
            # The interrupted command ran again under the same key, and was recorded once.
            assert calls.get(_key(run)) == 2, (run, calls.get(_key(run)))
    left = sorted(final.run_of(e, "pause")["output"]["resumed_with_s"] for e in flight
                  if final.executions[e]["workflow_id"] == "crash_wait_wf")
    print(f"SIGKILL: {len(final.executions)} executions succeeded; {len(untouched)} step runs finished "
          f"before the kill were not run again; the resumed waits had {left[0]}..{left[-1]} s left")


def test_sigterm_mid_flight_exits_zero_then_restart_completes_everything_once(services, agent, pg_dsn):
    stopped = _run_until_stopped(services, agent, pg_dsn, signal.SIGTERM)
    at_stop = stopped.at_stop

    # Graceful: exit code 0 within the grace period (and a little).
    assert stopped.exit_code == 0
    assert stopped.stop_seconds < GRACE_S + 3, stopped.stop_seconds
    # The steps in flight were let finish and recorded; the next ones were not started but
    # recorded as pending, and the executions left running, for the next process.
    flight = at_stop.executions_of(stopped.flight)
    assert len(flight) == FLIGHT
    for eid in flight:
        e = at_stop.executions[eid]
        assert e["status"] == "running", e
        done = at_stop.run_of(eid, IN_FLIGHT_STEP[e["workflow_id"]])
        assert done["status"] == "succeeded" and done["attempts"] == 1, done
        assert (at_stop.run_of(eid, "restart") or {}).get("status") == "pending", at_stop.runs_of(eid)
    # Nothing taken in is left unprocessed; an incident that formed during the drain has its
    # execution recorded, to be resumed.
    assert not [e for e in at_stop.events.values() if e["state"] == "received"]
    for incident in at_stop.incidents:
        assert incident["execution_id"] in at_stop.executions, incident

    final, second = _restart_and_finish(services, pg_dsn, stopped)

    _check_everything_completed_once(stopped, final, agent, second)
    untouched = _check_finished_runs_untouched(stopped, final, agent)
    # Every step in flight at the SIGTERM had finished in the grace period: none ran again.
    assert len(untouched) >= FLIGHT + FLIGHT // 2
    calls = _counter(agent.calls)
    assert [k for k, n in calls.items() if n != 1] == []
    print(f"SIGTERM: {len(final.executions)} executions succeeded; {len(untouched)} step runs finished "
          "before the stop were not run again; no agent-manager key was called twice")

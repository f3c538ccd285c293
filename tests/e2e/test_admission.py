"""Admission under load, with the service as a process: past ``executions.max_running`` the
executions of incidents wait as ``queued`` (in the API, on the incident and in the metrics),
then all complete and none fails, though agent-manager is slow and has one connection slot;
a queued execution survives ``kill -9`` and runs once after the restart; a manual execute
may queue too, and a queued execution can be cancelled."""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.e2e.harness import ServiceProcess, sql
from tests.standins import AgentManager

RULES = """
strategies:
  - id: slow_crash
    category: admission_test
    workflow_id: slow_describe
    priority: 500
    symptoms: [{conditions: {kind: Pod, reason: AdmissionTest}}]
    correlation: {key: [namespace, workload], quiet: 300ms, max_window: 5s, cooldown: 1m}
workflows:
  - id: slow_describe
    trigger_type: manual
    timeout: 5m
    steps:
      - id: describe
        type: command
        config: {action: describe}
        timeout: 2s
        on_success: [notify]
      - {id: notify, type: notification, config: {channel: log, message: "{{ incident.workload }}"}}
"""


def _envelope(workload: str, ident: str) -> bytes:
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    return json.dumps({
        "id": ident, "source": "agent-manager", "cluster": "admission", "severity": "high",
        "reason": "AdmissionTest", "message": f"crash of {workload}", "namespace": "adm", "kind": "Pod",
        "name": f"{workload}-7d9f8c6b5-abcde", "count": 1, "first_seen": now, "last_seen": now,
    }).encode()


def _publish(service: ServiceProcess, tag: str, n: int) -> None:
    ids = [f"{tag}-{i}" for i in range(n)]
    acks = service.publish([_envelope(f"{tag}{i}", mid) for i, mid in enumerate(ids)], msg_ids=list(ids))
    assert not [a for a in acks if isinstance(a, Exception)]


def _executions(dsn: str) -> list[dict[str, Any]]:
    return sql(dsn, "SELECT id, status, error, owner, queued_at, started_at, finished_at "
                    "FROM workflow_executions ORDER BY queued_at, id")


def _metric(service: ServiceProcess, name: str) -> float:
    for line in service.get("/metrics").splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


@pytest.fixture
def agent():
    manager = AgentManager().start()
    yield manager
    manager.stop()


@pytest.fixture
def make(tmp_path, pg_dsn, redis_url, redis_prefix, nats_url, nats_prefix, agent):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "admission.yaml").write_text(RULES, encoding="utf-8")
    made: list[ServiceProcess] = []

    def make(name: str, replica: str = "admission-1", **extra: dict[str, Any]) -> ServiceProcess:
        proc = ServiceProcess(tmp_path / name, pg_dsn=pg_dsn, redis_url=redis_url, redis_prefix=redis_prefix,
                              nats_url=nats_url, nats_prefix=nats_prefix, agent_manager=agent.url,
                              replica=replica, rules_dir=rules, extra=extra)
        made.append(proc)
        return proc

    yield make
    for proc in made:
        proc.stop(signal.SIGKILL)


def test_past_max_running_incidents_queue_then_all_complete_and_none_fails(make, agent, pg_dsn) -> None:
    # Three run at once, and agent-manager (1 s per answer) takes one request at a time:
    # a step waits up to 2 s for the slot, longer than its 2 s timeout with its own second.
    agent.delay = {"describe": 1.0}
    service = make("one", executions={"max_running": 3}, agent_manager={"max_connections": 1}).start()
    _publish(service, "w", 8)

    queued = service.wait_for(lambda: service.get("/api/v1/executions", status="queued")["items"], 15)
    assert {e["status"] for e in queued} == {"queued"} and all(e["queued_at"] for e in queued)
    assert _metric(service, "aetherius_executions_queued") >= 1
    incidents = service.get("/api/v1/incidents")["items"]
    assert "queued" in {i["execution_status"] for i in incidents}

    most = 0
    deadline = time.time() + 60
    while time.time() < deadline:
        rows = _executions(pg_dsn)
        most = max(most, sum(1 for r in rows if r["status"] == "running"))
        if len(rows) == 8 and all(r["status"] not in ("queued", "running") for r in rows):
            break
        time.sleep(0.1)
    rows = _executions(pg_dsn)
    assert Counter(r["status"] for r in rows) == {"succeeded": 8}, [(r["status"], r["error"]) for r in rows]
    assert most <= 3
    # First in, first out; and each started no earlier than it was admitted.
    starts = [r["started_at"] for r in rows]
    assert starts == sorted(starts)
    assert all(r["started_at"] >= r["queued_at"] for r in rows)
    assert max((r["started_at"] - r["queued_at"]).total_seconds() for r in rows) > 1.0
    # Every describe went out once (no timeout, no retry), every incident closed.
    describes = [k for k, n in agent.calls.items() if ":describe:" in k for _ in range(n)]
    assert len(describes) == 8 and len(set(describes)) == 8
    assert {i["status"] for i in service.get("/api/v1/incidents")["items"]} == {"closed"}
    assert _metric(service, "aetherius_executions_queued") == 0
    assert _metric(service, "aetherius_execution_queue_wait_seconds_count") >= 1


def test_queued_executions_survive_kill_9_and_each_runs_once_after_the_restart(make, agent, pg_dsn) -> None:
    agent.delay = {"describe": 1.5}
    first = make("first", executions={"max_running": 1}).start()
    _publish(first, "k", 5)
    first.wait_for(lambda: Counter(r["status"] for r in _executions(pg_dsn)) == {"running": 1, "queued": 4},
                   15, interval=0.05)
    # A manual execute while full queues too, and says so; a queued one can be cancelled.
    response = first.post("/api/v1/workflows/slow_describe/execute", {"incident": {"workload": "manual"}})
    assert response.status_code == 202 and response.json()["status"] == "queued"
    manual = response.json()["execution_id"]
    assert first.get(f"/api/v1/executions/{manual}")["status"] == "queued"
    cancelled = first.post(f"/api/v1/executions/{manual}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"

    first.kill()
    rows = _executions(pg_dsn)
    assert Counter(r["status"] for r in rows) == {"running": 1, "queued": 4, "cancelled": 1}

    second = make("second", executions={"max_running": 1}).start()
    second.wait_for(lambda: all(r["status"] not in ("queued", "running") for r in _executions(pg_dsn)), 40)
    rows = [r for r in _executions(pg_dsn) if r["id"] != manual]
    assert Counter(r["status"] for r in rows) == {"succeeded": 5}
    runs = sql(pg_dsn, "SELECT execution_id, step_id, status FROM step_executions")
    assert Counter((r["execution_id"], r["step_id"]) for r in runs) == Counter(
        (r["id"], step) for r in rows for step in ("describe", "notify"))
    assert not [r for r in runs if r["execution_id"] == manual]      # the cancelled one never started
    # The four that were queued at the kill each called agent-manager once.
    calls = Counter(k.split(":")[0] for k, n in agent.calls.items() for _ in range(n))
    assert sorted(calls.values())[:4] == [1, 1, 1, 1] and sum(calls.values()) <= 6
    assert "left the queue" not in second.log() and "leaves the queue" in second.log()


def test_another_replica_takes_over_the_queue_of_a_replica_killed(make, agent, pg_dsn) -> None:
    agent.delay = {"describe": 1.0}
    first = make("first", executions={"max_running": 1}).start()
    _publish(first, "t", 4)
    first.wait_for(lambda: Counter(r["status"] for r in _executions(pg_dsn)) == {"running": 1, "queued": 3},
                   15, interval=0.05)
    first.kill()
    other = make("other", replica="admission-2", executions={"max_running": 2}).start()
    other.wait_for(lambda: all(r["status"] not in ("queued", "running") for r in _executions(pg_dsn)), 40)
    rows = _executions(pg_dsn)
    assert Counter(r["status"] for r in rows) == {"succeeded": 4}
    assert {r["owner"] for r in rows} == {"admission-2"}      # the lease (3 s) passed: all taken over
    runs = sql(pg_dsn, "SELECT execution_id, step_id FROM step_executions")
    assert Counter((r["execution_id"], r["step_id"]) for r in runs) == Counter(
        (r["id"], step) for r in rows for step in ("describe", "notify"))

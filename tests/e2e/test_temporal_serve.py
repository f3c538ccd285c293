"""``aetherius serve`` with ``workflow.engine: temporal``, as processes, on the embedded dev server.

The first replica has no ``temporal.address``: it starts ``temporal server start-dev`` itself
(its history in the data directory) and hosts a worker. The sample watch stream is published
to NATS: the crash loop in blog/web becomes an incident whose execution of the seed's
``diagnose_pod_crashloop`` runs on Temporal to its end, and the API shows it with every step.
The node's workflow waits two minutes in a durable timer; a second replica, pointed at the
first one's Temporal server and hosting no worker, cancels it through its own API (the
builtin engine would answer 409 there: another replica's execution).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import TEMPORAL_SKIP
from tests.e2e.harness import ServiceProcess
from tests.e2e.harness import sql as _sql
from tests.integration.test_seed_workflow import SEED, SEED_PATH
from tests.standins import AgentManager, ReasoningService, Slack

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def _temporal_installed() -> None:
    from engine.temporal import available

    if not available():
        pytest.skip(TEMPORAL_SKIP)
    from engine.temporal.devserver import DevServerMissing, binary

    try:
        binary()
    except DevServerMissing:
        pytest.skip(TEMPORAL_SKIP)


@pytest.fixture
def standins():
    agent, reasoning, slack = AgentManager().start(), ReasoningService("OOM").start(), Slack().start()
    yield agent, reasoning, slack
    for s in (agent, reasoning, slack):
        s.stop()


def test_serve_runs_the_seed_workflow_on_temporal_and_any_replica_cancels(
        tmp_path, pg_dsn, redis_url, redis_prefix, nats_url, nats_prefix, standins):
    _temporal_installed()
    agent, reasoning, slack = standins
    common = dict(pg_dsn=pg_dsn, redis_url=redis_url, redis_prefix=redis_prefix, nats_url=nats_url,
                  nats_prefix=nats_prefix, agent_manager=agent.url, reasoning=reasoning.url,
                  slack=f"{slack.url}/services/T000/B000/secret")
    first = ServiceProcess(tmp_path / "a", replica="temporal-a", **common,
                           extra={"workflow": {"engine": "temporal"},
                                  "temporal": {"heartbeat_timeout": "3s"}})
    first.start(timeout=60)
    second = None
    try:
        found = re.search(r"servers: temporal embedded at (127\.0\.0\.1:\d+)", first.log())
        assert found, first.log()[-3000:]
        assert (tmp_path / "a" / "var" / "temporal.db").exists()     # its history outlives the process
        address = found.group(1)

        lines = (FIXTURES / "watch-stream.jsonl").read_bytes().splitlines()
        acks = first.publish(lines)
        assert not [a for a in acks if isinstance(a, Exception)]

        def crash_execution():
            rows = _sql(pg_dsn, "SELECT e.id, e.status FROM workflow_executions e JOIN incidents i "
                                "ON i.execution_id = e.id WHERE i.key = 'blog/web'")
            return rows[0] if rows and rows[0]["status"] not in ("running", "queued") else None

        execution_id = first.wait_for(crash_execution, timeout=40)["id"]
        detail = first.get(f"/api/v1/executions/{execution_id}")
        assert detail["workflow_id"] == SEED
        assert detail["status"] == "succeeded", detail
        steps = [(s["step_id"], s["status"]) for s in detail["steps"]]
        assert [s for s, _ in steps] == SEED_PATH, steps
        assert {status for _, status in steps} == {"succeeded"}
        assert all(s["attempts"] >= 1 and s["finished_at"] for s in detail["steps"])
        # The OOM answer led to the memory patch, applied once; the incident closed.
        assert sum(agent.applied.values()) >= 1 and set(agent.applied.values()) == {1}
        first.wait_for(lambda: _sql(pg_dsn, "SELECT status FROM incidents WHERE key = 'blog/web'")[0]["status"]
                       == "closed", timeout=10)
        assert "Resuming workflow execution" not in first.log()

        # The node's workflow waits (a Temporal timer): cancel it from another replica.
        node = first.wait_for(lambda: _sql(pg_dsn, "SELECT e.id FROM workflow_executions e JOIN incidents i "
                                                   "ON i.execution_id = e.id WHERE i.key = 'node-3' "
                                                   "AND e.status = 'running'"), timeout=20)[0]["id"]
        second = ServiceProcess(tmp_path / "b", replica="temporal-b", **common,
                                extra={"workflow": {"engine": "temporal"},
                                       "temporal": {"address": address, "worker": False}})
        second.start(timeout=60)
        assert f"servers: temporal external at {address}" in second.log()
        assert second.get(f"/api/v1/executions/{node}")["running_here"] is False
        answer = second.post(f"/api/v1/executions/{node}/cancel")
        assert answer.status_code == 200, answer.text
        assert answer.json()["status"] in ("cancelled", "cancelling")
        cancelled = second.wait_for(
            lambda: (d := second.get(f"/api/v1/executions/{node}"))["status"] == "cancelled" and d, timeout=15)
        assert [s["status"] for s in cancelled["steps"]][-1] == "cancelled"
        again = second.post(f"/api/v1/executions/{node}/cancel")
        assert again.status_code == 409
    finally:
        if second is not None:
            assert second.stop() == 0
        assert first.stop() == 0
    assert "Traceback" not in first.log(), first.log()[-3000:]

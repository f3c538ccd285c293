"""Crash of a Temporal worker with executions in flight: ``kill -9``, restart, all complete.

Twelve executions of a five-step workflow (logs, describe, a remediation, get, a log
notice) start on Temporal. The worker is a process of its own; agent-manager (a real HTTP
stand-in) takes 1.5 s to answer ``describe``, so when every execution has sent it the
worker is killed with SIGKILL. A new worker process is started: every execution must
succeed, no step that had finished may run again (the stand-in counts the requests per
idempotency key ``execution:step:seq``), the step that was cut off runs again with its
key, the remediation is applied exactly once, and our tables (the mirror) say the same.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

from engine.rules.check import load_valid
from engine.storage.db import create_pool, migrate
from engine.storage.executions import PostgresStore
from steps.base import Settings
from tests.standins import AgentManager

REPO = Path(__file__).resolve().parents[2]
FLIGHT = 12
SLOW_S = 1.5

WORKFLOW = """
id: crash_temporal_wf
name: five steps on Temporal
steps:
  - {id: logs, type: command, config: {action: logs}, on_success: [describe]}
  - {id: describe, type: command, config: {action: describe}, on_success: [fix]}
  - {id: fix, type: remediation, config: {action: restart_rollout}, on_success: [look]}
  - {id: look, type: command, config: {action: get}, on_success: [tell]}
  - {id: tell, type: notification, config: {channel: log, message: "done"}}
"""
INCIDENT = {"id": "inc-t", "namespace": "shop", "workload": "checkout", "workload_kind": "Deployment",
            "pod": "checkout-1", "container": "checkout", "reason": "BackOff"}


def _worker(address: str, queue: str, dsn: str, agent_url: str) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, str(REPO / "tests" / "e2e" / "temporal_worker.py"), address,
                                queue, dsn, agent_url], stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.strip() == "ready", line
    return process


def test_kill_9_of_the_worker_repeats_no_finished_step(temporal_server, pg_dsn, tmp_path):
    from engine.temporal.runner import TemporalRunner, connect

    (tmp_path / "wf.yaml").write_text(WORKFLOW, encoding="utf-8")
    workflow = load_valid(tmp_path / "wf.yaml").workflows["crash_temporal_wf"]
    agent = AgentManager().start()
    agent.delay = {"describe": SLOW_S}
    queue = f"crash-{uuid.uuid4().hex[:8]}"
    ids = [f"exec-crash-{i:02d}-{uuid.uuid4().hex[:6]}" for i in range(FLIGHT)]
    workers: list[subprocess.Popen] = []

    async def go() -> list:
        pool = await create_pool(pg_dsn, max_size=4)
        await migrate(pool)
        store = PostgresStore(pool, "crash-test", 15.0)
        store.writer.start()
        client = await connect(temporal_server)
        settings = Settings(agent_manager_url=agent.url, dry_run=False, live=True)   # the worker's
        starter = TemporalRunner(client, store, settings, task_queue=queue, worker=False,
                                 heartbeat_timeout=2.0, workflow_task_timeout=2.0)
        try:
            workers.append(_worker(temporal_server, queue, pg_dsn, agent.url))
            for execution_id in ids:
                await starter.start(workflow, incident=INCIDENT, execution_id=execution_id)
            deadline = time.monotonic() + 30
            while len([r for r in agent.requests if r["body"]["action"] == "describe"]) < FLIGHT:
                assert time.monotonic() < deadline, "the executions did not reach describe"
                await asyncio.sleep(0.02)
            os.kill(workers[0].pid, signal.SIGKILL)          # mid-describe, every one of them
            workers[0].wait()
            killed_at = time.monotonic()
            starting_again = len(agent.requests)
            workers.append(_worker(temporal_server, queue, pg_dsn, agent.url))
            # Starting an execution again is harmless: it joins the run already going.
            await starter.start(workflow, incident=INCIDENT, execution_id=ids[0])
            results = await asyncio.wait_for(asyncio.gather(
                *(client.get_workflow_handle(i).result() for i in ids)), 60)
            assert starting_again == 2 * FLIGHT                    # logs + describe each, before the kill
            assert time.monotonic() - killed_at < 30
            async with pool.acquire() as conn:
                rows = await conn.fetch("SELECT id, status, outcome FROM workflow_executions ORDER BY id")
                steps = await conn.fetch(
                    "SELECT execution_id, step_id, status, attempts FROM step_executions")
            await store.writer.stop()
            await pool.close()
            return [results, rows, steps]
        finally:
            for worker in workers:
                if worker.poll() is None:
                    worker.kill()
                    worker.wait()
                if worker.stdout is not None:
                    worker.stdout.close()

    try:
        results, rows, steps = asyncio.run(go())
    finally:
        agent.stop()

    assert [r["status"] for r in results] == ["succeeded"] * FLIGHT
    assert [(r["id"], r["status"], r["outcome"]) for r in rows] == [
        (i, "succeeded", "remediated") for i in sorted(ids)]
    assert len(steps) == 5 * FLIGHT and {s["status"] for s in steps} == {"succeeded"}
    per_key = Counter(r["body"]["idempotency_key"] for r in agent.requests)
    by_step = Counter(key.split(":")[1] for key in per_key)
    assert by_step == {"logs": FLIGHT, "describe": FLIGHT, "fix": FLIGHT, "look": FLIGHT}
    for execution_id in ids:
        assert per_key[f"{execution_id}:logs:1"] == 1        # finished before the kill: never again
        assert per_key[f"{execution_id}:describe:2"] == 2    # cut off: run again, same key
        assert per_key[f"{execution_id}:fix:3"] == 1
        assert per_key[f"{execution_id}:look:4"] == 1
    assert sorted(agent.applied.values()) == [1] * FLIGHT     # each change applied once
    describe_attempts = {s["attempts"] for s in steps if s["step_id"] == "describe"}
    assert describe_attempts == {2}

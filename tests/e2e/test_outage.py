"""PostgreSQL stopped under a running service, with events streaming in and executions
running: the process stays alive, /readyz says 503 and then 200, and once the database is
back every event is recorded once, every key has one incident, every execution completes.
The test starts and stops its own PostgreSQL (embedded), never the machine's."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from engine.devservers import EmbeddedServers
from tests.e2e.harness import ServiceProcess
from tests.e2e.harness import sql as _sql
from tests.standins import AgentManager


def envelope(ident: str, workload: str) -> bytes:
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    return json.dumps({
        "id": ident, "source": "agent-manager", "severity": "high", "reason": "CrashLoopBackOff",
        "message": "Back-off restarting failed container", "namespace": "outage", "kind": "Pod",
        "name": f"{workload}-7d9f8c6b5-abcde", "count": 1, "first_seen": now, "last_seen": now}).encode()


def ready(service: ServiceProcess) -> int:
    try:
        return httpx.get(f"{service.url}/readyz", timeout=2).status_code
    except httpx.HTTPError:
        return -1


@pytest.mark.parametrize("outage", [5.0, 30.0])
def test_postgres_stopped_mid_burst_the_service_rides_it_out(tmp_path: Path, redis_url, redis_prefix,
                                                             nats_url, nats_prefix, outage: float):
    data = tmp_path / "pg"
    pg = EmbeddedServers(data, nats=False, redis=False, database="outage").start()
    dsn = str(pg.database_dsn)
    agent = AgentManager().start()
    service = ServiceProcess(tmp_path / "svc", pg_dsn=dsn, redis_url=redis_url, redis_prefix=redis_prefix,
                             nats_url=nats_url, nats_prefix=nats_prefix, agent_manager=agent.url)
    try:
        service.start()
        published: list[str] = []
        stop = threading.Event()

        def stream() -> None:     # events throughout: before, during and after the outage
            i = 0
            while not stop.is_set():
                ident = f"ev-{i:05d}"
                service.publish([envelope(ident, f"w{i % 12}")], msg_ids=[ident])
                published.append(ident)
                i += 1
                time.sleep(0.05)

        streamer = threading.Thread(target=stream, daemon=True)
        streamer.start()
        time.sleep(2.0)
        pg.stop()                                    # the outage
        down = time.monotonic()
        seen = set()
        while time.monotonic() - down < outage:
            seen.add(ready(service))
            assert service.proc is not None and service.proc.poll() is None, service.log()[-3000:]
            time.sleep(0.2)
        assert 503 in seen, seen
        pg = EmbeddedServers(data, nats=False, redis=False, database="outage").start()
        assert str(pg.database_dsn) == dsn
        service.wait_for(lambda: ready(service) == 200, timeout=60)
        time.sleep(1.0)
        stop.set()
        streamer.join()

        # Every event recorded once; one incident per key; every execution completed.
        def settled() -> bool:
            rows = _sql(dsn, "SELECT count(*) AS n FROM events")
            running = _sql(dsn, "SELECT count(*) AS n FROM workflow_executions WHERE status = 'running'")
            pending = _sql(dsn, "SELECT count(*) AS n FROM events WHERE state IN ('pending', 'received')")
            return rows[0]["n"] == len(published) and running[0]["n"] == 0 and pending[0]["n"] == 0

        service.wait_for(settled, timeout=90, interval=0.5)
        ids = [r["id"] for r in _sql(dsn, "SELECT id FROM events")]
        assert sorted(ids) == sorted(published)
        open_per_key = _sql(dsn, "SELECT key, count(*) AS n FROM incidents WHERE status = 'open' "
                                 "GROUP BY key")
        assert all(r["n"] <= 1 for r in open_per_key), open_per_key
        executions = _sql(dsn, "SELECT id, status FROM workflow_executions")
        assert executions and {e["status"] for e in executions} <= {"succeeded", "failed"}
        # No remediation idempotency key applied twice.
        assert all(n == 1 for n in agent.applied.values())
        log = service.log()
        assert log.count("PostgreSQL is unavailable") >= 1 and "PostgreSQL is back after" in log
        assert "Traceback" not in log, log[-4000:]
        assert service.proc is not None and service.proc.poll() is None
    finally:
        service.stop()
        agent.stop()
        pg.stop()


def test_agent_manager_down_for_30s_delays_executions_and_fails_none(tmp_path: Path, pg_dsn, redis_url,
                                                                       redis_prefix, nats_url, nats_prefix):
    """The seed's workflow sets no retry: the configured default waits the outage out."""
    agent = AgentManager().start()
    service = ServiceProcess(tmp_path, pg_dsn=pg_dsn, redis_url=redis_url, redis_prefix=redis_prefix,
                             nats_url=nats_url, nats_prefix=nats_prefix, agent_manager=agent.url,
                             extra={"retries": {"max_attempts": 10, "initial_interval": "1s",
                                                "max_interval": "8s"}})
    try:
        service.start()
        agent.down_until = time.time() + 30
        ids = [f"am-{i}" for i in range(6)]
        service.publish([envelope(ident, f"am{i}") for i, ident in enumerate(ids)], msg_ids=ids)
        # While agent-manager is down, executions wait (none fails) ...
        time.sleep(15)
        assert not _sql(pg_dsn, "SELECT id FROM workflow_executions WHERE status = 'failed'")
        assert _sql(pg_dsn, "SELECT id FROM workflow_executions WHERE status = 'running'")
        # ... and once it is back, every one completes.
        done = "SELECT id FROM workflow_executions WHERE status = 'succeeded'"
        service.wait_for(lambda: len(_sql(pg_dsn, done)) == 6, timeout=90, interval=1.0)
        assert len(_sql(pg_dsn, "SELECT id FROM workflow_executions")) == 6
        assert "ServiceUnavailable" in service.log()
    finally:
        service.stop()
        agent.stop()

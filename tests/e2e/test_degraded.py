"""Redis down: the service keeps working on its own state, and says so."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.harness import ServiceProcess, sql
from tests.standins import AgentManager, free_port

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def test_without_redis_the_service_runs_degraded_and_says_so(tmp_path, pg_dsn, redis_prefix, nats_url,
                                                             nats_prefix):
    agent = AgentManager().start()
    nowhere = f"redis://127.0.0.1:{free_port()}/0"   # nothing listens there
    service = ServiceProcess(tmp_path, pg_dsn=pg_dsn, redis_url=nowhere, redis_prefix=redis_prefix,
                             nats_url=nats_url, nats_prefix=nats_prefix, agent_manager=agent.url)
    try:
        service.start()
        ready = service.get("/readyz")
        assert ready["redis"] == "degraded" and ready["ready"] is True

        service.publish((FIXTURES / "watch-stream.jsonl").read_bytes().splitlines())
        # Incidents still open and their workflows still run; cooldowns were the database's anyway.
        service.wait_for(lambda: len(sql(pg_dsn, "SELECT id FROM incidents WHERE status = 'closed'")) >= 2)
        keys = {r["key"] for r in sql(pg_dsn, "SELECT key FROM incidents")}
        assert {"blog/web", "node-3", "data/data-db-0"} <= keys
        assert agent.requests, "the workflows called agent-manager"
        assert "Redis" in service.log() and "degraded" in service.log()
        assert service.stop() == 0
    finally:
        service.stop()
        agent.stop()

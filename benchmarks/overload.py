"""Overload benchmark: more incidents than agent-manager can serve, and nothing fails.

    python -m benchmarks.overload [--events 20000] [--seconds 60] [--rate 100]
                                  [--agent-delay 1.0] [--max-running 200]

One replica of ``aetherius serve`` (default limits: ``executions.max_running`` 200,
``agent_manager.max_connections`` 100) against the servers named by AETHERIUS_TEST_* (else
embedded). A stand-in agent-manager answers every request after ``--agent-delay`` seconds
(benchmarks/stub.py); reasoning-service is an instant stand-in on its own port. ``--events``
events go out over ``--seconds`` seconds, ``--rate`` incidents/s (bursts of 3-4 events per
workload), each incident running the five-step workflow of benchmarks.service (two
agent-manager calls, one reasoning call, every step committed).

With 100 connections and 1 s answers agent-manager serves 50 executions/s, half the offered
rate: executions wait in the admission queue (status ``queued``), latency grows, and every
one must still complete without a failure. It prints the queue depth (and running,
finished) every 2 s, then the counts by status, and latencies: from a burst's last publish
to its execution's start and end, and the time waited in the queue (median, p95, max).
It exits 1 if any execution failed or did not finish.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import asyncpg
import psutil

from benchmarks.service import ROOT, RULES, _event, _pct, _publish, launch, servers

NAMESPACE = "ovl"


async def _sample(dsn: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT status, count(*) AS n FROM workflow_executions GROUP BY status")
        events = await conn.fetchval("SELECT count(*) FROM events WHERE namespace = $1", NAMESPACE)
    finally:
        await conn.close()
    return {**{r["status"]: r["n"] for r in rows}, "events": events}


async def _rows(dsn: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch("""
            SELECT e.id, e.status, e.error, e.queued_at, e.started_at, e.finished_at, i.key,
                   (SELECT count(*) FROM step_executions s WHERE s.execution_id = e.id
                    AND s.status = 'succeeded') AS steps
            FROM workflow_executions e JOIN incidents i ON i.id = e.incident_id
            WHERE i.namespace = $1""", NAMESPACE)
    finally:
        await conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--rate", type=int, default=100, help="incidents/s offered")
    parser.add_argument("--agent-delay", type=float, default=1.0, help="agent-manager's answer time (s)")
    parser.add_argument("--max-running", type=int, default=200, help="executions.max_running")
    parser.add_argument("--timeout", type=float, default=900.0, help="give up waiting after this (s)")
    parser.add_argument("--stub-port", type=int, default=18396)
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="aetherius-overload-"))
    urls, embedded = servers(work)
    run = uuid.uuid4().hex[:8]
    database = f"aetherius_overload_{run}"
    agent_port, reasoning_port = args.stub_port, args.stub_port + 1
    stub = [sys.executable, "-m", "benchmarks.stub"]
    stubs = [subprocess.Popen([*stub, str(agent_port), str(args.agent_delay)], cwd=ROOT),
             subprocess.Popen([*stub, str(reasoning_port)], cwd=ROOT)]
    service = None

    async def sql(dsn: str, statement: str) -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    try:
        asyncio.run(sql(urls.database_dsn, f'CREATE DATABASE "{database}"'))
        dsn = re.sub(r"/[^/?]*(\?|$)", f"/{database}\\1", urls.database_dsn, count=1)
        rules = work / "rules"
        rules.mkdir()
        (rules / "overload.yaml").write_text(RULES.replace("QUIET", "1s"), encoding="utf-8")
        subject = f"ovl{run}.event.critical"
        port = 17000 + int(run[:4], 16) % 1000
        config = {
            "rules": {"dir": str(rules)},
            "nats": {"url": urls.nats_url, "subjects": [subject], "stream": f"OVL_{run.upper()}",
                     "durable": f"ovl_{run}", "batch": 512},
            "database": {"dsn": dsn, "pool_size": 20},
            "redis": {"url": urls.redis_url, "prefix": f"ovl{run}:"},
            "http": {"host": "127.0.0.1", "port": port},
            "service": {"replica_id": f"ovl-{run}", "data_dir": str(work / "svc")},
            "executions": {"max_running": args.max_running},
            "agent_manager": {"url": f"http://127.0.0.1:{agent_port}"},
            "ai": {"reasoning_service_url": f"http://127.0.0.1:{reasoning_port}"},
            "remediation": {"dry_run": True},
            "logging": {"level": "warning", "file": None},
        }
        service = launch(work, config, port)
        if service is None:
            return 1
        process = psutil.Process(service.pid)

        groups = args.rate * args.seconds
        base, extra = divmod(args.events, groups)
        now = time.time()
        payloads = [(g, _event(run, g, i, now, NAMESPACE), f"{run}-{NAMESPACE}-{g}-{i}")
                    for g in range(groups) for i in range(base + (1 if g < extra else 0))]
        print(f"overload: {len(payloads):,} events in {groups:,} bursts over {args.seconds} s "
              f"({args.rate} incidents/s); agent-manager answers in {args.agent_delay:g} s; "
              f"executions.max_running {args.max_running}, agent_manager.max_connections 100")
        last_publish: dict[int, float] = {}

        def publish() -> None:
            last_publish.update(asyncio.run(_publish(urls.nats_url, subject, payloads,
                                                     rate=len(payloads) // args.seconds)))

        publisher = threading.Thread(target=publish)
        began = time.time()
        publisher.start()
        print(f"{'s':>5} {'events':>7} {'queued':>7} {'running':>8} {'succeeded':>10} {'failed':>7} "
              f"{'other':>6} {'RSS MiB':>8}")
        depth: list[tuple[float, int]] = []
        peak_rss = 0.0
        while True:
            counts = asyncio.run(_sample(dsn))
            rss = process.memory_info().rss / 2**20
            peak_rss = max(peak_rss, rss)
            elapsed = time.time() - began
            queued, running = counts.get("queued", 0), counts.get("running", 0)
            succeeded, failed = counts.get("succeeded", 0), counts.get("failed", 0)
            other = sum(n for s, n in counts.items()
                        if s not in ("queued", "running", "succeeded", "failed", "events"))
            depth.append((elapsed, queued))
            print(f"{elapsed:5.0f} {counts['events']:7,} {queued:7,} {running:8,} {succeeded:10,} "
                  f"{failed:7,} {other:6,} {rss:8.1f}", flush=True)
            done = succeeded + failed + other
            if not publisher.is_alive() and done >= groups and not queued and not running:
                break
            if elapsed > args.timeout:
                print(f"gave up after {args.timeout:.0f} s", flush=True)
                break
            time.sleep(2.0)
        publisher.join()

        rows = asyncio.run(_rows(dsn))
        by_status: dict[str, int] = {}
        for r in rows:
            by_status[r["status"]] = by_status.get(r["status"], 0) + 1
        finished = [r for r in rows if r["finished_at"] is not None]
        group_of = {r["id"]: int(r["key"].split("/")[1].split("-")[1]) for r in rows}
        to_start = [r["started_at"].timestamp() - last_publish[group_of[r["id"]]] for r in rows]
        to_end = [r["finished_at"].timestamp() - last_publish[group_of[r["id"]]] for r in finished]
        waited = [(r["started_at"] - r["queued_at"]).total_seconds() for r in rows if r["queued_at"]]
        complete = sum(1 for r in finished if r["status"] == "succeeded" and r["steps"] == 5)
        errors: dict[str, int] = {}
        for r in rows:
            if r["status"] != "succeeded" and r["error"]:
                errors[r["error"]] = errors.get(r["error"], 0) + 1
        max_depth = max(depth, key=lambda d: d[1])
        wall = max(r["finished_at"] for r in finished).timestamp() - began if finished else 0.0
        print(f"\nincidents: {len(rows):,} of {groups:,}; executions by status: "
              + ", ".join(f"{s} {n:,}" for s, n in sorted(by_status.items())))
        print(f"  failed: {by_status.get('failed', 0):,}; completed (5 succeeded steps): {complete:,}")
        if errors:
            common = sorted(errors.items(), key=lambda x: -x[1])
            print("  errors: " + "; ".join(f"{n} x {e}" for e, n in common))
        print(f"  last publish -> execution start: median {statistics.median(to_start):.1f} s, "
              f"p95 {_pct(to_start, 0.95):.1f} s, max {max(to_start):.1f} s")
        if to_end:
            print(f"  last publish -> execution end:   median {statistics.median(to_end):.1f} s, "
                  f"p95 {_pct(to_end, 0.95):.1f} s, max {max(to_end):.1f} s")
        if waited:
            print(f"  waited in the queue: median {statistics.median(waited):.1f} s, "
                  f"p95 {_pct(waited, 0.95):.1f} s, max {max(waited):.1f} s "
                  f"({sum(1 for w in waited if w > 0.5):,} waited more than 0.5 s)")
        print(f"  max queue depth {max_depth[1]:,} at {max_depth[0]:.0f} s; all finished {wall:.0f} s "
              f"after the first publish; {complete / max(wall, 1e-9):.1f} executions/s; "
              f"service RSS peak {peak_rss:.0f} MiB")
        ok = complete == groups and not by_status.get("failed") and len(rows) == groups
        return 0 if ok else 1
    finally:
        if service is not None:
            service.terminate()
            service.wait(30)
        for stub in stubs:
            stub.terminate()
            stub.wait(10)
        asyncio.run(sql(urls.database_dsn, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        if embedded is not None:
            embedded.stop()


if __name__ == "__main__":
    sys.exit(main())

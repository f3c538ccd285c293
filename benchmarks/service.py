"""Service benchmark: events published to NATS -> incidents in PostgreSQL -> 5-step workflows.

    python -m benchmarks.service [--groups 3000] [--events-per-group 30] [--rate 10000] [--quiet 1s]

One replica of ``aetherius serve`` runs as a process, with the instant stub
(benchmarks/stub.py) as agent-manager and reasoning-service, against the servers named by
AETHERIUS_TEST_NATS_URL / AETHERIUS_TEST_DATABASE_DSN / AETHERIUS_TEST_REDIS_URL (else
embedded ones). Every group (one workload) gets ``--events-per-group`` BackOff events;
groups are published one after another at ``--rate`` events/s (default 10,000: with 30 events a group, 333 new
incidents a second); each group is one incident and one execution of a five-step workflow
(three HTTP calls, every step committed to PostgreSQL).

Printed: events/s ingested (publish start -> every event recorded in PostgreSQL), executions/s
completed (first execution start -> last finish), and the latency from a group's last
publish to its execution's start (median, p99), to compare with the quiet period. As a
baseline measured in the same go: JetStream publish alone (events/s the publisher manages).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import httpx
import nats
import yaml

from engine.durations import parse_duration
from engine.infra import resolve

ROOT = Path(__file__).resolve().parent.parent

RULES = """
strategies:
  - id: bench_backoff
    category: pod_failure
    workflow_id: bench_five_steps
    symptoms: [{conditions: {kind: Pod, reason: BackOff}}]
    correlation: {key: [namespace, workload], quiet: QUIET, max_window: 60s, cooldown: 10m}
workflows:
  - id: bench_five_steps
    steps:
      - id: collect_logs
        type: command
        config: {action: logs, args: ["--tail=100"]}
        on_success: [ai_analysis]
      - {id: ai_analysis, type: ai_analysis, on_success: [decide]}
      - id: decide
        type: decision
        config: {conditions: [{if: "analysis.root_cause == 'OOM'", then: increase_memory}]}
        on_success: [remediate]
      - {id: remediate, type: remediation, config: {action: patch_deployment}, on_success: [notify]}
      - {id: notify, type: notification, config: {channel: log, message: "{{ incident.workload }}"}}
"""


def _event(run: str, group: int, i: int, t: float) -> bytes:
    pod = f"app-{group:05d}-7d9f8c6b5-x{i % 5:04d}"
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
    return json.dumps({"apiVersion": "v1", "kind": "Event",
                       "metadata": {"name": f"{pod}.{i}", "namespace": "bench", "uid": f"{run}-{group}-{i}"},
                       "involvedObject": {"kind": "Pod", "namespace": "bench", "name": pod,
                                          "uid": f"{run}-pod-{group}-{i % 5}"},
                       "reason": "BackOff", "message": "Back-off restarting failed container app",
                       "source": {"component": "kubelet", "host": "node-1"}, "type": "Warning",
                       "count": 1, "firstTimestamp": stamp, "lastTimestamp": stamp},
                      separators=(",", ":")).encode()


async def _publish(url: str, subject: str, payloads: list[tuple[int, bytes, str]],
                   window: int = 512, rate: int = 0) -> dict[int, float]:
    """Publish with a window of outstanding acks, at most ``rate`` events/s if given;
    return each group's last ack time."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    last: dict[int, float] = {}
    began = time.perf_counter()
    if rate:
        window = max(1, min(window, rate // 50))
    try:
        for start in range(0, len(payloads), window):
            if rate:
                ahead = start / rate - (time.perf_counter() - began)
                if ahead > 0:
                    await asyncio.sleep(ahead)
            chunk = payloads[start:start + window]
            acks = await asyncio.gather(*(js.publish(subject, data, headers={"Nats-Msg-Id": mid})
                                          for _, data, mid in chunk))
            now = time.time()
            assert all(not a.duplicate for a in acks)
            for group, _, _ in chunk:
                last[group] = now
    finally:
        await nc.close()
    return last


async def _wait_recorded(dsn: str, total: int, timeout: float) -> float:
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.time() + timeout
        while time.time() < deadline:
            n = await conn.fetchval("SELECT count(*) FROM events WHERE state <> 'received'")
            if n >= total:
                return time.time()
            await asyncio.sleep(0.05)
        raise TimeoutError(f"only {n} of {total} events recorded")
    finally:
        await conn.close()


async def _wait_executions(dsn: str, groups: int, timeout: float) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.time() + timeout
        while time.time() < deadline:
            done = await conn.fetchval(
                "SELECT count(*) FROM workflow_executions WHERE status IN ('succeeded', 'failed')")
            if done >= groups:
                break
            await asyncio.sleep(0.1)
        return await conn.fetch("""
            SELECT e.id, e.status, e.started_at, e.finished_at, i.key,
                   (SELECT count(*) FROM step_executions s WHERE s.execution_id = e.id) AS steps
            FROM workflow_executions e JOIN incidents i ON i.id = e.incident_id""")
    finally:
        await conn.close()


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--groups", type=int, default=3000)
    parser.add_argument("--events-per-group", type=int, default=30)
    parser.add_argument("--quiet", default="1s")
    parser.add_argument("--rate", type=int, default=10_000,
                        help="events/s offered (0: as fast as JetStream acks)")
    parser.add_argument("--stub-port", type=int, default=18398)
    args = parser.parse_args(argv)
    quiet = parse_duration(args.quiet)

    env_config = {"nats": {"url": os.environ.get("AETHERIUS_TEST_NATS_URL") or None},
                  "database": {"dsn": os.environ.get("AETHERIUS_TEST_DATABASE_DSN") or None},
                  "redis": {"url": os.environ.get("AETHERIUS_TEST_REDIS_URL") or None}}
    work = Path(tempfile.mkdtemp(prefix="aetherius-bench-"))
    urls, embedded = resolve(env_config, work / "var")
    run = uuid.uuid4().hex[:8]
    stub = subprocess.Popen([sys.executable, "-m", "benchmarks.stub", str(args.stub_port)], cwd=ROOT)
    service = None
    admin = None
    try:
        # A database of its own for this run.
        database = f"aetherius_bench_{run}"
        admin_dsn = urls.database_dsn

        async def create_db() -> str:
            conn = await asyncpg.connect(admin_dsn)
            await conn.execute(f'CREATE DATABASE "{database}"')
            await conn.close()
            return re.sub(r"/[^/?]*(\?|$)", f"/{database}\\1", admin_dsn, count=1) \
                if "://" in admin_dsn else admin_dsn

        dsn = asyncio.run(create_db())
        admin = (admin_dsn, database)
        rules = work / "rules"
        rules.mkdir()
        (rules / "bench.yaml").write_text(RULES.replace("QUIET", args.quiet), encoding="utf-8")
        subject = f"bench{run}.event.critical"
        port = 18000 + int(run[:4], 16) % 1000
        config = {
            "rules": {"dir": str(rules)},
            "nats": {"url": urls.nats_url, "subjects": [subject], "stream": f"BENCH_{run.upper()}",
                     "durable": f"bench_{run}", "batch": 512},
            "database": {"dsn": dsn, "pool_size": 20},
            "redis": {"url": urls.redis_url, "prefix": f"bench{run}:"},
            "http": {"host": "127.0.0.1", "port": port},
            "service": {"replica_id": f"bench-{run}", "data_dir": str(work / "svc")},
            "agent_manager": {"url": f"http://127.0.0.1:{args.stub_port}"},
            "ai": {"reasoning_service_url": f"http://127.0.0.1:{args.stub_port}"},
            "remediation": {"dry_run": True},
        }
        (work / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
        log = open(work / "service.log", "wb")  # noqa: SIM115
        command = [sys.executable, "-m", "engine", "--config", str(work / "config.yaml"), "serve"]
        if os.environ.get("AETHERIUS_BENCH_PROFILE"):
            command = ["py-spy", "record", "-o", os.environ["AETHERIUS_BENCH_PROFILE"], "-f", "raw",
                       "--", *command]
        service = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline or service.poll() is not None:
                print((work / "service.log").read_text()[-3000:], file=sys.stderr)
                return 1
            time.sleep(0.2)

        total = args.groups * args.events_per_group
        now = time.time()
        # Group by group: a workload's burst arrives together, bursts follow each other.
        payloads = [(g, _event(run, g, i, now), f"{run}-{g}-{i}")
                    for g in range(args.groups) for i in range(args.events_per_group)]
        # Baseline: JetStream publish alone, to a stream nobody consumes.
        base_subject = f"benchbase{run}.x"

        async def baseline() -> float:
            nc = await nats.connect(urls.nats_url)
            js = nc.jetstream()
            await js.add_stream(name=f"BASE_{run.upper()}", subjects=[base_subject])
            await nc.close()
            start = time.perf_counter()
            await _publish(urls.nats_url, base_subject, [(g, d, f"b{m}") for g, d, m in payloads])
            rate = total / (time.perf_counter() - start)
            nc = await nats.connect(urls.nats_url)
            await nc.jetstream().delete_stream(f"BASE_{run.upper()}")
            await nc.close()
            return rate

        base_rate = asyncio.run(baseline())
        start = time.time()
        last_publish = asyncio.run(_publish(urls.nats_url, subject, payloads, rate=args.rate))
        published = time.time()
        recorded = asyncio.run(_wait_recorded(dsn, total, timeout=600))
        rows = asyncio.run(_wait_executions(dsn, args.groups, timeout=600))
        ingest_rate = total / (recorded - start)
        finished = [r for r in rows if r["finished_at"] is not None]
        first_start = min(r["started_at"] for r in rows).timestamp()
        last_finish = max(r["finished_at"] for r in finished).timestamp()
        exec_rate = len(finished) / (last_finish - first_start)
        latencies = []
        for r in rows:
            group = int(r["key"].split("/")[1].split("-")[1])
            latencies.append(r["started_at"].timestamp() - last_publish[group])
        ok = sum(1 for r in finished if r["status"] == "succeeded" and r["steps"] == 5)
        print(f"{total:,} events in {args.groups:,} groups; quiet {args.quiet}; one replica; "
              f"servers: {', '.join(f'{k} {v}' for k, v in urls.modes.items())}")
        print(f"publish:   {total / (published - start):,.0f} events/s (baseline, nobody consuming: "
              f"{base_rate:,.0f}/s)")
        print(f"ingested:  {ingest_rate:,.0f} events/s (publish start -> all recorded and correlated)")
        print(f"completed: {len(finished):,} executions ({ok:,} succeeded with 5 committed steps) at "
              f"{exec_rate:,.0f} executions/s")
        print(f"last publish -> execution start: median {statistics.median(latencies) * 1000:,.0f} ms, "
              f"p99 {_pct(latencies, 0.99) * 1000:,.0f} ms (quiet {quiet * 1000:,.0f} ms)")
        return 0 if ok == args.groups else 1
    finally:
        if service is not None:
            service.terminate()
            service.wait(30)
        stub.terminate()
        stub.wait(10)
        if admin is not None:
            async def drop() -> None:
                conn = await asyncpg.connect(admin[0])
                await conn.execute(f'DROP DATABASE IF EXISTS "{admin[1]}" WITH (FORCE)')
                await conn.close()
            asyncio.run(drop())
        if embedded is not None:
            embedded.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

"""Service benchmark: events published to NATS -> incidents in PostgreSQL -> 5-step workflows.

    python -m benchmarks.service [--ingest-events 90000] [--executions 3000]
                                 [--latency-rate 2000] [--saturate] [--quiet 1s]

One replica of ``aetherius serve`` runs as a process, with the instant stub
(benchmarks/stub.py) as agent-manager and reasoning-service, against the servers named by
AETHERIUS_TEST_NATS_URL / AETHERIUS_TEST_DATABASE_DSN / AETHERIUS_TEST_REDIS_URL (else
embedded ones). Every burst is one workload's BackOff events: one incident, one execution of
a five-step workflow (three HTTP calls, every step committed to PostgreSQL). The publisher,
the stub, PostgreSQL and NATS share this machine's cores with the service.

Three phases, each measuring one thing with the others out of its way:

1. latency: a steady load (2,000 events/s in bursts of 20: 100 incidents/s), and the time
   from a burst's last publish to its execution's start (median, p99) against the quiet;
2. ingest: 90,000 events in 100 bursts, published as fast as JetStream acks: events/s from
   publish start until every event is recorded with where it went;
3. executions: 3,000 one-event incidents at once: executions/s from the first start to the
   last finish.

``--saturate`` adds 10,000 events/s in bursts of 30 (333 incidents/s) for 9 s, more than one
replica on this machine can take, to show what happens past capacity.
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
from typing import Any

import asyncpg
import httpx
import psutil
import yaml

from benchmarks import publisher
from engine.config import Config
from engine.devservers import resolve
from engine.durations import parse_duration

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


def _event(run: str, group: int, i: int, t: float, namespace: str = "bench") -> bytes:
    pod = f"app-{group:05d}-7d9f8c6b5-x{i % 5:04d}"
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
    return json.dumps({"apiVersion": "v1", "kind": "Event",
                       "metadata": {"name": f"{pod}.{i}", "namespace": namespace,
                                    "uid": f"{run}-{namespace}-{group}-{i}"},
                       "involvedObject": {"kind": "Pod", "namespace": namespace, "name": pod,
                                          "uid": f"{run}-{namespace}-pod-{group}-{i % 5}"},
                       "reason": "BackOff", "message": "Back-off restarting failed container app",
                       "source": {"component": "kubelet", "host": "node-1"}, "type": "Warning",
                       "count": 1, "firstTimestamp": stamp, "lastTimestamp": stamp},
                      separators=(",", ":")).encode()


async def _publish(url: str, subject: str, payloads: list[tuple[int, bytes, str]],
                   window: int = 4000, rate: int = 0) -> dict[int, float]:
    """Publish with at most ``window`` acks outstanding, at most ``rate`` events/s if given;
    return each group's last ack time. The lean publisher (benchmarks/publisher.py), so
    that the publisher's CPU does not set the pace on the cores it shares with the service."""
    return await publisher.publish(url, subject, payloads, window=window, rate=rate)


async def _wait_recorded(dsn: str, total: int, timeout: float, namespace: str = "bench") -> float:
    """When the last of ``total`` events was recorded: the database's own time of the batch
    that completed them. Polled twice a second only, so the counting costs PostgreSQL
    little of the cores it shares with the service under test."""
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.time() + timeout
        while time.time() < deadline:
            row = await conn.fetchrow("SELECT count(*) AS n, max(received_at) AS last FROM events "
                                      "WHERE namespace = $1", namespace)
            if row["n"] >= total:
                return float(row["last"].timestamp())
            await asyncio.sleep(0.5)
        raise TimeoutError(f"only {row['n']} of {total} events recorded")
    finally:
        await conn.close()


async def _wait_executions(dsn: str, groups: int, timeout: float,
                           namespace: str = "bench") -> list[asyncpg.Record]:
    """Every execution of ``namespace``'s incidents, once ``groups`` of them ended (polled
    once a second with a cheap count; the figures come from the recorded times)."""
    conn = await asyncpg.connect(dsn)
    count = """
        SELECT count(*) FROM workflow_executions e JOIN incidents i ON i.id = e.incident_id
        WHERE i.namespace = $1 AND e.status IN ('succeeded', 'failed')"""
    query = """
        SELECT e.id, e.status, e.started_at, e.finished_at, i.key,
               (SELECT count(*) FROM step_executions s WHERE s.execution_id = e.id) AS steps
        FROM workflow_executions e JOIN incidents i ON i.id = e.incident_id
        WHERE i.namespace = $1"""
    try:
        deadline = time.time() + timeout
        while time.time() < deadline and await conn.fetchval(count, namespace) < groups:
            await asyncio.sleep(1.0)
        return await conn.fetch(query, namespace)
    finally:
        await conn.close()


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _phase(dsn: str, nats_url: str, subject: str, run: str, namespace: str, groups: int, per_group: int,
           rate: int, service_pid: int) -> dict[str, Any]:
    """Publish ``groups`` bursts of ``per_group`` events; wait for every event to be recorded
    and every execution to end; return the figures."""
    now = time.time()
    # Group by group: a workload's burst arrives together, bursts follow each other.
    payloads = [(g, _event(run, g, i, now, namespace), f"{run}-{namespace}-{g}-{i}")
                for g in range(groups) for i in range(per_group)]
    total = len(payloads)
    cpu_before = _cpu_seconds(service_pid)
    start = time.time()
    last_publish = asyncio.run(_publish(nats_url, subject, payloads, rate=rate))
    published = time.time()
    recorded = asyncio.run(_wait_recorded(dsn, total, 600, namespace))
    rows = asyncio.run(_wait_executions(dsn, groups, 600, namespace))
    cpu = {k: v - cpu_before[k] for k, v in _cpu_seconds(service_pid).items()}
    finished = [r for r in rows if r["finished_at"] is not None]
    first_start = min(r["started_at"] for r in rows).timestamp()
    last_finish = max(r["finished_at"] for r in finished).timestamp()
    latencies = [r["started_at"].timestamp() - last_publish[int(r["key"].split("/")[1].split("-")[1])]
                 for r in rows]
    return {
        "events": total, "groups": groups, "publish_rate": total / max(published - start, 1e-9),
        "ingest_rate": total / (recorded - start),
        "executions": len(finished),
        "succeeded": sum(1 for r in finished if r["status"] == "succeeded" and r["steps"] == 5),
        "exec_rate": len(finished) / max(last_finish - first_start, 1e-9),
        "p50": statistics.median(latencies), "p99": _pct(latencies, 0.99), "cpu": cpu,
    }


async def _recorded_span(dsn: str, namespace: str) -> float:
    """Seconds from the first to the last event recorded in ``namespace`` (the database's
    own clock: each batch's transaction time)."""
    conn = await asyncpg.connect(dsn)
    try:
        return float(await conn.fetchval(
            "SELECT extract(epoch FROM max(received_at) - min(received_at)) FROM events WHERE namespace = $1",
            namespace))
    finally:
        await conn.close()


def _cpu_seconds(service_pid: int) -> dict[str, float]:
    """CPU seconds used so far by the service, PostgreSQL's processes, nats-server, Redis, the
    stub and this benchmark (the publisher and the polling): everything that shares the cores."""
    out = {"service": 0.0, "postgres": 0.0, "nats": 0.0, "redis": 0.0, "stub": 0.0, "benchmark": 0.0}
    me = os.getpid()
    for proc in psutil.process_iter(["pid", "name", "cmdline"]):
        try:
            times = proc.cpu_times()
            name = proc.info["name"] or ""
            if proc.info["pid"] == service_pid:
                kind = "service"
            elif proc.info["pid"] == me:
                kind = "benchmark"
            elif name.startswith("postgres"):
                kind = "postgres"
            elif name.startswith("nats-server"):
                kind = "nats"
            elif name.startswith("redis-server"):
                kind = "redis"
            elif "benchmarks.stub" in " ".join(proc.info["cmdline"] or ()):
                kind = "stub"
            else:
                continue
            out[kind] += times.user + times.system
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def servers(work: Path) -> tuple[Any, Any]:
    """The servers the AETHERIUS_TEST_* variables name, else embedded ones in ``work/var``:
    (their URLs, the embedded servers to stop or None)."""
    env_config = {"nats": {"url": os.environ.get("AETHERIUS_TEST_NATS_URL") or None},
                  "database": {"dsn": os.environ.get("AETHERIUS_TEST_DATABASE_DSN") or None},
                  "redis": {"url": os.environ.get("AETHERIUS_TEST_REDIS_URL") or None}}
    return resolve(Config.model_validate(env_config), work / "var")


def launch(work: Path, config: dict, port: int, token: str | None = None) -> subprocess.Popen | None:
    """``aetherius serve`` with ``config`` in ``work`` (``token``: its admin token), once
    /readyz answers 200 (None: it did not; its log's end is printed)."""
    (work / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    log = open(work / "service.log", "wb")  # noqa: SIM115 - the service writes it while it runs
    command = [sys.executable, "-m", "engine", "--config", str(work / "config.yaml"), "serve"]
    if os.environ.get("AETHERIUS_BENCH_CPROFILE"):    # where to write a cProfile of the service
        command[1:1] = ["-m", "cProfile", "-o", os.environ["AETHERIUS_BENCH_CPROFILE"]]
    env = {**os.environ, **({"AETHERIUS_AUTH__BOOTSTRAP_TOKEN": token} if token else {})}
    service = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.time() + 60
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return service
        except httpx.HTTPError:
            pass
        if time.time() > deadline or service.poll() is not None:
            print((work / "service.log").read_text()[-3000:], file=sys.stderr)
            service.kill()
            return None
        time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ingest-events", type=int, default=90_000,
                        help="phase 1: events in 100 bursts, published as fast as JetStream acks")
    parser.add_argument("--executions", type=int, default=3000,
                        help="phase 2: this many one-event incidents published at once")
    parser.add_argument("--latency-rate", type=int, default=2000,
                        help="phase 3: events/s offered, in bursts of 20 (100 incidents/s at 2,000)")
    parser.add_argument("--latency-seconds", type=int, default=15)
    parser.add_argument("--saturate", action="store_true",
                        help="also offer 10,000 events/s in bursts of 30 (333 incidents/s) for 9 s")
    parser.add_argument("--quiet", default="1s")
    parser.add_argument("--stub-port", type=int, default=18398)
    parser.add_argument("--phases", default="latency,ingest,executions,catchup",
                        help="which phases to run, comma-separated (saturated: same as --saturate)")
    args = parser.parse_args(argv)
    wanted = set(args.phases.split(",")) | ({"saturated"} if args.saturate else set())
    quiet = parse_duration(args.quiet)

    work = Path(tempfile.mkdtemp(prefix="aetherius-bench-"))
    urls, embedded = servers(work)
    run = uuid.uuid4().hex[:8]
    stub = subprocess.Popen([sys.executable, "-m", "benchmarks.stub", str(args.stub_port)], cwd=ROOT)
    service = None
    admin = None
    try:
        database = f"aetherius_bench_{run}"
        admin_dsn = urls.database_dsn

        async def create_db() -> str:
            conn = await asyncpg.connect(admin_dsn)
            await conn.execute(f'CREATE DATABASE "{database}"')
            await conn.close()
            return re.sub(r"/[^/?]*(\?|$)", f"/{database}\\1", admin_dsn, count=1)

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
        service = launch(work, config, port)
        if service is None:
            return 1

        print(f"one replica; quiet {args.quiet}; servers: "
              f"{', '.join(f'{k} {v}' for k, v in urls.modes.items())}")
        ok = True
        lat_groups = args.latency_rate * args.latency_seconds // 20
        phases = [
            ("latency", "lat", lat_groups, 20, args.latency_rate),
            ("ingest", "ing", 100, args.ingest_events // 100, 0),
            ("executions", "exe", args.executions, 1, 0),
        ]
        phases.append(("saturated", "sat", 3000, 30, 10_000))
        for name, namespace, groups, per_group, rate in phases:
            if name not in wanted:
                continue
            f = _phase(dsn, urls.nats_url, subject, run, namespace, groups, per_group, rate, service.pid)
            ok = ok and f["succeeded"] == groups
            offered = f"{rate:,} events/s offered" if rate else "as fast as JetStream acks"
            print(f"\n[{name}] {f['events']:,} events in {groups:,} bursts of {per_group}, {offered} "
                  f"(published at {f['publish_rate']:,.0f}/s)")
            print(f"  ingested:  {f['ingest_rate']:,.0f} events/s "
                  "(publish start -> all recorded and correlated)")
            print(f"  completed: {f['executions']:,} executions ({f['succeeded']:,} succeeded, 5 committed "
                  f"steps each) at {f['exec_rate']:,.0f} executions/s")
            print(f"  last publish -> execution start: median {f['p50'] * 1000:,.0f} ms, "
                  f"p99 {f['p99'] * 1000:,.0f} ms (quiet {quiet * 1000:,.0f} ms)")
            per, unit = (f["executions"], "execution") if name == "executions" else (f["events"], "event")
            print(f"  CPU per {unit} (whole phase): " + ", ".join(
                f"{k} {v / max(per, 1) * 1e6:,.0f} µs" for k, v in f["cpu"].items()))
        if "catchup" in wanted:
            # A replica that was down during a storm: the events wait in JetStream, and its
            # intake alone sets the pace (no publisher on the cores while it drains them).
            service.terminate()
            service.wait(30)
            service = None
            groups, per_group = 100, args.ingest_events // 100
            now = time.time()
            payloads = [(g, _event(run, g, i, now, "cat"), f"{run}-cat-{g}-{i}")
                        for g in range(groups) for i in range(per_group)]
            asyncio.run(_publish(urls.nats_url, subject, payloads))
            began = time.time()
            service = launch(work, config, port)
            if service is None:
                return 1
            cpu_before = _cpu_seconds(service.pid)
            recorded = asyncio.run(_wait_recorded(dsn, len(payloads), 600, "cat"))
            cpu = {k: v - cpu_before[k] for k, v in _cpu_seconds(service.pid).items()}
            span = asyncio.run(_recorded_span(dsn, "cat"))
            rows = asyncio.run(_wait_executions(dsn, groups, 600, "cat"))
            done = sum(1 for r in rows if r["status"] == "succeeded" and r["steps"] == 5)
            ok = ok and done == groups
            print(f"\n[catchup] {len(payloads):,} events in {groups} bursts waiting in JetStream for a "
                  f"restarted replica")
            print(f"  drained:   {len(payloads) / max(span, 1e-9):,.0f} events/s (first to last recorded; "
                  f"{recorded - began:.1f} s from launch, start-up included)")
            print(f"  CPU per event while draining: service {cpu['service'] / len(payloads) * 1e6:.0f} µs, "
                  f"PostgreSQL {cpu['postgres'] / len(payloads) * 1e6:.0f} µs, "
                  f"NATS {cpu['nats'] / len(payloads) * 1e6:.0f} µs")
            print(f"  completed: {done:,} of {groups} incidents' executions succeeded")
        return 0 if ok else 1
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
        if os.environ.get("AETHERIUS_BENCH_LOG") and (work / "service.log").exists():
            shutil.copy(work / "service.log", os.environ["AETHERIUS_BENCH_LOG"])   # the service's log
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

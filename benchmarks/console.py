"""Console benchmark: how long the server takes to answer the web console's two heaviest pages.

    python -m benchmarks.console [--incidents 10000] [--steps 50] [--runs 40]

Against the PostgreSQL named by AETHERIUS_TEST_DATABASE_DSN (else an embedded one), in a
database of its own: 10,000 incidents (each with its execution: statuses and outcomes mixed,
over 20 strategies and 10 namespaces) and one execution of a 50-step workflow (every step
with an output of about 1 KiB, a decision and a parallel fan-out among them). Each page is
requested through the console's real app in-process (routing, the session check, the SQL,
the Jinja2 rendering, the SVG layout), with a real session cookie; no network and no browser
time is counted. It prints the median and p95 of ``--runs`` requests after 3 warm-ups:

- ``/ui/incidents``: the newest 100 of the 10,000, with the counts of all of them;
- ``/ui/incidents?namespace=ns-3&status=open``: the same, filtered;
- ``/ui/executions/<id>``: the 50 steps with their inputs and outputs, and the graph;
- ``/ui/incidents/<id>``: that execution's incident, its timeline and graph.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from benchmarks.service import servers
from engine.api import ApiDeps, create_app
from engine.api.auth import SESSION_COOKIE
from engine.auth import SYSTEM, Role, token_hash
from engine.metrics import Metrics
from engine.rules.loader import RuleSet, load_text
from engine.rules.model import Workflow
from engine.storage.approvals import Approvals
from engine.storage.audit import AuditLog
from engine.storage.db import create_pool, migrate
from engine.storage.queries import Queries
from engine.storage.sessions import Sessions
from engine.storage.tokens import Tokens
from engine.ui import install

BUDGET_MS = 200.0


def workflow_yaml(steps: int) -> str:
    """A chain of ``steps`` steps with a decision every 10th and a parallel fan-out at the 5th."""
    lines = ["id: bench_fifty", "name: Fifty steps", "trigger_type: manual", "steps:"]
    for i in range(1, steps + 1):
        sid, nxt = f"s{i:02d}", f"s{i + 1:02d}" if i < steps else None
        if i % 10 == 0 and nxt:
            lines += [f"  - id: {sid}", "    type: decision", "    config:", "      conditions:",
                      f"        - {{if: \"analysis.root_cause == 'OOM'\", then: {nxt}}}",
                      f"      default: {nxt}"]
        elif i == 5 and i + 3 <= steps:
            lines += [f"  - id: {sid}", "    type: parallel",
                      f"    config: {{branches: [[s{i + 1:02d}], [s{i + 2:02d}]]}}",
                      f"    on_success: [s{i + 3:02d}]"]
        else:
            lines += [f"  - id: {sid}", "    type: notification",
                      f"    config: {{channel: log, message: \"step {i} of {{{{ incident.id }}}}\"}}"]
            if nxt and i not in (6, 7):
                lines.append(f"    on_success: [{nxt}]")
            if nxt:
                lines.append(f"    on_failure: [s{steps:02d}]")
    return "\n".join(lines) + "\n"


class BenchRules:
    """The rules part of ApiDeps, holding the one workflow."""

    def __init__(self, wf: Workflow) -> None:
        self.wf = wf
        self.generation = None
        self.status = None
        self.directory = Path(".")
        self.policy = None

    async def workflow(self, workflow_id: str, version: int | None = None) -> Workflow | None:
        return self.wf if workflow_id == self.wf.id else None

    async def reload(self, reason: str) -> bool:
        return True


async def fill(pool: asyncpg.Pool, incidents: int, steps: int) -> tuple[str, str]:
    """The incidents and executions; returns (the 50-step execution's id, its incident's id)."""
    now = datetime.now(UTC)
    outcomes = ["remediated", "dry_run", "needs_human", "failed", "no_action", None]
    statuses = ["succeeded", "succeeded", "failed", "succeeded", "succeeded", "running"]
    inc_rows, exe_rows = [], []
    for i in range(incidents):
        at = now - timedelta(seconds=30 * i)
        iid, eid = f"inc-b{i:06d}", f"exec-b{i:06d}"
        inc_rows.append((iid, f"strategy_{i % 20}", f"ns-{i % 10}/web-{i}",
                         "open" if i % 7 == 0 else "closed", "high", "bench_fifty", eid, f"ns-{i % 10}",
                         f"web-{i % 300}", "BackOff", 1 + i % 40, at, at, at))
        exe_rows.append((eid, "bench_fifty", 1, iid, statuses[i % 6], outcomes[i % 6], at,
                         at + timedelta(seconds=9)))
    await pool.copy_records_to_table(
        "incidents", records=inc_rows,
        columns=["id", "strategy_id", "key", "status", "severity", "workflow_id", "execution_id", "namespace",
                 "workload", "reason", "events", "first_seen", "last_seen", "opened_at"])
    await pool.copy_records_to_table(
        "workflow_executions", records=exe_rows,
        columns=["id", "workflow_id", "workflow_version", "incident_id", "status", "outcome", "started_at",
                 "finished_at"])
    big = "exec-b000000"
    output = {"sent": True, "channel": "log", "message": "x" * 900, "lines": list(range(20))}
    step_rows = []
    for seq in range(1, steps + 1):
        start = now + timedelta(milliseconds=40 * seq)
        step_rows.append((big, seq, f"s{seq:02d}", "notification", "succeeded" if seq % 13 else "failed",
                          1 + seq % 3, output, "boom: a failure message" if seq % 13 == 0 else None, start,
                          start + timedelta(milliseconds=25)))
    await pool.executemany(
        "INSERT INTO step_executions (execution_id, seq, step_id, step_type, status, attempts, output, "
        "error, started_at, finished_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)", step_rows)
    rows = [(f"ev-b{i:04d}", "kubernetes", "Pod", "ns-0", f"web-0-{i % 5}", "BackOff", "attached",
             "strategy_0", "inc-b000000",
             {"message": "Back-off restarting failed container", "count": 1 + i % 4})
            for i in range(200)]
    await pool.executemany(
        "INSERT INTO events (id, source, kind, namespace, name, reason, state, strategy_id, incident_id, "
        "payload) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)", rows)
    await pool.execute("ANALYZE")
    return big, "inc-b000000"


async def measure(app: Any, cookie: str, path: str, runs: int) -> list[float]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://console.bench",
                                 headers={"Cookie": f"{SESSION_COOKIE}={cookie}"}) as client:
        times = []
        for i in range(runs + 3):
            start = time.perf_counter()
            answer = await client.get(path)
            elapsed = (time.perf_counter() - start) * 1000
            if answer.status_code != 200:
                raise SystemExit(f"{path}: {answer.status_code} {answer.text[:300]}")
            if i >= 3:
                times.append(elapsed)
        return times


async def run(dsn: str, args: argparse.Namespace) -> list[tuple[str, float, float, int]]:
    pool = await create_pool(dsn, min_size=2, max_size=4)
    try:
        await migrate(pool)
        started = time.perf_counter()
        big, incident = await fill(pool, args.incidents, args.steps)
        print(f"filled {args.incidents} incidents and a {args.steps}-step execution in "
              f"{time.perf_counter() - started:.1f} s")
        ruleset = RuleSet()
        load_text(ruleset, workflow_yaml(args.steps), "bench.yaml")
        assert not ruleset.problems, ruleset.problems
        tokens, audit = Tokens(pool), AuditLog(pool)
        issued = await tokens.issue("bench", Role.ADMIN, SYSTEM)
        assert issued is not None
        principal = await tokens.verify(issued[0])
        assert principal is not None
        sessions = Sessions(pool)
        cookie = await sessions.open(principal, token_hash(issued[0]))

        async def ready() -> dict[str, Any]:
            return {"ready": True}

        async def no_cache() -> None:
            return None

        deps = ApiDeps(queries=Queries(pool), rules=BenchRules(ruleset.workflows["bench_fifty"]),  # type: ignore[arg-type]
                       executions=None, ingest=None, readiness=ready, cached_generation=no_cache,
                       metrics=Metrics(), auth=tokens, tokens=tokens, audit=audit,
                       approvals=Approvals(pool, audit), sessions=sessions)
        app = install(create_app(deps))
        results = []
        for path in ("/ui/incidents", "/ui/incidents?namespace=ns-3&status=open", f"/ui/executions/{big}",
                     f"/ui/incidents/{incident}"):
            times = await measure(app, cookie, path, args.runs)
            times.sort()
            results.append((path, statistics.median(times), times[int(len(times) * 0.95) - 1], len(times)))
        return results
    finally:
        await pool.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--incidents", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--runs", type=int, default=40)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="aetherius-bench-console-"))
    urls, embedded = servers(work)
    database = f"aetherius_bench_console_{uuid.uuid4().hex[:8]}"
    admin_dsn = urls.database_dsn

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(admin_dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{database}"'))
    try:
        dsn = re.sub(r"/[^/?]*(\?|$)", f"/{database}\\1", admin_dsn, count=1)
        results = asyncio.run(run(dsn, args))
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{database}"'))
        if embedded is not None:
            embedded.stop()
    print(f"\n{'page':<48} {'median':>9} {'p95':>9}  (ms, {args.runs} requests, budget {BUDGET_MS:.0f} ms)")
    over = False
    for path, median, p95, _ in results:
        shown = re.sub(r"exec-b0+|inc-b0+", lambda m: m.group(0)[:6] + "…", path)
        print(f"{shown:<48} {median:>9.1f} {p95:>9.1f}")
        over |= median > BUDGET_MS
    return 1 if over else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Side by side: the same storm through Prometheus Alertmanager and through ``aetherius serve``.

    python -m benchmarks.alertmanager [--events 200000] [--groups 10000] [--quiet 1s]
                                      [--only alertmanager|aetherius]

The storm: ``--groups`` workloads crash-looping, ``--events / --groups`` BackOff events each,
every event its own Kubernetes Event object (a distinct alert for Alertmanager), a workload's
events sent together and the workloads one after the other. Each side should turn each
workload into exactly ONE notification.

- **Alertmanager** (Debian's ``prometheus-alertmanager``; skipped with a message if it is not
  installed) runs on its own ports (``--web.listen-address``, clustering off with
  ``--cluster.listen-address=``) with its own temporary storage. The alerts are POSTed to
  ``/api/v2/alerts`` in batches of 256 (what Prometheus sends) on 4 connections. Its route
  groups by ``[namespace, workload]`` (our correlation key) with ``group_wait`` = our quiet
  and ``group_interval``/``repeat_interval`` long, so one group = one notification, to a
  webhook receiver.
- **aetherius** runs as one replica (``benchmarks.service``'s helpers: the machine's NATS,
  PostgreSQL and Redis from AETHERIUS_TEST_*, else embedded ones). The events are published
  to JetStream as fast as it acks; the rule groups by ``[namespace, workload]`` with that
  quiet, and its workflow is one notification step to the same kind of webhook receiver.
  Each event is recorded (durably) before it is acked; each incident and each step too.

The webhook receiver is a real HTTP server in this process. Printed for both: events/s
(first send until every event is accepted: Alertmanager's 200 to the POST, in memory;
ours: recorded in PostgreSQL and correlated), peak RSS of the server process (VmHWM),
notifications, groups with more than one notification (and, for us, more than one
incident), groups never notified, and the latency from a group's last event to its
notification (for us also to its incident's row), median and p99.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import yaml

from benchmarks.service import _event, _pct, _publish, _wait_recorded, launch, servers
from engine.durations import parse_duration

ALERTMANAGER = "prometheus-alertmanager"
BATCH = 256            # alerts per POST: Prometheus' own batch size
CONNECTIONS = 4

RULES = """
strategies:
  - id: bench_backoff
    category: pod_failure
    workflow_id: bench_notify
    symptoms: [{conditions: {kind: Pod, reason: BackOff}}]
    correlation: {key: [namespace, workload], quiet: QUIET, max_window: 10m, cooldown: 1h}
workflows:
  - id: bench_notify
    steps:
      - id: notify
        type: notification
        config: {channel: webhook, webhook: bench, message: "{{ incident.key }}"}
"""


@dataclass
class Received:
    """Notifications as the webhook receiver got them: (arrival time, group key)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    hits: list[tuple[float, str]] = field(default_factory=list)


def receiver(received: Received) -> ThreadingHTTPServer:
    """A webhook receiver on a free port, serving in a thread: it keeps each
    notification's arrival time and group (Alertmanager's groupLabels, or our incident key)."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            now = time.time()
            try:
                doc = json.loads(body)
                if "groupLabels" in doc:       # Alertmanager's webhook
                    labels = doc["groupLabels"]
                    key = f"{labels.get('namespace')}/{labels.get('workload')}"
                else:                          # ours: the incident's key
                    key = doc["incident"]["key"]
            except (ValueError, KeyError, TypeError):
                key = "?"
            with received.lock:
                received.hits.append((now, key))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def peak_rss_mb(pid: int) -> float:
    """The process' peak resident set (VmHWM), in MB; read before it ends."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def workload(group: int) -> str:
    return f"app-{group:05d}"          # what benchmarks.service._event's pods belong to


def summary(name: str, events: int, rate: float, rss: float, groups: int,
            notified: list[tuple[float, str]], last_event: dict[str, float],
            incidents: dict[str, list[float]] | None = None) -> list[str]:
    per_group: dict[str, list[float]] = defaultdict(list)
    for at, key in notified:
        per_group[key].append(at)
    latencies = [min(times) - last_event[key] for key, times in per_group.items() if key in last_event]
    lines = [f"[{name}]",
             f"  events/s:       {rate:,.0f} ({events:,} events until all accepted)",
             f"  peak RSS:       {rss:,.0f} MB (server process)",
             f"  notifications:  {len(notified):,} for {groups:,} groups; "
             f"groups with more than one: {sum(1 for t in per_group.values() if len(t) > 1):,}; "
             f"never notified: {sum(1 for k in last_event if k not in per_group):,}"]
    if incidents is not None:
        lines.append(f"  incidents:      {sum(len(v) for v in incidents.values()):,}; groups with more than "
                     f"one: {sum(1 for v in incidents.values() if len(v) > 1):,}")
        opened = [min(v) - last_event[k] for k, v in incidents.items() if k in last_event]
        if opened:
            lines.append(f"  last event -> incident:     median {statistics.median(opened) * 1000:,.0f} ms, "
                         f"p99 {_pct(opened, 0.99) * 1000:,.0f} ms")
    if latencies:
        lines.append(f"  last event -> notification: median {statistics.median(latencies) * 1000:,.0f} ms, "
                     f"p99 {_pct(latencies, 0.99) * 1000:,.0f} ms")
    return lines


# ----------------------------------------------------------------------------- Alertmanager


def alert(run: str, group: int, i: int, starts: str) -> dict[str, Any]:
    pod = f"{workload(group)}-7d9f8c6b5-x{i % 5:04d}"
    return {"labels": {"alertname": "BackOff", "namespace": "bench", "workload": workload(group),
                       "pod": pod, "event": f"{run}-{group}-{i}", "severity": "warning"},
            "annotations": {"message": "Back-off restarting failed container app"},
            "startsAt": starts}


async def post_alerts(url: str, batches: list[tuple[list[int], bytes]]) -> dict[int, float]:
    """POST every batch on CONNECTIONS connections; return each group's last accepted time."""
    last: dict[int, float] = {}
    queue: asyncio.Queue[tuple[list[int], bytes]] = asyncio.Queue()
    for item in batches:
        queue.put_nowait(item)

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            groups, body = queue.get_nowait()
            response = await client.post(url, content=body, headers={"Content-Type": "application/json"})
            response.raise_for_status()
            now = time.time()
            for g in groups:
                last[g] = now

    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=CONNECTIONS)) as client:
        await asyncio.gather(*(worker(client) for _ in range(CONNECTIONS)))
    return last


def run_alertmanager(args: argparse.Namespace, work: Path, received: Received, hook: str,
                     run: str) -> list[str] | None:
    binary = shutil.which(ALERTMANAGER) or shutil.which("alertmanager")
    if binary is None:
        print(f"alertmanager: skipped: {ALERTMANAGER} is not installed "
              f"(apt-get install -y {ALERTMANAGER})")
        return None
    version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.splitlines()
    config = {
        "route": {"receiver": "bench", "group_by": ["namespace", "workload"],
                  "group_wait": args.quiet, "group_interval": "1h", "repeat_interval": "24h"},
        "receivers": [{"name": "bench", "webhook_configs": [
            {"url": f"{hook}/alertmanager", "send_resolved": False}]}],
    }
    (work / "alertmanager.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    port = free_port()
    log = open(work / "alertmanager.log", "wb")  # noqa: SIM115 - written while it runs
    process = subprocess.Popen([binary, f"--config.file={work / 'alertmanager.yml'}",
                                f"--storage.path={work / 'alertmanager-data'}",
                                f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=",
                                "--log.level=warn"], stdout=log, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 30
        while True:
            try:
                if httpx.get(f"{base}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline or process.poll() is not None:
                print((work / "alertmanager.log").read_text()[-2000:], file=sys.stderr)
                raise RuntimeError("alertmanager did not start")
            time.sleep(0.1)
        per_group = args.events // args.groups
        starts = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        batches: list[tuple[list[int], bytes]] = []
        chunk: list[tuple[int, dict]] = []
        for g in range(args.groups):
            for i in range(per_group):
                chunk.append((g, alert(run, g, i, starts)))
                if len(chunk) == BATCH:
                    batches.append(([c[0] for c in chunk], json.dumps([c[1] for c in chunk]).encode()))
                    chunk = []
        if chunk:
            batches.append(([c[0] for c in chunk], json.dumps([c[1] for c in chunk]).encode()))
        start = time.time()
        last = asyncio.run(post_alerts(f"{base}/api/v2/alerts", batches))
        rate = per_group * args.groups / (time.time() - start)
        wait_for(received, "alertmanager", args.groups, parse_duration(args.quiet))
        rss = peak_rss_mb(process.pid)
        notified = [(at, key) for at, key in received.hits]
        last_event = {f"bench/{workload(g)}": t for g, t in last.items()}
        found = re.search(r"version (\S+)", version[0] if version else "")
        name = f"Alertmanager {found.group(1) if found else ''}".strip()
        return summary(f"{name} (HTTP API v2, in memory)", per_group * args.groups, rate, rss,
                       args.groups, notified, last_event)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def wait_for(received: Received, side: str, groups: int, quiet: float, settle: float = 3.0,
             timeout: float = 600.0) -> None:
    """Until every group was notified and nothing more came for ``quiet + settle`` s."""
    deadline = time.time() + timeout
    seen, since = -1, time.time()
    while time.time() < deadline:
        with received.lock:
            count, keys = len(received.hits), {k for _, k in received.hits}
        if count != seen:
            seen, since = count, time.time()
        elif len(keys) >= groups and time.time() - since > quiet + settle:
            return
        time.sleep(0.2)
    print(f"{side}: only {len(keys)} of {groups} groups notified after {timeout:.0f} s", file=sys.stderr)


# ----------------------------------------------------------------------------- aetherius


def run_aetherius(args: argparse.Namespace, work: Path, received: Received, hook: str,
                  run: str) -> list[str] | None:
    urls, embedded = servers(work)
    database = f"aetherius_side_{run}"
    service = None
    try:
        async def create_db() -> str:
            conn = await asyncpg.connect(urls.database_dsn)
            await conn.execute(f'CREATE DATABASE "{database}"')
            await conn.close()
            return re.sub(r"/[^/?]*(\?|$)", f"/{database}\\1", urls.database_dsn, count=1)

        dsn = asyncio.run(create_db())
        rules = work / "rules"
        rules.mkdir()
        (rules / "side.yaml").write_text(RULES.replace("QUIET", args.quiet), encoding="utf-8")
        subject = f"side{run}.event.critical"
        port = free_port()
        config = {
            "rules": {"dir": str(rules)},
            "nats": {"url": urls.nats_url, "subjects": [subject], "stream": f"SIDE_{run.upper()}",
                     "durable": f"side_{run}", "batch": 512},
            "database": {"dsn": dsn, "pool_size": 20},
            "redis": {"url": urls.redis_url, "prefix": f"side{run}:"},
            "http": {"host": "127.0.0.1", "port": port},
            "service": {"replica_id": f"side-{run}", "data_dir": str(work / "svc")},
            "notifications": {"webhooks": {"bench": f"{hook}/aetherius"}},
            "remediation": {"dry_run": True},
        }
        service = launch(work, config, port)
        if service is None:
            raise RuntimeError("aetherius serve did not start")
        per_group = args.events // args.groups
        now = time.time()
        payloads = [(g, _event(run, g, i, now), f"{run}-bench-{g}-{i}")
                    for g in range(args.groups) for i in range(per_group)]
        start = time.time()
        last = asyncio.run(_publish(urls.nats_url, subject, payloads))
        recorded = asyncio.run(_wait_recorded(dsn, len(payloads), 600))
        rate = len(payloads) / (recorded - start)
        wait_for(received, "aetherius", args.groups, parse_duration(args.quiet))
        rss = peak_rss_mb(service.pid)

        async def opened() -> list[asyncpg.Record]:
            conn = await asyncpg.connect(dsn)
            try:
                return await conn.fetch("SELECT key, opened_at FROM incidents WHERE namespace = 'bench'")
            finally:
                await conn.close()

        incidents: dict[str, list[float]] = defaultdict(list)
        for row in asyncio.run(opened()):
            incidents[row["key"]].append(row["opened_at"].timestamp())
        last_event = {f"bench/{workload(g)}": t for g, t in last.items()}
        return summary(f"aetherius serve (one replica, NATS JetStream -> PostgreSQL, durable; "
                       f"servers: {', '.join(f'{k} {v}' for k, v in urls.modes.items())})",
                       len(payloads), rate, rss, args.groups, list(received.hits), last_event, incidents)
    finally:
        if service is not None:
            service.terminate()
            service.wait(30)

        async def drop() -> None:
            conn = await asyncpg.connect(urls.database_dsn)
            await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            await conn.close()
        with contextlib.suppress(OSError, asyncpg.PostgresError):
            asyncio.run(drop())
        if embedded is not None:
            embedded.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--groups", type=int, default=10_000)
    parser.add_argument("--quiet", default="1s", help="our correlation quiet = Alertmanager's group_wait")
    parser.add_argument("--only", choices=["alertmanager", "aetherius"])
    args = parser.parse_args(argv)
    if args.events < args.groups:
        parser.error("--events must be at least --groups")
    run = uuid.uuid4().hex[:8]
    print(f"storm: {args.events // args.groups * args.groups:,} events in {args.groups:,} groups "
          f"({args.events // args.groups} per group), quiet/group_wait {args.quiet}")
    results: list[list[str]] = []
    for side, runner in (("alertmanager", run_alertmanager), ("aetherius", run_aetherius)):
        if args.only not in (None, side):
            continue
        work = Path(tempfile.mkdtemp(prefix=f"aetherius-side-{side}-"))
        received = Received()
        hook_server = receiver(received)
        try:
            lines = runner(args, work, received, f"http://127.0.0.1:{hook_server.server_address[1]}", run)
            if lines is not None:
                results.append(lines)
                print("\n".join(lines), flush=True)
        finally:
            hook_server.shutdown()
            hook_server.server_close()
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

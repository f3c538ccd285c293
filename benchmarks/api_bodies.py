"""Request-body benchmark: the service's memory under 100 concurrent maximal requests.

    python -m benchmarks.api_bodies [--concurrency 100] [--runs 3]

One ``aetherius serve`` runs as a process with the default intake limits (4 MiB a request,
1000 events, 256 KiB an event or NDJSON line, 2 bodies read at once), no rules (every event
is recorded as unmatched: this measures the intake, not the workflows), against the servers
named by AETHERIUS_TEST_NATS_URL / AETHERIUS_TEST_DATABASE_DSN / AETHERIUS_TEST_REDIS_URL
(else embedded ones). Each scenario fires ``--concurrency`` requests at once:

- ``small``       one small event each (the baseline: what concurrency alone costs);
- ``over-len``    8 MiB with Content-Length (413 before reading);
- ``over-stream`` 8 MiB streamed without a length (413 once past 4 MiB);
- ``long-line``   NDJSON, one 3.9 MiB line (over 256 KiB: a dead letter keeping 64 KiB);
- ``json-max``    the largest accepted JSON body: an array of 1000 events, just under 4 MiB;
- ``ndjson-max``  the same as NDJSON, 1000 lines;
- ``json-again``  json-max's bodies again: all read and parsed, every event a duplicate, so
                  the intake's memories of events do not grow (the bodies' cost alone).

Every event is new (no duplicates), so each accepted body is parsed and recorded. A 503
(all turns taken for 30 s) is retried after its Retry-After, as a client should.

Printed per scenario: the peak RSS of the service process (the kernel's high-water mark,
reset before each run, Linux' /proc/PID/clear_refs) over its idle RSS measured just before
the run, and the RSS a second after it, medians of ``--runs`` runs; the idle RSS at the start
is the baseline; statuses and wall time. Accepted events also fill the intake's bounded
memories (recent ids for deduplication, 200,000; Kubernetes occurrence counts, 500,000), so
the RSS after the accepted scenarios stays higher: that is those caches, not the bodies.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import re
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson

from benchmarks.service import launch, servers
from engine.auth import new_token

ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
JSON = {"content-type": "application/json"}
NDJSON = {"content-type": "application/x-ndjson"}
TOKEN = new_token()                            # the admin token of the service it starts
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _event(uid: str, size: int = 3640) -> dict[str, Any]:
    pod = f"web-7d9f8c6b5-{uid[-5:]}"
    return {"apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{pod}.{uid}", "namespace": "bench", "uid": uid},
            "involvedObject": {"kind": "Pod", "namespace": "bench", "name": pod, "uid": f"pod-{uid}"},
            "reason": "Pulled", "message": "m" * size, "type": "Normal", "count": 1,
            "firstTimestamp": "2026-12-01T10:00:00Z", "lastTimestamp": "2026-12-01T10:00:00Z",
            "source": {"component": "kubelet", "host": "node-1"}}


def _events(tag: str, n: int = 1000) -> list[dict[str, Any]]:
    return [_event(f"{tag}-{i:04d}") for i in range(n)]


# Each scenario: name -> (make one request's (body, headers) from a unique tag, expected status)
Body = bytes | Callable[[], AsyncIterator[bytes]]


def _streamed(size: int) -> Callable[[], AsyncIterator[bytes]]:
    async def chunks() -> AsyncIterator[bytes]:
        piece = b"x" * 65536
        for _ in range(size // len(piece)):
            yield piece
    return chunks


SCENARIOS: dict[str, tuple[Callable[[str], tuple[Body, dict[str, str]]], int]] = {
    "small": (lambda tag: (orjson.dumps(_event(tag, 100)), JSON), 202),
    "over-len": (lambda tag: (b"x" * (8 * MIB), JSON), 413),
    "over-stream": (lambda tag: (_streamed(8 * MIB), JSON), 413),
    "long-line": (lambda tag: (orjson.dumps(_event(tag, int(3.9 * MIB))), NDJSON), 202),
    "json-max": (lambda tag: (orjson.dumps(_events(tag)), JSON), 202),
    "ndjson-max": (lambda tag: (b"\n".join(orjson.dumps(e) for e in _events(tag)), NDJSON), 202),
    "json-again": (lambda tag: (orjson.dumps(_events(tag)), JSON), 202),
}
SAME_IDS = {"json-again": "json-max"}   # json-max's bodies again: parsed, every event a duplicate


def _rss(pid: int) -> tuple[int, int]:
    """(current RSS, peak RSS since the last reset) of a process, in bytes."""
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", status, re.M))
    return int(fields["VmRSS"]) * 1024, int(fields["VmHWM"]) * 1024


def _reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


async def _fire(url: str, bodies: list[tuple[Body, dict[str, str]]]) -> tuple[collections.Counter, int]:
    """Send every body at once; (statuses, 503 retries)."""
    statuses: collections.Counter = collections.Counter()
    retries = 0
    limits = httpx.Limits(max_connections=len(bodies), max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits, headers=AUTH) as client:
        async def one(body: Body, headers: dict[str, str]) -> None:
            nonlocal retries
            while True:
                try:
                    response = await client.post("/api/v1/events", headers=headers,
                                                 content=body() if callable(body) else body)
                except httpx.HTTPError as exc:   # the server may close while we still send (413)
                    statuses[f"closed ({type(exc).__name__})"] += 1
                    return
                if response.status_code == 503:
                    retries += 1
                    await asyncio.sleep(float(response.headers.get("retry-after", "1")))
                    continue
                statuses[response.status_code] += 1
                return

        await asyncio.gather(*(one(body, headers) for body, headers in bodies))
    return statuses, retries


def _settle(pid: int, seconds: float = 2.0) -> int:
    """The RSS once it stops moving (after a scenario, before the next)."""
    time.sleep(seconds)
    return _rss(pid)[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    args = parser.parse_args(argv)
    names = [n for n in args.scenarios.split(",") if n]

    work = Path(tempfile.mkdtemp(prefix="aetherius-bench-"))
    urls, embedded = servers(work)
    run = uuid.uuid4().hex[:8]
    database = f"aetherius_bench_{run}"
    service = None
    created = False
    try:
        async def admin(sql: str) -> None:
            conn = await asyncpg.connect(urls.database_dsn)
            await conn.execute(sql)
            await conn.close()

        asyncio.run(admin(f'CREATE DATABASE "{database}"'))
        created = True
        dsn = re.sub(r"/[^/?]*(\?|$)", f"/{database}\\1", urls.database_dsn, count=1)
        (work / "rules").mkdir()
        port = 18000 + int(run[:4], 16) % 1000
        config = {
            "rules": {"dir": str(work / "rules")},
            "nats": {"url": urls.nats_url, "subjects": [f"bench{run}.event.critical"],
                     "stream": f"BENCH_{run.upper()}", "durable": f"bench_{run}"},
            "database": {"dsn": dsn},
            "redis": {"url": urls.redis_url, "prefix": f"bench{run}:"},
            "http": {"host": "127.0.0.1", "port": port},
            "service": {"replica_id": f"bench-{run}", "data_dir": str(work / "svc")},
            "logging": {"level": "warning", "file": None},
        }
        service = launch(work, config, port, token=TOKEN)
        if service is None:
            return 1
        url = f"http://127.0.0.1:{port}"

        start_idle = _settle(service.pid)
        print(f"one replica, default intake limits; {args.concurrency} concurrent requests per scenario, "
              f"{args.runs} runs; idle RSS at start {start_idle / MIB:.0f} MiB")
        print(f"{'scenario':12} {'body':>9} {'peak over idle':>15} {'peak':>9} {'after':>9} {'wall':>7}"
              "  statuses")
        for name in names:
            make, expected = SCENARIOS[name]
            over, peaks, afters, walls = [], [], [], []
            statuses: collections.Counter = collections.Counter()
            retries = 0
            size = 0
            for r in range(args.runs):
                ids = SAME_IDS.get(name, name)
                bodies = [make(f"{ids}-{run}-{r}-{i:03d}") for i in range(args.concurrency)]
                first = bodies[0][0]
                size = len(first) if isinstance(first, bytes) else 8 * MIB
                assert expected != 202 or size <= 4 * MIB, f"{name}: {size} bytes, over the limit"
                idle = _settle(service.pid, 1.0)
                _reset_peak(service.pid)
                began = time.perf_counter()
                got, again = asyncio.run(_fire(url, bodies))
                walls.append(time.perf_counter() - began)
                peak = _rss(service.pid)[1]
                del bodies
                statuses += got
                retries += again
                over.append(peak - idle)
                peaks.append(peak)
                afters.append(_settle(service.pid, 1.0))
            ok = "" if set(statuses) == {expected} else f"  (expected {expected})"
            print(f"{name:12} {size / MIB:7.2f} MiB {statistics.median(over) / MIB:11.1f} MiB "
                  f"{statistics.median(peaks) / MIB:5.0f} MiB {statistics.median(afters) / MIB:5.0f} MiB "
                  f"{statistics.median(walls):6.1f}s  {dict(statuses)}"
                  f"{f', {retries} retried after 503' if retries else ''}{ok}")
            if service.poll() is not None:
                print("the service exited:\n" + (work / "service.log").read_text()[-3000:], file=sys.stderr)
                return 1
        return 0
    finally:
        if service is not None:
            service.terminate()
            service.wait(30)
        if created:
            asyncio.run(admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        if embedded is not None:
            embedded.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

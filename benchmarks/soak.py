"""Soak benchmark: steady events and incidents for longer than the cooldown, and the service's
RSS over time (it must stay flat after warm-up: every in-memory table is bounded).

    python -m benchmarks.soak [--minutes 35] [--rate 200] [--keys 600] [--cooldown 5m]

One replica of ``aetherius serve`` against the servers named by AETHERIUS_TEST_* (else
embedded), the instant stub as agent-manager and reasoning-service. Every second ``rate``
events go out in bursts of 10 over ``keys`` workloads in turn, with new event ids each time,
so keys reopen incidents once their cooldown ends; RSS is sampled every 30 s. It prints one
line per sample and, at the end, the RSS after warm-up (the first third) against the last
sample.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import psutil

from benchmarks.service import ROOT, RULES, _event, _publish, launch, servers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=35.0)
    parser.add_argument("--rate", type=int, default=200, help="events/s (bursts of 10: rate/10 incidents/s)")
    parser.add_argument("--keys", type=int, default=600, help="workloads the bursts cycle over")
    parser.add_argument("--cooldown", default="5m")
    parser.add_argument("--stub-port", type=int, default=18399)
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="aetherius-soak-"))
    urls, embedded = servers(work)
    run = uuid.uuid4().hex[:8]
    database = f"aetherius_soak_{run}"
    stub = subprocess.Popen([sys.executable, "-m", "benchmarks.stub", str(args.stub_port)], cwd=ROOT)
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
        (rules / "soak.yaml").write_text(RULES.replace("QUIET", "1s").replace("cooldown: 10m",
                                                                             f"cooldown: {args.cooldown}"))
        subject = f"soak{run}.event.critical"
        port = 19000 + int(run[:4], 16) % 1000
        config = {"rules": {"dir": str(rules)},
                  "nats": {"url": urls.nats_url, "subjects": [subject], "stream": f"SOAK_{run.upper()}",
                           "durable": f"soak_{run}", "batch": 512},
                  "database": {"dsn": dsn}, "redis": {"url": urls.redis_url, "prefix": f"soak{run}:"},
                  "http": {"host": "127.0.0.1", "port": port},
                  "service": {"replica_id": f"soak-{run}", "data_dir": str(work / "svc")},
                  "agent_manager": {"url": f"http://127.0.0.1:{args.stub_port}"},
                  "ai": {"reasoning_service_url": f"http://127.0.0.1:{args.stub_port}"},
                  "remediation": {"dry_run": True}, "logging": {"level": "warning", "file": None}}
        service = launch(work, config, port)
        if service is None:
            return 1
        process = psutil.Process(service.pid)
        print(f"soak: {args.rate} events/s, {args.rate // 10} incidents/s over {args.keys} keys, "
              f"cooldown {args.cooldown}, {args.minutes:g} min")
        print(f"{'minute':>7} {'RSS MiB':>8} {'events sent':>12}")
        samples: list[tuple[float, float]] = []
        began = time.time()
        sent, burst = 0, 0
        next_sample = began
        while time.time() - began < args.minutes * 60:
            second = time.time()
            payloads = []
            for _ in range(args.rate // 10):
                group = burst % args.keys
                for i in range(10):
                    payloads.append((group, _event(f"{run}-{burst}", group, i, second), f"{run}-{burst}-{i}"))
                burst += 1
            asyncio.run(_publish(urls.nats_url, subject, payloads))
            sent += len(payloads)
            if time.time() >= next_sample:
                rss = process.memory_info().rss / 2**20
                minute = (time.time() - began) / 60
                samples.append((minute, rss))
                print(f"{minute:7.1f} {rss:8.1f} {sent:12,}", flush=True)
                next_sample += 30
            time.sleep(max(0.0, 1.0 - (time.time() - second)))
        warm = [rss for minute, rss in samples if minute >= args.minutes / 3]
        if warm:
            print(f"after warm-up (from minute {args.minutes / 3:.0f}): median "
                  f"{statistics.median(warm):.1f} MiB, min {min(warm):.1f}, max {max(warm):.1f}, "
                  f"last {warm[-1]:.1f}")
        return 0
    finally:
        if service is not None:
            service.terminate()
            service.wait(30)
        stub.terminate()
        stub.wait(10)
        asyncio.run(sql(urls.database_dsn, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        if embedded is not None:
            embedded.stop()


if __name__ == "__main__":
    sys.exit(main())

"""Runner benchmark: many executions of a 5-step workflow against an instant HTTP stub.

    python -m benchmarks.runner [--executions 2000] [--concurrency 100] [--runs 3]

The workflow calls out three times per execution (agent-manager command, reasoning-service
analysis, agent-manager dry-run remediation), decides in the sandbox, and notifies the log.
The stub runs in its own process; the store is the in-memory one.

Printed per run and as medians: executions/s, and the runner's own overhead per step:
the wall time of handling a step run minus the time spent inside the step's ``run()``
(so HTTP and the stub do not count), p50 and p99. As a baseline measured in the same go,
the same number of raw POSTs to the stub through the same httpx client at the same
concurrency, which is the ceiling the HTTP calls alone allow.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

from engine.rules.check import validate
from engine.rules.loader import RuleSet, load_text
from engine.runner import WorkflowRunner
from engine.service.transport import make_client
from engine.store import MemoryStore
from steps.base import Settings

ROOT = Path(__file__).resolve().parent.parent

WORKFLOW = """
id: bench_five_steps
name: Five steps
steps:
  - id: collect_logs
    type: command
    config: {action: logs, args: ["--tail=100"]}
    timeout: 10s
    on_success: [ai_analysis]
  - id: ai_analysis
    type: ai_analysis
    on_success: [decide]
  - id: decide
    type: decision
    config:
      conditions:
        - {if: "analysis.root_cause == 'OOM'", then: increase_memory}
    on_success: [remediate]
  - id: remediate
    type: remediation
    config: {action: patch_deployment}
    on_success: [notify]
  - id: notify
    type: notification
    config: {channel: log, message: "{{ incident.workload }}: {{ analysis.root_cause }}"}
"""

INCIDENT = {"id": "inc-bench", "namespace": "shop", "workload": "checkout", "workload_kind": "Deployment",
            "pod": "checkout-7d9f8c6b5-x2x4k", "reason": "BackOff", "count": 20}


def _workflow():
    rules = RuleSet()
    load_text(rules, WORKFLOW, "<bench>")
    problems = validate(rules)
    assert not problems, problems
    return rules.workflows["bench_five_steps"]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _baseline(url: str, total: int, concurrency: int) -> float:
    async with make_client(max_connections=concurrency) as client:
        sem = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with sem:
                response = await client.post_json(f"{url}/api/v1/commands", {"action": "logs"}, 10.0)
                response.raise_for_status()

        start = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(total)))
        return total / (time.perf_counter() - start)


async def _run(url: str, executions: int, concurrency: int) -> tuple[float, list[float], int]:
    workflow = _workflow()
    settings = Settings(agent_manager_url=url, reasoning_service_url=url, dry_run=True, live=True)
    http = make_client(max_connections=concurrency)
    runner = WorkflowRunner(MemoryStore(), settings, http=http, measure_overhead=True)
    sem = asyncio.Semaphore(concurrency)
    statuses: list[str] = []

    async def one(i: int) -> None:
        async with sem:
            execution = await runner.run(workflow, incident=INCIDENT, execution_id=f"bench-{i}")
            statuses.append(execution.status)

    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(executions)))
    elapsed = time.perf_counter() - start
    await http.aclose()
    ok = sum(1 for s in statuses if s == "succeeded")
    return executions / elapsed, runner.overheads, ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--executions", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--port", type=int, default=18399)
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="uvloop",
                        help="event loop (the service runs on uvloop under uvicorn)")
    args = parser.parse_args(argv)
    logging.disable(logging.INFO)   # per-step INFO lines would measure the log handler

    stub = subprocess.Popen([sys.executable, "-m", "benchmarks.stub", str(args.port)], cwd=ROOT)
    url = f"http://127.0.0.1:{args.port}"
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
        rates, p50s, p99s, baselines = [], [], [], []
        run = asyncio.run
        if args.loop == "uvloop":
            import uvloop

            run = uvloop.run
        for _ in range(args.runs):
            baselines.append(run(_baseline(url, args.executions * 3, args.concurrency)))
            rate, overheads, ok = run(_run(url, args.executions, args.concurrency))
            if ok != args.executions:
                print(f"only {ok} of {args.executions} executions succeeded", file=sys.stderr)
                return 1
            rates.append(rate)
            p50s.append(_percentile(overheads, 0.50) * 1000)
            p99s.append(_percentile(overheads, 0.99) * 1000)
    finally:
        stub.terminate()
        stub.wait(timeout=10)
    print(f"{args.executions} executions x 5 steps, concurrency {args.concurrency}, in-memory store, "
          f"{args.loop} loop")
    runs = ", ".join(f"{r:,.0f}" for r in rates)
    print(f"executions/s:  median {statistics.median(rates):,.0f}  (runs: {runs})")
    print(f"runner overhead per step: p50 median {statistics.median(p50s):.3f} ms "
          f"(runs: {', '.join(f'{v:.3f}' for v in p50s)}), p99 median {statistics.median(p99s):.3f} ms "
          f"(runs: {', '.join(f'{v:.3f}' for v in p99s)})")
    print(f"baseline: raw POSTs to the stub: median {statistics.median(baselines):,.0f}/s "
          f"(3 calls per execution -> ceiling {statistics.median(baselines) / 3:,.0f} executions/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

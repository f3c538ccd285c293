"""schemathesis against /openapi.json as it will be checked: ``schemathesis run --checks
all``, positive and negative data. No 5xx, and every status, header and body the API answers
is one it documents. The quick run (the suite's, about 30 s): the examples, coverage and
fuzzing phases, the coverage of the rule-file bodies left to fuzzing. ``AETHERIUS_SCHEMATHESIS=full``:
every phase (stateful too) on everything, with more examples (a few minutes).

The API is the one tests/integration/test_api.py's harness builds on a real PostgreSQL,
connected to NATS (so /readyz is ready), served by uvicorn on 127.0.0.1 in a thread of its
own (that thread's event loop holds the pool). The CLI runs as a subprocess, deterministic
(the same cases every run), at most EXAMPLES cases per operation in the fuzzing phase. Every request
carries an admin's bearer token.

One kind of refusal is configured, as the API documents it: a request the schema allows may
still be refused with 400 (JSON out of engine.payloads' bounds, a cursor this API did not
hand out) or 422 (a rule document is validated beyond its JSON Schema, like a rule file; a
time out of range), which ``positive_data_acceptance`` would otherwise count as wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.api import create_app
from engine.service.bus import Bus
from tests.integration.test_api import harness

pytest.importorskip("schemathesis", reason="schemathesis is not installed (pip install -e '.[test]')")

pytestmark = pytest.mark.integration

# AETHERIUS_SCHEMATHESIS=full runs every phase on every operation with more examples (about
# two minutes here); the default, quick run stays well under a minute.
FULL = os.environ.get("AETHERIUS_SCHEMATHESIS") == "full"
EXAMPLES = 30 if FULL else 10   # per operation, in the fuzzing phase (coverage has its own cases)
PHASES = "examples,coverage,fuzzing,stateful" if FULL else "examples,coverage,fuzzing"
SEED = 20261201
BUDGET = 600 if FULL else 120   # seconds the CLI may take, at most
CONFIG = """
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "3xx", "400", "401", "403", "404", "409", "422", "429"]
"""
# The coverage phase derives cases from every keyword of a body's schema; for the rule-file
# formats (create and replace a workflow or a strategy) that is about 1,000 cases and a
# minute. Fuzzing covers those bodies in the quick run; the full run covers them all.
QUICK = """
[[operations]]
include-path-regex = "^/api/v1/(workflows|strategies)(/[^/]+)?$"
include-method-regex = "^(POST|PUT)$"
phases.coverage.enabled = false
"""


@contextlib.contextmanager
def served(dsn: str, nats_url: str, nats_prefix: str) -> Iterator[tuple[str, str]]:
    """The harness's app under uvicorn on 127.0.0.1; yields its base URL and an admin token."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    started, failed, tokens = threading.Event(), [], []
    server: list[uvicorn.Server] = []

    async def serve() -> None:
        async with harness(dsn) as (api, _):
            bus = Bus(nats_url, [f"{nats_prefix}.events"], stream=nats_prefix, durable=nats_prefix)
            await bus.connect()
            api.health.bus = bus
            tokens.append(api.token)
            try:
                config = uvicorn.Config(create_app(api.deps), log_level="critical", lifespan="off")
                server.append(uvicorn.Server(config))
                task = asyncio.create_task(server[0].serve(sockets=[sock]))
                while not server[0].started and not task.done():
                    await asyncio.sleep(0.01)
                started.set()
                await task
            finally:
                await bus.close()

    def run() -> None:
        try:
            asyncio.run(serve())
        except BaseException as exc:   # reported by the test, not lost in the thread
            failed.append(exc)
        finally:
            started.set()

    thread = threading.Thread(target=run, name="schemathesis-api", daemon=True)
    thread.start()
    started.wait(30)
    try:
        assert not failed, failed
        yield f"http://127.0.0.1:{port}", tokens[0]
    finally:
        if server:
            server[0].should_exit = True
        thread.join(30)
        sock.close()


def schemathesis_run(base_url: str, headers: dict[str, str], workdir: Path) -> tuple[int, str, dict]:
    """``schemathesis run --checks all`` against the served API: (exit code, output, JSON report)."""
    config = workdir / "schemathesis.toml"
    config.write_text(CONFIG if FULL else CONFIG + QUICK, encoding="utf-8")
    report = workdir / "report.json"
    args = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run",
            f"{base_url}/openapi.json", "--checks", "all", "--phases", PHASES,
            "--max-examples", str(EXAMPLES), "--seed", str(SEED), "--generation-deterministic",
            "--workers", "1", "--no-color",
            "--report", "json", "--report-json-path", str(report)]
    for name, value in headers.items():
        args += ["--header", f"{name}: {value}"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=BUDGET, cwd=workdir)
    output = done.stdout + done.stderr
    return done.returncode, output, json.loads(report.read_text("utf-8")) if report.exists() else {}


def test_schemathesis_finds_nothing_the_openapi_document_does_not_say(
        pg_dsn: str, nats_url: str, nats_prefix: str, tmp_path: Path) -> None:
    with served(pg_dsn, nats_url, nats_prefix) as (base_url, token):
        code, output, report = schemathesis_run(base_url, {"Authorization": f"Bearer {token}"}, tmp_path)
    assert code == 0, output[-8000:]
    cases = report["test_cases"]
    print(f"schemathesis ({'full' if FULL else 'quick'}): {report['operations']['tested']} operations, "
          f"{cases['generated']} cases, {cases['with_failures']} failures, phases {PHASES}")
    assert report["complete"] and not report["failures"] and not report["errors"], report
    # Every operation tested (26, tokens and the audit trail included), each with real cases.
    operations = report["operations"]
    assert operations["tested"] == operations["total"] >= 26 and not operations["errored"], operations
    assert cases["generated"] > 22 * EXAMPLES

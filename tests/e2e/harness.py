"""Run ``aetherius serve`` as a real process against the test servers, and talk to it.

A :class:`ServiceProcess` writes a config for one test: the test's own database, Redis
prefix, NATS stream/subjects and HTTP port, the stand-ins' URLs, and a copy of the
shipped rules with the quiet periods shortened so incidents form in about a second.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import nats
import yaml

from engine.auth import new_token
from tests.standins import free_port

ROOT = Path(__file__).resolve().parents[2]


def shorten_quiet(rules_dir: Path, quiet: str, max_window: str = "30s", cooldown: str | None = None) -> None:
    """Rewrite the correlation settings of every strategy file under ``rules_dir``."""
    for file in rules_dir.rglob("*.yaml"):
        text = file.read_text(encoding="utf-8")
        text = re.sub(r"quiet: \w+", f"quiet: {quiet}", text)
        text = re.sub(r"max_window: \w+", f"max_window: {max_window}", text)
        if cooldown is not None:
            text = re.sub(r"cooldown: \w+", f"cooldown: {cooldown}", text)
        file.write_text(text, encoding="utf-8")


def sql(dsn: str, query: str, *args: Any) -> list[dict[str, Any]]:
    """Run one query on the test's database and return its rows as dicts."""

    async def go() -> list[dict[str, Any]]:
        conn = await asyncpg.connect(dsn)
        try:
            return [dict(r) for r in await conn.fetch(query, *args)]
        finally:
            await conn.close()

    return asyncio.run(go())


TOKEN = new_token()   # the admin token of every service these tests start


class ServiceProcess:
    def __init__(self, workdir: Path, *, pg_dsn: str, redis_url: str, redis_prefix: str, nats_url: str,
                 nats_prefix: str, agent_manager: str | None = None, reasoning: str | None = None,
                 slack: str | None = None, quiet: str = "1s", replica: str = "e2e-1",
                 extra: dict[str, Any] | None = None, rules_dir: Path | None = None,
                 bootstrap: bool = True) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.rules_dir = rules_dir or workdir / "rules"
        if rules_dir is None:
            shutil.copytree(ROOT / "rules", self.rules_dir, dirs_exist_ok=True)
            shorten_quiet(self.rules_dir, quiet)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        safe = re.sub(r"[^A-Za-z0-9]", "_", nats_prefix)
        self.subjects = [f"{nats_prefix}.event.critical", f"{nats_prefix}.event.anomaly"]
        self.nats_url = nats_url
        self.config: dict[str, Any] = {
            "rules": {"dir": str(self.rules_dir)},
            "nats": {"url": nats_url, "subjects": self.subjects, "stream": f"{safe}_EVENTS".upper(),
                     "durable": f"{safe}_durable", "ack_wait": "5s"},
            "database": {"dsn": pg_dsn},
            "redis": {"url": redis_url, "prefix": f"{redis_prefix}:"},
            "http": {"host": "127.0.0.1", "port": self.port, "public_url": self.url},
            "service": {"replica_id": replica, "lease": "3s", "shutdown_grace": "5s",
                        "data_dir": str(workdir / "var")},
            "agent_manager": {"url": agent_manager},
            "ai": {"reasoning_service_url": reasoning, "timeout": "5s", "max_retries": 1},
            "remediation": {"dry_run": False},
        }
        for section, values in (extra or {}).items():
            self.config.setdefault(section, {}).update(values)
        self.config_path = workdir / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config), encoding="utf-8")
        self.log_path = workdir / "service.log"
        # Every replica of a test shares one admin token (they share the database): an
        # operator's bootstrap token, given through the environment.
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if bootstrap:
            self.env["AETHERIUS_AUTH__BOOTSTRAP_TOKEN"] = TOKEN
        self.headers = {"Authorization": f"Bearer {TOKEN}"}
        if slack:
            # A secret: given through the environment, as an operator would.
            self.env["AETHERIUS_NOTIFICATIONS__SLACK__WEBHOOK_URL"] = slack
        self.proc: subprocess.Popen | None = None
        self._log = None

    # ------------------------------------------------------------------ process

    def start(self, timeout: float = 40.0) -> ServiceProcess:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - kept open while the process runs
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "engine", "--config", str(self.config_path), "serve"],
            cwd=self.workdir, env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"service not ready after {timeout}s:\n{self.log()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        code = self.proc.returncode
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def kill(self) -> None:
        """SIGKILL: the crash an SRE fears."""
        self.stop(signal.SIGKILL)

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    # ------------------------------------------------------------------ API

    def get(self, path: str, **params: Any) -> Any:
        response = httpx.get(f"{self.url}{path}", params=params, timeout=10, headers=self.headers)
        response.raise_for_status()
        return response.json() if "json" in response.headers.get("content-type", "") else response.text

    def post(self, path: str, body: Any = None, **kwargs: Any) -> httpx.Response:
        headers = {**self.headers, **kwargs.pop("headers", {})}
        return httpx.post(f"{self.url}{path}", json=body, timeout=30, headers=headers, **kwargs)

    def client(self, **kwargs: Any) -> httpx.Client:
        """An HTTP client of this service that sends the admin token."""
        return httpx.Client(base_url=self.url, headers=self.headers, **kwargs)

    def wait_for(self, predicate: Any, timeout: float = 30.0, interval: float = 0.2) -> Any:
        deadline = time.time() + timeout
        last = None
        while time.time() < deadline:
            last = predicate()
            if last:
                return last
            time.sleep(interval)
        raise AssertionError(f"condition not met in {timeout}s (last: {last!r})\n{self.log()[-3000:]}")

    # ------------------------------------------------------------------ NATS

    def publish(self, payloads: list[bytes], *, subject: str | None = None,
                msg_ids: list[str | None] | None = None) -> list[Any]:
        """Publish to the service's stream; returns the PubAcks (or exceptions)."""
        return asyncio.run(publish(self.nats_url, subject or self.subjects[0], payloads, msg_ids))


async def publish(url: str, subject: str, payloads: list[bytes], msg_ids: list[str | None] | None = None,
                  *, window: int = 256) -> list[Any]:
    nc = await nats.connect(url)
    js = nc.jetstream()
    out: list[Any] = []
    try:
        for start in range(0, len(payloads), window):
            chunk = payloads[start:start + window]
            ids = (msg_ids or [None] * len(payloads))[start:start + window]
            futures = [js.publish(subject, data, headers={"Nats-Msg-Id": mid} if mid else None)
                       for data, mid in zip(chunk, ids, strict=True)]
            out.extend(await asyncio.gather(*futures, return_exceptions=True))
    finally:
        await nc.close()
    return out

"""Real HTTP servers on 127.0.0.1 that play agent-manager, reasoning-service and Slack.

Each stand-in is a small ASGI app served by uvicorn in a thread of the test process, on a
free port. It records every request and answers by a behaviour the test sets:

- ``AgentManager``: ``POST /api/v1/commands``; counts how often each idempotency key
  was *applied* (a non-dry-run remediation), fails chosen actions, can be slow.
- ``ReasoningService``: ``POST /api/v1/analyze``; answers a root cause, or 500s, or hangs.
- ``Slack``: any ``POST``; records the message.
"""

from __future__ import annotations

import asyncio
import collections
import json
import socket
import threading
import time
from typing import Any

import uvicorn


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class StandIn:
    """Base: an ASGI app that records JSON requests and answers ``respond(path, body)``."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    async def respond(self, path: str, body: Any) -> tuple[int, Any]:
        raise NotImplementedError

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        raw = b"".join(chunks)
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        self.requests.append({"path": scope["path"], "body": body, "at": time.time()})
        try:
            status, answer = await self.respond(scope["path"], body)
        except asyncio.CancelledError:
            # The client gave up (a timeout under test): nothing to answer, nothing to log.
            return
        payload = json.dumps(answer).encode() if not isinstance(answer, bytes) else answer
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": payload})

    def start(self) -> StandIn:
        # log_config=None: uvicorn's own handlers would write to pytest's captured (and later
        # closed) streams from this thread.
        config = uvicorn.Config(self, host="127.0.0.1", port=self.port, log_level="critical",
                                lifespan="on", access_log=False, log_config=None)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.time() + 10
        while not self._server.started:
            if time.time() > deadline:
                raise RuntimeError(f"{type(self).__name__} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=5)


class AgentManager(StandIn):
    def __init__(self) -> None:
        super().__init__()
        self.fail_actions: set[str] = set()
        self.delay: dict[str, float] = {}
        self.stdout: dict[str, str] = {}
        self.applied: collections.Counter[str] = collections.Counter()
        self.calls: collections.Counter[str] = collections.Counter()
        self.unavailable = 0          # answer this many more requests with 503 (an outage)
        self.down_until = 0.0         # ... or every request until this time.time()

    async def respond(self, path: str, body: Any) -> tuple[int, Any]:
        if path != "/api/v1/commands" or not isinstance(body, dict):
            return 404, {"error": "not found"}
        action = body.get("action", "")
        self.calls[body.get("idempotency_key", "")] += 1
        if self.unavailable > 0 or time.time() < self.down_until:
            self.unavailable = max(0, self.unavailable - 1)
            return 503, {"error": "agent-manager is restarting"}
        if action in self.delay:
            await asyncio.sleep(self.delay[action])
        if action in self.fail_actions:
            return 200, {"status": "error", "exit_code": 1, "stdout": "",
                         "stderr": f"error: {action} failed", "duration_ms": 3}
        if "dry_run" in body and body["dry_run"] is False:
            # Idempotency as the contract asks: the same key never applies twice.
            key = body.get("idempotency_key", "")
            if self.applied[key] == 0:
                self.applied[key] += 1
        return 200, {"status": "success", "exit_code": 0, "stdout": self.stdout.get(action, f"{action} ok"),
                     "stderr": "", "duration_ms": 2}


class ReasoningService(StandIn):
    def __init__(self, root_cause: str = "OOM", confidence: float = 0.87) -> None:
        super().__init__()
        self.root_cause = root_cause
        self.confidence = confidence
        self.status = 200
        self.delay = 0.0

    async def respond(self, path: str, body: Any) -> tuple[int, Any]:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.status != 200:
            return self.status, {"error": "unavailable"}
        return 200, {"root_cause": self.root_cause, "confidence": self.confidence,
                     "summary": f"{self.root_cause} detected", "recommendations": ["raise the limit"]}


class Slack(StandIn):
    async def respond(self, path: str, body: Any) -> tuple[int, Any]:
        return 200, b"ok"

    @property
    def messages(self) -> list[str]:
        return [r["body"].get("text", "") for r in self.requests if isinstance(r["body"], dict)]

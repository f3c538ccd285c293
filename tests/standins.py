"""Real HTTP servers on 127.0.0.1 that play agent-manager, reasoning-service and Slack.

Each stand-in is a small ASGI app served by uvicorn in a thread of the test process, on a
free port. It records every request and answers by a behaviour the test sets:

- ``AgentManager``: ``POST /api/v1/commands``; counts how often each idempotency key
  was *applied* (a non-dry-run remediation), fails chosen actions, can be slow.
- ``ReasoningService``: ``POST /api/v1/analyze``; answers a root cause, or 500s, or hangs.
- ``Slack``: any ``POST``; records the message.
- ``Teams``: a Workflows incoming webhook; accepts a message with an Adaptive Card (202).
- ``PagerDuty``: Events API v2 ``POST /v2/enqueue``; checks events as PagerDuty documents
  them (400 otherwise), answers 202 with the ``dedup_key``, and keeps each alert's state.
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


class Teams(StandIn):
    """A Teams Workflows webhook: 202 for a message whose attachment is an Adaptive Card."""

    async def respond(self, path: str, body: Any) -> tuple[int, Any]:
        problem = teams_problem(body)
        if problem:
            return 400, {"error": problem}
        return 202, b""

    @property
    def cards(self) -> list[dict[str, Any]]:
        return [r["body"]["attachments"][0]["content"] for r in self.requests if not teams_problem(r["body"])]


def teams_problem(body: Any) -> str | None:
    if not isinstance(body, dict) or body.get("type") != "message":
        return "type must be message"
    attachments = body.get("attachments")
    if not isinstance(attachments, list) or not attachments:
        return "attachments missing"
    first = attachments[0]
    if first.get("contentType") != "application/vnd.microsoft.card.adaptive":
        return "contentType must be application/vnd.microsoft.card.adaptive"
    card = first.get("content")
    if not isinstance(card, dict) or card.get("type") != "AdaptiveCard":
        return "content must be an AdaptiveCard"
    if tuple(int(p) for p in str(card.get("version", "0")).split(".")) < (1, 4):
        return "AdaptiveCard version 1.4 or later expected"
    if not isinstance(card.get("body"), list):
        return "card body missing"
    return None


PAGERDUTY_SEVERITIES = {"critical", "error", "warning", "info"}


class PagerDuty(StandIn):
    """Events API v2: ``POST /v2/enqueue``. ``alerts`` maps each dedup_key to its state
    (triggered, acknowledged, resolved), as PagerDuty would; ``events`` are the accepted ones."""

    def __init__(self) -> None:
        super().__init__()
        self.alerts: dict[str, str] = {}
        self.events: list[dict[str, Any]] = []
        self.unavailable = 0        # answer this many requests with ``unavailable_status``
        self.unavailable_status = 500   # or 429: PagerDuty's "too many requests, try later"

    async def respond(self, path: str, body: Any) -> tuple[int, Any]:
        if path != "/v2/enqueue":
            return 404, {"status": "not found"}
        if self.unavailable > 0:
            self.unavailable -= 1
            return self.unavailable_status, {"status": "error"}
        errors = pagerduty_errors(body)
        if errors:
            return 400, {"status": "invalid event", "message": "Event object is invalid", "errors": errors}
        key = body.get("dedup_key") or f"generated-{len(self.events)}"
        action = body["event_action"]
        if action == "trigger":
            self.alerts[key] = "triggered"
        elif key in self.alerts and self.alerts[key] != "resolved":
            self.alerts[key] = "resolved" if action == "resolve" else "acknowledged"
        self.events.append(body)
        return 202, {"status": "success", "message": "Event processed", "dedup_key": key}

    def actions(self, key: str) -> list[str]:
        return [e["event_action"] for e in self.events if e.get("dedup_key") == key]


def pagerduty_errors(body: Any) -> list[str]:
    if not isinstance(body, dict):
        return ["the body must be an object"]
    errors = []
    key = body.get("routing_key")
    if not isinstance(key, str) or len(key) != 32:
        errors.append("routing_key must be a 32 character integration key")
    action = body.get("event_action")
    if action not in ("trigger", "acknowledge", "resolve"):
        errors.append("event_action must be trigger, acknowledge or resolve")
    dedup = body.get("dedup_key")
    if dedup is not None and (not isinstance(dedup, str) or len(dedup) > 255):
        errors.append("dedup_key must be a string of at most 255 characters")
    if action in ("acknowledge", "resolve") and not dedup:
        errors.append("dedup_key is required to acknowledge or resolve")
    if action == "trigger":
        payload = body.get("payload")
        if not isinstance(payload, dict):
            return [*errors, "payload is required for trigger"]
        for name in ("summary", "source", "severity"):
            if not isinstance(payload.get(name), str) or not payload[name]:
                errors.append(f"payload.{name} is required")
        if len(str(payload.get("summary", ""))) > 1024:
            errors.append("payload.summary is longer than 1024 characters")
        if payload.get("severity") not in PAGERDUTY_SEVERITIES:
            errors.append("payload.severity must be critical, error, warning or info")
        for name in ("component", "group", "class"):
            if name in payload and not isinstance(payload[name], str):
                errors.append(f"payload.{name} must be a string")
        if "custom_details" in payload and not isinstance(payload["custom_details"], dict | str):
            errors.append("payload.custom_details must be an object")
    return errors


class Smtp:
    """A real SMTP server (aiosmtpd) on 127.0.0.1, in a thread of the test process.

    ``security`` is ``starttls`` (plain, STARTTLS required before anything else), ``tls``
    (TLS from the first byte) or ``none``. With a ``password``, AUTH is required (only over
    TLS, as aiosmtpd insists) and checked. Each accepted mail is kept in ``mails`` as
    ``(envelope sender, recipients, parsed message)``; ``logins`` lists who authenticated.
    ``cert`` is a self-signed certificate for 127.0.0.1, to give the client as its CA file.
    """

    def __init__(self, certs: Any, *, security: str = "starttls", username: str = "aetherius",
                 password: str | None = "s3cret-smtp-pw", refuse: tuple[str, ...] = ()) -> None:
        import ssl
        import subprocess
        from email import message_from_bytes, policy

        self.port = free_port()
        self.security, self.username, self.password = security, username, password
        self.refuse = set(refuse)
        self.mails: list[tuple[str, list[str], Any]] = []
        self.logins: list[str] = []
        self.cert, key = certs / "smtp-cert.pem", certs / "smtp-key.pem"
        if not self.cert.exists():
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                            "-out", str(self.cert), "-days", "2", "-subj", "/CN=127.0.0.1",
                            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                           check=True, capture_output=True)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, key)
        self._parse = lambda raw: message_from_bytes(raw, policy=policy.default)
        self._context = context
        self._controller: Any = None

    # aiosmtpd handler hooks
    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if address in self.refuse:
            return "550 5.1.1 no such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.mails.append((envelope.mail_from, list(envelope.rcpt_tos), self._parse(envelope.content)))
        return "250 Message accepted for delivery"

    def _authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> Any:
        from aiosmtpd.smtp import AuthResult, LoginPassword

        ok = (isinstance(auth_data, LoginPassword) and auth_data.login.decode() == self.username
              and auth_data.password.decode() == self.password)
        if ok:
            self.logins.append(self.username)
        return AuthResult(success=ok, handled=False)   # not handled: aiosmtpd answers 235 or 535

    def start(self) -> Smtp:
        from aiosmtpd.controller import Controller

        kwargs: dict[str, Any] = {"hostname": "127.0.0.1", "port": self.port}
        if self.password is not None:
            kwargs.update(authenticator=self._authenticate, auth_required=True)
        if self.security == "starttls":
            kwargs.update(tls_context=self._context, require_starttls=True)
        elif self.security == "tls":
            # TLS from the first byte: aiosmtpd cannot tell, so it is told AUTH is safe here (and
            # then will not require it without warning; ``logins`` shows who logged in).
            kwargs.update(ssl_context=self._context, server_hostname="127.0.0.1", auth_require_tls=False,
                          auth_required=False)
        self._controller = Controller(self, **kwargs)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            time.sleep(0.2)      # connections the clients dropped finish closing on the server's loop
            self._controller.stop()

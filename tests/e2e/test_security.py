"""A default start as an attacker on the same host would meet it: nothing changes without a
token, the first token is printed once, and cross-site writes are refused."""

from __future__ import annotations

import re

import httpx

from tests.e2e.harness import ServiceProcess

PRINTED = re.compile(r"^    (aeth_[A-Za-z0-9_-]{40,})$", re.M)
SEED_LIKE = {"id": "planted", "trigger_type": "manual",
             "steps": [{"id": "note", "type": "notification", "config": {"channel": "log", "message": "x"}}]}


def test_a_first_start_prints_one_admin_token_and_refuses_anonymous_changes(
        tmp_path, pg_dsn, redis_url, redis_prefix, nats_url, nats_prefix):
    service = ServiceProcess(tmp_path, pg_dsn=pg_dsn, redis_url=redis_url, redis_prefix=redis_prefix,
                             nats_url=nats_url, nats_prefix=nats_prefix, bootstrap=False)
    service.start()
    try:
        tokens = PRINTED.findall(service.log())
        assert len(tokens) == 1, service.log()[-2000:]
        token = tokens[0]
        # The log line says a token was made, and does not carry it.
        (notice,) = [line for line in service.log().splitlines() if "admin token 'admin' was created" in line]
        assert token not in notice
        admin = {"Authorization": f"Bearer {token}"}

        # Anonymous: every change refused, every read too; the probes say only ready.
        for method, path, body in [("POST", "/api/v1/workflows", SEED_LIKE),
                                   ("POST", "/api/v1/strategies", {"id": "x", "symptoms": []}),
                                   ("POST", "/api/v1/events", [{"kind": "Event"}]),
                                   ("POST", "/api/v1/workflows/diagnose_pod_crashloop/execute", {}),
                                   ("POST", "/api/v1/executions/exec-1/cancel", None),
                                   ("POST", "/api/v1/rules/reload", None),
                                   ("POST", "/api/v1/tokens", {"name": "me", "role": "admin"}),
                                   ("GET", "/api/v1/executions", None), ("GET", "/api/v1/audit", None)]:
            answer = httpx.request(method, f"{service.url}{path}", json=body, timeout=10)
            assert answer.status_code == 401, (method, path, answer.text)
        assert httpx.get(f"{service.url}/readyz", timeout=10).json() == {"ready": True}

        # The cross-origin chain, with a valid token even: refused.
        evil = httpx.post(f"{service.url}/api/v1/workflows", json=SEED_LIKE, timeout=10,
                          headers={**admin, "Origin": "http://evil.example"})
        assert evil.status_code == 403
        plain = httpx.post(f"{service.url}/api/v1/workflows", content=b'{"id": "planted"}', timeout=10,
                           headers={**admin, "Content-Type": "text/plain"})
        assert plain.status_code == 415

        # With the token: it works, and the audit trail says who.
        created = httpx.post(f"{service.url}/api/v1/workflows", json=SEED_LIKE, headers=admin, timeout=10)
        assert created.status_code == 201, created.text
        query = {"action": "workflow.create", "actor": "admin"}
        trail = httpx.get(f"{service.url}/api/v1/audit", params=query, headers=admin,
                          timeout=10).json()["items"]
        assert [(r["actor_kind"], r["actor"], r["target_id"]) for r in trail] == [
            ("token", "admin", "planted")]
    finally:
        assert service.stop() == 0
    # A second start of the same deployment makes no other token.
    service.start()
    try:
        assert len(PRINTED.findall(service.log())) == 1
    finally:
        service.stop()

"""The HTTP API's app over fake deps (no servers): what ``create_app`` touches, the 503s
while parts are missing, the probes, and that starting an execution is one call."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.api import ApiDeps, create_app
from engine.auth import Principal, Role
from engine.metrics import Metrics
from engine.rules.generation import Generation, ReloadStatus
from engine.rules.model import Workflow
from engine.runner import Started
from engine.storage.queries import Page
from engine.store import Execution

REPO = Path(__file__).resolve().parents[2]
WORKFLOW = Workflow.model_validate({"id": "w", "trigger_type": "manual",
                                    "steps": [{"id": "a", "type": "wait", "config": {"duration": "1s"}}]})


class Untouchable:
    """A part that fails the test if anything at all is asked of it."""

    def __init__(self, name: str) -> None:
        object.__setattr__(self, "_name", name)

    def __getattr__(self, attr: str) -> Any:
        raise AssertionError(f"{self._name}.{attr} was touched")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"{self._name}() was called")


async def _not_ready() -> dict[str, Any]:
    return {"ready": False, "checks": {"postgres": "down"}, "reasons": ["starting"]}


async def _no_cache() -> dict[str, Any] | None:
    return None


class FakeTokens:
    """One token per role, named after it: ``<role>-token``."""

    async def verify(self, token: str) -> Principal | None:
        role = token.removesuffix("-token")
        return Principal("token", f"{role}-user", Role(role)) if role in set(Role) else None


class RecordingAudit:
    def __init__(self) -> None:
        self.records: list[tuple[str, str, str | None, str | None]] = []

    async def record(self, who: Principal, action: str, target_kind: str | None = None,
                     target_id: str | None = None, detail: dict[str, Any] | None = None) -> None:
        self.records.append((who.name, action, target_kind, target_id))

    async def page(self, **_filters: Any) -> Page:
        return Page([], None)


def deps(**parts: Any) -> ApiDeps:
    base: dict[str, Any] = {"queries": None, "rules": None, "executions": None, "ingest": None,
                            "readiness": _not_ready, "cached_generation": _no_cache, "metrics": Metrics(),
                            "replica": "unit", "auth": FakeTokens(), "tokens": None,
                            "audit": RecordingAudit()}
    return ApiDeps(**{**base, **parts})


def call(app: Any, method: str, url: str, token: str | None = "admin-token", **kwargs: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with httpx.AsyncClient(transport=transport, base_url="http://api.test",
                                     headers=headers) as client:
            return await client.request(method, url, **kwargs)

    return asyncio.run(go())


def test_create_app_touches_nothing_but_its_deps_and_those_only_when_asked() -> None:
    untouchable = {name: Untouchable(name) for name in
                   ("queries", "rules", "executions", "ingest", "readiness", "cached_generation", "metrics")}
    app = create_app(deps(**untouchable))
    assert call(app, "GET", "/healthz").json() == {"status": "ok"}
    spec = call(app, "GET", "/openapi.json").json()
    assert {"Workflow", "Strategy", "RulesStatus"} <= set(spec["components"]["schemas"])
    assert "warnings" in spec["components"]["schemas"]["RulesStatus"]["required"]
    # Asked for, a part is used (and the probe says what went wrong with it).
    probe = call(app, "GET", "/readyz")
    assert probe.status_code == 503
    assert probe.json()["reasons"] == ["readiness failed: AssertionError: readiness() was called"]


def test_two_apps_do_not_share_their_deps() -> None:
    first, second = Metrics(), Metrics()
    first.events_in.labels("http").inc(7)
    assert 'source="http"} 7.0' in call(create_app(deps(metrics=first)), "GET", "/metrics").text
    assert 'source="http"} 7.0' not in call(create_app(deps(metrics=second)), "GET", "/metrics").text


@pytest.mark.parametrize(("method", "url"), [
    ("GET", "/api/v1/workflows"), ("GET", "/api/v1/workflows/w"), ("POST", "/api/v1/workflows"),
    ("DELETE", "/api/v1/strategies/s"), ("POST", "/api/v1/workflows/w/execute"),
    ("GET", "/api/v1/executions"), ("POST", "/api/v1/executions/e/cancel"), ("GET", "/api/v1/incidents"),
    ("POST", "/api/v1/events"), ("GET", "/api/v1/rules/status"), ("POST", "/api/v1/rules/reload"),
])
def test_a_part_not_built_yet_is_a_503(method: str, url: str) -> None:
    response = call(create_app(deps()), method, url, json={})
    assert response.status_code == 503, response.text
    assert response.json() == {"detail": "the service is starting"}


def test_readiness_decides_the_probe_status() -> None:
    not_ready = call(create_app(deps()), "GET", "/readyz")
    assert not_ready.status_code == 503 and not_ready.json()["reasons"] == ["starting"]

    async def ready() -> dict[str, Any]:
        return {"ready": True, "checks": {"postgres": "ok"}, "reasons": [], "replica": "unit"}

    answer = call(create_app(deps(readiness=ready)), "GET", "/readyz")
    assert answer.status_code == 200 and answer.json()["replica"] == "unit"

    async def broken() -> dict[str, Any]:
        raise RuntimeError("boom")

    failed = call(create_app(deps(readiness=broken)), "GET", "/readyz")
    assert failed.status_code == 503 and failed.json()["reasons"] == ["readiness failed: RuntimeError: boom"]


class FakeRules:
    def __init__(self) -> None:
        self.generation = Generation(3, {}, {"w": WORKFLOW}, "d1g35t", files=2)
        self.status = ReloadStatus(generation=3, warnings=["db:workflows/x:1: steps: left out"])
        self.directory = REPO / "rules"

    async def workflow(self, workflow_id: str, version: int | None = None) -> Workflow | None:
        return self.generation.workflows.get(workflow_id)

    async def reload(self, reason: str) -> bool:
        return True


class FakeExecutions:
    """Records what the API asks of it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    async def start(self, workflow: Workflow, *, incident: dict[str, Any], events: list[dict[str, Any]],
                    context: dict[str, Any], triggered_by: str | None = None) -> Started:
        self.calls.append(("start", (workflow.id, incident, events, context)))
        self.triggered_by = triggered_by
        execution = Execution(id="exec-1", workflow_id=workflow.id, workflow_version=workflow.version)
        return Started(execution, asyncio.create_task(asyncio.sleep(0, execution)))

    def cancel(self, execution_id: str) -> bool:
        self.calls.append(("cancel", execution_id))
        return False

    def running(self) -> list[str]:
        self.calls.append(("running", None))
        return []


def test_starting_an_execution_is_one_call_and_no_bookkeeping() -> None:
    executions, metrics = FakeExecutions(), Metrics()
    app = create_app(deps(rules=FakeRules(), executions=executions, metrics=metrics))
    answer = call(app, "POST", "/api/v1/workflows/w/execute",
                  json={"incident": {"namespace": "shop"}, "context": {"who": "unit"}})
    assert answer.status_code == 202, answer.text
    assert answer.json() == {"execution_id": "exec-1", "status": "running", "workflow_id": "w",
                             "workflow_version": 1, "dry_run": True, "href": "/api/v1/executions/exec-1"}
    assert executions.calls == [("start", ("w", {"namespace": "shop"}, [], {"who": "unit"}))]
    rendered = metrics.render().decode()
    assert "aetherius_executions_running 0.0" in rendered
    assert "aetherius_executions_total{" not in rendered
    assert call(app, "POST", "/api/v1/workflows/nope/execute").status_code == 404


def test_rules_status_shows_warnings_and_survives_the_cache() -> None:
    async def cache_down() -> dict[str, Any] | None:
        raise ConnectionError("redis is down")

    status = call(create_app(deps(rules=FakeRules(), cached_generation=cache_down)), "GET",
                  "/api/v1/rules/status").json()
    assert status["warnings"] == ["db:workflows/x:1: steps: left out"]
    assert (status["generation"], status["digest"], status["workflows"], status["files"]) == (
        3, "d1g35t", 1, 2)
    assert status["cached_generation"] is None


def test_the_api_does_not_import_the_service() -> None:
    code = "import sys, engine.api; print(sorted(m for m in sys.modules if m.startswith('engine.service')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


def test_a_405_names_every_method_of_its_path() -> None:
    app = create_app(deps())
    for method, url, allow in (("OPTIONS", "/api/v1/workflows/x", "DELETE, GET, PUT"),
                               ("PATCH", "/api/v1/strategies", "GET, POST"),
                               ("GET", "/api/v1/executions/e-1/cancel", "POST")):
        response = call(app, method, url)
        assert (response.status_code, response.headers["allow"]) == (405, allow)


def test_parameters_that_are_not_clean_utf8_are_refused_before_any_route() -> None:
    app = create_app(deps())     # no parts: a route that ran would answer 503
    for url in ("/api/v1/workflows/a%00", "/api/v1/incidents?namespace=%00", "/api/v1/executions/%ff",
                "/api/v1/executions?status=%c3%28", "/healthz?x=%00"):
        response = call(app, "GET", url)
        assert response.status_code == 400, (url, response.text)
    spec = call(app, "GET", "/openapi.json").json()
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if operation.get("parameters"):
                assert "400" in operation["responses"], (method, path)
                for parameter in operation["parameters"]:
                    options = parameter["schema"].get("anyOf", [parameter["schema"]])
                    assert all(o.get("pattern") == "^[^\\u0000]*$" for o in options
                               if o.get("type") == "string" and "enum" not in o and "format" not in o)

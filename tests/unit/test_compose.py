"""docker-compose.yml and the Dockerfile say what an operator expects (no Docker here: they
are read, not run)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from engine.config import load_config, plain

REPO = Path(__file__).resolve().parents[2]
INFRA = ("postgres", "redis", "nats")


def _interpolate(text: str) -> str:
    """What compose does with the host environment empty: ``${VAR:-default}`` -> default."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?-([^}]*))?\}", lambda m: m.group(1) or "", text)


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(_interpolate((REPO / "docker-compose.yml").read_text(encoding="utf-8")))


def _environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def _command(service: dict) -> list[str]:
    command = service.get("command") or []
    return command.split() if isinstance(command, str) else [str(part) for part in command]


def test_the_four_services(compose: dict) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", "redis", "nats", "orchestrator"}
    assert services["postgres"]["image"].split(":")[1].startswith("16")
    assert services["redis"]["image"].split(":")[1].startswith("7")
    assert services["nats"]["image"].split(":")[1].startswith("2.10")
    assert services["orchestrator"]["build"] in (".", {"context": "."})


def test_nats_runs_with_jetstream(compose: dict) -> None:
    command = _command(compose["services"]["nats"])
    assert "-js" in command or "--jetstream" in command
    assert "-sd" in command  # the JetStream store is on the volume
    store = command[command.index("-sd") + 1]
    assert any(str(volume).endswith(f":{store}") for volume in compose["services"]["nats"]["volumes"])


def test_the_orchestrator_finds_the_servers_by_service_name(compose: dict) -> None:
    env = _environment(compose["services"]["orchestrator"])
    nats_url = urlsplit(env["AETHERIUS_NATS__URL"])
    assert (nats_url.scheme, nats_url.hostname, nats_url.port) == ("nats", "nats", 4222)
    dsn = urlsplit(env["AETHERIUS_DATABASE__DSN"])
    assert (dsn.scheme, dsn.hostname, dsn.port, dsn.path) == ("postgresql", "postgres", 5432,
                                                             "/aetherius_orchestrator")
    postgres_env = _environment(compose["services"]["postgres"])
    assert dsn.password == postgres_env["POSTGRES_PASSWORD"]
    assert dsn.path[1:] == postgres_env["POSTGRES_DB"]
    redis_url = urlsplit(env["AETHERIUS_REDIS__URL"])
    assert (redis_url.scheme, redis_url.hostname, redis_url.port) == ("redis", "redis", 6379)


def test_the_variables_reach_the_configuration(compose: dict) -> None:
    """The names are the ones engine.config reads (AETHERIUS_<SECTION>__<KEY>)."""
    env = _environment(compose["services"]["orchestrator"])
    config = load_config(REPO / "config" / "config.yaml", environ=env)
    assert config.nats.url == "nats://nats:4222"
    assert plain(config.database.dsn) == "postgresql://postgres:postgres@postgres:5432/aetherius_orchestrator"
    assert config.redis.url == "redis://redis:6379/0"
    assert config.http.port == 8081
    assert str(config.rules.dir) == "/app/rules"
    # unset on the host: empty, which the configuration reads as "not configured"
    assert config.agent_manager.url is None
    assert config.ai.reasoning_service_url is None
    assert config.notifications.slack.webhook_url is None


def test_service_urls_and_secrets_come_from_the_host(raw: dict) -> None:
    env = _environment(raw["services"]["orchestrator"])
    for name in ("AETHERIUS_AGENT_MANAGER__URL", "AETHERIUS_AI__REASONING_SERVICE_URL",
                 "AETHERIUS_NOTIFICATIONS__SLACK__WEBHOOK_URL"):
        assert re.fullmatch(r"\$\{" + name + r"(:?-)?\}", env[name]), env[name]
    assert "hooks.slack.com" not in (REPO / "docker-compose.yml").read_text(encoding="utf-8")


def test_port_8081_is_published(compose: dict) -> None:
    ports = compose["services"]["orchestrator"]["ports"]
    published = {str(p) if not isinstance(p, dict) else f"{p.get('published')}:{p['target']}" for p in ports}
    assert "8081:8081" in published
    for name in INFRA:  # the servers stay on the compose network
        assert "ports" not in compose["services"][name]


def test_the_orchestrator_waits_for_healthy_servers(compose: dict) -> None:
    services = compose["services"]
    depends_on = services["orchestrator"]["depends_on"]
    assert set(depends_on) == set(INFRA)
    for name in INFRA:
        assert depends_on[name]["condition"] == "service_healthy"
        assert services[name]["healthcheck"]["test"], name
    assert "/healthz" in " ".join(services["orchestrator"]["healthcheck"]["test"])


def test_rules_are_mounted_for_live_editing(compose: dict) -> None:
    volumes = [str(v) for v in compose["services"]["orchestrator"]["volumes"]]
    assert any(v.split(":")[1] == "/app/rules" for v in volumes), volumes
    assert set(compose["volumes"]) >= {"postgres-data", "nats-data"}  # data outlives the containers


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text(encoding="utf-8"))
    lines = [line.strip() for line in text.splitlines()]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
            for line in lines if line and not line.startswith("#")]


def _final_stage() -> list[tuple[str, str]]:
    instructions = _dockerfile()
    start = max(i for i, (op, _) in enumerate(instructions) if op == "FROM")
    return instructions[start:]


def test_dockerfile_runs_aetherius_serve() -> None:
    stage = _final_stage()
    assert stage[0][1].split()[0] == "python:3.11-slim"
    (cmd,) = [args for op, args in stage if op == "CMD"]
    assert json.loads(cmd) == ["aetherius", "serve"]
    assert ("EXPOSE", "8081") in stage
    users = [args for op, args in stage if op == "USER"]
    assert users and users[-1] not in ("root", "0")
    (healthcheck,) = [args for op, args in stage if op == "HEALTHCHECK"]
    assert "/healthz" in healthcheck and ":8081" in healthcheck


def test_dockerfile_builds_durable_rules_and_installs_the_project() -> None:
    instructions = _dockerfile()
    runs = " ".join(args for op, args in instructions if op == "RUN")
    assert "gcc" in runs
    assert re.search(r"pip install[^&]* \.(\s|$)", runs)
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert 'aetherius = "engine.cli:main"' in pyproject  # the CMD's executable

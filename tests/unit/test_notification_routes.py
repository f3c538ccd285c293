"""Routing and the channels' configuration: which channels an incident goes to, and what
the configuration refuses before anything is sent."""

from __future__ import annotations

import pytest

from engine.config import Config, load_config
from engine.exceptions import ConfigError
from steps.channels import Route, pagerduty_severity, pick


def test_the_first_matching_route_decides_unless_it_continues():
    routes = (Route(severity=("critical",), namespace=("prod", "prod-*"), channels=("pagerduty", "slack")),
              Route(strategy=("pvc_*",), channels=("email",), cont=True),
              Route(namespace=("staging",), channels=("teams", "email")),
              Route(channels=("log",)))
    crit_prod = {"severity": "critical", "namespace": "prod-eu", "strategy": "pod_crashloop"}
    assert pick(routes, ("slack",), crit_prod).channels == ("pagerduty", "slack")
    assert pick(routes, ("slack",), crit_prod).routes == (0,)
    # severities compare without case; namespaces and strategies are globs
    assert pick(routes, (), {**crit_prod, "severity": "CRITICAL"}).channels == ("pagerduty", "slack")
    pvc = {"severity": "medium", "namespace": "staging", "strategy": "pvc_pending"}
    assert pick(routes, (), pvc).channels == ("email", "teams")      # each channel once, in order
    assert pick(routes, (), pvc).routes == (1, 2)
    assert pick(routes, (), {"namespace": "dev"}).channels == ("log",)
    # nothing matches: the default channels
    assert pick(routes[:3], ("slack",), {"namespace": "dev"}).channels == ("slack",)
    assert pick(routes[:3], ("slack",), {"namespace": "dev"}).why.startswith("notifications.default_channels")
    # a field the route names and the incident lacks does not match
    assert pick(routes[:1], (), {"namespace": "prod"}).channels == ()


def test_our_severities_map_to_pagerdutys_four():
    assert [pagerduty_severity(s) for s in ("critical", "high", "medium", "low", "info", "High")] == [
        "critical", "error", "warning", "info", "info", "error"]
    assert pagerduty_severity(None) == "warning" and pagerduty_severity("weird") == "warning"
    mapping = Config.model_validate({"notifications": {"pagerduty": {"severities": {"High": "critical"}}}})
    assert pagerduty_severity("high", mapping.notifications.pagerduty.severities) == "critical"


def test_routes_come_from_the_config(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("""\
notifications:
  webhooks: {ops: "http://hooks/ops"}
  routes:
    - match: {severity: [critical], namespace: [prod]}
      channels: [pagerduty, slack]
      continue: true
    - channels: ["webhook:ops"]
  default_channels: [log]
""")
    settings = load_config(path, environ={}).step_settings()
    assert settings.routes == (
        Route(channels=("pagerduty", "slack"), severity=("critical",), namespace=("prod",), cont=True),
        Route(channels=("webhook:ops",)))
    assert settings.default_channels == ("log",)


def problems(tmp_path, text: str, environ: dict[str, str] | None = None) -> list[str]:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ=environ or {})
    return [str(p) for p in caught.value.problems]


def test_the_config_refuses_what_could_not_be_sent(tmp_path):
    found = problems(tmp_path, """\
notifications:
  routes:
    - match: {severity: [critical]}
      channels: [pager, "webhook:nope"]
    - match: {namespace: [prod]}
      channels: []
""")
    assert len(found) == 2
    assert found[0].endswith(":4: notifications.routes[0].channels: unknown channel 'pager' (one of slack, "
                             "teams, pagerduty, email, log, or webhook:<name> naming notifications.webhooks)")
    assert ":6: notifications.routes[1].channels" in found[1]
    found = problems(tmp_path, "notifications:\n  routes: [{channels: ['webhook:nope']}]\n")
    assert found and "webhook(s) that notifications.webhooks does not have: webhook:nope" in found[0]
    found = problems(tmp_path, "notifications:\n  email: {host: smtp.example}\n")
    assert found and "sender: needed when host is set" in found[0]
    found = problems(tmp_path, "notifications:\n  email: {host: smtp, sender: a@b.c, security: none}\n",
                     {"AETHERIUS_NOTIFICATIONS__EMAIL__PASSWORD": "hunter2-smtp"})
    assert found and "clear text" in found[0] and not any("hunter2" in p for p in found)
    found = problems(tmp_path,
                     "notifications:\n  pagerduty: {severities: {high: urgent}, resolve_on: [fixed]}\n")
    assert len(found) == 2


def test_the_secrets_of_the_channels_stay_secret(tmp_path):
    environ = {"AETHERIUS_NOTIFICATIONS__PAGERDUTY__ROUTING_KEY": "hunter2hunter2hunter2hunter2abcd",
               "AETHERIUS_NOTIFICATIONS__TEAMS__WEBHOOK_URL": "https://teams.example/hunter2-teams",
               "AETHERIUS_NOTIFICATIONS__EMAIL__PASSWORD": "hunter2-smtp"}
    path = tmp_path / "config.yaml"
    path.write_text("notifications:\n  email: {host: smtp.example, sender: a@b.example, username: me}\n")
    config = load_config(path, environ=environ)
    settings = config.step_settings()
    for text in (repr(config), str(config.model_dump()), repr(settings)):
        assert "hunter2" not in text, text
    assert settings.pagerduty_routing_key == environ["AETHERIUS_NOTIFICATIONS__PAGERDUTY__ROUTING_KEY"]
    assert settings.teams_webhook_url == "https://teams.example/hunter2-teams"
    assert settings.email.password == "hunter2-smtp" and settings.email.host == "smtp.example"

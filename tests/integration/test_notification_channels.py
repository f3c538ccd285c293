"""Each notification channel against a real local stand-in of its service, with the payload
its service documents: Slack (Block Kit), Microsoft Teams (an Adaptive Card), PagerDuty
(Events API v2), email (a real SMTP server, STARTTLS and TLS), and routing between them.
Then the service's own PagerDuty pages: triggered when an incident opens, resolved when it
closes."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from standins import PagerDuty, Smtp, Teams

from engine.service.background import Background
from engine.service.mail import SmtpMailer
from engine.service.notifier import IncidentNotifier
from engine.service.transport import make_client
from engine.store import Execution, StepRun
from steps.base import Settings
from steps.channels import EmailSettings, Route

ROUTING_KEY = "f3a9c1d2e4b5a6978812c3d4e5f6a7b8"      # 32 characters, as PagerDuty's
SMTP_PASSWORD = "s3cret-smtp-pw"
INCIDENT = {
    "id": "inc-7f3a", "strategy": "pod_crashloop", "key": "shop/checkout", "namespace": "shop",
    "workload": "checkout", "workload_kind": "Deployment", "pod": "checkout-7d9f8c6b5-x2x4k",
    "container": "checkout", "node": "node-a3", "reason": "BackOff", "cluster": "prod-eu",
    "message": "Back-off restarting failed container", "count": 4, "severity": "high",
    "first_seen": "2026-11-20T10:00:00Z",
}
EXECUTION = "exec-channels-1"


def workflow_yaml(notify: dict[str, Any]) -> str:
    return json.dumps({"id": "channels", "steps": [
        {"id": "analyse", "type": "ai_analysis", "on_success": ["fix"]},
        {"id": "fix", "type": "remediation", "config": {"action": "restart_rollout"}, "on_success": ["tell"]},
        {"id": "tell", "type": "notification", "config": notify},
    ]})


@pytest.fixture
def flow(load_workflow, agent, reasoning, caplog):
    """Run the analyse -> fix -> tell workflow live with these settings; return the execution
    and everything that could leak a secret (outputs, errors, log lines)."""
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="engine")   # whatever an earlier test left it at

    def go(notify: dict[str, Any], incident: dict[str, Any] = INCIDENT, **settings: Any):
        workflow = load_workflow(workflow_yaml(notify))
        values: dict[str, Any] = dict(agent_manager_url=agent.url, reasoning_service_url=reasoning.url,
                                      dry_run=False, live=True, public_url="https://aetherius.example")
        values.update(settings)

        async def run() -> Execution:
            from engine.runner import WorkflowRunner

            async with make_client() as http:
                runner = WorkflowRunner(http=http, settings=Settings(**values), mailer=SmtpMailer())
                return await runner.run(workflow, incident=incident, execution_id=EXECUTION)

        execution = asyncio.run(run())
        seen = json.dumps([(r.output, r.error) for r in execution.runs], default=str) + caplog.text
        return execution, seen

    return go


def tell(execution: Execution) -> StepRun:
    (run,) = [r for r in execution.runs if r.step_id == "tell"]
    return run


@pytest.fixture
def teams(_standins) -> Teams:
    standin = Teams().start()
    _standins.append(standin)
    return standin


@pytest.fixture
def pagerduty(_standins) -> PagerDuty:
    standin = PagerDuty().start()
    _standins.append(standin)
    return standin


@pytest.fixture
def smtp(tmp_path_factory):
    started: list[Smtp] = []
    certs = tmp_path_factory.mktemp("certs")

    def start(**kwargs: Any) -> Smtp:
        server = Smtp(certs, **kwargs).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
    gc.collect()    # what the SMTP sessions left is collected here, inside the test (see SMTP_SOCKETS)


# aiosmtpd (the tests' SMTP server) at times leaves the socket transport of a session that
# ended in an error (a refused handshake, a failed AUTH) to the garbage collector, whose
# ResourceWarning would then fail whichever test runs at that moment. The tests that talk
# to it accept that warning; a standalone loop of the same sends through SmtpMailer, on one
# event loop, leaves none (and the mailer lets a failed connection close before returning).
SMTP_SOCKETS = pytest.mark.filterwarnings("ignore:unclosed transport:ResourceWarning",
                                          "ignore:unclosed <socket:ResourceWarning",
                                          "ignore::pytest.PytestUnraisableExceptionWarning")


def email_settings(server: Smtp, **overrides: Any) -> EmailSettings:
    values: dict[str, Any] = dict(host="127.0.0.1", port=server.port, security=server.security,
                                  username="aetherius", password=SMTP_PASSWORD,
                                  sender="aetherius@ops.example",
                                  to=("oncall@shop.example",), ca_file=str(server.cert), timeout=5.0)
    values.update(overrides)
    return EmailSettings(**values)


# ----------------------------------------------------------------------------- Slack


def test_slack_gets_block_kit_with_the_incident_the_cause_what_was_done_and_a_link(flow, slack):
    url = f"{slack.url}/services/T000/B000/s3cr3t-slack"
    execution, seen = flow({"channel": "slack", "message": "Restarted {{ incident.workload }} <!here>"},
                           slack_webhook_url=url)
    assert tell(execution).output["sent"] is True
    (request,) = slack.requests
    body = request["body"]
    # The text every client shows, with the line that says what was really done.
    assert "Restarted checkout" in body["text"] and "Changed: fix applied" in body["text"]
    blocks = body["blocks"]
    assert [b["type"] for b in blocks] == ["header", "section", "section", "section", "section", "actions"]
    assert blocks[0]["text"] == {"type": "plain_text", "text": "[high] pod_crashloop: shop/checkout"}
    # Event text cannot mention @here or forge a link: Slack's control characters are escaped.
    assert blocks[1]["text"]["text"] == "Restarted checkout &lt;!here&gt;"
    fields = {f["text"].split("\n")[0].strip("*"): f["text"].split("\n")[1] for f in blocks[2]["fields"]}
    assert fields["Incident"] == "inc-7f3a" and fields["Where"] == "shop/checkout"
    assert fields["Severity"] == "high" and fields["Reason"] == "BackOff x4"
    assert fields["Cluster"] == "prod-eu"
    assert len(blocks[2]["fields"]) <= 10
    assert blocks[3]["text"]["text"].startswith("*Root cause*: OOM (confidence 0.87)")
    assert "restart_rollout (applied)" in blocks[4]["text"]["text"]
    assert "*Changed: fix applied*" in blocks[4]["text"]["text"]
    (button,) = blocks[5]["elements"]
    assert button["type"] == "button" and button["url"] == f"https://aetherius.example/api/v1/executions/{EXECUTION}"
    assert "s3cr3t-slack" not in seen


# ----------------------------------------------------------------------------- Teams


def test_teams_gets_a_message_with_one_adaptive_card(flow, teams):
    url = f"{teams.url}/workflows/abc/triggers/manual/paths/invoke?sig=s3cr3t-teams"
    execution, seen = flow({"channel": "teams", "message": "Restarted {{ incident.workload }}"},
                           teams_webhook_url=url)
    assert tell(execution).status == "succeeded" and tell(execution).output["sent"] is True
    (request,) = teams.requests
    body = request["body"]
    assert body["type"] == "message"
    (attachment,) = body["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = attachment["content"]
    assert card["type"] == "AdaptiveCard" and card["version"] == "1.4"
    texts = [b.get("text") for b in card["body"] if b["type"] == "TextBlock"]
    assert texts[0] == "[high] pod_crashloop: shop/checkout" and texts[1] == "Restarted checkout"
    assert any(t.startswith("Root cause: OOM") for t in texts)
    assert texts[-1] == "Changed: fix applied"
    (facts,) = [b["facts"] for b in card["body"] if b["type"] == "FactSet"]
    assert {"title": "Incident", "value": "inc-7f3a"} in facts
    assert {"title": "Where", "value": "shop/checkout"} in facts
    assert card["actions"] == [{"type": "Action.OpenUrl", "title": "Open the execution",
                                "url": f"https://aetherius.example/api/v1/executions/{EXECUTION}"}]
    assert "s3cr3t-teams" not in seen


# ----------------------------------------------------------------------------- PagerDuty


def test_a_pagerduty_step_triggers_the_incidents_alert(flow, pagerduty):
    execution, seen = flow({"channel": "pagerduty", "message": "checkout keeps crashing"},
                           pagerduty_routing_key=ROUTING_KEY, pagerduty_url=pagerduty.url)
    output = tell(execution).output
    assert output["sent"] is True and output["dedup_key"] == "inc-7f3a"
    assert output["event_action"] == "trigger"
    (event,) = pagerduty.events
    assert event["routing_key"] == ROUTING_KEY and event["event_action"] == "trigger"
    assert event["dedup_key"] == "inc-7f3a"
    payload = event["payload"]
    assert payload["summary"] == "[high] pod_crashloop: shop/checkout"
    assert payload["severity"] == "error"            # our "high"
    assert payload["source"] == "prod-eu/shop/checkout"
    assert (payload["component"], payload["group"], payload["class"]) == ("checkout", "shop", "pod_crashloop")
    details = payload["custom_details"]
    assert details["incident"] == "inc-7f3a" and details["message"] == "checkout keeps crashing"
    assert details["root_cause"].startswith("OOM") and details["what_was_done"] == "Changed: fix applied"
    assert event["links"][0]["href"] == f"https://aetherius.example/api/v1/executions/{EXECUTION}"
    assert pagerduty.alerts == {"inc-7f3a": "triggered"}
    assert ROUTING_KEY not in seen


def test_a_step_can_resolve_the_alert_and_a_refused_event_is_not_retried(flow, pagerduty):
    execution, _ = flow({"channel": "pagerduty", "message": "fixed", "event_action": "resolve"},
                        pagerduty_routing_key=ROUTING_KEY, pagerduty_url=pagerduty.url)
    assert pagerduty.events == [
        {"routing_key": ROUTING_KEY, "event_action": "resolve", "dedup_key": "inc-7f3a"}]
    assert tell(execution).output["event_action"] == "resolve"

    # A routing key PagerDuty does not accept: 400, ServiceRejected, one attempt.
    execution, _ = flow({"channel": "pagerduty", "message": "x"}, pagerduty_routing_key="short",
                           pagerduty_url=pagerduty.url)
    run = tell(execution)
    assert run.status == "failed" and run.attempts == 1
    assert "PagerDuty rejected the request: HTTP 400" in (run.error or "")


# ----------------------------------------------------------------------------- email


@SMTP_SOCKETS
def test_email_over_starttls_with_credentials_from_the_environment(flow, smtp):
    server = smtp(security="starttls")
    execution, seen = flow({"channel": "email", "message": "Restarted {{ incident.workload }}"},
                           email=email_settings(server))
    output = tell(execution).output
    assert output["sent"] is True and output["to"] == ["oncall@shop.example"]
    assert server.logins == ["aetherius"]
    ((sender, recipients, mail),) = server.mails
    assert sender == "aetherius@ops.example" and recipients == ["oncall@shop.example"]
    assert mail["From"] == "aetherius@ops.example" and mail["To"] == "oncall@shop.example"
    assert mail["Subject"] == "[high] pod_crashloop: shop/checkout"
    assert mail["References"] == "<inc-7f3a.incident@ops.example>"    # mails of one incident thread together
    text = mail.get_content()
    assert "Restarted checkout" in text and "Incident: inc-7f3a" in text and "Root cause: OOM" in text
    assert "Changed: fix applied" in text
    assert f"Execution: https://aetherius.example/api/v1/executions/{EXECUTION}" in text
    assert SMTP_PASSWORD not in seen


@SMTP_SOCKETS
def test_email_over_tls_to_the_steps_recipients_says_who_was_refused(flow, smtp):
    server = smtp(security="tls", refuse=("gone@shop.example",))
    to = ["lead@shop.example", "gone@shop.example"]
    execution, _ = flow({"channel": "email", "message": "m", "to": to}, email=email_settings(server))
    output = tell(execution).output
    assert output["sent"] is True and output["refused"] == ["gone@shop.example"]
    ((_, recipients, _mail),) = server.mails
    assert recipients == ["lead@shop.example"] and server.logins == ["aetherius"]


@SMTP_SOCKETS
def test_email_with_a_wrong_password_fails_and_is_not_retried(flow, smtp):
    server = smtp(security="starttls")
    execution, seen = flow({"channel": "email", "message": "m"},
                           email=email_settings(server, password="wrong-pw-9"))
    run = tell(execution)
    assert run.status == "failed" and run.attempts == 1        # a 535 is not retried
    assert "authentication failed" in (run.error or "") and "wrong-pw-9" not in seen
    assert server.mails == []


@SMTP_SOCKETS
def test_email_to_a_server_whose_certificate_is_not_trusted_is_not_sent(flow, smtp):
    # Implicit TLS: the client's verification is the same for STARTTLS, and aiosmtpd's own
    # STARTTLS leaves its side of a refused handshake closing when the server stops.
    server = smtp(security="tls")
    execution, _ = flow({"channel": "email", "message": "m"}, email=email_settings(server, ca_file=None))
    run = tell(execution)
    assert run.status == "failed" and "CERTIFICATE_VERIFY_FAILED" in (run.error or "")
    assert server.mails == [] and server.logins == []


# ----------------------------------------------------------------------------- routes


def test_routes_pick_the_channels_by_severity_namespace_and_strategy(flow, slack, teams, pagerduty):
    routes = (Route(severity=("critical",), namespace=("prod", "prod-*"), channels=("pagerduty", "slack")),
              Route(strategy=("pvc_*",), channels=("teams",), cont=True),
              Route(namespace=("staging",), channels=("teams", "log")))
    settings = dict(slack_webhook_url=slack.url, teams_webhook_url=teams.url,
                    pagerduty_routing_key=ROUTING_KEY, pagerduty_url=pagerduty.url, routes=routes,
                    default_channels=("slack",))
    notify = {"channel": "route", "message": "{{ incident.id }}"}

    prod = {**INCIDENT, "id": "inc-prod", "namespace": "prod-eu", "severity": "critical"}
    execution, _ = flow(notify, prod, **settings)
    output = tell(execution).output
    assert output["channels"] == ["pagerduty", "slack"] and output["routes"] == "notifications.routes[0]"
    assert [d["channel"] for d in output["deliveries"] if d["sent"]] == ["pagerduty", "slack"]
    assert [e["dedup_key"] for e in pagerduty.events] == ["inc-prod"]
    assert pagerduty.events[0]["payload"]["severity"] == "critical"
    assert len(slack.requests) == 1 and teams.requests == []

    pvc_staging = {**INCIDENT, "id": "inc-pvc", "namespace": "staging", "strategy": "pvc_pending"}
    execution, _ = flow(notify, pvc_staging, **settings)
    assert tell(execution).output["channels"] == ["teams", "log"]      # route 1 continues into route 2
    assert len(teams.requests) == 1 and len(slack.requests) == 1 and len(pagerduty.events) == 1

    other = {**INCIDENT, "id": "inc-dev", "namespace": "dev", "severity": "critical"}
    execution, _ = flow(notify, other, **settings)
    output = tell(execution).output
    assert output["channels"] == ["slack"] and output["routes"].startswith("notifications.default_channels")
    assert len(slack.requests) == 2 and len(teams.requests) == 1 and len(pagerduty.events) == 1


def test_a_route_that_sent_to_one_channel_and_failed_another_says_so(flow, slack, pagerduty):
    pagerduty.unavailable = 100
    routes = (Route(channels=("slack", "pagerduty")),)
    execution, _ = flow({"channel": "route", "message": "m"}, slack_webhook_url=slack.url,
                        pagerduty_routing_key=ROUTING_KEY, pagerduty_url=pagerduty.url, routes=routes)
    run = tell(execution)
    # Retrying would post to Slack again: it fails for good, and says what was sent.
    assert run.status == "failed" and run.attempts == 1
    assert (run.error or "").startswith("sent to slack; failed: pagerduty: PagerDuty answered HTTP 500")
    assert len(slack.requests) == 1 and pagerduty.alerts == {}


@SMTP_SOCKETS
def test_dry_run_sends_nothing_and_says_so_for_each_channel(flow, slack, teams, pagerduty, smtp):
    server = smtp()
    routes = (Route(channels=("slack", "teams", "pagerduty", "email")),)
    execution, _ = flow({"channel": "route", "message": "m"}, live=False, virtual_time=True,
                        slack_webhook_url=slack.url, teams_webhook_url=teams.url,
                        pagerduty_routing_key=ROUTING_KEY, pagerduty_url=pagerduty.url,
                        email=email_settings(server), routes=routes)
    output = tell(execution).output
    assert output["sent"] is False and output["reason"] == "dry-run: nothing was sent"
    assert [(d["channel"], d["sent"], d["dry_run"]) for d in output["deliveries"]] == [
        ("slack", False, True), ("teams", False, True), ("pagerduty", False, True), ("email", False, True)]
    assert slack.requests == teams.requests == pagerduty.requests == [] and server.mails == []


def test_a_channel_without_configuration_is_skipped_naming_the_key_to_set(flow):
    for channel, key in (("teams", "notifications.teams.webhook_url"),
                         ("pagerduty", "notifications.pagerduty.routing_key"),
                         ("email", "notifications.email.host")):
        execution, _ = flow({"channel": channel, "message": "m"})
        run = tell(execution)
        assert run.status == "skipped" and run.output["sent"] is False and key in run.output["reason"]
    routes = (Route(channels=("teams", "pagerduty")),)
    execution, _ = flow({"channel": "route", "message": "m"}, routes=routes)
    run = tell(execution)
    assert run.status == "skipped" and [d["skipped"] for d in run.output["deliveries"]] == [True, True]


# ----------------------------------------------------------------------------- the service's pages


def finished(status: str, outcome: str, runs: tuple[StepRun, ...] = ()) -> Execution:
    return Execution(id=EXECUTION, workflow_id="channels", workflow_version=1, status=status,
                     incident_id=INCIDENT["id"], outcome=outcome, runs=list(runs))


def notifier_for(pagerduty: PagerDuty, **overrides: Any):
    values: dict[str, Any] = dict(pagerduty_routing_key=ROUTING_KEY, pagerduty_url=pagerduty.url,
                                  routes=(Route(severity=("high", "critical"),
                                                channels=("pagerduty", "slack")),))
    values.update(overrides)
    return Settings(**values)


def test_the_service_triggers_when_an_incident_opens_and_resolves_when_it_closes(pagerduty):
    async def go() -> None:
        background = Background()
        async with make_client() as http:
            notifier = IncidentNotifier(notifier_for(pagerduty), http, background, first_wait=0.05)
            # PagerDuty throttles (429) for a moment: the trigger is retried, and the resolve
            # still comes after it.
            pagerduty.unavailable, pagerduty.unavailable_status = 2, 429
            notifier.opened(INCIDENT, EXECUTION, "diagnose_pod_crashloop")
            notifier.closed(INCIDENT, finished("succeeded", "remediated"))
            await background.wait(10)

    asyncio.run(go())
    assert pagerduty.actions("inc-7f3a") == ["trigger", "resolve"]
    assert pagerduty.alerts == {"inc-7f3a": "resolved"}
    trigger = pagerduty.events[0]
    assert trigger["payload"]["summary"] == "[high] pod_crashloop: shop/checkout"
    assert trigger["payload"]["custom_details"]["what_was_done"] == (
        "Nothing was changed yet: the workflow has just started")
    assert trigger["links"][0]["href"].endswith(f"/api/v1/executions/{EXECUTION}")


def test_an_alert_stays_open_when_the_workflow_did_not_fix_it(pagerduty, caplog):
    caplog.set_level(logging.INFO, logger="engine")

    async def go() -> None:
        background = Background()
        async with make_client() as http:
            notifier = IncidentNotifier(notifier_for(pagerduty), http, background)
            notifier.opened(INCIDENT, EXECUTION, "w")
            notifier.closed(INCIDENT, finished("failed", "failed"))
            # A medium incident no route sends to PagerDuty: no page, nothing to resolve.
            low = {**INCIDENT, "id": "inc-low", "severity": "medium"}
            notifier.opened(low, "exec-2", "w")
            notifier.closed(low, finished("succeeded", "remediated"))
            await background.wait(10)

    asyncio.run(go())
    assert pagerduty.alerts == {"inc-7f3a": "triggered"}
    assert "stays open for a human" in caplog.text and ROUTING_KEY not in caplog.text


def test_an_alert_a_step_triggered_is_resolved_when_the_incident_closes(pagerduty):
    step = StepRun(seq=1, step_id="page", step_type="notification", status="succeeded",
                   output={"channel": "pagerduty", "sent": True, "event_action": "trigger",
                           "dedup_key": "inc-7f3a"})

    async def go() -> None:
        background = Background()
        async with make_client() as http:
            # No route pages this incident; the workflow's own step did.
            notifier = IncidentNotifier(notifier_for(pagerduty, routes=()), http, background)
            notifier.opened(INCIDENT, EXECUTION, "w")
            notifier.closed(INCIDENT, finished("succeeded", "remediated", (step,)))
            await background.wait(10)

    asyncio.run(go())
    assert pagerduty.actions("inc-7f3a") == ["resolve"]


def test_secrets_never_reach_a_repr(tmp_path: Path):
    settings = Settings(pagerduty_routing_key=ROUTING_KEY, teams_webhook_url="https://x/s3cr3t-teams",
                        email=EmailSettings(host="smtp", password=SMTP_PASSWORD, sender="a@b.c"))
    assert ROUTING_KEY not in repr(settings) and "s3cr3t-teams" not in repr(settings)
    assert SMTP_PASSWORD not in repr(settings)

"""``notification``: Slack, Microsoft Teams, PagerDuty, email, a generic JSON webhook, the
log, or the channels ``notifications.routes`` pick for the incident (``channel: route``).

The message is a template filled from the context; the notification adds what an
on-call engineer needs: the incident, the root cause, what was done (ending with what was
really done to the cluster, :func:`engine.outcomes.so_far`), and a link back to the
execution. Each channel's payload is the one its service documents (:mod:`steps.channels`).
Webhook URLs, the PagerDuty routing key and the SMTP password are secrets: they come from
the environment or the service config (by name, for generic webhooks), never from rule
files, and never reach the log or an output.

Without its configuration a channel is ``skipped`` (slack, teams, pagerduty, email), or
refused (a named webhook), live or not, so ``aetherius run`` and ``replay`` record what the
service would. In dry-run with a configuration, nothing is sent and the output says so
(``sent: false, dry_run: true``).
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from pydantic import model_validator

from engine.exceptions import NotAllowed, ServiceUnavailable, StepError
from engine.outcomes import so_far
from engine.statuses import StepStatus
from steps.base import Step, StepConfig, StepContext, StepResult
from steps.channels import (
    dedup_key,
    email_message,
    pagerduty_event,
    pick,
    slack_payload,
    teams_payload,
)
from steps.http import post_json
from steps.mail import send_mail

Channel = Literal["slack", "teams", "pagerduty", "email", "webhook", "log", "route"]


class NotificationConfig(StepConfig):
    channel: Channel = "log"
    message: str
    title: str | None = None
    # For channel webhook: the name of a webhook in the service config
    # (``notifications.webhooks.<name>``), never its URL.
    webhook: str | None = None
    # For email (also when a route picks it): the recipients instead of notifications.email.to.
    to: tuple[str, ...] | None = None
    # For pagerduty (also when a route picks it): what the event does to the incident's alert.
    event_action: Literal["trigger", "acknowledge", "resolve"] = "trigger"

    @model_validator(mode="after")
    def _webhook_named(self) -> NotificationConfig:
        if self.channel == "webhook" and not self.webhook:
            raise ValueError("channel webhook needs 'webhook: <name>' naming a configured webhook")
        if self.to is not None:
            bad = [a for a in self.to if "@" not in a or any(c in a for c in "\r\n,;")]
            if bad or not self.to:
                raise ValueError(f"to: expected email addresses, got {bad or 'none'}")
        return self


def _actions(steps: dict[str, Any]) -> list[str]:
    done = []
    for sid, record in steps.items():
        output = record.get("output")
        if isinstance(output, dict) and "applied" in output and output.get("action"):
            how = "applied" if output.get("applied") else (
                "dry-run" if output.get("dry_run") else output.get("reason", "not applied"))
            done.append(f"{output['action']} ({how})")
        elif record.get("status") == "failed" and record.get("type") == "remediation":
            done.append(f"{sid} failed: {record.get('error')}")
    return done


def compose(ctx: StepContext, config: NotificationConfig) -> dict[str, Any]:
    incident = ctx.incident
    analysis = ctx.names.get("analysis") or {}
    message = str(ctx.render(config.message))
    title = str(ctx.render(config.title)) if config.title else (
        f"[{incident.get('severity') or 'info'}] {incident.get('strategy') or ctx.workflow.id}: "
        f"{incident.get('key') or ''}".strip())
    link = f"{ctx.settings.public_url.rstrip('/')}/api/v1/executions/{ctx.execution_id}"
    lines = [f"*{title}*", message]
    if incident:
        where = f"{incident.get('namespace') or '-'}/{incident.get('workload') or incident.get('name')}"
        lines.append(f"Incident {incident.get('id')}: {incident.get('reason')} "
                     f"x{incident.get('count')} on {where}")
    if analysis:
        source = " (built-in classifier)" if analysis.get("source") == "builtin" else ""
        lines.append(f"Root cause: {analysis.get('root_cause')} "
                     f"(confidence {analysis.get('confidence', 0):.2f}){source}")
    actions = _actions(ctx.names.get("steps") or {})
    if actions:
        lines.append("Actions: " + "; ".join(actions))
    # Whatever the message says, this line says what was really done to the cluster.
    done = so_far(ctx.names.get("steps") or {})
    lines.append(done)
    lines.append(f"Execution: {link}")
    return {"title": title, "message": message, "text": "\n".join(lines), "execution_url": link,
            "incident": incident, "analysis": analysis or None, "actions": actions, "so_far": done}


class NotConfigured(Exception):
    """This channel has no configuration: the step is skipped (a named webhook: refused)."""


async def deliver(ctx: StepContext, channel: str, note: dict[str, Any],
                  config: NotificationConfig) -> dict[str, Any]:
    """Send ``note`` to one channel (``webhook:<name>`` for a named webhook). Returns what
    happened: ``{"channel", "sent", ...}`` (``reason`` when not sent). Raises
    :class:`NotConfigured` with the reason when the channel is not configured, and the
    step errors of the service's answer (:mod:`steps.http`, :mod:`steps.mail`)."""
    settings = ctx.settings
    if channel == "log":
        ctx.log.info("Notification: %s", note["text"].replace("\n", " | "))
        return {"channel": "log", "sent": True}
    extra: dict[str, Any] = {}
    if channel == "email":
        server = settings.email
        to = tuple(config.to or server.to)
        if not server.host or not server.sender:
            raise NotConfigured("notifications.email.host and notifications.email.sender are not configured")
        if not to:
            raise NotConfigured("no recipients: notifications.email.to is empty and the step names no 'to'")
        extra["to"] = list(to)
        if not settings.live:
            return {"channel": channel, "sent": False, "dry_run": True, "reason": "dry-run: nothing was sent",
                    **extra}
        refused = await send_mail(ctx.mailer, email_message(note, server.sender, to), server)
        if refused:
            extra["refused"] = refused
        ctx.log.info("Notification sent to email (%d recipient(s), %d refused)", len(to), len(refused))
        return {"channel": channel, "sent": True, **extra}

    url: str | None
    payload: Any
    if channel == "slack":
        url, payload, service = settings.slack_webhook_url, slack_payload(note), "Slack"
        missing = "notifications.slack.webhook_url is not configured"
    elif channel == "teams":
        url, payload, service = settings.teams_webhook_url, teams_payload(note), "Teams"
        missing = "notifications.teams.webhook_url is not configured"
    elif channel == "pagerduty":
        key = settings.pagerduty_routing_key
        url = f"{settings.pagerduty_url.rstrip('/')}/v2/enqueue" if key else None
        extra = {"event_action": config.event_action,
                 "dedup_key": dedup_key(note["incident"], ctx.execution_id)}
        payload = pagerduty_event(key or "", config.event_action, extra["dedup_key"], note=note,
                                  severities=settings.pagerduty_severities) if key else None
        service = "PagerDuty"
        missing = "notifications.pagerduty.routing_key is not configured"
    else:
        name = channel.removeprefix("webhook:")
        url = settings.webhooks.get(name)
        payload, service = {k: note[k] for k in ("title", "message", "text", "execution_url",
                                                  "incident", "analysis", "actions")}, "webhook"
        missing = f"webhook {name!r} is not configured (notifications.webhooks)"
        channel, extra = "webhook", {"webhook": name}
    if not url:
        raise NotConfigured(missing)
    if not settings.live:
        return {"channel": channel, "sent": False, "dry_run": True, "reason": "dry-run: nothing was sent",
                **extra}
    await post_json(ctx.http, url, payload, timeout=10.0, service=service, wait=ctx.paused)
    ctx.log.info("Notification sent to %s%s", channel, f" {extra['webhook']}" if "webhook" in extra else "")
    return {"channel": channel, "sent": True, **extra}


class Notification(Step):
    type_name = "notification"
    Config = NotificationConfig

    async def run(self, ctx: StepContext, config: NotificationConfig) -> StepResult:
        note = compose(ctx, config)
        if config.channel == "route":
            return await self._route(ctx, config, note)
        channel = f"webhook:{config.webhook}" if config.channel == "webhook" else config.channel
        try:
            outcome = await deliver(ctx, channel, note, config)
        except NotConfigured as exc:
            # Without a configuration, dry-run (replay, run without --live) ends the step as the
            # service would with the same configuration: skipped, or refused (a named webhook).
            if config.channel == "webhook":
                raise NotAllowed(str(exc)) from None
            ctx.log.log(logging.WARNING if ctx.settings.live else logging.INFO,
                        "Notification not sent: %s; text: %s", exc, note["text"].replace("\n", " | "))
            return StepResult(status=StepStatus.SKIPPED, output={"channel": config.channel, "sent": False,
                                                                "reason": str(exc), "text": note["text"]})
        outcome.pop("webhook", None)
        return StepResult(output={**outcome, "text": note["text"]})

    async def _route(self, ctx: StepContext, config: NotificationConfig, note: dict[str, Any]) -> StepResult:
        """Every channel the routes pick, each once. Nothing sent and a channel unavailable: the
        step fails retryably (a retry sends nothing twice). Something sent and another channel
        failing: it fails for good, saying which were sent, since a retry would send them again."""
        picked = pick(ctx.settings.routes, ctx.settings.default_channels, ctx.incident)
        deliveries: list[dict[str, Any]] = []
        errors: list[tuple[str, StepError]] = []
        for channel in picked.channels:
            try:
                deliveries.append(await deliver(ctx, channel, note, config))
            except NotConfigured as exc:
                deliveries.append({"channel": channel, "sent": False, "skipped": True, "reason": str(exc)})
            except StepError as exc:
                errors.append((channel, exc))
                deliveries.append({"channel": channel, "sent": False, "reason": f"{exc.kind}: {exc}"})
        sent = [d["channel"] if d["channel"] != "webhook" else f"webhook:{d['webhook']}"
                for d in deliveries if d["sent"]]
        if errors:
            failed = "; ".join(f"{c}: {e}" for c, e in errors)
            if not sent and all(e.retryable for _, e in errors):
                raise ServiceUnavailable(f"nothing was sent ({picked.why}): {failed}")
            said = f"sent to {', '.join(sent)}" if sent else "nothing was sent"
            raise StepError(f"{said}; failed: {failed}", retryable=False)
        for d in deliveries:
            if d.get("channel") == "webhook":
                d["channel"] = f"webhook:{d.pop('webhook')}"
        output = {"channel": "route", "routes": picked.why, "channels": list(picked.channels),
                  "sent": bool(sent), "deliveries": deliveries, "text": note["text"]}
        if all(d.get("skipped") for d in deliveries):
            ctx.log.log(logging.WARNING if ctx.settings.live else logging.INFO,
                        "Notification not sent: no channel of %s is configured (%s)",
                        ", ".join(picked.channels) or "(none)", picked.why)
            output["reason"] = "no channel picked is configured"
            return StepResult(status=StepStatus.SKIPPED, output=output)
        if not sent:
            output["dry_run"] = True
            output["reason"] = "dry-run: nothing was sent"
        return StepResult(output=output)

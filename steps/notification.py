"""``notification``: Slack incoming webhook, a generic JSON webhook, or the log.

The message is a template filled from the context; the notification adds what an
on-call engineer needs: the incident, the root cause, what was done, and a link back to
the execution. Webhook URLs are secrets: they come from the environment or the service
config (by name, for generic webhooks), never from rule files, and never reach the log.

Without a configured URL the step is ``skipped`` (Slack) or refused (a named webhook), live
or not, so ``aetherius run`` and ``replay`` record what the service would. In dry-run with
a URL, nothing is sent and the output says so (``sent: false, dry_run: true``).
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from pydantic import model_validator

from engine.exceptions import NotAllowed
from engine.outcomes import so_far
from engine.statuses import StepStatus
from steps.base import Step, StepConfig, StepContext, StepResult
from steps.http import post_json


class NotificationConfig(StepConfig):
    channel: Literal["slack", "webhook", "log"] = "log"
    message: str
    title: str | None = None
    # For channel webhook: the name of a webhook in the service config
    # (``notifications.webhooks.<name>``), never its URL.
    webhook: str | None = None

    @model_validator(mode="after")
    def _webhook_named(self) -> NotificationConfig:
        if self.channel == "webhook" and not self.webhook:
            raise ValueError("channel webhook needs 'webhook: <name>' naming a configured webhook")
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
    title = ctx.render(config.title) if config.title else (
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
    lines.append(so_far(ctx.names.get("steps") or {}))
    lines.append(f"Execution: {link}")
    return {"title": title, "message": message, "text": "\n".join(lines), "execution_url": link,
            "incident": incident, "analysis": analysis or None, "actions": actions}


class Notification(Step):
    type_name = "notification"
    Config = NotificationConfig

    async def run(self, ctx: StepContext, config: NotificationConfig) -> StepResult:
        note = compose(ctx, config)
        channel = config.channel
        if channel == "log":
            ctx.log.info("Notification: %s", note["text"].replace("\n", " | "))
            return StepResult(output={"channel": "log", "sent": True, "text": note["text"]})
        if channel == "slack":
            url, payload, service = ctx.settings.slack_webhook_url, {"text": note["text"]}, "Slack"
            missing = "notifications.slack.webhook_url is not configured"
        else:
            url = ctx.settings.webhooks.get(config.webhook or "")
            payload, service = {k: note[k] for k in ("title", "message", "text", "execution_url",
                                                      "incident", "analysis", "actions")}, "webhook"
            missing = f"webhook {config.webhook!r} is not configured (notifications.webhooks)"
        # Without a URL, dry-run (replay, run without --live) ends the step as the service
        # would with the same configuration: skipped (slack) or refused (a named webhook).
        if not url:
            if channel == "webhook":
                raise NotAllowed(missing)
            ctx.log.log(logging.WARNING if ctx.settings.live else logging.INFO,
                        "Notification not sent: %s; text: %s", missing, note["text"].replace("\n", " | "))
            return StepResult(status=StepStatus.SKIPPED, output={"channel": channel, "sent": False,
                                                        "reason": missing, "text": note["text"]})
        if not ctx.settings.live:
            return StepResult(output={"channel": channel, "sent": False, "dry_run": True,
                                      "reason": "dry-run: nothing was sent", "text": note["text"]})
        await post_json(ctx.http, url, payload, timeout=10.0, service=service, wait=ctx.paused)
        ctx.log.info("Notification sent to %s%s", channel, f" {config.webhook}" if config.webhook else "")
        return StepResult(output={"channel": channel, "sent": True, "text": note["text"]})

"""``notification``: Slack incoming webhook, a generic JSON webhook, or the log.

Webhook URLs are secrets: they come from the environment or the service config, looked
up by name, never from rule files.
"""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from steps.base import Step, StepConfig


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


class Notification(Step):
    type_name = "notification"
    Config = NotificationConfig

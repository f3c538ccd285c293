"""What the service itself tells the outside about incidents, besides their workflows' steps:
a PagerDuty alert per incident that the routes send to ``pagerduty``.

- When an incident opens and its execution starts, and ``notifications.routes`` (or
  ``notifications.default_channels``) pick ``pagerduty`` for it, an Events API v2
  ``trigger`` is sent, ``dedup_key`` = the incident id. So paging does not depend on each
  workflow having a PagerDuty step: the shipped workflows page as they are.
- A ``notification`` step with ``channel: pagerduty`` (or a route holding it) sends its own
  trigger with the same key: PagerDuty adds it to the same alert, with the root cause and
  what was done.
- When the incident closes (its execution ended), an alert that was triggered (by the
  routes, or by a step of that execution) is resolved if the execution's outcome is in
  ``notifications.pagerduty.resolve_on`` (default: ``remediated``). Otherwise it stays open
  for a human, and the log says why: closing an incident here means the workflow ended,
  not that the cluster is well.

The pure parts (payloads, routing) are :mod:`steps.channels`; this part owns the timing.
Sends run in the background, are retried while PagerDuty is unavailable, and a resolve for
an incident waits for that incident's trigger, so the two never arrive swapped. No failure
here stops an incident from opening or closing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from engine.exceptions import StepError
from engine.outcomes import outcome as outcome_of
from engine.service.background import Background
from engine.store import Execution
from steps.base import Settings
from steps.channels import EventAction, incident_note, pagerduty_event, pick
from steps.http import HttpClient, post_json

log = logging.getLogger(__name__)


class IncidentNotifier:
    def __init__(self, settings: Settings, http: HttpClient | None, background: Background, *,
                 attempts: int = 6, first_wait: float = 1.0,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.settings = settings
        self.http = http
        self.background = background
        self.attempts = attempts
        self.first_wait = first_wait
        self.sleep = sleep
        # The last send per incident id, so a resolve goes after its trigger.
        self._last: dict[str, asyncio.Task[Any]] = {}

    @property
    def configured(self) -> bool:
        return bool(self.settings.pagerduty_routing_key)

    def pages(self, incident: Mapping[str, Any]) -> bool:
        """Whether the routes send this incident to PagerDuty (and a routing key is set)."""
        s = self.settings
        return self.configured and "pagerduty" in pick(s.routes, s.default_channels, incident).channels

    def opened(self, incident: Mapping[str, Any], execution_id: str, workflow_id: str | None) -> None:
        """An incident opened and its execution starts: page if the routes say so."""
        if not self.pages(incident):
            return
        link = f"{self.settings.public_url.rstrip('/')}/api/v1/executions/{execution_id}"
        note = incident_note(incident, workflow_id, link)
        self._queue(str(incident.get("id")), "trigger", note)

    def closed(self, incident: Mapping[str, Any], execution: Execution | None) -> None:
        """The incident closed: resolve its alert if one was triggered and the outcome says so."""
        if not self.configured or not incident.get("id"):
            return
        key = str(incident["id"])
        if not (self.pages(incident) or (execution is not None and _step_triggered(execution))):
            return
        ended = _outcome(execution)
        if ended not in self.settings.pagerduty_resolve_on:
            log.info("Incident %s closed with outcome %s: its PagerDuty alert stays open for a human "
                     "(notifications.pagerduty.resolve_on: %s)", key, ended,
                     ", ".join(sorted(self.settings.pagerduty_resolve_on)) or "none",
                     extra={"incident_id": key})
            return
        self._queue(key, "resolve", None)

    def _queue(self, key: str, action: EventAction, note: dict[str, Any] | None) -> None:
        before = self._last.get(key)
        task = self.background.spawn(self._send(key, action, note, before))
        self._last[key] = task
        task.add_done_callback(lambda t: self._last.pop(key, None) if self._last.get(key) is t else None)

    async def _send(self, key: str, action: EventAction, note: dict[str, Any] | None,
                    before: asyncio.Task[Any] | None) -> None:
        if before is not None:
            await asyncio.wait([before])
        s = self.settings
        assert s.pagerduty_routing_key
        event = pagerduty_event(s.pagerduty_routing_key, action, key, note=note,
                                severities=s.pagerduty_severities)
        url = f"{s.pagerduty_url.rstrip('/')}/v2/enqueue"
        wait = self.first_wait
        for attempt in range(1, self.attempts + 1):
            try:
                await post_json(self.http, url, event, timeout=10.0, service="PagerDuty")
            except StepError as exc:
                if not exc.retryable or attempt == self.attempts:
                    log.error("PagerDuty %s for incident %s not sent: %s", action, key, exc,
                              extra={"incident_id": key})
                    return
                log.warning("PagerDuty %s for incident %s: %s; trying again in %.0fs", action, key, exc, wait,
                            extra={"incident_id": key})
                await self.sleep(wait)
                wait = min(wait * 2, 30.0)
                continue
            log.info("PagerDuty %s sent for incident %s (dedup_key %s)", action, key, key,
                     extra={"incident_id": key})
            return


def _outcome(execution: Execution | None) -> str:
    if execution is None:
        return "failed"
    if execution.outcome:
        return str(execution.outcome)
    return str(outcome_of(execution.status, [(r.step_type, r.status, r.output) for r in execution.runs]))


def _step_triggered(execution: Execution) -> bool:
    """A notification step of this execution sent a PagerDuty trigger (alone or in a route)."""
    for run in execution.runs:
        out = run.output if isinstance(run.output, dict) else {}
        if run.step_type != "notification":
            continue
        sent = [out] if out.get("channel") == "pagerduty" else [
            d for d in out.get("deliveries") or [] if isinstance(d, dict) and d.get("channel") == "pagerduty"]
        if any(d.get("sent") and d.get("event_action", "trigger") == "trigger" for d in sent):
            return True
    return False

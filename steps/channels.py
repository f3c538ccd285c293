"""The notification channels as data: what each outside service is sent, and who hears of what.

Pure functions, shared by the ``notification`` step and the service's incident notifier
(:mod:`engine.service.notifier`, which pages PagerDuty when an incident opens and resolves
the page when it closes):

- :func:`slack_payload`: Slack incoming webhook, ``text`` (the fallback every client shows)
  and Block Kit ``blocks`` (header, incident fields, root cause, what was done, a link
  button to the execution);
- :func:`teams_payload`: a Microsoft Teams incoming webhook (Workflows): a message with one
  Adaptive Card (v1.4) attachment;
- :func:`pagerduty_event`: an Events API v2 event (``POST {url}/v2/enqueue``), ``dedup_key``
  the incident id, our severities mapped to PagerDuty's;
- :func:`email_message`: an :class:`email.message.EmailMessage` for SMTP;
- :func:`pick`: the channels ``notifications.routes`` give an incident (by severity,
  namespace and strategy), for ``channel: route``.

Nothing here knows a URL, routing key or password: those come in ``Settings`` and are sent
by the step, never put into an output or a log line.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Any, Literal

# A route or the step names one of these; a generic webhook is "webhook:<name>".
CHANNELS = ("slack", "teams", "pagerduty", "email", "log")
PAGERDUTY_SEVERITIES = ("critical", "error", "warning", "info")
PagerDutySeverity = Literal["critical", "error", "warning", "info"]
EventAction = Literal["trigger", "acknowledge", "resolve"]
# Our severities (a strategy's ``severity``, free text) -> PagerDuty's four. Anything else: warning.
DEFAULT_PAGERDUTY_SEVERITIES: Mapping[str, str] = {
    "critical": "critical", "high": "error", "error": "error", "medium": "warning", "warning": "warning",
    "low": "info", "info": "info"}
FALLBACK_PAGERDUTY_SEVERITY = "warning"


def channel_problem(name: str) -> str | None:
    """Why ``name`` is not a channel a route may name (None: it is)."""
    if name in CHANNELS:
        return None
    if name.startswith("webhook:") and name[len("webhook:"):]:
        return None
    return (f"unknown channel {name!r} (one of {', '.join(CHANNELS)}, or webhook:<name> naming "
            "notifications.webhooks)")


# ----------------------------------------------------------------------------- routing


@dataclass(frozen=True)
class Route:
    """One entry of ``notifications.routes``: an incident whose severity, namespace and strategy
    each match (an empty list matches anything; namespaces and strategies may be globs such as
    ``prod-*``) goes to ``channels``. The first matching route decides, unless it says ``continue``,
    in which case the next matching ones add their channels too (as Alertmanager's routes)."""

    channels: tuple[str, ...]
    severity: tuple[str, ...] = ()
    namespace: tuple[str, ...] = ()
    strategy: tuple[str, ...] = ()
    cont: bool = False

    def matches(self, incident: Mapping[str, Any]) -> bool:
        return (_holds(self.severity, incident.get("severity"), glob=False)
                and _holds(self.namespace, incident.get("namespace"), glob=True)
                and _holds(self.strategy, incident.get("strategy"), glob=True))


def _holds(allowed: tuple[str, ...], value: Any, *, glob: bool) -> bool:
    if not allowed:
        return True
    if value is None:
        return False
    text = str(value)
    if glob:
        return any(fnmatch.fnmatchcase(text, pattern) for pattern in allowed)
    return text.lower() in {a.lower() for a in allowed}


@dataclass(frozen=True)
class Picked:
    channels: tuple[str, ...]
    routes: tuple[int, ...]       # indexes of the routes that matched; () means the default

    @property
    def why(self) -> str:
        if not self.routes:
            return "notifications.default_channels (no route matched)"
        return ", ".join(f"notifications.routes[{i}]" for i in self.routes)


def pick(routes: Sequence[Route], default: Sequence[str], incident: Mapping[str, Any]) -> Picked:
    """The channels for this incident: the first matching route's (and, while routes say
    ``continue``, the next matching ones'), else ``default``. Each channel once, in order."""
    chosen: list[str] = []
    matched: list[int] = []
    for index, route in enumerate(routes):
        if not route.matches(incident):
            continue
        matched.append(index)
        chosen.extend(c for c in route.channels if c not in chosen)
        if not route.cont:
            break
    if not matched:
        chosen = list(dict.fromkeys(default))
    return Picked(tuple(chosen), tuple(matched))


# ----------------------------------------------------------------------------- email settings


@dataclass(frozen=True)
class EmailSettings:
    """SMTP, as the service config gives it (``notifications.email``); ``host`` None: not configured."""

    host: str | None = None
    port: int = 587
    security: Literal["starttls", "tls", "none"] = "starttls"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sender: str | None = None
    to: tuple[str, ...] = ()
    timeout: float = 30.0
    ca_file: str | None = None


# ----------------------------------------------------------------------------- the note's parts


def where(incident: Mapping[str, Any]) -> str:
    namespace = incident.get("namespace")
    obj = incident.get("workload") or incident.get("name") or incident.get("pod")
    if namespace:
        return f"{namespace}/{obj or '-'}"
    return str(incident.get("node") or obj or "-")


def facts(incident: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The incident's fields a human looks at first, as (label, value), the empty ones left out."""
    if not incident:
        return []
    reason = incident.get("reason")
    count = incident.get("count")
    rows = [
        ("Incident", incident.get("id")),
        ("Strategy", incident.get("strategy")),
        ("Severity", incident.get("severity")),
        ("Where", where(incident)),
        ("Reason", f"{reason} x{count}" if reason and count else reason),
        ("Kind", incident.get("workload_kind") or incident.get("kind")),
        ("Pod", incident.get("pod")),
        ("Node", incident.get("node")),
        ("Cluster", incident.get("cluster")),
        ("First seen", incident.get("first_seen")),
    ]
    return [(label, str(value)) for label, value in rows if value not in (None, "")]


def root_cause(analysis: Mapping[str, Any] | None) -> str | None:
    if not analysis:
        return None
    source = " (built-in classifier)" if analysis.get("source") == "builtin" else ""
    try:
        confidence = f"{float(analysis.get('confidence') or 0):.2f}"
    except (TypeError, ValueError):
        confidence = "?"
    line = f"{analysis.get('root_cause')} (confidence {confidence}){source}"
    summary = analysis.get("summary")
    return f"{line}: {summary}" if summary else line


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def incident_note(incident: Mapping[str, Any], workflow_id: str | None, execution_url: str) -> dict[str, Any]:
    """The note the service itself sends when an incident opens (its page), before any step ran."""
    title = (f"[{incident.get('severity') or 'info'}] {incident.get('strategy')}: "
             f"{incident.get('key') or where(incident)}")
    message = (f"Incident {incident.get('id')} opened: {incident.get('reason')} x{incident.get('count')} "
               f"on {where(incident)}; workflow {workflow_id or '-'} started")
    so_far = "Nothing was changed yet: the workflow has just started"
    text = "\n".join([f"*{title}*", message, so_far, f"Execution: {execution_url}"])
    return {"title": title, "message": message, "text": text, "execution_url": execution_url,
            "incident": dict(incident), "analysis": None, "actions": [], "so_far": so_far}


# ----------------------------------------------------------------------------- Slack (Block Kit)

_SLACK_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})


def _mrkdwn(text: str) -> str:
    """Slack's three control characters escaped, so event text cannot forge a link or a mention."""
    return text.translate(_SLACK_ESCAPES)


def slack_payload(note: Mapping[str, Any]) -> dict[str, Any]:
    """``text`` (notifications and old clients) and ``blocks``: header, the message, the
    incident's fields, the root cause, what was done (ending with what was really done to
    the cluster) and a button to the execution. Within Block Kit's limits (header 150
    characters, a section 3,000, ten fields of 2,000)."""
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": _clip(str(note["title"]), 150)}},
        {"type": "section",
         "text": {"type": "mrkdwn", "text": _clip(_mrkdwn(str(note["message"])) or " ", 3000)}},
    ]
    fields = [{"type": "mrkdwn", "text": _clip(f"*{label}*\n{_mrkdwn(value)}", 2000)}
              for label, value in facts(note.get("incident") or {})[:10]]
    if fields:
        blocks.append({"type": "section", "fields": fields})
    cause = root_cause(note.get("analysis"))
    if cause:
        blocks.append({"type": "section", "text": {"type": "mrkdwn",
                                                   "text": _clip("*Root cause*: " + _mrkdwn(cause), 3000)}})
    done = [f"• {_mrkdwn(a)}" for a in note.get("actions") or []]
    done.append(f"*{_mrkdwn(str(note['so_far']))}*")
    blocks.append({"type": "section", "text": {"type": "mrkdwn",
                                               "text": _clip("*What was done*\n" + "\n".join(done), 3000)}})
    blocks.append({"type": "actions", "elements": [
        {"type": "button", "action_id": "open_execution", "url": note["execution_url"],
         "text": {"type": "plain_text", "text": "Open the execution"}}]})
    return {"text": note["text"], "blocks": blocks}


# ----------------------------------------------------------------------------- Microsoft Teams


def teams_payload(note: Mapping[str, Any]) -> dict[str, Any]:
    """A Teams incoming webhook (Workflows) message: one Adaptive Card, version 1.4."""
    body: list[dict[str, Any]] = [
        {"type": "TextBlock", "text": str(note["title"]), "weight": "Bolder", "size": "Medium", "wrap": True},
        {"type": "TextBlock", "text": str(note["message"]), "wrap": True},
    ]
    rows = facts(note.get("incident") or {})
    if rows:
        body.append({"type": "FactSet", "facts": [{"title": label, "value": value} for label, value in rows]})
    cause = root_cause(note.get("analysis"))
    if cause:
        body.append({"type": "TextBlock", "text": f"Root cause: {cause}", "wrap": True})
    for action in note.get("actions") or []:
        body.append({"type": "TextBlock", "text": f"- {action}", "wrap": True, "spacing": "None"})
    body.append({"type": "TextBlock", "text": str(note["so_far"]), "weight": "Bolder", "wrap": True})
    card = {"$schema": "http://adaptivecards.io/schemas/adaptive-card.json", "type": "AdaptiveCard",
            "version": "1.4", "body": body,
            "actions": [{"type": "Action.OpenUrl", "title": "Open the execution",
                         "url": note["execution_url"]}]}
    return {"type": "message", "attachments": [
        {"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": None, "content": card}]}


# ----------------------------------------------------------------------------- PagerDuty


def pagerduty_severity(severity: Any, mapping: Mapping[str, str] = DEFAULT_PAGERDUTY_SEVERITIES) -> str:
    value = mapping.get(str(severity).lower()) if severity is not None else None
    return value if value in PAGERDUTY_SEVERITIES else FALLBACK_PAGERDUTY_SEVERITY


def dedup_key(incident: Mapping[str, Any], execution_id: str) -> str:
    """The incident id: every event about one incident lands on one PagerDuty alert."""
    return str(incident.get("id") or execution_id)


def pagerduty_event(routing_key: str, action: EventAction, key: str, *, note: Mapping[str, Any] | None = None,
                    severities: Mapping[str, str] = DEFAULT_PAGERDUTY_SEVERITIES,
                    client_url: str | None = None) -> dict[str, Any]:
    """An Events API v2 event. ``trigger`` carries the payload (summary up to 1,024 characters,
    source, severity, component, group, class, custom_details) and a link to the execution;
    ``acknowledge`` and ``resolve`` need only the key."""
    event: dict[str, Any] = {"routing_key": routing_key, "event_action": action, "dedup_key": key}
    if action != "trigger":
        return event
    note = note or {}
    incident: Mapping[str, Any] = note.get("incident") or {}
    source = "/".join(str(p) for p in (incident.get("cluster"), where(incident)) if p) or "aetherius"
    details: dict[str, Any] = {label.lower().replace(" ", "_"): value for label, value in facts(incident)}
    details["message"] = note.get("message")
    cause = root_cause(note.get("analysis"))
    if cause:
        details["root_cause"] = cause
    if note.get("actions"):
        details["actions"] = list(note["actions"])
    details["what_was_done"] = note.get("so_far")
    if note.get("execution_url"):
        details["execution"] = note["execution_url"]
    event["payload"] = {
        "summary": _clip(str(note.get("title") or key), 1024),
        "source": source,
        "severity": pagerduty_severity(incident.get("severity"), severities),
        "component": str(incident.get("workload") or incident.get("name") or incident.get("node") or "-"),
        "group": str(incident.get("namespace") or incident.get("node") or "-"),
        "class": str(incident.get("strategy") or incident.get("reason") or "incident"),
        "custom_details": details,
    }
    if incident.get("first_seen"):
        event["payload"]["timestamp"] = incident["first_seen"]
    event["client"] = "Aetherius Orchestrator"
    if client_url or note.get("execution_url"):
        event["client_url"] = client_url or note.get("execution_url")
    if note.get("execution_url"):
        event["links"] = [{"href": note["execution_url"], "text": "The execution in Aetherius"}]
    return event


# ----------------------------------------------------------------------------- email

_HEADER_UNSAFE = re.compile(r"[\r\n]+")


def email_message(note: Mapping[str, Any], sender: str, to: Iterable[str], *,
                  now: datetime | None = None) -> EmailMessage:
    """A plain-text mail: the title as subject, the note's text as body. Mails about one
    incident thread together (``References`` names the incident)."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = ", ".join(to)
    message["Subject"] = _clip(_HEADER_UNSAFE.sub(" ", str(note["title"])), 200)
    message["Date"] = format_datetime(now or datetime.now(UTC))
    domain = sender.rpartition("@")[2].strip("> ") or "aetherius.invalid"
    message["Message-ID"] = make_msgid("aetherius", domain=domain)
    incident: Mapping[str, Any] = note.get("incident") or {}
    if incident.get("id"):
        thread = f"<{_HEADER_UNSAFE.sub('', str(incident['id']))}.incident@{domain}>"
        message["References"] = thread
        message["In-Reply-To"] = thread
        message["X-Aetherius-Incident"] = _HEADER_UNSAFE.sub(" ", str(incident["id"]))
    lines = [str(note["message"]), ""]
    lines += [f"{label}: {value}" for label, value in facts(incident)]
    cause = root_cause(note.get("analysis"))
    if cause:
        lines += ["", f"Root cause: {cause}"]
    if note.get("actions"):
        lines += ["", "Actions: " + "; ".join(note["actions"])]
    lines += ["", str(note["so_far"]), "", f"Execution: {note['execution_url']}"]
    message.set_content("\n".join(lines))
    return message

"""One incident's story in time order: its events, the incident, each step run of its
execution, the analysis, approvals asked for and decided, notifications, and the outcome
(and, for an admin, the audit records against the execution)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

EPOCH = datetime.min.replace(tzinfo=UTC)


def _at(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, int | float) and value > 0:
        return datetime.fromtimestamp(value, UTC)
    return EPOCH


def entries(incident: dict[str, Any], events: list[dict[str, Any]], execution: dict[str, Any] | None,
            audit: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Timeline entries {at, kind, title, ...}, oldest first."""
    out: list[dict[str, Any]] = []
    for group in events:
        out.append({"at": _at(group["first"]), "kind": "events", "group": group,
                    "title": f"{group['occurrences']} × {group['reason']} on {group['kind']} "
                             f"{group['namespace'] or '-'}/{group['name']} ({group['state']})"})
    out.append({"at": _at(incident.get("opened_at")), "kind": "incident", "incident": incident,
                "title": f"incident opened: {incident['strategy_id']} {incident['key']}"})
    if incident.get("closed_at"):
        out.append({"at": _at(incident["closed_at"]), "kind": "closed", "title": "incident closed"})
    if execution is not None:
        out.append({"at": _at(execution.get("started_at")), "kind": "execution", "execution": execution,
                    "title": f"execution {execution['id']} of {execution['workflow_id']} "
                             f"v{execution['workflow_version']} started"})
        for step in execution.get("steps", []):
            kind = {"ai_analysis": "analysis", "notification": "notification"}.get(step["step_type"], "step")
            out.append({"at": _at(step.get("started_at") or step.get("finished_at")), "kind": kind,
                        "step": step,
                        "title": f"{step['step_type']} step {step['step_id']}: {step['status']}"})
        for approval in execution.get("approvals", []):
            out.append({"at": _at(approval.get("requested_at")), "kind": "approval", "approval": approval,
                        "title": f"approval {approval['id']} asked for {approval['action']} "
                                 f"(step {approval['step_id']})"})
            if approval.get("decided_at"):
                who = approval.get("decided_by") or "nobody"
                out.append({"at": _at(approval["decided_at"]), "kind": "decision", "approval": approval,
                            "title": f"approval {approval['id']} {approval['status']} by {who}"
                                     f" via {approval.get('channel') or '-'}"})
        if execution.get("finished_at"):
            out.append({"at": _at(execution["finished_at"]), "kind": "outcome", "execution": execution,
                        "title": f"execution {execution['status']}: "
                                 f"outcome {execution.get('outcome') or '-'}"})
    for record in audit or []:
        out.append({"at": _at(record.get("at")), "kind": "audit", "record": record,
                    "title": f"audit: {record['action']} by {record['actor_kind']}:{record['actor']}"})
    out.sort(key=lambda e: e["at"])
    return out


def analysis(execution: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The outputs of the execution's ai_analysis steps that succeeded, last first."""
    if execution is None:
        return []
    found = [s for s in execution.get("steps", []) if s["step_type"] == "ai_analysis"
             and isinstance(s.get("output"), dict)]
    return list(reversed(found))

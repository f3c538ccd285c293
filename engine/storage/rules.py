"""Stored rule rows (the ``workflows`` and ``strategies`` tables) back to rule-file specs."""

from __future__ import annotations

from typing import Any

WORKFLOW_COLUMNS = ("id", "name", "description", "trigger_type", "trigger_config", "status", "priority",
                    "timeout", "steps")
STRATEGY_COLUMNS = ("id", "name", "category", "symptoms", "workflow_id", "priority", "enabled")


def workflow_spec(row: dict[str, Any]) -> dict[str, Any]:
    """A stored workflow row (or version snapshot) back to its spec."""
    if row.get("definition"):
        return dict(row["definition"])
    return {k: row[k] for k in WORKFLOW_COLUMNS if row.get(k) not in (None, "")}


def strategy_spec(row: dict[str, Any]) -> dict[str, Any]:
    if row.get("definition"):
        return dict(row["definition"])
    return {k: row[k] for k in STRATEGY_COLUMNS if row.get(k) is not None}

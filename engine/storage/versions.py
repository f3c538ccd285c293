"""The versions of workflows and strategies (``workflow_versions``, ``strategy_versions``,
migration 009), and the per-arm outcomes of experiments.

The versions are written by the rule tables' triggers, whoever changes a row (a rule file
mirrored, the API, SQL): here they are only read, and an API rule is restored, which is a
write like a PUT whose version row says ``restore`` and the version it came from.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from engine.auth import Principal
from engine.outcomes import Outcome
from engine.storage.actors import acting_as
from engine.storage.queries import STRATEGY_FIELDS, WORKFLOW_FIELDS

# kind -> (rule table, versions table, id column of the versions table, the columns a write sets)
TABLES: dict[str, tuple[str, str, str, tuple[str, ...]]] = {
    "workflow": ("workflows", "workflow_versions", "workflow_id", WORKFLOW_FIELDS),
    "strategy": ("strategies", "strategy_versions", "strategy_id", STRATEGY_FIELDS),
}
VERSION_COLUMNS = ("version, change, digest, source, actor_kind, actor, actor_role, restored_from, "
                   "created_at")


def _version(row: asyncpg.Record) -> dict[str, Any]:
    out = dict(row)
    kind, name = out.pop("actor_kind"), out.pop("actor")
    out["author"] = f"{kind}:{name}" if kind and name else "unknown"
    out["author_role"] = out.pop("actor_role")
    return out


class RuleVersions:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def history(self, kind: str, rule_id: str) -> list[dict[str, Any]]:
        """Every version of one rule, oldest first (without their content)."""
        _, versions, column, _ = TABLES[kind]
        rows = await self.pool.fetch(
            f"SELECT {VERSION_COLUMNS} FROM {versions} WHERE {column} = $1 ORDER BY version", rule_id)
        return [_version(r) for r in rows]

    async def get(self, kind: str, rule_id: str, version: int) -> dict[str, Any] | None:
        """One version, with ``row``: the rule's row as it was stored."""
        _, versions, column, _ = TABLES[kind]
        row = await self.pool.fetchrow(
            f"SELECT {VERSION_COLUMNS}, definition AS row FROM {versions} "
            f"WHERE {column} = $1 AND version = $2",
            rule_id, version)
        return None if row is None else _version(row)

    async def restore(self, kind: str, rule_id: str, values: dict[str, Any], from_version: int,
                      who: Principal, *, exists: bool) -> dict[str, Any] | None:
        """Write ``values`` (the columns of version ``from_version``) as the rule's new content,
        audited as ``who``'s; the version it makes says ``restore`` and where it came from. A
        deleted rule is created again (``exists`` false, as ``source = 'api'``). None: the row
        changed meanwhile (it was deleted, created, or taken over by a rule file)."""
        table, _, _, fields = TABLES[kind]
        async with acting_as(self.pool, who) as conn:
            await conn.execute("SELECT set_config('aetherius.restored_from', $1, true)", str(from_version))
            if exists:
                sets = ", ".join(f"{k} = ${i}" for i, k in enumerate(fields, start=2))
                row = await conn.fetchrow(
                    f"UPDATE {table} SET {sets} WHERE id = $1 AND source <> 'file' RETURNING *",
                    rule_id, *(values[k] for k in fields))
            else:
                params = ", ".join(f"${i}" for i in range(2, len(fields) + 2))
                row = await conn.fetchrow(
                    f"INSERT INTO {table} (id, {', '.join(fields)}, source) VALUES ($1, {params}, 'api') "
                    "ON CONFLICT (id) DO NOTHING RETURNING *", rule_id, *(values[k] for k in fields))
        return None if row is None else dict(row)

    # ------------------------------------------------------------------ experiments

    async def arm_outcomes(self, strategy_id: str, since: datetime | None = None) -> list[dict[str, Any]]:
        """Per arm of a strategy's experiment: incidents (open, closed), executions and their
        outcomes, the time from an incident's opening to its close, and the incidents that fired
        again within their cooldown (``refired``: any suppressed event) with those events."""
        args: list[Any] = [strategy_id]
        when = ""
        if since is not None:
            args.append(since)
            when = "AND i.opened_at >= $2"
        rows = await self.pool.fetch(f"""
            SELECT i.arm, min(i.workflow_id) AS workflow_id, count(*) AS incidents,
                   count(*) FILTER (WHERE i.status = 'open') AS open,
                   count(e.id) AS executions,
                   count(*) FILTER (WHERE i.suppressed > 0) AS refired,
                   coalesce(sum(i.suppressed), 0)::bigint AS suppressed_events,
                   coalesce(sum(i.late), 0)::bigint AS late_events,
                   avg(extract(epoch FROM i.closed_at - i.opened_at))::float8 AS mean,
                   percentile_cont(0.5) WITHIN GROUP (
                       ORDER BY extract(epoch FROM i.closed_at - i.opened_at))::float8 AS p50,
                   percentile_cont(0.9) WITHIN GROUP (
                       ORDER BY extract(epoch FROM i.closed_at - i.opened_at))::float8 AS p90,
                   max(extract(epoch FROM i.closed_at - i.opened_at))::float8 AS max
            FROM incidents i LEFT JOIN workflow_executions e ON e.id = i.execution_id
            WHERE i.strategy_id = $1 AND i.arm IS NOT NULL {when}
            GROUP BY i.arm ORDER BY i.arm""", *args)
        outcomes = await self.pool.fetch(f"""
            SELECT i.arm, coalesce(e.outcome, 'running') AS outcome, count(*) AS n
            FROM incidents i JOIN workflow_executions e ON e.id = i.execution_id
            WHERE i.strategy_id = $1 AND i.arm IS NOT NULL {when}
            GROUP BY 1, 2""", *args)
        counted: dict[str, dict[str, int]] = {}
        for r in outcomes:
            counted.setdefault(r["arm"], {})[r["outcome"]] = r["n"]
        out = []
        for r in rows:
            closed = r["incidents"] - r["open"]
            out.append({
                "arm": r["arm"], "workflow_id": r["workflow_id"], "incidents": r["incidents"],
                "open": r["open"],
                "executions": r["executions"], "refired": r["refired"],
                "suppressed_events": r["suppressed_events"], "late_events": r["late_events"],
                "outcomes": {**{o.value: 0 for o in Outcome}, "running": 0, **counted.get(r["arm"], {})},
                "open_to_close_seconds": None if not closed else {
                    "count": closed, "mean": r["mean"], "p50": r["p50"], "p90": r["p90"], "max": r["max"]},
            })
        return out

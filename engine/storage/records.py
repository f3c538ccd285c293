"""Service records in PostgreSQL: events, dead letters, incidents, replicas, stored rules.

Queries for the HTTP API live here too, so the SQL of the service is in one place
(with the runner's transitions in :mod:`engine.storage.executions`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

from engine.correlation import Incident
from engine.events import Event

log = logging.getLogger(__name__)


def _ts(value: float | None) -> datetime | None:
    return None if not value else datetime.fromtimestamp(value, UTC)


class Repository:
    def __init__(self, pool: asyncpg.Pool, replica: str) -> None:
        self.pool = pool
        self.replica = replica

    # ------------------------------------------------------------------ events

    async def record_events(self, rows: list[tuple[Event, str | None, tuple]]) -> set[str]:
        """Insert (event, subject, (state, strategy id, incident id)) rows; return the ids
        that were new (the others were recorded before, by any replica)."""
        if not rows:
            return set()
        # The batch as one JSON document that PostgreSQL takes apart: [event, subject, state,
        # strategy id, incident id] per row, the event serialised by orjson from the dataclass
        # itself (all its fields: the payload). A fifth of the client's CPU of twelve array
        # parameters encoded element by element, and less of PostgreSQL's.
        batch = orjson.dumps([(event, subject, state, strategy_id, incident_id)
                              for event, subject, (state, strategy_id, incident_id) in rows],
                             default=str).decode()
        inserted = await self.pool.fetch("""
            INSERT INTO events (id, source, subject, kind, namespace, name, reason, state, owner,
                                strategy_id, incident_id, payload)
            SELECT p->>'id', p->>'source', r->>1, p->>'kind', p->>'namespace', p->>'name',
                   p->>'reason', r->>2, $2, r->>3, r->>4, p
            FROM jsonb_array_elements($1::text::jsonb) AS b(r), LATERAL (SELECT r->0 AS p) AS e
            ON CONFLICT (id) DO NOTHING
            RETURNING id""", batch, self.replica)
        return {r["id"] for r in inserted}

    async def recent_event_ids(self, seconds: float) -> list[str]:
        rows = await self.pool.fetch(
            "SELECT id FROM events WHERE received_at > now() - make_interval(secs => $1::float8)", seconds)
        return [r["id"] for r in rows]

    async def set_event_states(self, states: list[tuple[str, str, str | None, str | None]]) -> None:
        """(event id, state, strategy id, incident id) for each event."""
        if not states:
            return
        await self.pool.execute("""
            UPDATE events e SET state = s.state, strategy_id = s.strategy_id, incident_id = s.incident_id
            FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
                 AS s(id, state, strategy_id, incident_id)
            WHERE e.id = s.id""",
            [s[0] for s in states], [s[1] for s in states], [s[2] for s in states], [s[3] for s in states])

    async def attach_events(self, event_ids: list[str], incident_id: str, state: str = "attached") -> None:
        if event_ids:
            await self.pool.execute(
                "UPDATE events SET state = $3, incident_id = $2 WHERE id = ANY($1::text[])",
                event_ids, incident_id, state)

    async def repoint_events(self, from_incident: str, to_incident: str) -> None:
        await self.pool.execute("UPDATE events SET incident_id = $2 WHERE incident_id = $1",
                                from_incident, to_incident)

    async def claim_pending_events(self, lease_seconds: float, *, own: bool) -> list[dict[str, Any]]:
        """Events to correlate again: hits still pending, and events recorded but never
        processed ('received'), of replicas that are gone; with ``own``, also this
        replica's from before it restarted (call that only at start-up)."""
        rows = await self.pool.fetch("""
            UPDATE events e SET owner = $1
            WHERE e.state IN ('pending', 'received') AND (
                ($3 AND (e.owner IS NULL OR e.owner = $1)) OR (e.owner <> $1 AND NOT EXISTS (
                    SELECT 1 FROM replicas r WHERE r.id = e.owner
                    AND r.heartbeat_at > now() - make_interval(secs => $2::float8))))
            RETURNING e.id, e.payload, e.received_at, e.state""", self.replica, lease_seconds, own)
        return sorted(({"id": r["id"], "payload": r["payload"], "received_at": r["received_at"],
                        "state": r["state"]} for r in rows), key=lambda r: r["received_at"])

    async def dead_letters_many(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """(source, subject, reason, raw excerpt, headers, raw size, raw SHA-256) rows."""
        if rows:
            await self.pool.executemany(
                "INSERT INTO dead_letters (source, subject, reason, raw, headers, raw_size, raw_sha256)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7)", [tuple(row) for row in rows])

    # ------------------------------------------------------------------ incidents

    async def open_incident(self, incident: Incident, execution_id: str | None = None,
                            event_ids: list[str] | None = None) -> tuple[str, str | None]:
        """Open the incident and attach its events, unless its (strategy, key) is already
        open or cooling down, whichever replica did that. Returns ("opened", None),
        ("open", id of the incident already open) or ("cooling", id of the closed one).

        Opening and closing take the same per-key advisory lock, so a replica never opens
        a second incident in the instant another closes the first (the cooldown is seen)."""
        s = incident.summary()
        row = await self.pool.fetchrow(
            "SELECT * FROM aetherius_open_incident($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, "
            "$13, $14, $15, $16, $17)",
            incident.id, incident.strategy.id, incident.key_text, incident.strategy.severity,
            incident.workflow_id, s["namespace"], s["workload"], s["node"], s["reason"], incident.events,
            incident.inhibited, incident.context(), _ts(incident.first_seen), _ts(incident.last_seen),
            execution_id, incident.late, event_ids or [])
        return row["outcome"], row["other_id"]

    async def open_incidents(self, batch: Sequence[tuple[Incident, str | None, list[str]]],
                             ) -> list[tuple[str, str | None]]:
        """:meth:`open_incident` for each (incident, execution id, event ids), in one statement
        and one commit: a storm opens hundreds of incidents a second, and a round trip and a
        commit each were a fifth of an execution's cost. The keys are locked in one order
        (sorted), so two replicas' batches never wait for each other in a cycle."""
        order = sorted(range(len(batch)), key=lambda i: (batch[i][0].strategy.id, batch[i][0].key_text))
        rows = []
        for i in order:
            incident, execution_id, event_ids = batch[i]
            s = incident.summary()
            rows.append({"id": incident.id, "strategy": incident.strategy.id, "key": incident.key_text,
                         "severity": incident.strategy.severity, "workflow": incident.workflow_id,
                         "namespace": s["namespace"], "workload": s["workload"], "node": s["node"],
                         "reason": s["reason"], "events": incident.events, "inhibited": incident.inhibited,
                         "context": incident.context(), "first": incident.first_seen or None,
                         "last": incident.last_seen or None, "execution": execution_id,
                         "late": incident.late, "event_ids": event_ids or []})
        found = await self.pool.fetch("""
            SELECT a.n, o.outcome, o.other_id
            FROM ROWS FROM (jsonb_to_recordset($1::jsonb) AS (
                     id text, strategy text, key text, severity text, workflow text, namespace text,
                     workload text, node text, reason text, events integer, inhibited jsonb,
                     context jsonb, first float8, last float8, execution text, late integer,
                     event_ids text[])) WITH ORDINALITY AS a(
                 id, strategy, key, severity, workflow, namespace, workload, node, reason, events,
                 inhibited, context, first, last, execution, late, event_ids, n)
            CROSS JOIN LATERAL aetherius_open_incident(
                a.id, a.strategy, a.key, a.severity, a.workflow, a.namespace, a.workload, a.node,
                a.reason, a.events, a.inhibited, a.context, to_timestamp(a.first), to_timestamp(a.last),
                a.execution, a.late, a.event_ids) o
            ORDER BY a.n""", rows)    # the pool's jsonb codec encodes the rows (orjson)
        out: list[tuple[str, str | None]] = [("", None)] * len(batch)
        for row in found:
            out[order[row["n"] - 1]] = (row["outcome"], row["other_id"])
        return out

    async def close_incidents(self, batch: Sequence[tuple[str, float | None, float]],
                              ) -> list[dict[str, Any] | None]:
        """Close each (incident id, last seen or None, cooldown seconds) in one statement and
        one commit; each gets its (strategy_id, key), or None if it was not open.

        The keys' locks are taken in (strategy, key) order, the order :meth:`open_incidents`
        takes them in (Python's, by code point: byte order in the "C" collation, whatever
        the database's own collation is), so a replica's closing batch and another's opening
        batch never wait for each other in a cycle (PostgreSQL would end one as a deadlock
        after a second).
        Should two batches still wait on each other, PostgreSQL ends one and its items are
        closed one by one: engine.service.incidents.Batched."""
        found = await self.pool.fetch("""
            WITH ordered AS MATERIALIZED (
                SELECT a.n, a.id, a.last, a.cooldown
                FROM unnest($1::text[], $2::float8[], $3::float8[])
                     WITH ORDINALITY AS a(id, last, cooldown, n)
                JOIN incidents i ON i.id = a.id
                ORDER BY i.strategy_id COLLATE "C", i.key COLLATE "C", a.n)
            SELECT o.n, c.strategy_id, c.key
            FROM ordered o
            CROSS JOIN LATERAL aetherius_close_incident(o.id, to_timestamp(o.last), o.cooldown) c""",
            [item[0] for item in batch], [item[1] or None for item in batch], [item[2] for item in batch])
        out: list[dict[str, Any] | None] = [None] * len(batch)
        for row in found:
            out[row["n"] - 1] = {"strategy_id": row["strategy_id"], "key": row["key"]}
        return out

    async def claim_incidents_without_execution(self, lease_seconds: float) -> list[dict[str, Any]]:
        """Open incidents whose execution was never recorded (the replica that opened them
        died in between), older than the lease: each is claimed by one replica, with a new
        execution id, to start its workflow."""
        rows = await self.pool.fetch("""
            UPDATE incidents i SET execution_id = 'exec-' || substr(md5(random()::text), 1, 16)
            WHERE i.id IN (
                SELECT c.id FROM incidents c
                WHERE c.status = 'open' AND c.opened_at < now() - make_interval(secs => $1::float8)
                AND NOT EXISTS (SELECT 1 FROM workflow_executions e WHERE e.id = c.execution_id)
                ORDER BY c.opened_at LIMIT 100 FOR UPDATE SKIP LOCKED)
            RETURNING i.id, i.strategy_id, i.key, i.workflow_id, i.execution_id, i.context""",
            lease_seconds)
        return [dict(r) for r in rows]

    async def close_incident_by_id(self, incident_id: str, cooldown: float) -> dict[str, Any] | None:
        row = await self.pool.fetchrow("SELECT * FROM aetherius_close_incident($1, NULL, $2)",
                                       incident_id, cooldown)
        return dict(row) if row else None

    async def open_incident_of(self, execution_id: str) -> dict[str, Any] | None:
        """The open incident this execution was started for (id, strategy_id, arm, opened_at), if any."""
        row = await self.pool.fetchrow(
            "SELECT id, strategy_id, arm, opened_at FROM incidents "
            "WHERE execution_id = $1 AND status = 'open'", execution_id)
        return dict(row) if row else None

    async def add_to_incident(self, incident_id: str, events: int = 0, late: int = 0,
                              suppressed: int = 0, inhibited: dict[str, int] | None = None) -> None:
        await self.pool.execute("""
            UPDATE incidents SET events = events + $2, late = late + $3, suppressed = suppressed + $4,
                   inhibited = (SELECT coalesce(jsonb_object_agg(k, v), '{}'::jsonb) FROM (
                       SELECT k, sum(v::int) AS v FROM (
                           SELECT * FROM jsonb_each_text(inhibited)
                           UNION ALL SELECT * FROM jsonb_each_text($5::jsonb)) AS both_(k, v)
                       GROUP BY k) AS summed),
                   last_seen = now()
            WHERE id = $1""", incident_id, events, late, suppressed, inhibited or {})

    async def close_incident(self, incident: Incident) -> None:
        # Counts are not written here: the intake adds them as events arrive. The function
        # takes the per-key lock that opening takes (see open_incident).
        await self.pool.fetchrow("SELECT * FROM aetherius_close_incident($1, $2, $3)", incident.id,
                                 _ts(incident.last_seen), incident.strategy.correlation.cooldown)

    # ------------------------------------------------------------------ replicas

    async def heartbeat(self, info: dict[str, Any] | None = None) -> None:
        await self.pool.execute("""
            INSERT INTO replicas (id, info) VALUES ($1, $2)
            ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), info = EXCLUDED.info""",
            self.replica, info or {})

    async def leave(self) -> None:
        await self.pool.execute("UPDATE replicas SET heartbeat_at = 'epoch' WHERE id = $1", self.replica)

    # ------------------------------------------------------------------ retention

    async def purge(self, older_than_seconds: float, batch: int = 1000) -> int:
        """Delete finished executions (their steps cascade), and events and dead letters,
        older than the given age, in batches so no lock is held for long."""
        total = 0
        for sql in (
            """DELETE FROM workflow_executions WHERE id IN (
                   SELECT id FROM workflow_executions WHERE status NOT IN ('running', 'queued')
                   AND started_at < now() - make_interval(secs => $1::float8) LIMIT $2)""",
            """DELETE FROM events WHERE id IN (
                   SELECT id FROM events WHERE state <> 'pending'
                   AND received_at < now() - make_interval(secs => $1::float8) LIMIT $2)""",
            """DELETE FROM dead_letters WHERE id IN (
                   SELECT id FROM dead_letters WHERE received_at < now() - make_interval(secs => $1::float8)
                   LIMIT $2)""",
        ):
            while True:
                status = await self.pool.execute(sql, older_than_seconds, batch)
                deleted = int(status.split()[-1])
                total += deleted
                if deleted < batch:
                    break
        return total

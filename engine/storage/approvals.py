"""Approvals in PostgreSQL (``approvals``, migration 007): the durable side of
:mod:`engine.approvals`.

A decision is one ``UPDATE ... WHERE status = 'pending' AND expires_at > now()``: whichever
replica, API call or Slack action comes first wins, and a replayed or late one finds the row
decided and changes nothing. The wait (:meth:`Approvals.wait`) looks at the row every
``poll`` seconds, and at once when a decision is taken on this replica; past the expiry it
takes the ``on_timeout`` decision itself, by the same UPDATE, so a decision that lands at
the same moment is not overwritten. Every request and decision is on the audit trail.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Any, Literal

import asyncpg

from engine.approvals import Approval, ApprovalStatus, Channel
from engine.auth import Principal
from engine.storage.audit import AuditLog
from engine.storage.executions import _ts
from engine.storage.outage import Availability, retrying

log = logging.getLogger(__name__)

COLUMNS = """id, execution_id, step_id, seq, plan, plan_hash, action, target, namespace, dry_run,
    approvers, on_timeout, why, triggered_by, status, requested_at, expires_at, decided_at, decided_by,
    channel, comment"""
DECIDE = f"""
    UPDATE approvals SET status = $2, decided_at = now(), decided_by = $3, channel = $4, comment = $5
    WHERE id = $1 AND status = 'pending' AND ($6 OR expires_at > now()) RETURNING {COLUMNS}"""


def _approval(row: asyncpg.Record) -> Approval:
    return Approval(
        id=row["id"], execution_id=row["execution_id"], step_id=row["step_id"], seq=row["seq"],
        plan=row["plan"] or {}, plan_hash=row["plan_hash"], action=row["action"], target=row["target"] or {},
        namespace=row["namespace"], dry_run=row["dry_run"], approvers=frozenset(row["approvers"] or ()),
        on_timeout=row["on_timeout"], why=row["why"], triggered_by=row["triggered_by"],
        status=ApprovalStatus(row["status"]), requested_at=row["requested_at"].timestamp(),
        expires_at=row["expires_at"].timestamp(),
        decided_at=row["decided_at"].timestamp() if row["decided_at"] else None,
        decided_by=row["decided_by"], channel=row["channel"], comment=row["comment"])


def shown(approval: Approval) -> dict[str, Any]:
    """An approval as the API shows it."""
    return {"id": approval.id, "execution_id": approval.execution_id, "step_id": approval.step_id,
            "seq": approval.seq, "status": str(approval.status), "action": approval.action,
            "target": dict(approval.target), "namespace": approval.namespace, "dry_run": approval.dry_run,
            "plan_hash": approval.plan_hash, "plan": dict(approval.plan), "why": approval.why,
            "approvers": sorted(approval.approvers), "on_timeout": approval.on_timeout,
            "triggered_by": approval.triggered_by,
            "requested_at": _ts(approval.requested_at), "expires_at": _ts(approval.expires_at),
            "decided_at": _ts(approval.decided_at), "decided_by": approval.decided_by,
            "channel": approval.channel, "comment": approval.comment}


class Approvals:
    """:class:`engine.approvals.Gate` in PostgreSQL, plus what the API needs (list, decide)."""

    def __init__(self, pool: asyncpg.Pool, audit: AuditLog, *, poll: float = 1.0,
                 availability: Availability | None = None, system: Principal | None = None,
                 count: Callable[[str], None] | None = None,
                 waiting: Callable[[int], None] | None = None) -> None:
        self.pool = pool
        self.audit = audit
        self.poll = poll
        self.availability = availability or Availability("PostgreSQL")
        # Told of each approval requested / approved / denied / expired, and of each wait
        # that starts (+1) or ends (-1) here: the service's metrics.
        self.count = count or (lambda _event: None)
        self.waiting = waiting or (lambda _delta: None)
        self.system = system or Principal("system", "aetherius")
        self._decided: dict[str, asyncio.Event] = {}     # approvals waited on here

    # ------------------------------------------------------------------ the gate (steps)

    async def current(self, execution_id: str, seq: int) -> Approval | None:
        row = await retrying(self.availability, partial(
            self.pool.fetchrow, f"SELECT {COLUMNS} FROM approvals WHERE execution_id = $1 AND seq = $2 "
                                "AND status <> 'superseded' ORDER BY requested_at DESC LIMIT 1",
            execution_id, seq))
        return None if row is None else _approval(row)

    async def open(self, approval: Approval) -> tuple[Approval, bool]:
        async def insert() -> tuple[Approval, bool]:
            async with self.pool.acquire() as conn, conn.transaction():
                row = await conn.fetchrow(f"""
                    INSERT INTO approvals (id, execution_id, step_id, seq, plan, plan_hash, action, target,
                                           namespace, dry_run, approvers, on_timeout, why, triggered_by,
                                           requested_at, expires_at)
                    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
                    ON CONFLICT (execution_id, seq, plan_hash) DO NOTHING RETURNING {COLUMNS}""",
                    approval.id, approval.execution_id, approval.step_id, approval.seq, dict(approval.plan),
                    approval.plan_hash, approval.action, dict(approval.target), approval.namespace,
                    approval.dry_run, sorted(approval.approvers), approval.on_timeout, approval.why,
                    approval.triggered_by, _ts(approval.requested_at), _ts(approval.expires_at))
                if row is None:
                    existing = await conn.fetchrow(
                        f"SELECT {COLUMNS} FROM approvals WHERE execution_id = $1 AND seq = $2 "
                        "AND plan_hash = $3", approval.execution_id, approval.seq, approval.plan_hash)
                    return _approval(existing), False
                await self.audit.record(self.system, "approval.requested", "execution",
                                        approval.execution_id, {
                    "approval_id": approval.id, "step_id": approval.step_id, "seq": approval.seq,
                    "plan_hash": approval.plan_hash, "action": approval.action,
                    "target": dict(approval.target), "dry_run": approval.dry_run, "why": approval.why,
                    "approvers": sorted(approval.approvers), "expires_at": _ts(approval.expires_at),
                    "on_timeout": approval.on_timeout}, conn=conn)
                return _approval(row), True

        opened, new = await retrying(self.availability, insert)
        if new:
            self.count("requested")
        return opened, new

    async def supersede(self, approval: Approval, plan_hash: str) -> None:
        async def update() -> None:
            async with self.pool.acquire() as conn, conn.transaction():
                done = await conn.fetchval(
                    "UPDATE approvals SET status = 'superseded', decided_at = now(), comment = $2 "
                    "WHERE id = $1 AND status IN ('pending', 'approved') RETURNING id", approval.id,
                    f"the plan changed to {plan_hash}")
                if done:
                    await self.audit.record(self.system, "approval.superseded", "execution",
                                            approval.execution_id, {
                                                "approval_id": approval.id, "plan_hash": approval.plan_hash,
                                                "new_plan_hash": plan_hash}, conn=conn)

        await retrying(self.availability, update)

    async def wait(self, approval: Approval) -> Approval:
        event = self._decided.setdefault(approval.id, asyncio.Event())
        self.waiting(1)
        try:
            while True:
                row = await self._read(approval.id)
                if row is None or row.status != ApprovalStatus.PENDING:
                    return row or approval
                left = row.expires_at - time.time()
                if left <= 0:
                    expired = await self._expire(row)
                    if expired is not None:
                        return expired
                    continue     # a decision landed first: read it
                event.clear()
                try:
                    async with asyncio.timeout(min(self.poll, left)):
                        await event.wait()
                except TimeoutError:
                    pass
        finally:
            self._decided.pop(approval.id, None)
            self.waiting(-1)

    async def _read(self, approval_id: str) -> Approval | None:
        """The row; during a PostgreSQL outage the wait goes on (one line, said once)."""
        row = await retrying(self.availability, partial(
            self.pool.fetchrow, f"SELECT {COLUMNS} FROM approvals WHERE id = $1", approval_id),
            cap=self.poll * 5)
        return None if row is None else _approval(row)

    async def _expire(self, approval: Approval) -> Approval | None:
        status = ApprovalStatus.APPROVED if approval.on_timeout == "approve" else ApprovalStatus.EXPIRED
        comment = f"no decision before the expiry (on_timeout: {approval.on_timeout})"
        return await self._decide(approval, status, self.system, Channel.TIMEOUT, comment, expiring=True)

    # ------------------------------------------------------------------ the API's side

    async def get(self, approval_id: str) -> Approval | None:
        row = await self.pool.fetchrow(f"SELECT {COLUMNS} FROM approvals WHERE id = $1", approval_id)
        return None if row is None else _approval(row)

    async def list(self, *, status: str | None = "pending", execution_id: str | None = None,
                   limit: int = 50) -> list[Approval]:
        """Newest first. Pending ones are only those whose execution still runs."""
        where: list[str] = []
        args: list[object] = []
        if status is not None:
            args.append(status)
            where.append(f"a.status = ${len(args)}")
            if status == "pending":
                where.append("e.status = 'running'")
        if execution_id is not None:
            args.append(execution_id)
            where.append(f"a.execution_id = ${len(args)}")
        args.append(limit)
        sql = (f"SELECT {', '.join('a.' + c.strip() for c in COLUMNS.split(','))} FROM approvals a "
               f"JOIN workflow_executions e ON e.id = a.execution_id "
               f"{'WHERE ' + ' AND '.join(where) if where else ''} "
               f"ORDER BY a.requested_at DESC LIMIT ${len(args)}")
        return [_approval(r) for r in await self.pool.fetch(sql, *args)]

    async def decide(self, approval: Approval, decision: Literal["approve", "deny"], who: Principal,
                     channel: str, comment: str | None, *, plan_hash: str | None = None) -> Approval | None:
        """Take the decision if nobody took one first (None: the row was already decided or
        expired; read it again to say by whom). ``plan_hash`` was checked by the caller."""
        status = ApprovalStatus.APPROVED if decision == "approve" else ApprovalStatus.DENIED
        return await self._decide(approval, status, who, channel, comment)

    async def _decide(self, approval: Approval, status: ApprovalStatus, who: Principal, channel: str,
                      comment: str | None, *, expiring: bool = False) -> Approval | None:
        async def update() -> Approval | None:
            async with self.pool.acquire() as conn, conn.transaction():
                row = await conn.fetchrow(DECIDE, approval.id, str(status), who.name, channel, comment,
                                          expiring)
                if row is None:
                    return None
                decided = _approval(row)
                action = "approval.expired" if expiring and status == ApprovalStatus.EXPIRED else (
                    f"approval.{'approved' if status == ApprovalStatus.APPROVED else 'denied'}")
                await self.audit.record(who, action, "execution", decided.execution_id, {
                    "approval_id": decided.id, "step_id": decided.step_id, "plan_hash": decided.plan_hash,
                    "channel": channel, "comment": comment, "action": decided.action,
                    "target": dict(decided.target), "dry_run": decided.dry_run}, conn=conn)
                return decided

        decided = await retrying(self.availability, update)
        if decided is not None:
            self.count(str(decided.status))
            log.info("Approval %s %s by %s via %s (execution %s, plan %s)", decided.id, decided.status,
                     who.label, channel, decided.execution_id, decided.plan_hash[:12],
                     extra={"execution_id": decided.execution_id})
            event = self._decided.get(decided.id)
            if event is not None:
                event.set()
        return decided

    async def abandon(self, execution_id: str) -> int:
        """The execution ended while its approvals were pending: nobody can decide them now."""
        status = await retrying(self.availability, partial(
            self.pool.execute, "UPDATE approvals SET status = 'cancelled', decided_at = now(), comment = "
                               "'the execution ended' WHERE execution_id = $1 AND status = 'pending'",
            execution_id))
        return int(status.split()[-1])

"""The long-lived service: events in from NATS and HTTP, incidents and workflows out.

Wiring, in the order :meth:`Service.start` builds it:

1. servers: the configured NATS / PostgreSQL / Redis, or embedded ones (``engine.devservers``);
2. PostgreSQL: pool, migrations, the runner's store, the service's records;
3. Redis (optional: degraded without it);
4. rules: files plus stored rules, compiled into the rule base; hot reload;
5. correlation on the real clock (``AsyncIOScheduler``), the runner, the NATS intake;
6. the HTTP API (``engine.api``) on ``http.port``.

Background loops run as named tasks in one ``asyncio.TaskGroup``: if one dies, the service
stops rather than limp on. Shutdown (SIGTERM/SIGINT) stops taking events, lets running
steps finish for a grace period, commits their state and exits 0; anything still running
stays "running" in the store and is resumed by the next replica that starts or notices.

Events are never lost: a batch from NATS is recorded (and deduplicated by id) in one
statement before it is acked; hits whose burst has not yet formed an incident stay
``pending`` in the ``events`` table and are correlated again after a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from reactivex.scheduler.eventloop import AsyncIOScheduler

from engine.config import Config
from engine.correlation import CLOSED, OPEN, PENDING, Correlator, Incident
from engine.devservers import resolve
from engine.events import Event, OccurrenceTracker, decode, parse_event
from engine.exceptions import MalformedEvent
from engine.metrics import Metrics
from engine.rulebase import RuleBase
from engine.runner import WorkflowRunner
from engine.service.bus import Bus, Message
from engine.service.cache import Cache
from engine.service.generations import RulesManager
from engine.service.transport import make_client
from engine.storage.db import create_pool, migrate
from engine.storage.executions import PostgresStore
from engine.storage.records import Repository
from engine.store import FINAL_EXECUTION, Execution, StepRun

log = logging.getLogger(__name__)


@dataclass
class _Batch:
    """A batch of input, processed and waiting to be recorded."""

    source: str
    rows: list[tuple[Event, str | None, tuple]] = field(default_factory=list)
    dead: list[tuple[str, str | None, str, bytes | None, dict]] = field(default_factory=list)
    # (event id, incident id, field, strategy id, occurrences) for incidents already stored;
    # summed once the batch is recorded, for the events that turned out new.
    deltas: list[tuple[str, str, str, str, int]] = field(default_factory=list)
    duplicates: int = 0
    ignored: int = 0


class Service:
    def __init__(self, config: Config, *, data_dir: str | Path | None = None) -> None:
        self.config = config
        svc = config.service
        self.replica = svc.replica_id or os.environ.get("HOSTNAME") or socket.gethostname()
        self.data_dir = Path(data_dir or svc.data_dir)
        self.lease = svc.lease
        self.grace = svc.shutdown_grace
        self.retention = svc.retention
        self.max_event_bytes = config.intake.max_event_bytes
        self.metrics = Metrics()
        self.embedded: Any = None
        self.urls: Any = None
        self.pool = None
        self.repo: Repository | None = None
        self.store: PostgresStore | None = None
        self.cache: Cache | None = None
        self.rules: RulesManager | None = None
        self.rulebase: RuleBase | None = None
        self.correlator: Correlator | None = None
        self.runner: WorkflowRunner | None = None
        self.bus: Bus | None = None
        self.tracker = OccurrenceTracker()
        self.started_at = time.time()
        self.ready = False
        self._stop = asyncio.Event()
        self._stopped = False
        self._tasks: set[asyncio.Task] = set()
        self._incidents: dict[str, Incident] = {}          # local incident id -> incident
        self._recent: OrderedDict[str, None] = OrderedDict()  # ids seen lately (dedup)
        self._record_lock = asyncio.Lock()   # incidents attach events only once recorded
        self._in_flight = asyncio.Semaphore(2)  # batches processed but not yet recorded
        self._reload_requested = asyncio.Event()
        self._fingerprint_stale = False
        self._reload_reason = ""
        self.api_server: Any = None
        self.stats = {"events": 0, "duplicates": 0, "dead_letters": 0, "incidents": 0, "executions": 0}

    # ------------------------------------------------------------------ start

    async def start(self) -> None:
        # Configured servers, or embedded ones started in the data directory (blocking: ~1 s).
        self.urls, self.embedded = await asyncio.to_thread(resolve, self.config, self.data_dir)
        mode = "embedded" if self.embedded is not None else "external"
        log.info("Aetherius Orchestrator %s starting (%s mode): replica %s; %s", _version(), mode,
                 self.replica, self.urls.description)
        self.pool = await create_pool(self.urls.database_dsn, max_size=self.config.database.pool_size)
        await migrate(self.pool)
        self.repo = Repository(self.pool, self.replica)
        self.store = PostgresStore(self.pool, self.replica, self.lease)
        self.store.writer.start()
        self.cache = Cache(self.urls.redis_url, prefix=self.config.redis.prefix)
        await self.cache.ping()
        self.rulebase = RuleBase([])
        self.rules = RulesManager(self.config.rules.dir, self.rulebase, self.pool)
        self.rules.listeners.append(self._on_reload)
        if not await self.rules.reload("start"):
            await self.rules.reload_stored("start: rule files invalid, using the last stored rules")
        self.correlator = Correlator(AsyncIOScheduler(asyncio.get_running_loop()), track_event_ids=True)
        self.correlator.formed.subscribe(on_next=self._on_formed)
        settings = self.config.step_settings(live=True)
        if not settings.agent_manager_url:
            log.warning("agent_manager.url is not configured: command and remediation steps answer "
                        "dry-run (set AETHERIUS_AGENT_MANAGER__URL)")
        if settings.dry_run:
            log.info("Remediation is in dry-run mode (remediation.dry_run: true): no change reaches "
                     "the cluster")
        self.runner = WorkflowRunner(self.store, settings, http=make_client(), limiter=self._limit,
                                     lock=lambda name: self.cache.lock(name, ttl=120.0))
        self.runner.listeners.append(self._on_step)
        nats_cfg = self.config.nats
        self.bus = Bus(self.urls.nats_url, list(nats_cfg.subjects), stream=nats_cfg.stream,
                       durable=nats_cfg.durable, batch=nats_cfg.batch, ack_wait=nats_cfg.ack_wait)
        await self.bus.connect()
        # Messages recorded just before a stop may be redelivered: know their ids.
        for event_id in await self.repo.recent_event_ids(max(120.0, 4 * self.bus.ack_wait)):
            self._remember_id(event_id)
        await self.repo.heartbeat(self._info())
        await self._recover()
        self.ready = True

    def _info(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "nats": self.bus.mode if self.bus else None,
                "generation": self.rules.status.generation if self.rules else None}

    # ------------------------------------------------------------------ run

    async def run(self) -> None:
        """Start, serve until stopped (SIGTERM, SIGINT or :meth:`request_stop`), shut down."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop)
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGHUP, lambda: self.request_reload("SIGHUP"))
        try:
            await self.start()
            async with asyncio.TaskGroup() as group:
                group.create_task(self._intake_loop(), name="nats-intake")
                group.create_task(self._heartbeat_loop(), name="heartbeat")
                group.create_task(self._reload_loop(), name="rules-reload")
                group.create_task(self._watch_loop(), name="rules-watcher")
                group.create_task(self._listen_loop(), name="db-listen")
                group.create_task(self._retention_loop(), name="retention")
                group.create_task(self._api_loop(), name="http-api")
                group.create_task(self._stop_watch(group), name="stop-watch")
        finally:
            await self.shutdown()

    def request_stop(self) -> None:
        if not self._stop.is_set():
            log.info("Stop requested: no new events; running steps get %.0fs to finish", self.grace)
            self._stop.set()
            if self.runner is not None:
                self.runner.draining = True   # from now on no new step starts
            if self.bus is not None:
                self.bus.stop()
            if self.api_server is not None:
                self.api_server.should_exit = True

    async def _stop_watch(self, group: asyncio.TaskGroup) -> None:
        await self._stop.wait()
        # The intake loop ends after its batch; the others are plain loops: cancel them.
        for task in list(asyncio.all_tasks()):
            if task.get_name() in ("heartbeat", "rules-reload", "rules-watcher", "db-listen", "retention"):
                task.cancel()

    async def shutdown(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self.ready = False
        self._stop.set()
        if self.bus is not None:
            self.bus.stop()
        if self.runner is not None:
            left = await self.runner.drain(self.grace)
            if left:
                log.info("%d execution(s) left running for the next replica to resume", len(left))
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        if self.store is not None:
            await asyncio.shield(self.store.writer.stop())
        if self.repo is not None:
            with contextlib.suppress(Exception):
                await self.repo.leave()
        if self.runner is not None:
            await self.runner.http.aclose()   # the service made it, the service closes it
        if self.bus is not None:
            await self.bus.close()
        if self.cache is not None:
            await self.cache.close()
        if self.rulebase is not None:
            self.rulebase.close()
        if self.pool is not None:
            await self.pool.close()
        if self.embedded is not None:
            await asyncio.to_thread(self.embedded.stop)
        log.info("Aetherius Orchestrator stopped")

    # ------------------------------------------------------------------ intake

    async def _intake_loop(self) -> None:
        assert self.bus is not None
        await self.bus.run(self.ingest_messages)

    async def ingest_messages(self, messages: list[Message]) -> None:
        """Process a batch now; record it, then ack it, in the background.

        Processing is sequential (the rule base and the correlator see events in order);
        recording batch N overlaps with processing batch N+1, at most two batches in flight
        (backpressure: the next fetch waits). A message is acked only once recorded."""
        items = [(m.data, m.subject, m.msg_id, m.headers) for m in messages]
        await self._in_flight.acquire()
        try:
            batch = self._prepare(items, "nats")
        except BaseException:
            self._in_flight.release()
            raise
        self._spawn(self._record_and_ack(batch, messages))

    async def _record_and_ack(self, batch: _Batch, messages: list[Message]) -> None:
        try:
            await self._persist(batch)
        except Exception:
            # Not acked, so redelivered: let the redelivery be processed, not dropped as seen.
            for event, _, _ in batch.rows:
                self._recent.pop(event.id, None)
            log.exception("recording a batch of %d events failed; it will be redelivered", len(messages))
            return
        finally:
            self._in_flight.release()
        for message in messages:
            with contextlib.suppress(Exception):
                await message.ack()

    async def ingest(self, items: list[tuple[Any, str | None, str | None, dict]],
                     source: str) -> dict[str, int]:
        """(raw bytes or decoded JSON, subject, message id, headers) -> processed and recorded.
        Returns counts: accepted, duplicates, dead_letters, ignored."""
        return await self._persist(self._prepare(items, source))

    def _prepare(self, items: list[tuple[Any, str | None, str | None, dict]], source: str) -> _Batch:
        """Parse, deduplicate and process a batch (synchronous: no reload can cut into it).

        Duplicates are dropped by id (in memory for recent ids here, and by the table's
        primary key across replicas and restarts when the batch is recorded); each new
        event goes through the rule base and the correlator."""
        batch = _Batch(source)
        good: list[tuple[Event, str | None]] = []
        for raw, subject, msg_id, headers in items:
            try:
                if isinstance(raw, bytes | bytearray):      # raw bytes off the wire
                    if len(raw) > self.max_event_bytes:
                        raise MalformedEvent(f"payload of {len(raw)} bytes exceeds {self.max_event_bytes}")
                    obj = decode(bytes(raw))
                else:                                       # a JSON value decoded already (HTTP)
                    obj = raw
                    size = len(orjson.dumps(raw, default=str))
                    if size > self.max_event_bytes:
                        raise MalformedEvent(f"event of {size} bytes exceeds {self.max_event_bytes}")
                event = parse_event(obj)
            except MalformedEvent as exc:
                data = bytes(raw) if isinstance(raw, bytes | bytearray) else orjson.dumps(raw, default=str)
                batch.dead.append((source, subject, str(exc), data, {k: str(v) for k, v in headers.items()}))
                continue
            except Exception as exc:  # a parser bug must not stop the intake: dead-letter it
                log.exception("unexpected error parsing an event")
                batch.dead.append((source, subject, f"internal error: {type(exc).__name__}: {exc}",
                                   raw if isinstance(raw, bytes) else None, {}))
                continue
            if event is None:
                batch.ignored += 1
                continue
            if msg_id:
                event.id = str(msg_id)
            good.append((event, subject))
        self.metrics.events_in.labels(source).inc(len(good))
        for event, subject in good:
            if event.id in self._recent:
                batch.duplicates += 1
                continue
            self._remember_id(event.id)
            state = self._process(event, batch.deltas)
            batch.rows.append((event, subject, state))
        return batch

    async def _persist(self, batch: _Batch) -> dict[str, int]:
        """Record a prepared batch: dead letters, then every event with where it went."""
        assert self.repo is not None
        source, dead, rows = batch.source, batch.dead, batch.rows
        if dead:
            await self.repo.dead_letters_many(dead)
            self.metrics.dead_letters.labels(source).inc(len(dead))
            self.stats["dead_letters"] += len(dead)
            for _, subject, reason, raw, _ in dead:
                log.warning("Dead letter from %s%s: %s (%d bytes)", source,
                            f" {subject}" if subject else "", reason, len(raw or b""))
        async with self._record_lock:
            try:
                recorded = await self.repo.record_events(rows)
            except Exception as exc:  # one row the database refuses must not sink the batch
                log.warning("recording a batch of %d failed (%s: %s); recording one by one",
                            len(rows), type(exc).__name__, exc)
                recorded = set()
                for row in rows:
                    try:
                        recorded |= await self.repo.record_events([row])
                    except Exception as row_exc:
                        reason = f"cannot be recorded: {type(row_exc).__name__}: {row_exc}"
                        await self.repo.dead_letters_many([(source, row[1], reason,
                                                            orjson.dumps(row[0].to_dict(), default=str), {})])
                        self.metrics.dead_letters.labels(source).inc()
                        recorded.add(row[0].id)   # accounted for, as a dead letter
        # Recorded before by another replica (or before a restart): not counted again here.
        duplicates = batch.duplicates + len(rows) - len(recorded)
        counts: dict[str, dict[str, Any]] = {}
        for event_id, incident_id, name, strategy_id, value in batch.deltas:
            if event_id not in recorded:
                continue     # recorded before (a redelivery): already counted then
            delta = counts.setdefault(incident_id, {})
            if name == "inhibited":
                covered = delta.setdefault("inhibited", {})
                covered[strategy_id] = covered.get(strategy_id, 0) + value
            else:
                delta[name] = delta.get(name, 0) + value
        for incident_id, delta in counts.items():
            self._spawn(self.repo.add_to_incident(incident_id, **delta))
        self.metrics.events_dedup.inc(duplicates)
        self.stats["events"] += len(recorded)
        self.stats["duplicates"] += duplicates
        return {"accepted": len(recorded), "duplicates": duplicates, "dead_letters": len(dead),
                "ignored": batch.ignored}

    def _remember_id(self, event_id: str) -> None:
        self._recent[event_id] = None
        if len(self._recent) > 200_000:
            self._recent.popitem(last=False)

    def _process(self, event: Event, deltas: list[tuple[str, str, str, str, int]] | None = None, *,
                 recovered: bool = False) -> tuple[str, str | None, str | None]:
        """Rule base + correlation for one event; return (state, strategy id, incident id).
        Synchronous on purpose: a generation swap cannot happen in the middle of it.
        Counts for incidents already in the database are appended to ``deltas``."""
        assert self.rulebase is not None and self.correlator is not None
        if not recovered and not self.tracker.observe(event):
            return ("duplicate", None, None)
        hits = self.rulebase.process(event, now=time.time())
        if not hits:
            return ("unmatched", None, None)
        hit = hits[0]
        incident = self.correlator.add(hit)
        self.metrics.hits.labels(hit.strategy.id, "inhibited" if hit.inhibited_by else "hit").inc()
        if incident is None:
            return ("inhibited" if hit.inhibited_by else "unmatched", hit.strategy.id, None)
        self._incidents.setdefault(incident.id, incident)
        db_id = getattr(incident, "db_id", None)

        def add(field: str, value: int) -> None:
            # Until the incident's row exists its counts travel with the INSERT instead.
            if db_id is None or deltas is None or not getattr(incident, "recorded", False):
                return
            deltas.append((event.id, db_id, field, hit.strategy.id, value))

        if hit.inhibited_by:
            add("inhibited", event.count)
            return ("inhibited", hit.strategy.id, db_id or incident.id)
        if incident.status == PENDING:
            return ("pending", hit.strategy.id, None)
        if incident.status == OPEN:
            add("late", event.count)
            return ("attached", hit.strategy.id, db_id)
        add("suppressed", event.count)
        return ("suppressed", hit.strategy.id, db_id)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed: %s", task.exception(), exc_info=task.exception())

    async def _recover(self) -> None:
        """Correlate again what this replica held when it stopped (start-up only)."""
        assert self.repo is not None
        rows = await self.repo.claim_pending_events(self.lease, own=True)
        await self._recover_rows(rows)
        if rows:
            log.info("Recovered %d event(s) recorded before a stop into correlation", len(rows))

    async def _recover_rows(self, rows: list[dict[str, Any]]) -> None:
        assert self.repo is not None
        states = []
        for row in rows:
            payload = row["payload"]
            fields = {k: payload.get(k) for k in Event.__dataclass_fields__ if k in payload}
            fields.setdefault("labels", {})
            try:
                event = Event(**fields)
            except TypeError:
                states.append((row["id"], "unmatched", None, None))
                continue
            self._remember_id(event.id)
            # Recorded but never processed: its occurrences count as the tracker would have.
            state = self._process(event, recovered=row.get("state") == "pending")
            states.append((row["id"], *state))
        await self.repo.set_event_states(states)

    # ------------------------------------------------------------------ incidents

    def _on_formed(self, incident: Incident) -> None:
        # Events that arrive while it is being opened attach to this id (re-pointed if another
        # replica turns out to hold the incident).
        incident.db_id = incident.id  # type: ignore[attr-defined]
        self._spawn(self._open(incident))

    async def _open(self, incident: Incident) -> None:
        assert self.repo is not None and self.cache is not None and self.correlator is not None
        assert self.rules is not None
        sid, key = incident.strategy.id, incident.key_text
        # Redis answers the common case fast; the database decides, under a per-key lock.
        _known, cooling = await self.cache.cooldown(sid, key)
        workflow = await self.rules.workflow(incident.workflow_id)
        runnable = workflow is not None and workflow.status == "active"
        execution_id = f"exec-{uuid.uuid4().hex[:16]}" if runnable else None
        outcome, other = "cooling", cooling
        if cooling is None:
            async with self._record_lock:   # the batch holding its last events is recorded
                outcome, other = await self.repo.open_incident(incident, execution_id, incident.event_ids)
        incident.recorded = True  # type: ignore[attr-defined]
        if outcome != "opened":
            # Cooling down, or open on another replica: its workflow covers these events too.
            assert other is not None
            incident.db_id = other  # type: ignore[attr-defined]
            state = "suppressed" if outcome == "cooling" else "attached"
            await self.repo.attach_events(incident.event_ids, other, state)
            await self.repo.repoint_events(incident.id, other)
            field = "suppressed" if outcome == "cooling" else "late"
            await self.repo.add_to_incident(other, **{field: incident.events + incident.late})
            self.correlator.close(incident)
            return
        incident.db_id = incident.id  # type: ignore[attr-defined]
        incident.event_ids = []
        self.metrics.incidents.labels(sid).inc()
        self.stats["incidents"] += 1
        if workflow is None or execution_id is None:
            log.error("Incident %s: workflow %s is missing or not active; closing the incident",
                      incident.id, incident.workflow_id, extra={"incident_id": incident.id})
            await self._close(incident, None)
            return
        await self._start_workflow(incident, workflow, execution_id)

    async def _start_workflow(self, incident: Incident, workflow: Any, execution_id: str) -> None:
        assert self.runner is not None
        self.metrics.publish_to_start.observe(max(0.0, time.time() - incident.first_seen))
        started = await self.runner.start(workflow, incident=incident.context(),
                                          events=incident.events_context(), execution_id=execution_id,
                                          incident_id=incident.id)
        task = started.task
        self.metrics.executions_running.inc()
        self.stats["executions"] += 1
        task.add_done_callback(lambda t: self._spawn(self._execution_done(incident, t)))

    async def _execution_done(self, incident: Incident | None, task: asyncio.Task,
                              incident_id: str | None = None) -> None:
        self.metrics.executions_running.dec()
        if task.cancelled():
            return       # shutdown: the execution stays running in the store, to resume
        exc = task.exception()
        execution: Execution | None = None if exc else task.result()
        if execution is None or execution.status not in FINAL_EXECUTION:
            return
        self.metrics.executions.labels(execution.workflow_id, execution.status).inc()
        await self._close(incident, execution, incident_id)

    async def _close(self, incident: Incident | None, execution: Execution | None,
                     incident_id: str | None = None) -> None:
        assert self.repo is not None and self.cache is not None
        if incident is not None:
            await self.repo.close_incident(incident)
            await self.cache.set_cooldown(incident.strategy.id, incident.key_text,
                                          incident.strategy.correlation.cooldown, incident.id)
            if self.correlator is not None:
                self.correlator.close(incident)
            self._incidents.pop(incident.id, None)
        elif incident_id:
            # Resumed after a restart: the incident is known only by its id.
            strategy_id = await self.repo.incident_strategy(incident_id)
            strategy = self.rules.generation.strategies.get(strategy_id or "") if (
                self.rules is not None and self.rules.generation is not None) else None
            cooldown = strategy.correlation.cooldown if strategy is not None else 600.0
            closed = await self.repo.close_incident_by_id(incident_id, cooldown)
            if closed is not None:
                await self.cache.set_cooldown(closed["strategy_id"], closed["key"], cooldown, incident_id)

    # ------------------------------------------------------------------ heartbeat, resume

    async def _heartbeat_loop(self) -> None:
        assert self.repo is not None and self.store is not None
        while True:
            try:
                await self.repo.heartbeat(self._info())
                await self._resume_orphans()
                await self._start_missing_executions()
                rows = await self.repo.claim_pending_events(self.lease, own=False)
                if rows:
                    log.info("Taking over %d event(s) of a replica that stopped", len(rows))
                    await self._recover_rows(rows)
                await self.cache.ping()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("heartbeat failed: %s: %s", type(exc).__name__, exc)
            await asyncio.sleep(max(0.5, self.lease / 3))

    async def _start_missing_executions(self) -> None:
        """An incident opened by a replica that died before recording its execution
        would stay open for ever: start its workflow here."""
        assert self.repo is not None and self.rules is not None and self.runner is not None
        for row in await self.repo.claim_incidents_without_execution(self.lease):
            workflow = await self.rules.workflow(row["workflow_id"])
            if workflow is None or workflow.status != "active":
                await self.repo.close_incident_by_id(row["id"], 0)
                continue
            log.info("Starting the missing execution %s of incident %s", row["execution_id"], row["id"],
                     extra={"incident_id": row["id"], "execution_id": row["execution_id"]})
            context = row["context"] or {}
            started = await self.runner.start(workflow, incident=context, events=[],
                                              execution_id=row["execution_id"], incident_id=row["id"])
            task = started.task
            self.metrics.executions_running.inc()
            task.add_done_callback(
                lambda t, iid=row["id"]: self._spawn(self._execution_done(None, t, iid)))

    async def _resume_orphans(self) -> None:
        assert self.store is not None and self.runner is not None and self.rules is not None
        for execution_id in await self.store.claim_orphans(self.runner.running()):
            execution = await self.store.load_execution(execution_id)
            # Checked again here: an execution may have started while we claimed.
            if execution is None or execution.status != "running" or execution_id in self.runner.running():
                continue
            workflow = await self.rules.workflow(execution.workflow_id, execution.workflow_version)
            if workflow is None:
                log.error("Cannot resume execution %s: workflow %s version %d is gone", execution_id,
                          execution.workflow_id, execution.workflow_version)
                continue
            log.info("Resuming workflow execution %s (workflow %s version %d)", execution_id,
                     execution.workflow_id, execution.workflow_version, extra={"execution_id": execution_id})
            task = self.runner.resume_loaded(execution, workflow)
            self.metrics.executions_running.inc()
            task.add_done_callback(
                lambda t, iid=execution.incident_id: self._spawn(self._execution_done(
                    self._incidents.get(iid or ""), t, iid)))

    # ------------------------------------------------------------------ reloads

    def request_reload(self, reason: str) -> None:
        self._reload_reason = reason
        self._reload_requested.set()

    async def reload(self, reason: str = "api") -> bool:
        assert self.rules is not None
        return await self.rules.reload(reason)

    def _on_reload(self, ok: bool, status: Any) -> None:
        self._fingerprint_stale = True
        self.metrics.reloads.labels("ok" if ok else "invalid").inc()
        self.metrics.rules_ok.set(1 if ok else 0)
        self.metrics.rules_generation.set(status.generation)
        if ok and self.cache is not None and self.rules is not None and self.rules.generation is not None:
            gen = self.rules.generation
            self._spawn(self.cache.publish_generation({
                "generation": gen.number, "digest": gen.digest, "strategies": len(gen.strategies),
                "workflows": len(gen.workflows), "replica": self.replica, "loaded_at": gen.loaded_at}))

    async def _reload_loop(self) -> None:
        while True:
            await self._reload_requested.wait()
            await asyncio.sleep(0.05)      # coalesce a burst of triggers into one reload
            self._reload_requested.clear()
            try:
                await self.reload(self._reload_reason or "request")
            except Exception:
                log.exception("rule reload failed")

    async def _watch_loop(self) -> None:
        assert self.rules is not None
        from watchfiles import awatch

        directory = self.rules.directory
        if not directory.exists():
            log.warning("rules directory %s does not exist: not watching it", directory)
            await self._stop.wait()
            return
        # step: how often the watcher thread looks (50 ms keeps reloads well under 1 s
        # without a core's worth of polling).
        async for _changes in awatch(directory, debounce=100, step=50, stop_event=self._stop,
                                     recursive=True):
            self.request_reload("file change")

    async def _listen_loop(self) -> None:
        """Rules changed through the API (any replica) reach every replica: LISTEN/NOTIFY,
        with a poll as the fallback if the notification connection is lost."""
        assert self.pool is not None
        last = await self._rules_fingerprint()
        conn = None

        def notified(*_: Any) -> None:
            # Our own mirroring of rule files notifies us too: that is no news.
            if self.rules is not None and time.time() - self.rules.last_write < 2.0:
                return
            self.request_reload("database change")

        try:
            while True:
                if conn is None or conn.is_closed():
                    try:
                        conn = await self.pool.acquire()
                        await conn.add_listener("aetherius_rules", notified)
                    except Exception as exc:
                        log.warning("LISTEN aetherius_rules failed (%s); polling", exc)
                        conn = None
                await asyncio.sleep(10)
                current = await self._rules_fingerprint()
                if self._fingerprint_stale:     # a reload since: what it read is the baseline
                    self._fingerprint_stale, last = False, current
                elif current != last:
                    last = current
                    self.request_reload("database change (poll)")
        finally:
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.remove_listener("aetherius_rules", notified)
                    await self.pool.release(conn)

    async def _rules_fingerprint(self) -> tuple:
        assert self.pool is not None
        row = await self.pool.fetchrow("""
            SELECT (SELECT count(*) FROM workflows) AS w, (SELECT max(updated_at) FROM workflows) AS wu,
                   (SELECT count(*) FROM strategies) AS s, (SELECT max(updated_at) FROM strategies) AS su""")
        return tuple(row.values())

    async def _retention_loop(self) -> None:
        assert self.repo is not None
        while True:
            await asyncio.sleep(3600)
            try:
                deleted = await self.repo.purge(self.retention)
                if deleted:
                    log.info("Retention: deleted %d old record(s)", deleted)
            except Exception as exc:
                log.warning("retention failed: %s", exc)

    # ------------------------------------------------------------------ API

    async def _api_loop(self) -> None:
        import uvicorn

        from engine.api import create_app

        http = self.config.http
        # log_config=None: uvicorn's lines go through the service's one formatter (engine.logs).
        config = uvicorn.Config(create_app(self), host=http.host, port=http.port, log_level="warning",
                                access_log=False, lifespan="off", log_config=None)
        server = uvicorn.Server(config)
        server.capture_signals = contextlib.nullcontext   # the service owns SIGTERM/SIGINT
        self.api_server = server
        log.info("HTTP API on http://%s:%s/api/v1 (OpenAPI at /docs)", config.host, config.port)
        await server.serve()

    # ------------------------------------------------------------------ hooks

    def _on_step(self, what: str, execution: Execution, run: StepRun) -> None:
        if what == "step_finished" and run.started_at and run.finished_at:
            self.metrics.step_seconds.labels(run.step_type, run.status).observe(
                max(0.0, run.finished_at - run.started_at))

    async def _limit(self, action: str, target: str) -> bool:
        assert self.cache is not None
        limit = self.config.remediation.rate_limit
        return await self.cache.allow(f"{action}:{target}", limit.max, limit.per)

    async def status(self) -> dict[str, Any]:
        return {
            "replica": self.replica, "ready": self.ready, "uptime_s": round(time.time() - self.started_at, 1),
            "nats": {"mode": self.bus.mode if self.bus else None,
                     "connected": bool(self.bus and self.bus.connected)},
            "redis": "ok" if self.cache and self.cache.healthy else "degraded",
            "rules": self.rules.status.as_dict() if self.rules else None,
            "running_executions": len(self.runner.running()) if self.runner else 0,
            "open_incidents": sum(1 for i in self._incidents.values() if i.status != CLOSED),
            "stats": dict(self.stats),
        }


def _version() -> str:
    from engine import __version__

    return __version__


async def serve(config: Config) -> int:
    service = Service(config)
    await service.run()
    return 0


__all__ = ["Service", "serve"]

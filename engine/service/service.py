"""The service as a composition root: it builds the parts in a fixed order, runs their
loops in one task group, and takes them down in reverse.

Start order (each step's undo is pushed on an ``AsyncExitStack``, so stopping runs them
backwards, whatever step a failure stopped at):

1. servers: the configured NATS / PostgreSQL / Redis, or embedded ones (``engine.devservers``);
2. PostgreSQL: pool and migrations; the records (:mod:`engine.storage.records`) and the
   runner's store with its group committer;
3. Redis (optional: degraded without it); the rule base and the rule generations;
4. the runner (and its HTTP client), :mod:`~engine.service.executions`,
   :mod:`~engine.service.incidents`, :mod:`~engine.service.intake`;
5. NATS; :mod:`~engine.service.recovery` takes back what this replica held before a stop;
6. the loops, in one ``asyncio.TaskGroup``: the NATS intake, heartbeat and takeover, the
   admission of queued executions, rule reloads, the rules watcher, LISTEN for stored rule
   changes, retention, the HTTP API. If one dies, the service stops rather than limp on.

Shutdown (SIGTERM/SIGINT): no new events, running steps get ``service.shutdown_grace`` to
finish, background writes (acks, incident updates) complete, the runner's last state is
committed (shielded from cancellation), and the process exits 0; what still runs stays
"running" in the store and is resumed by the next replica that starts or notices; what is
queued stays queued, for the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reactivex.scheduler.eventloop import AsyncIOScheduler

from engine import __version__, devservers, gctune
from engine.api import create_app
from engine.api.deps import ApiDeps
from engine.auth import Principal
from engine.config import Config, plain
from engine.correlation import Correlator
from engine.metrics import Metrics
from engine.rulebase import RuleBase
from engine.rules.model import RetryPolicy
from engine.service.api_server import ApiServer
from engine.service.background import Background
from engine.service.bootstrap import ensure_admin
from engine.service.bus import Bus
from engine.service.cache import Cache
from engine.service.contracts import Stats
from engine.service.engines import approvals_api, build_runner
from engine.service.executions import Executions
from engine.service.generations import RulesManager
from engine.service.health import Health
from engine.service.incidents import Incidents
from engine.service.intake import Intake
from engine.service.locks import Locks
from engine.service.mail import SmtpMailer
from engine.service.notifier import IncidentNotifier
from engine.service.recorded import Recorded
from engine.service.recovery import Recovery
from engine.service.reloads import Reloads
from engine.service.retention import Retention
from engine.service.transport import make_client
from engine.statuses import ExecutionStatus
from engine.storage.approvals import Approvals
from engine.storage.audit import AuditLog
from engine.storage.db import create_pool, migrate
from engine.storage.executions import PostgresStore
from engine.storage.outage import Availability
from engine.storage.queries import Queries
from engine.storage.records import Repository
from engine.storage.rules import StoredRules
from engine.storage.sessions import Sessions
from engine.storage.tokens import Tokens
from engine.store import Execution, StepRun
from engine.ui import install as install_console
from steps.base import Settings

log = logging.getLogger(__name__)


@dataclass
class Replica:
    """Everything a started replica holds; every part is there (built by Service.start)."""

    health: Health
    intake: Intake
    incidents: Incidents
    executions: Executions
    recovery: Recovery
    reloads: Reloads
    retention: Retention
    rules: RulesManager
    bus: Bus
    api: ApiServer
    background: Background


class Service:
    def __init__(self, config: Config, *, data_dir: str | Path | None = None) -> None:
        self.config = config
        svc = config.service
        self.replica_id = svc.replica_id or os.environ.get("HOSTNAME") or socket.gethostname()
        self.data_dir = Path(data_dir or svc.data_dir)
        self.lease = svc.lease
        self.grace = svc.shutdown_grace
        self.retention = svc.retention
        self.max_event_bytes = config.intake.max_event_bytes
        self.metrics = Metrics()
        self._stop = asyncio.Event()
        self._replica: Replica | None = None   # while running

    # ------------------------------------------------------------------ assembly

    async def start(self, stack: contextlib.AsyncExitStack) -> Replica:
        """Build every part, in order; ``stack`` takes them down in reverse."""
        config, replica_id = self.config, self.replica_id
        # Configured servers, or embedded ones started in the data directory (blocking: ~1 s).
        urls, embedded = await asyncio.to_thread(devservers.resolve, config, self.data_dir)
        if embedded is not None:
            stack.push_async_callback(asyncio.to_thread, embedded.stop)
        log.info("Aetherius Orchestrator %s starting (%s mode): replica %s; %s", __version__,
                 "embedded" if embedded is not None else "external", replica_id, urls.description)

        pool = await create_pool(urls.database_dsn, max_size=config.database.pool_size)
        stack.push_async_callback(pool.close)
        await migrate(pool)
        records = Repository(pool, replica_id)
        stack.push_async_callback(_quietly, records.leave)
        postgres = Availability("PostgreSQL")      # one outage, said once, whoever meets it
        store = PostgresStore(pool, replica_id, self.lease, availability=postgres)
        store.writer.start()
        stack.push_async_callback(_shielded, store.writer.stop)
        audit = AuditLog(pool)
        tokens = Tokens(pool, cache_seconds=config.auth.token_cache)
        await ensure_admin(tokens, plain(config.auth.bootstrap_token))

        cache = Cache(urls.redis_url, prefix=config.redis.prefix)
        stack.push_async_callback(cache.close)
        await cache.ping()
        rulebase = RuleBase([])
        stack.callback(rulebase.close)
        stored_rules = StoredRules(pool)
        rules = RulesManager(config.rules.dir, rulebase, stored_rules, policy=config.agent_policy())

        nats = config.nats
        bus = Bus(urls.nats_url, list(nats.subjects), stream=nats.stream, durable=nats.durable,
                  batch=nats.batch, ack_wait=nats.ack_wait)
        stack.push_async_callback(bus.close)

        settings = config.step_settings(live=True)
        _announce(settings)
        # Requests in flight per outside service; a wait for a slot is not counted in a step's timeout.
        limits = {url: n for url, n in ((config.agent_manager.url, config.agent_manager.max_connections),
                                        (config.ai.reasoning_service_url, config.ai.max_connections)) if url}
        http = make_client(max_connections=20, limits=limits)
        stack.push_async_callback(http.aclose)
        limit, per = config.remediation.rate_limit.max, config.remediation.rate_limit.per

        async def allow(action: str, target: str) -> bool:
            return await cache.allow(f"{action}:{target}", limit, per)

        system = Principal("system", replica_id)
        locks = Locks(cache, pool)

        async def audit_step(execution: Execution, step_id: str, action: str, detail: dict[str, Any]) -> None:
            # Group-committed with the executions' state writes: on record before the step goes on.
            await store.writer.write([audit.statement(system, action, "execution", execution.id,
                                                      {**detail, "step_id": step_id})])

        metrics = self.metrics
        admission: list[Executions] = []    # set below: an execution waiting for a human frees its slot

        def approval_waits(delta: int) -> None:
            metrics.approvals_waiting.inc(delta)
            for part in admission:
                part.waiting_for_humans(delta)

        approvals = Approvals(pool, audit, poll=config.approvals.poll, availability=postgres, system=system,
                              count=lambda event: metrics.approvals.labels(event).inc(),
                              waiting=approval_waits)
        runner = await build_runner(config, stack, store, settings, self.data_dir, http=http, limiter=allow,
                                    lock=lambda name: locks.hold(name, ttl=60.0, wait=30.0), audit=audit_step,
                                    outage_retry=RetryPolicy(**config.retries.model_dump()),
                                    approvals=approvals, mailer=SmtpMailer())
        runner.listeners.append(self._step_finished)
        background = Background()
        stack.push_async_callback(background.wait, 5.0)
        stats = Stats()
        executions = Executions(runner, metrics=self.metrics, stats=stats, background=background,
                                store=store, workflows=rules, max_running=config.executions.max_running,
                                max_queued=config.executions.max_queued, poll=max(0.5, self.lease / 3),
                                postgres=postgres)
        admission.append(executions)

        async def abandon_approvals(execution: Execution) -> None:
            # Cancelled or timed out while a change waited for a human: nobody can decide it now.
            if execution.status in (ExecutionStatus.CANCELLED, ExecutionStatus.TIMED_OUT):
                await approvals.abandon(execution.id)

        executions.listeners.append(abandon_approvals)
        stack.push_async_callback(executions.drain, self.grace)

        correlator = Correlator(AsyncIOScheduler(asyncio.get_running_loop()), track_event_ids=True)
        recorded = Recorded()
        incidents = Incidents(records=records, workflows=rules, correlator=correlator,
                              executions=executions, metrics=self.metrics, stats=stats,
                              background=background, recorded=recorded, postgres=postgres,
                              notifier=IncidentNotifier(settings, http, background))
        intake = Intake(records=records, rulebase=rulebase, correlator=correlator, metrics=self.metrics,
                        stats=stats, background=background, recorded=recorded,
                        max_event_bytes=self.max_event_bytes, postgres=postgres,
                        dead_letter_bytes=config.intake.dead_letter_bytes, room=executions.room)
        reloads = Reloads(rules, changes=stored_rules, metrics=self.metrics, cache=cache,
                          background=background, replica=replica_id, audit=audit)
        if not await rules.reload("start"):
            await rules.reload_stored("start: rule files invalid, using the last stored rules")

        await bus.connect()
        health = Health(replica_id, Queries(pool).ping, bus, cache, rules, executions, correlator, stats)
        recovery = Recovery(records=records, store=store, workflows=rules, executions=executions,
                            intake=intake, cache=cache, lease=self.lease,
                            info=lambda: {"pid": os.getpid(), "nats": bus.mode,
                                          "generation": rules.status.generation},
                            postgres=postgres)
        # Messages recorded just before a stop may be redelivered: know their ids.
        for event_id in await records.recent_event_ids(max(120.0, 4 * bus.ack_wait)):
            intake.remember(event_id)
        await recovery.at_start()
        await executions.recount()      # its queued executions from before a stop go first

        deps = ApiDeps(queries=Queries(pool), rules=rules, executions=executions, ingest=intake.ingest,
                       readiness=health.readiness, cached_generation=cache.active_generation,
                       metrics=self.metrics, auth=tokens, tokens=tokens, audit=audit,
                       max_event_bytes=self.max_event_bytes, replica=replica_id,
                       max_request_bytes=config.intake.max_request_bytes,
                       max_events_per_request=config.intake.max_events_per_request,
                       dead_letter_bytes=config.intake.dead_letter_bytes,
                       concurrent_event_requests=config.intake.concurrent_requests,
                       metrics_public=config.http.metrics_public,
                       allowed_origins=frozenset(config.http.allowed_origins),
                       override_roles=frozenset(config.policy.override_roles),
                       approvals=approvals_api(runner, approvals),
                       slack_signing_secret=plain(config.approvals.slack.signing_secret),
                       slack_users=dict(config.approvals.slack.users),
                       sessions=Sessions(pool, ttl=config.auth.session_ttl,
                                         cache_seconds=config.auth.token_cache))
        api = ApiServer(install_console(create_app(deps)), config.http.host, config.http.port)
        health.ready = True
        gctune.tune(config.service.gc_thresholds)   # set up: what it allocates from now on is work
        return Replica(health=health, intake=intake, incidents=incidents, executions=executions,
                       recovery=recovery, reloads=reloads,
                       retention=Retention(records, self.retention, audit, config.audit.retention),
                       rules=rules, bus=bus, api=api, background=background)

    # ------------------------------------------------------------------ running

    async def run(self) -> None:
        """Start, serve until stopped (SIGTERM, SIGINT or :meth:`request_stop`), shut down."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop)
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGHUP, lambda: self.request_reload("SIGHUP"))
        async with contextlib.AsyncExitStack() as stack:
            stack.callback(log.info, "Aetherius Orchestrator stopped")
            replica = self._replica = await self.start(stack)
            try:
                await self._serve(replica)
            finally:
                replica.health.ready = False
                self._replica = None

    async def _serve(self, r: Replica) -> None:
        async with asyncio.TaskGroup() as group:
            # The intake and the API end by themselves once stopped; the others are loops.
            group.create_task(r.bus.run(r.intake.ingest_messages), name="nats-intake")
            group.create_task(r.api.serve(), name="http-api")
            loops = [
                group.create_task(r.recovery.run(), name="heartbeat"),
                group.create_task(r.executions.run(), name="admission"),
                group.create_task(r.reloads.run(), name="rules-reload"),
                group.create_task(r.reloads.watch(self._stop), name="rules-watcher"),
                group.create_task(r.reloads.listen(), name="db-listen"),
                group.create_task(r.retention.run(), name="retention"),
            ]
            await self._stop.wait()
            for task in loops:
                task.cancel()

    def request_stop(self) -> None:
        if self._stop.is_set():
            return
        log.info("Stop requested: no new events; running steps get %.0fs to finish", self.grace)
        self._stop.set()
        replica = self._replica
        if replica is not None:
            replica.health.ready = False
            replica.executions.runner.draining = True   # from now on no new step starts
            replica.bus.stop()
            replica.api.stop()

    def request_reload(self, reason: str) -> None:
        if self._replica is not None:
            self._replica.reloads.request(reason)

    def _step_finished(self, what: str, execution: Execution, run: StepRun) -> None:
        if what == "step_finished" and run.started_at and run.finished_at:
            self.metrics.step_seconds.labels(run.step_type, run.status).observe(
                max(0.0, run.finished_at - run.started_at))


def _announce(settings: Settings) -> None:
    if not settings.agent_manager_url:
        log.warning("agent_manager.url is not configured: command and remediation steps answer "
                    "dry-run (set AETHERIUS_AGENT_MANAGER__URL)")
    channels = [name for name, on in (
        ("slack", settings.slack_webhook_url), ("teams", settings.teams_webhook_url),
        ("pagerduty", settings.pagerduty_routing_key), ("email", settings.email.host)) if on]
    channels += [f"webhook:{name}" for name in settings.webhooks]
    log.info("Notification channels configured: %s; %d route(s), otherwise %s", ", ".join(channels) or "none",
             len(settings.routes), ", ".join(settings.default_channels) or "nothing")
    if settings.dry_run:
        log.info("Remediation is in dry-run mode (remediation.dry_run: true): no change reaches the cluster")


async def _shielded(action: Any) -> None:
    """The last state write must land even if shutdown is cancelled."""
    await asyncio.shield(action())


async def _quietly(action: Any) -> None:
    with contextlib.suppress(Exception):
        await action()


async def serve(config: Config) -> int:
    await Service(config).run()
    return 0


__all__ = ["Replica", "Service", "serve"]

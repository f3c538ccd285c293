"""Rule reloads, retention and readiness on in-memory stand-ins."""

from __future__ import annotations

import asyncio
import logging

from engine.service.bus import Bus
from engine.service.health import Health
from engine.service.reloads import Reloads
from engine.service.retention import Retention
from tests.unit.service.conftest import RULES


def reloads_of(parts, **kwargs) -> Reloads:
    return Reloads(parts.rules, changes=parts.changes, metrics=parts.metrics, cache=parts.cache,
                   background=parts.background, replica="r1", **kwargs)


def test_a_burst_of_requests_is_one_reload_and_nothing_new_is_no_new_generation(make_parts) -> None:
    async def go() -> None:
        parts = await make_parts()
        reloads = reloads_of(parts, coalesce=0.05)
        first = parts.rules.status.generation
        seen: list[str] = []
        parts.rules.listeners.append(lambda ok, status: seen.append(status.reason))
        loop = asyncio.create_task(reloads.run())
        for reason in ("file change", "SIGHUP", "api", "file change"):
            reloads.request(reason)
        await asyncio.sleep(0.2)
        assert seen == ["file change"]
        assert parts.rules.status.generation == first      # unchanged rules: the same generation
        (parts.rules.directory / "rules.yaml").write_text(RULES.replace("quiet: 30s", "quiet: 20s"))
        reloads.request("file change")
        await asyncio.sleep(0.2)
        loop.cancel()
        assert seen == ["file change", "file change"]
        assert parts.rules.status.generation > first
        assert parts.metrics.rules_generation._value.get() == parts.rules.status.generation
        await parts.settle()
        assert (await parts.cache.active_generation()) is None   # no Redis: nothing published

    asyncio.run(go())


def test_stored_rule_changes_are_heard_by_notify_and_by_the_poll(make_parts) -> None:
    async def go() -> None:
        parts = await make_parts()
        reloads = reloads_of(parts, poll=0.02)
        asked: list[str] = []
        reloads.request = asked.append                 # type: ignore[method-assign]
        listener = asyncio.create_task(reloads.listen())
        await asyncio.sleep(0.01)
        parts.changes.notify()
        assert asked == ["database change"]
        parts.changes.touch()                         # a change no NOTIFY told of
        await asyncio.sleep(0.1)
        assert asked == ["database change", "database change (poll)"]
        parts.changes.connected = False                # the LISTEN connection broke: listen again
        await asyncio.sleep(0.05)
        assert parts.changes.listeners == []
        parts.changes.connected = True
        await asyncio.sleep(0.1)
        assert len(parts.changes.listeners) == 1
        parts.changes.notify()
        listener.cancel()
        assert asked[-1] == "database change"

    asyncio.run(go())


def test_retention_purges_and_survives_a_failure(make_parts, caplog) -> None:
    async def go() -> None:
        parts = await make_parts()
        retention = Retention(parts.records, older_than=30 * 86400.0)
        assert await retention.once() == 0
        assert parts.records.purged == [30 * 86400.0]

        async def broken(*_args, **_kwargs) -> int:
            raise ConnectionError("database unreachable")

        parts.records.purge = broken
        with caplog.at_level(logging.WARNING):
            assert await retention.once() == 0
        assert "retention failed: ConnectionError: database unreachable" in caplog.text

    asyncio.run(go())


def test_readiness_says_why_it_is_not_ready(make_parts) -> None:
    async def go() -> None:
        parts = await make_parts()

        async def database_down() -> None:
            raise ConnectionError("connection refused")

        health = Health("r1", database_down, Bus("nats://127.0.0.1:1", ["x"]), parts.cache, parts.rules,
                        parts.executions, parts.incidents.correlator, parts.stats)
        body = await health.readiness()
        assert body["ready"] is False
        assert body["checks"] == {"postgres": "down", "nats": "down", "redis": "degraded"}
        assert body["reasons"] == ["the service is not ready (starting or stopping)",
                                   "PostgreSQL: ConnectionError: connection refused", "NATS is not connected"]
        assert body["rules"]["generation"] == parts.rules.status.generation and body["stats"]["events"] == 0

    asyncio.run(go())


def test_an_execution_is_counted_once_and_heard_of_once_when_it_ends(make_parts) -> None:
    async def go() -> None:
        parts = await make_parts()
        ended: list[str] = []

        async def heard(execution) -> None:
            ended.append(execution.status)

        parts.executions.listeners.append(heard)
        workflow = await parts.rules.workflow("note_it")
        started = await parts.executions.start(workflow, incident={})
        assert parts.metrics.executions_running._value.get() == 1
        await started.task
        await parts.settle()
        assert ended == ["succeeded"]
        assert parts.metrics.executions_running._value.get() == 0
        assert parts.metrics.executions.labels("note_it", "succeeded")._value.get() == 1
        # Cancelled (as at shutdown): not counted as ended, nobody is told.
        parts.runner.settings = parts.runner.settings.__class__(live=False, virtual_time=False)
        slow = await parts.executions.start(workflow, incident={})
        await asyncio.sleep(0.05)
        assert parts.executions.cancel(slow.id)
        await asyncio.gather(slow.task, return_exceptions=True)
        await parts.settle()
        assert ended == ["succeeded"]
        assert parts.metrics.executions_running._value.get() == 0

    asyncio.run(go())

"""Intake on in-memory records: each event recorded once, acks only after recording."""

from __future__ import annotations

import asyncio
import hashlib

from engine.testing import message
from tests.unit.service.conftest import k8s_event, raw


def test_a_batch_is_recorded_once_then_acked(make_parts) -> None:
    async def go() -> None:
        parts = await make_parts()
        first = k8s_event("web")
        batch = [message(raw(first), msg_id="m-1"), message(raw(first), msg_id="m-1"),
                 message(b"{not json", msg_id="m-2"), message(raw(k8s_event("api")))]
        await parts.intake.ingest_messages(batch)
        await parts.settle()
        assert all(m.acked for m in batch)
        assert sorted(parts.records.events) == ["ev-blog-api@1", "m-1"]
        assert parts.records.events["m-1"]["state"] == "pending"
        ((source, subject, reason, data, _headers, size, sha256),) = parts.records.dead_letters
        assert (source, subject, data) == ("nats", "internal.event.critical", b"{not json")
        assert (size, sha256) == (9, hashlib.sha256(b"{not json").hexdigest())
        assert "JSON" in reason, reason
        assert parts.stats.events == 2 and parts.stats.duplicates == 1 and parts.stats.dead_letters == 1

    asyncio.run(go())


def test_a_batch_that_cannot_be_recorded_is_not_acked_and_its_redelivery_is_processed(make_parts) -> None:
    async def go() -> None:
        parts = await make_parts()
        batch = [message(raw(k8s_event("web", i + 1)), msg_id=f"m-{i}") for i in range(3)]
        parts.records.down = True
        await parts.intake.ingest_messages(batch)
        await parts.settle()
        assert not any(m.acked for m in batch)
        assert parts.records.events == {}
        parts.records.down = False
        redelivered = [message(m.data, msg_id=m.msg_id) for m in batch]
        await parts.intake.ingest_messages(redelivered)
        await parts.settle()
        assert all(m.acked for m in redelivered)
        assert sorted(parts.records.events) == ["m-0", "m-1", "m-2"]
        assert parts.stats.duplicates == 0

    asyncio.run(go())


def test_oversized_and_malformed_input_becomes_dead_letters_over_http(make_parts) -> None:
    async def go() -> None:
        parts = await make_parts()
        big = k8s_event("web", 1)
        big["message"] = "x" * (70 * 1024)
        counts = await parts.intake.ingest([(big, None, None, {}), (["not", "an", "event"], None, None, {}),
                                            (k8s_event("web", 2), None, None, {})], "http")
        assert counts == {"accepted": 1, "duplicates": 0, "dead_letters": 2, "ignored": 0}
        reasons = [d[2] for d in parts.records.dead_letters]
        assert any("exceeds" in r for r in reasons), reasons
        assert list(parts.records.events) == ["ev-blog-web@2"]

    asyncio.run(go())


def test_recorded_pending_events_are_correlated_again_after_a_restart(make_parts) -> None:
    async def go() -> None:
        before = await make_parts()
        await before.intake.ingest([(k8s_event("web", i + 1), None, None, {}) for i in range(3)], "http")
        assert {e["state"] for e in before.records.events.values()} == {"pending"}
        # The process dies before the burst forms; a new one starts on the same records.
        after = await make_parts()
        after.records.events = before.records.events
        await after.recovery.at_start()
        after.advance(31)
        await after.settle()
        (incident,) = after.records.incidents.values()
        assert incident.events == 3 and incident.status == "closed"
        assert {e["state"] for e in after.records.events.values()} == {"attached"}

    asyncio.run(go())


def test_redeliveries_are_counted_and_said_once_a_minute(make_parts, caplog) -> None:
    async def go() -> None:
        parts = await make_parts()
        again = [message(raw(k8s_event("web", n)), msg_id=f"m-{n}") for n in (1, 2, 3)]
        for m in again:
            m.deliveries = 2
        with caplog.at_level("INFO"):
            await parts.intake.ingest_messages(again[:2])
            await parts.intake.ingest_messages(again[2:])
            await parts.settle()
        assert parts.metrics.events_redelivered._value.get() == 3
        said = [r.getMessage() for r in caplog.records if "redelivered" in r.getMessage()]
        assert said == ["NATS redelivered 2 message(s) not acked before (recorded once, by id)"]
        assert all(m.acked for m in again) and len(parts.records.events) == 3

    asyncio.run(go())

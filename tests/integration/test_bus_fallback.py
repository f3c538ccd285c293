"""engine.service.bus.Bus against real NATS servers.

- Without JetStream (a ``nats-server`` of our own, started without ``-js``): the bus
  falls back to a plain subscription, says so loudly, still delivers in batches, and
  ``stop()`` / ``close()`` end ``run()``.
- With JetStream (the session's server): the stream and the durable consumer are created
  when missing and reused when present, and a message that is not acked comes back after
  ``ack_wait`` while an acked one does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from nats.js.errors import NotFoundError

from engine.devservers import free_port, nats_server_binary
from engine.service.bus import Bus, Message

pytestmark = pytest.mark.integration

WARNING_WORDS = "JETSTREAM IS NOT AVAILABLE"


# ---------------------------------------------------------------------------- helpers


def _greets(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            return sock.recv(8).startswith(b"INFO ")
    except OSError:
        return False


@pytest.fixture
def plain_nats(tmp_path: Path) -> Iterator[str]:
    """A NATS server WITHOUT JetStream, of this test's own; its URL."""
    port = free_port()
    log_path = tmp_path / "nats-plain.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([str(nats_server_binary()), "-a", "127.0.0.1", "-p", str(port)],
                                cwd=tmp_path, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 10
        while not _greets(port):
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"nats-server did not start: {log_path.read_text(errors='replace')[-2000:]}")
            time.sleep(0.02)
        yield f"nats://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


class Collector:
    """A bus handler that records each batch; acks what ``ack`` says (all by default)."""

    def __init__(self, ack: bool | None = True, delay: float = 0.0) -> None:
        self.batches: list[list[Message]] = []
        self.times: list[float] = []            # time.monotonic() of each batch
        self.ack = ack
        self.delay = delay
        self.changed = asyncio.Event()

    async def __call__(self, batch: list[Message]) -> None:
        self.batches.append(batch)
        self.times.append(time.monotonic())
        self.changed.set()
        if self.delay:
            await asyncio.sleep(self.delay)   # slow handling: the next messages queue up
        for message in batch:
            if self.ack is True or (self.ack is None and message.data.startswith(b"ack")):
                await message.ack()

    @property
    def messages(self) -> list[Message]:
        return [m for batch in self.batches for m in batch]

    async def wait_for(self, predicate, timeout: float) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not predicate():
            left = deadline - asyncio.get_running_loop().time()
            assert left > 0, f"not within {timeout}s: {[m.data for m in self.messages]}"
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(left, 0.2))


async def _ended(task: asyncio.Task, timeout: float = 3.0) -> float:
    """Seconds ``run()`` took to return; fails if it does not."""
    t0 = time.monotonic()
    await asyncio.wait_for(task, timeout)
    return time.monotonic() - t0


async def _subscribed(bus: Bus, timeout: float = 5.0) -> None:
    """Until run() has subscribed to every subject and the server knows it."""
    deadline = time.monotonic() + timeout
    while len(bus._subs) < len(bus.subjects):
        assert time.monotonic() < deadline, "run() did not subscribe"
        await asyncio.sleep(0.01)
    assert bus.nc is not None
    await bus.nc.flush()


# ---------------------------------------------------------------------------- without JetStream


def test_without_jetstream_the_bus_falls_back_loudly_and_still_delivers_batches(plain_nats, caplog):
    caplog.set_level(logging.INFO, logger="engine.service.bus")
    subjects = ["internal.event.critical", "internal.event.anomaly"]

    async def go() -> None:
        bus = Bus(plain_nats, subjects, batch=8)
        publisher = await nats.connect(plain_nats)
        try:
            t0 = time.monotonic()
            await bus.connect()
            connect_s = time.monotonic() - t0
            assert bus.mode == "plain"
            assert bus.js is None and bus.connected
            warnings = [r for r in caplog.records
                        if r.levelno == logging.WARNING and r.name == "engine.service.bus"]
            assert any(WARNING_WORDS in r.getMessage() for r in warnings), caplog.text
            assert any("WILL BE LOST" in r.getMessage() for r in warnings), caplog.text
            assert connect_s < 5, connect_s    # no long JetStream timeout before the fallback

            handler = Collector(delay=0.2)
            task = asyncio.create_task(bus.run(handler))
            await _subscribed(bus)
            sent = [(subjects[i % 2], f"event-{i}".encode()) for i in range(50)]
            for subject, data in sent:
                await publisher.publish(subject, data)
            await publisher.flush()
            await handler.wait_for(lambda: len(handler.messages) >= len(sent), 10)

            got = handler.messages
            assert sorted(m.data for m in got) == sorted(d for _, d in sent)
            assert {(m.subject, m.data) for m in got} == set(sent)
            assert all(m.msg_id is None for m in got)
            # Batching: the first batch was slow to handle, so what came meanwhile was
            # handed over together, never more than ``batch`` at once.
            sizes = [len(b) for b in handler.batches]
            assert max(sizes) > 1, sizes
            assert max(sizes) <= bus.batch, sizes
            assert len(handler.batches) < len(sent), sizes

            # Publish after the batch: still delivered; then stop() ends run().
            await publisher.publish(subjects[0], b"late")
            await publisher.flush()
            await handler.wait_for(lambda: any(m.data == b"late" for m in handler.messages), 5)
            bus.stop()
            took = await _ended(task)
            assert took < 2, took
            print(f"\nplain NATS: fallback decided in {connect_s:.3f}s; {len(sent)} messages in "
                  f"batches of {sizes}; run() ended {took:.2f}s after stop()")
        finally:
            await publisher.close()
            await bus.close()
        assert not bus.connected

    asyncio.run(go())


def test_without_jetstream_close_ends_run(plain_nats, caplog):
    caplog.set_level(logging.WARNING, logger="engine.service.bus")

    async def go() -> None:
        bus = Bus(plain_nats, ["a.b"], batch=4)
        await bus.connect()
        assert bus.mode == "plain"
        assert WARNING_WORDS in caplog.text
        handler = Collector()
        task = asyncio.create_task(bus.run(handler))
        await _subscribed(bus)
        publisher = await nats.connect(plain_nats)
        try:
            await publisher.publish("a.b", b"one")
            await publisher.flush()
            await handler.wait_for(lambda: len(handler.messages) == 1, 5)
        finally:
            await publisher.close()
        await bus.close()
        took = await _ended(task)
        assert took < 2, took
        assert not bus.connected

    asyncio.run(go())


# ---------------------------------------------------------------------------- with JetStream


def test_jetstream_stream_and_consumer_are_created_then_reused(nats_url, nats_prefix, caplog):
    caplog.set_level(logging.INFO, logger="engine.service.bus")
    stream = f"{nats_prefix}_EVENTS"
    durable = f"{nats_prefix}_durable"
    subjects = [f"{nats_prefix}.event.critical", f"{nats_prefix}.event.anomaly"]

    async def go() -> None:
        admin = await nats.connect(nats_url)
        js = admin.jetstream()
        first = Bus(nats_url, subjects, stream=stream, durable=durable, ack_wait=1.0)
        second = Bus(nats_url, subjects, stream=stream, durable=durable, ack_wait=7.0)
        third = Bus(nats_url, [*subjects, f"{nats_prefix}.event.extra"], stream=stream, durable=durable)
        try:
            with pytest.raises(NotFoundError):
                await js.stream_info(stream)

            await first.connect()
            assert first.mode == "jetstream"
            assert WARNING_WORDS not in caplog.text
            info = await js.stream_info(stream)
            assert sorted(info.config.subjects) == sorted(subjects)
            consumer = await js.consumer_info(stream, durable)
            assert consumer.config.durable_name == durable
            assert consumer.config.ack_policy == "explicit"
            assert consumer.config.ack_wait == pytest.approx(1.0)

            # A second bus with the same names reuses both (it does not recreate or change them).
            await second.connect()
            assert second.mode == "jetstream"
            again = await js.stream_info(stream)
            assert again.created == info.created
            consumer_again = await js.consumer_info(stream, durable)
            assert consumer_again.created == consumer.created
            assert consumer_again.config.ack_wait == pytest.approx(1.0)

            # A bus with one more subject adds it to the existing stream.
            await third.connect()
            assert third.mode == "jetstream"
            extended = await js.stream_info(stream)
            assert extended.created == info.created
            assert set(extended.config.subjects) == {*subjects, f"{nats_prefix}.event.extra"}
            assert WARNING_WORDS not in caplog.text
        finally:
            for bus in (first, second, third):
                await bus.close()
            await admin.close()

    asyncio.run(go())


def test_jetstream_unacked_message_is_redelivered_after_ack_wait_and_acked_one_is_not(nats_url, nats_prefix):
    stream = f"{nats_prefix}_EVENTS"
    subjects = [f"{nats_prefix}.event.critical", f"{nats_prefix}.event.anomaly"]

    async def go() -> None:
        bus = Bus(nats_url, subjects, stream=stream, durable=f"{nats_prefix}_durable", ack_wait=1.0, batch=16)
        await bus.connect()
        assert bus.mode == "jetstream"
        publisher = await nats.connect(nats_url)
        handler = Collector(ack=None)          # acks only messages whose data starts with b"ack"
        task = asyncio.create_task(bus.run(handler))
        try:
            js = publisher.jetstream()
            await js.publish(subjects[0], b"ack-me", headers={"Nats-Msg-Id": "m-ack"})
            await js.publish(subjects[1], b"leave-me", headers={"Nats-Msg-Id": "m-leave"})
            t0 = time.monotonic()

            def seen(data: bytes) -> list[float]:
                """When each delivery of ``data`` reached the handler, from the publish."""
                return [at - t0 for at, batch in zip(handler.times, handler.batches, strict=True)
                        for m in batch if m.data == data]

            await handler.wait_for(lambda: len(seen(b"leave-me")) >= 3, 8)
            # Delivered again and again, about one ack_wait apart; the acked one only once.
            # (Counted here rather than read from the reply subject's delivery count: NATS
            # 2.9 sometimes reports 1 there for a redelivery to a pull consumer.)
            times = seen(b"leave-me")
            assert times[0] < 0.9, times
            gaps = [b - a for a, b in itertools.pairwise(times)]
            assert all(0.8 <= gap < 2.5 for gap in gaps), times
            assert len(seen(b"ack-me")) == 1
            got = {m.data: m for m in handler.messages}
            assert got[b"ack-me"].msg_id == "m-ack" and got[b"leave-me"].msg_id == "m-leave"
            assert got[b"leave-me"].subject == subjects[1]

            # Finally acked: no more redeliveries after another ack_wait.
            handler.ack = True
            await handler.wait_for(lambda: len(seen(b"leave-me")) >= 4, 4)
            count = len(seen(b"leave-me"))
            await asyncio.sleep(2.5)
            assert len(seen(b"leave-me")) == count
            assert len(seen(b"ack-me")) == 1
            consumer = await js.consumer_info(stream, f"{nats_prefix}_durable")
            assert consumer.num_ack_pending == 0 and consumer.num_pending == 0
            print(f"\nJetStream: the unacked message reached the handler at "
                  f"{', '.join(f'{t:.2f}' for t in times)}s (ack_wait 1s); the acked one once")
        finally:
            bus.stop()
            took = await _ended(task)
            await bus.close()
            await publisher.close()
        assert took < 2, took

    asyncio.run(go())


# ---------------------------------------------------------------------------- idle and failing


def _bus_records(caplog: pytest.LogCaptureFixture, level: int = logging.WARNING) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "engine.service.bus" and r.levelno >= level]


def test_jetstream_idle_bus_logs_no_warning(nats_url, nats_prefix, caplog):
    # An idle pull consumer's fetch ends with a TimeoutError (sometimes nats-py's own, sometimes
    # a bare asyncio one): that is the normal idle case, not "NATS fetch failed".
    caplog.set_level(logging.DEBUG, logger="engine.service.bus")
    subjects = [f"{nats_prefix}.event.critical"]

    async def idle(bus: Bus, seconds: float) -> None:
        await bus.connect()
        assert bus.mode == "jetstream"
        handler = Collector()
        task = asyncio.create_task(bus.run(handler))
        try:
            await asyncio.sleep(seconds)
            # Still fetching: a message published after the idle spell arrives. (Each bus has its
            # own durable consumer on the stream, so the second also gets the first's message.)
            publisher = await nats.connect(nats_url)
            payload = f"after-idle-{bus.durable}".encode()
            try:
                await publisher.jetstream().publish(subjects[0], payload)
            finally:
                await publisher.close()
            await handler.wait_for(lambda: payload in [m.data for m in handler.messages], 5)
        finally:
            bus.stop()
            await _ended(task)
            await bus.close()

    async def go() -> None:
        # Longer than two default fetch timeouts, then ~1000 fetches of 2 ms: those reach
        # nats-py's bare-asyncio.TimeoutError path (the old code's warning) within a second.
        await idle(Bus(nats_url, subjects, stream=f"{nats_prefix}_EVENTS", durable=f"{nats_prefix}_a"),
                   2.5 * Bus(nats_url, subjects).fetch_timeout)
        await idle(Bus(nats_url, subjects, stream=f"{nats_prefix}_EVENTS", durable=f"{nats_prefix}_b",
                       fetch_timeout=0.002), 2.0)

    asyncio.run(go())
    assert _bus_records(caplog) == [], caplog.text
    assert "fetch failed" not in caplog.text


def test_jetstream_fetch_failure_is_logged_once_without_a_traceback(nats_url, nats_prefix, caplog):
    caplog.set_level(logging.DEBUG, logger="engine.service.bus")

    async def go() -> float:
        bus = Bus(nats_url, [f"{nats_prefix}.event.critical"], stream=f"{nats_prefix}_EVENTS",
                  durable=f"{nats_prefix}_durable", fetch_timeout=0.1)
        await bus.connect()
        task = asyncio.create_task(bus.run(Collector()))
        try:
            await asyncio.sleep(0.3)
            assert bus.nc is not None
            await bus.nc.close()        # every fetch from now on fails: a real failure
            await asyncio.sleep(2.0)    # failures at about 0, 0.5 and 1.5 s (backing off)
        finally:
            bus.stop()
            took = await _ended(task)
            await bus.close()
        return took

    took = asyncio.run(go())
    failed = [r for r in _bus_records(caplog, logging.DEBUG) if "NATS fetch failed" in r.getMessage()]
    assert len(failed) >= 2, caplog.text                     # it kept retrying...
    assert failed[0].levelno == logging.WARNING               # ...said so once...
    assert all(r.levelno == logging.DEBUG for r in failed[1:]), caplog.text
    assert all(r.exc_info is None for r in caplog.records), caplog.text   # ...and no traceback
    assert took < 1.0, took                                   # stop() cuts the back-off short


# ---------------------------------------------------------------------------- batches and acks


@pytest.mark.parametrize("one_write", [True, False], ids=["one-write", "nats-py-acks"])
def test_a_batch_acked_together_is_never_redelivered(nats_url, nats_prefix, one_write):
    # ack_all writes a batch's acks in one go, or (where nats-py's internals are not what it
    # expects) acks each by Msg.ack. Either way JetStream counts every one.
    from engine.service.bus import ack_all

    stream, durable = f"{nats_prefix}_EVENTS", f"{nats_prefix}_durable"
    subjects = [f"{nats_prefix}.event.critical"]

    async def go() -> None:
        bus = Bus(nats_url, subjects, stream=stream, durable=durable, ack_wait=1.0, batch=64)
        await bus.connect()
        publisher = await nats.connect(nats_url)
        got: list[Message] = []

        async def handle(batch: list[Message]) -> None:
            got.extend(batch)
            await ack_all(batch, one_write=one_write)

        assert bus.nc is not None
        published_before = bus.nc.stats["out_msgs"]
        task = asyncio.create_task(bus.run(handle))
        try:
            js = publisher.jetstream()
            for i in range(300):
                await js.publish(subjects[0], f"m{i}".encode(), headers={"Nats-Msg-Id": f"id-{i}"})
            deadline = time.monotonic() + 10
            while len(got) < 300 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await asyncio.sleep(2.5)          # past ack_wait: nothing may come back
            assert sorted(m.msg_id for m in got) == sorted(f"id-{i}" for i in range(300))
            assert all(m.deliveries == 1 for m in got)
            consumer = await js.consumer_info(stream, durable)
            assert consumer.num_ack_pending == 0 and consumer.num_pending == 0
            assert consumer.num_redelivered == 0
            # nats-py counts its own publishes (pull requests, and acks by Msg.ack) only.
            published = bus.nc.stats["out_msgs"] - published_before
            assert (published < 100) if one_write else (published >= 300), published
        finally:
            bus.stop()
            await _ended(task)
            await bus.close()
            await publisher.close()

    asyncio.run(go())


def test_a_redelivery_is_counted_from_the_ack_subject():
    from engine.service.bus import _deliveries

    # JetStream's ack subjects, without and with the domain and account hash tokens.
    assert _deliveries("$JS.ACK.EVENTS.aetherius.3.1042.1040.1733130000000000000.0") == 3
    assert _deliveries("$JS.ACK.hub.ACCHASH.EVENTS.aetherius.2.1042.1040.1733130000000000000.0.tok") == 2
    assert _deliveries("$JS.ACK.broken") == 1


def test_a_consumer_that_allows_smaller_pulls_is_pulled_in_its_size(nats_url, nats_prefix, caplog):
    # A durable consumer made elsewhere with max_batch 10: JetStream refuses larger pulls
    # (409 Exceeded MaxRequestBatch); the bus says so once and pulls 10 at a time.
    import json

    caplog.set_level(logging.INFO, logger="engine.service.bus")
    stream, durable = f"{nats_prefix}_EVENTS", f"{nats_prefix}_small"
    subjects = [f"{nats_prefix}.event.critical"]

    async def go() -> list[list[Message]]:
        admin = await nats.connect(nats_url)
        js = admin.jetstream()
        await js.add_stream(name=stream, subjects=subjects)
        config = {"durable_name": durable, "ack_policy": "explicit", "deliver_policy": "all",
                  "max_batch": 10}
        reply = await admin.request(f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{durable}",
                                    json.dumps({"stream_name": stream, "config": config}).encode())
        assert "error" not in json.loads(reply.data), reply.data
        for i in range(45):
            await js.publish(subjects[0], f"m{i}".encode())
        bus = Bus(nats_url, subjects, stream=stream, durable=durable, batch=64)
        await bus.connect()
        handler = Collector()
        task = asyncio.create_task(bus.run(handler))
        try:
            await handler.wait_for(lambda: len(handler.messages) >= 45, 10)
        finally:
            bus.stop()
            await _ended(task)
            await bus.close()
            await admin.close()
        return handler.batches

    batches = asyncio.run(go())
    assert sorted(m.data for b in batches for m in b) == sorted(f"m{i}".encode() for i in range(45))
    assert max(len(b) for b in batches) <= 10
    said = [r for r in _bus_records(caplog) if "at most 10 messages" in r.getMessage()]
    assert len(said) == 1, caplog.text


def test_a_deleted_stream_is_reported_once_and_not_pulled_in_a_tight_loop(nats_url, nats_prefix, caplog):
    caplog.set_level(logging.DEBUG, logger="engine.service.bus")
    stream, subjects = f"{nats_prefix}_EVENTS", [f"{nats_prefix}.event.critical"]

    async def go() -> tuple[int, float]:
        bus = Bus(nats_url, subjects, stream=stream, durable=f"{nats_prefix}_durable", fetch_timeout=0.2)
        await bus.connect()
        task = asyncio.create_task(bus.run(Collector()))
        admin = await nats.connect(nats_url)
        try:
            await asyncio.sleep(0.3)
            await admin.jetstream().delete_stream(stream)     # every pull from now on is refused
            assert bus.nc is not None
            sent = bus.nc.stats["out_msgs"]
            await asyncio.sleep(2.0)
            requests = bus.nc.stats["out_msgs"] - sent
        finally:
            bus.stop()
            took = await _ended(task)
            await bus.close()
            await admin.close()
        return requests, took

    requests, took = asyncio.run(go())
    assert requests <= 8, requests        # backing off (0.5 s doubling), not a request per reply
    failed = [r for r in _bus_records(caplog, logging.DEBUG) if "NATS fetch failed" in r.getMessage()]
    assert failed and failed[0].levelno == logging.WARNING, caplog.text
    assert all(r.levelno == logging.DEBUG for r in failed[1:]), caplog.text
    assert took < 1.0, took

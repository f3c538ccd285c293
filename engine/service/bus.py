"""NATS intake: a JetStream stream and durable pull consumer, or a loud plain fallback.

The stream (default ``AETHERIUS_EVENTS``) holds the configured subjects
(``internal.event.critical``, ``internal.event.anomaly``); it and the durable consumer are
created if missing, so several replicas share one consumer and each message goes to
one of them. Messages are fetched in batches and handed to the intake, which records
them; only then are they acked. A message that is not acked (the service died) is
redelivered after ``ack_wait``. Without JetStream, a plain subscription still takes
events in, and the service says loudly that events published while it is down are lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import nats
import orjson
from nats.js import JetStreamContext, api
from nats.js.errors import NotFoundError

log = logging.getLogger(__name__)

#: What an ack subject may hold: nothing that could break the protocol line it is written in.
_ACK_SUBJECT = re.compile(r"\$JS\.ACK\.[!-~]+")

#: A pull larger than a consumer made elsewhere allows: "Exceeded MaxRequestBatch of 100".
_MAX_BATCH = re.compile(r"MaxRequestBatch of (\d+)")

#: How long one pull waits for messages. An idle fetch ends with a TimeoutError: not a failure.
FETCH_TIMEOUT = 0.5


class JetStreamProblem(Exception):
    """JetStream ended a pull request with a status other than the idle ones."""


class _Trouble:
    """One warning per run of failures of one kind: the first logs a WARNING line (no
    traceback), the repeats only DEBUG, and the first success after them one INFO line."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.failures = 0

    def failed(self, exc: BaseException, then: str = "retrying") -> None:
        self.failures += 1
        level = logging.WARNING if self.failures == 1 else logging.DEBUG
        log.log(level, "%s (%s: %s); %s", self.what, type(exc).__name__, exc, then)

    def ok(self) -> None:
        if self.failures:
            log.info("%s: works again after %d failure(s)", self.what, self.failures)
            self.failures = 0


@dataclass(slots=True)
class Message:
    """One message from the bus, whatever the delivery mode."""

    data: bytes
    subject: str
    msg_id: str | None
    headers: dict[str, str]
    raw: Any = None           # the nats Msg, to ack
    deliveries: int = 1       # JetStream's delivery count: above 1, a redelivery (never acked)

    async def ack(self) -> None:
        if self.raw is not None and getattr(self.raw, "_ackd", False) is False and self.raw.reply:
            await self.raw.ack()


Handler = Callable[[list[Message]], Awaitable[None]]


async def ack_all(messages: list[Message], *, one_write: bool = True) -> None:
    """Ack every JetStream message of a batch not acked yet. An ack is a bodiless publish to
    the message's ack subject; the batch's acks go out in one write to the connection
    (nats-py's ``Msg.ack`` costs ~6 µs of CPU each, a stroll through its publish path).
    Where nats-py's internals are not as expected (or not ``one_write``), each is acked by
    ``Msg.ack``."""
    todo = [m for m in messages if m.raw is not None and m.raw.reply and not m.raw._ackd]
    for m in messages:
        if m.raw is None:       # not off the wire (a test's message): its own ack
            await m.ack()
    if not todo:
        return
    nc = todo[0].raw._client
    send, flush = getattr(nc, "_send_command", None), getattr(nc, "_flush_pending", None)
    kick = getattr(nc, "_flush_queue", None)
    if (not one_write or send is None or flush is None or kick is None or not nc.is_connected
            or any(m.raw._client is not nc or not _ACK_SUBJECT.fullmatch(m.raw.reply) for m in todo)):
        for m in todo:      # nats-py's own way, one publish each
            with contextlib.suppress(Exception):
                await m.ack()
        return
    await send(b"".join(b"PUB %s 0\r\n\r\n" % m.raw.reply.encode() for m in todo))
    if kick.empty():        # as nats-py's publish does: wake its flusher unless it is awake
        await flush()
    for m in todo:
        m.raw._ackd = True


class Bus:
    def __init__(self, url: str, subjects: list[str], *, stream: str = "AETHERIUS_EVENTS",
                 durable: str = "aetherius", batch: int = 256, ack_wait: float = 30.0,
                 max_ack_pending: int = 4096, duplicate_window: float = 120.0,
                 fetch_timeout: float = FETCH_TIMEOUT) -> None:
        self.url = url
        self.subjects = subjects
        self.stream = stream
        self.durable = durable
        self.batch = batch
        self.ack_wait = ack_wait
        self.max_ack_pending = max_ack_pending
        self.duplicate_window = duplicate_window
        self.fetch_timeout = fetch_timeout
        self.nc: nats.NATS | None = None
        self.js: JetStreamContext | None = None
        self._fetch_trouble = _Trouble("NATS fetch failed")
        self._connection_trouble = _Trouble("NATS connection error")
        self.mode = "disconnected"
        self._stopping = asyncio.Event()
        self._plain_queue: asyncio.Queue[Message] | None = None
        self._subs: list[Any] = []
        self._pull: _Pull | None = None

    async def connect(self) -> None:
        self.nc = await nats.connect(self.url, name="aetherius-orchestrator", max_reconnect_attempts=-1,
                                     reconnect_time_wait=1, error_cb=self._on_error,
                                     disconnected_cb=self._on_disconnected,
                                     reconnected_cb=self._on_reconnected)
        try:
            self.js = self.nc.jetstream()
            await self._ensure_stream()
            self.mode = "jetstream"
            log.info("NATS intake: JetStream stream %s, durable consumer %s, subjects %s",
                     self.stream, self.durable, ", ".join(self.subjects))
        except Exception as exc:
            self.js = None
            self.mode = "plain"
            log.warning("JETSTREAM IS NOT AVAILABLE (%s: %s): falling back to a plain NATS subscription. "
                        "Events published while this service is down WILL BE LOST, and none are "
                        "redelivered.", type(exc).__name__, exc)

    # nats-py's default error callback logs a traceback for every failed reconnect attempt
    # (one a second while the server is down); these say it once.

    async def _on_error(self, exc: Exception) -> None:
        self._connection_trouble.failed(exc, "the client keeps reconnecting")

    async def _on_disconnected(self) -> None:
        if self._stopping.is_set():
            return
        if self.nc is not None and self.nc.is_closed:
            log.warning("NATS connection to %s closed", self.url)
        else:
            log.warning("NATS disconnected from %s; reconnecting", self.url)

    async def _on_reconnected(self) -> None:
        self._connection_trouble.ok()
        log.info("NATS reconnected to %s", self.url)

    async def _ensure_stream(self) -> None:
        assert self.js is not None
        try:
            info = await self.js.stream_info(self.stream)
            missing = set(self.subjects) - set(info.config.subjects or [])
            if missing:
                config = info.config
                config.subjects = sorted(set(config.subjects or []) | missing)
                await self.js.update_stream(config)
        except NotFoundError:
            await self.js.add_stream(api.StreamConfig(
                name=self.stream, subjects=self.subjects, storage=api.StorageType.FILE,
                retention=api.RetentionPolicy.LIMITS, max_age=7 * 86400,
                duplicate_window=self.duplicate_window))
        try:
            await self.js.consumer_info(self.stream, self.durable)
        except NotFoundError:
            await self.js.add_consumer(self.stream, api.ConsumerConfig(
                durable_name=self.durable, ack_policy=api.AckPolicy.EXPLICIT,
                deliver_policy=api.DeliverPolicy.ALL, ack_wait=self.ack_wait,
                max_ack_pending=self.max_ack_pending, max_deliver=-1))

    async def run(self, handle: Handler) -> None:
        """Deliver batches to ``handle`` until :meth:`stop`. ``handle`` acks."""
        if self.mode == "jetstream":
            await self._run_jetstream(handle)
        else:
            await self._run_plain(handle)

    async def _run_jetstream(self, handle: Handler) -> None:
        assert self.nc is not None
        pull = _Pull(self.nc, self.stream, self.durable, self.batch, self.fetch_timeout)
        await pull.subscribe()
        self._pull = pull
        self._subs.append(pull.sub)
        trouble = self._fetch_trouble
        while not self._stopping.is_set():
            try:
                await pull.ask()
            except Exception as exc:  # a reconnect in progress, a closed connection...
                if self._stopping.is_set():
                    break
                trouble.failed(exc)
                # Back off (0.5 s doubling to 5 s), but stop() still ends the wait at once.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), min(0.5 * 2 ** (trouble.failures - 1), 5.0))
                continue
            msgs = await pull.take()
            if self._stopping.is_set():
                break
            if pull.problem is not None and not msgs:
                trouble.failed(JetStreamProblem(pull.problem))
                pull.problem = None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), min(0.5 * 2 ** (trouble.failures - 1), 5.0))
                continue
            if pull.unanswered:
                pull.unanswered = False     # no news either way: not a recovery to announce
                pull.open_until = 0.0       # the lost request: ask again at once
            elif self.connected:
                trouble.ok()
            if msgs:
                # Bounded in-flight work: the next batch waits until this one is taken in.
                try:
                    await handle([_wrap(m) for m in msgs])
                except Exception:
                    # Not acked: JetStream redelivers after ack_wait. The intake must not die.
                    log.exception("handling a batch of %d messages failed; they will be redelivered",
                                  len(msgs))
                    await asyncio.sleep(1.0)

    async def _run_plain(self, handle: Handler) -> None:
        assert self.nc is not None
        queue: asyncio.Queue[Message] = asyncio.Queue(maxsize=self.max_ack_pending)
        self._plain_queue = queue

        async def on_message(msg: Any) -> None:
            await queue.put(_wrap(msg))

        for subject in self.subjects:
            self._subs.append(await self.nc.subscribe(subject, cb=on_message))
        while not self._stopping.is_set():
            try:
                first = await asyncio.wait_for(queue.get(), timeout=0.5)
            except TimeoutError:
                continue
            batch = [first]
            while not queue.empty() and len(batch) < self.batch:
                batch.append(queue.get_nowait())
            try:
                await handle(batch)
            except Exception:
                log.exception("handling a batch of %d messages failed (plain NATS: they are lost)",
                              len(batch))

    def stop(self) -> None:
        """Stop fetching; the batch in hand is finished by ``run``."""
        self._stopping.set()
        if self._pull is not None:
            self._pull.arrived.set()

    async def close(self) -> None:
        """Close the connection. What was fetched was recorded and acked by then; anything
        else is redelivered (JetStream) to whichever replica asks next."""
        self.stop()
        if self._pull is not None:
            # Delivered to this replica but never handed over: tell JetStream now, so another
            # replica gets them at once instead of after ack_wait.
            await self._pull.give_back()
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        if self.nc is not None and not self.nc.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.nc.flush(), 2)
            await self.nc.close()

    @property
    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected


class _Pull:
    """A JetStream pull consumer on the core client, cheaper per message than nats-py's
    ``fetch`` (which awaits each message with its own timeout, ~25 µs of CPU each).

    One inbox; one pull request at a time for up to ``batch`` messages, which the server fills
    as messages arrive and ends (status 408) after ``expires``. Messages are handed over as
    they come, a burst at a time, and the next request goes out as soon as the last one is
    used up, so delivery never waits for a round trip while a batch is being recorded. At
    most two batches are ever delivered and not yet taken (JetStream's ``max_ack_pending``
    bounds the rest)."""

    def __init__(self, nc: nats.NATS, stream: str, durable: str, batch: int, expires: float) -> None:
        self.nc = nc
        self.subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self.inbox = nc.new_inbox()
        self.batch = batch
        self.expires = max(expires, 0.001)
        self.request = orjson.dumps({"batch": batch, "expires": int(self.expires * 1e9)})
        self.problem: str | None = None    # why the server ended the last request, if not idle
        self.unanswered = False            # the last wait saw no answer at all
        self.ready: list[Any] = []
        self.arrived = asyncio.Event()
        self.sub: Any = None
        self.owed = 0             # messages the open request may still bring
        self.open_until = 0.0     # when the open request must have ended (0: none is open)

    async def subscribe(self) -> None:
        self.sub = await self.nc.subscribe(self.inbox, cb=self._on_message)

    async def _on_message(self, msg: Any) -> None:
        reply = msg.reply or ""
        if reply.startswith("$JS.ACK."):      # a stored message: it carries its ack subject
            self.ready.append(msg)
            self.owed -= 1
            if self.owed <= 0:
                self.owed, self.open_until = 0, 0.0
                await self.ask()
            self.arrived.set()
            return
        if reply:
            return      # not JetStream's: nothing else publishes to this inbox
        # A status of the request: 100 a heartbeat; 404/408 it ended with nothing (more) to
        # deliver, the idle case; anything else (409: leadership change, consumer deleted or
        # limits of a consumer made elsewhere; 503: no JetStream) ends it with a problem,
        # which the loop reports and backs off from.
        headers = msg.headers or {}
        status = headers.get(api.Header.STATUS)
        if status == "100":
            return
        self.owed, self.open_until = 0, 0.0
        if status in ("404", "408"):
            self.arrived.set()
            await self.ask()
            return
        description = headers.get(api.Header.DESCRIPTION, "")
        limit = _MAX_BATCH.search(description)
        if limit and 0 < int(limit.group(1)) < self.batch:
            # The consumer takes smaller pulls: ask for what it allows from now on.
            self.resize(int(limit.group(1)))
            log.warning("JetStream consumer allows pulls of at most %s messages; pulling that many",
                        limit.group(1))
            self.arrived.set()
            await self.ask()
            return
        self.problem = f"JetStream answered a pull request with {status} {description}".strip()
        self.arrived.set()

    def resize(self, batch: int) -> None:
        self.batch = batch
        self.request = orjson.dumps({"batch": batch, "expires": int(self.expires * 1e9)})

    async def ask(self) -> None:
        """Send the next pull request, unless one is open or two batches wait already. A
        request not ended by its expiry (the connection dropped meanwhile) counts as ended."""
        now = time.monotonic()
        if self.open_until and now > self.open_until:
            self.owed, self.open_until = 0, 0.0
        if self.open_until or len(self.ready) >= self.batch:
            return
        self.owed, self.open_until = self.batch, now + self.expires + 1.0
        try:
            await self.nc.publish(self.subject, self.request, reply=self.inbox)
        except BaseException:
            self.owed, self.open_until = 0, 0.0
            raise

    async def take(self) -> list[Any]:
        """The messages delivered so far (at most ``batch``), waiting for the first of them
        up to the request's expiry (an empty list when none came)."""
        if not self.ready:
            try:
                await asyncio.wait_for(self.arrived.wait(), self.expires + 1.0)
            except TimeoutError:
                # JetStream ends every pull request by its expiry (408): none came, so the
                # request was lost (a dropped connection, a server too busy to answer in
                # time). The next one goes out at once; only a refusal is backed off from.
                self.unanswered = True
                log.debug("no answer to a pull request within %gs; asking again", self.expires + 1.0)
        self.arrived.clear()
        msgs, self.ready = self.ready[:self.batch], self.ready[self.batch:]
        if self.ready:
            self.arrived.set()
        return msgs

    async def give_back(self) -> None:
        msgs, self.ready = self.ready, []
        for msg in msgs:
            with contextlib.suppress(Exception):
                await msg.nak()


def _deliveries(reply: str) -> int:
    """JetStream's delivery count, from a message's ack subject
    ``$JS.ACK[.<domain>.<account hash>].<stream>.<consumer>.<delivered>.<stream seq>...``."""
    tokens = reply.split(".")
    try:
        return int(tokens[4] if len(tokens) == 9 else tokens[6])
    except (IndexError, ValueError):
        return 1


def _wrap(msg: Any) -> Message:
    headers = msg.headers or {}
    deliveries = _deliveries(msg.reply) if msg.reply.startswith("$JS.ACK.") else 1
    return Message(data=msg.data, subject=msg.subject, msg_id=headers.get("Nats-Msg-Id"),
                   headers=headers, raw=msg, deliveries=deliveries)

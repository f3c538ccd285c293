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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import nats
from nats.js import JetStreamContext, api
from nats.js.errors import NotFoundError

log = logging.getLogger(__name__)

#: How long one pull waits for messages. An idle fetch ends with a TimeoutError: not a failure.
FETCH_TIMEOUT = 0.5


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


@dataclass
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
        assert self.js is not None
        sub = await self.js.pull_subscribe_bind(self.durable, self.stream)
        self._subs.append(sub)
        trouble = self._fetch_trouble
        while not self._stopping.is_set():
            try:
                msgs = await sub.fetch(self.batch, timeout=self.fetch_timeout)
            except TimeoutError:
                # Nothing arrived within the timeout: the idle case, not a failure. nats-py
                # raises nats.errors.TimeoutError, or on one of its paths (the no-wait probe
                # answered just before the deadline) a bare asyncio.TimeoutError; in Python
                # 3.11 both are TimeoutError.
                msgs = []
            except Exception as exc:  # a reconnect in progress, a closed connection...
                if self._stopping.is_set():
                    break
                trouble.failed(exc)
                # Back off (0.5 s doubling to 5 s), but stop() still ends the wait at once.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), min(0.5 * 2 ** (trouble.failures - 1), 5.0))
                continue
            if self.connected:
                trouble.ok()
            if msgs:
                # Bounded in-flight work: the next fetch waits until this batch is recorded.
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

    async def close(self) -> None:
        """Close the connection. What was fetched was recorded and acked by then; anything
        else is redelivered (JetStream) to whichever replica asks next."""
        self.stop()
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


def _wrap(msg: Any) -> Message:
    headers = dict(msg.headers or {})
    try:
        deliveries = int(msg.metadata.num_delivered)
    except Exception:      # a plain (non-JetStream) message has no metadata
        deliveries = 1
    return Message(data=msg.data, subject=msg.subject, msg_id=headers.get("Nats-Msg-Id"),
                   headers=headers, raw=msg, deliveries=deliveries)

"""A lean JetStream publisher for the benchmarks: the NATS protocol written by hand.

nats-py's ``publish_async`` costs ~50 µs of CPU per message (a future, a header dict, an
inbox per message); on a two-core machine that shares its cores with the service under
test, the publisher then sets the pace, not the service (measured: 14,000-19,000 events/s
while the service ran, 21,000/s alone). This one writes ``HPUB`` frames with their
``Nats-Msg-Id`` header in chunks, gets each JetStream ack on one wildcard inbox, and keeps
at most ``window`` acks outstanding: a few µs per message. Only the benchmarks use it; the
service speaks NATS through nats-py.

Protocol: https://docs.nats.io/reference/reference-protocols/nats-protocol (INFO, CONNECT,
PING/PONG, SUB, HPUB, MSG/HMSG); the ack body is JetStream's PubAck JSON
(``{"stream": ..., "seq": ..., "duplicate": true?}`` or ``{"error": {...}}``).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from urllib.parse import urlsplit

CHUNK = 256   # messages per write
RETRIES = 10  # sends of one message JetStream answered 503 (no responders)


class PublishError(RuntimeError):
    pass


async def publish(url: str, subject: str, payloads: list[tuple[int, bytes, str]], *,
                  window: int = 4000, rate: int = 0, timeout: float = 300.0) -> dict[int, float]:
    """Publish (group, data, message id) triples to ``subject`` with at most ``window``
    unacknowledged, at most ``rate`` messages/s if given; return each group's last ack time
    (``time.time()``). Raises :class:`PublishError` for a refused or duplicate message."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname or "127.0.0.1", parts.port or 4222,
                                                   limit=1 << 20)
    last: dict[int, float] = {}
    acked = 0
    outstanding = 0
    room = asyncio.Event()
    failure: list[str] = []
    inbox = f"_INBOX.{uuid.uuid4().hex}"
    done = asyncio.get_running_loop().create_future()
    tries: dict[int, int] = {}

    def frame(i: int) -> bytes:
        _group, data, mid = payloads[i]
        headers = b"NATS/1.0\r\nNats-Msg-Id: " + mid.encode() + b"\r\n\r\n"
        return b"HPUB %s %s.%d %d %d\r\n%s%s\r\n" % (
            subject.encode(), inbox.encode(), i, len(headers), len(headers) + len(data), headers, data)

    def resend(i: int) -> None:
        nonlocal outstanding
        if not writer.is_closing():
            outstanding += 1
            writer.write(frame(i))

    async def read() -> None:
        try:
            await _read()
        except BaseException as exc:
            if not done.done():
                done.set_exception(exc if isinstance(exc, Exception) else PublishError("stopped"))
            raise

    async def _read() -> None:
        nonlocal acked, outstanding
        while True:
            line = await reader.readline()
            if not line:
                raise PublishError("NATS closed the connection")
            if line.startswith((b"MSG ", b"HMSG ")):
                fields = line.split()
                size = int(fields[-1])
                body = await reader.readexactly(size + 2)
                n = int(fields[1].rsplit(b".", 1)[1])
                if fields[0] == b"HMSG":       # a status, not a PubAck
                    status = body[: size].decode(errors="replace").strip()
                    outstanding -= 1
                    room.set()
                    # 503: no responders (the stream's leader busy or not there yet): the
                    # same message again, with its id, so JetStream keeps it once.
                    if " 503" in status and tries.get(n, 0) < RETRIES:
                        tries[n] = tries.get(n, 0) + 1
                        asyncio.get_running_loop().call_later(0.05 * tries[n], resend, n)
                    else:
                        failure.append(status)
                    continue
                ack = json.loads(body[: size] or b"{}") if fields[0] == b"MSG" else {}
                if "error" in ack or ack.get("duplicate"):
                    failure.append(f"message {n}: {ack}")
                last[payloads[n][0]] = time.time()
                acked += 1
                outstanding -= 1
                room.set()
                if acked == len(payloads) and not done.done():
                    done.set_result(None)
            elif line.startswith(b"PING"):
                writer.write(b"PONG\r\n")
            elif line.startswith(b"-ERR"):
                failure.append(line.decode().strip())
                room.set()
            # INFO, +OK, PONG: nothing to do

    info = await reader.readline()
    if not info.startswith(b"INFO "):
        raise PublishError(f"not a NATS server: {info[:80]!r}")
    connect = {"verbose": False, "pedantic": False, "headers": True, "no_responders": True,
               "protocol": 1, "lang": "python", "version": "bench"}
    if parts.username:
        connect.update(user=parts.username, **{"pass": parts.password or ""})
    writer.write(b"CONNECT " + json.dumps(connect).encode() + b"\r\n")
    writer.write(f"SUB {inbox}.* 1\r\nPING\r\n".encode())
    await writer.drain()
    reading = asyncio.create_task(read())
    began = time.perf_counter()
    try:
        n = 0
        while n < len(payloads):
            if failure:
                raise PublishError("; ".join(failure[:3]))
            if rate:
                ahead = n / rate - (time.perf_counter() - began)
                if ahead > 0:
                    await asyncio.sleep(ahead)
            while outstanding + CHUNK > window and not failure:
                room.clear()
                await room.wait()
            end = min(len(payloads), n + (min(CHUNK, max(1, rate // 50)) if rate else CHUNK))
            chunk = [frame(i) for i in range(n, end)]
            outstanding += end - n
            n = end
            writer.write(b"".join(chunk))
            await writer.drain()
        if payloads:
            await asyncio.wait_for(asyncio.shield(done), timeout)
        if failure:
            raise PublishError("; ".join(failure[:3]))
    finally:
        reading.cancel()
        writer.close()
        await asyncio.gather(reading, return_exceptions=True)
    return last

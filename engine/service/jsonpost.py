"""JSON POSTs over kept-alive HTTP/1.1 connections: the one request the steps make.

Every step that talks to an outside service sends one JSON POST and reads one JSON answer:
no redirects, cookies, proxies or streaming. aiohttp's general client spent ~150 µs of CPU
on each (a fifth of a five-step execution in ``benchmarks.service``); this pool writes the
request line itself and parses the answer with httptools (llhttp, the parser uvicorn
already brings), at a fraction of that. Answers are bounded (:data:`MAX_ANSWER_BYTES`): an
outside service cannot exhaust the replica's memory.

What it does not do, :class:`engine.service.transport.AiohttpTransport` still does: a URL
with credentials in it, or any scheme but http and https, goes there.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import cast
from urllib.parse import urlsplit

import httptools

from engine.exceptions import TransportError, TransportTimeout

#: The largest answer taken from an outside service; a longer one is an error.
MAX_ANSWER_BYTES = 16 * 1024 * 1024
#: Idle connections kept per service (more are closed once their answer is read).
MAX_IDLE = 64


class _Answer:
    __slots__ = ("_size", "body", "charset", "delimited", "status")

    def __init__(self) -> None:
        self.status = 0                 # set once the headers are complete
        self.body: list[bytes] = []
        self.charset: str | None = None
        self.delimited = False          # a Content-Length or chunks: else it ends with the connection
        self._size = 0


class _Connection(asyncio.Protocol):
    """One connection: one request at a time, its answer parsed as it arrives."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.alive = False
        self._parser: httptools.HttpResponseParser | None = None
        self._answer: _Answer | None = None
        self._done: asyncio.Future[_Answer] | None = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not asyncio.Transport subclasses, but behave as one)
        self.transport, self.alive = cast(asyncio.Transport, transport), True

    def connection_lost(self, exc: Exception | None) -> None:
        self.alive = False
        done, answer = self._done, self._answer
        self._parser = self._answer = self._done = None
        if done is not None and not done.done():
            if answer is not None and answer.status and not answer.delimited:
                done.set_result(answer)     # an answer without a length ends with the connection
            else:
                done.set_exception(TransportError("RemoteProtocolError"))

    def eof_received(self) -> bool | None:
        self.alive = False
        return None

    def data_received(self, data: bytes) -> None:
        if self._parser is None:        # bytes nobody asked for: the connection is not reusable
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail("RemoteProtocolError")
        except httptools.HttpParserError:
            self._fail("RemoteProtocolError")

    # httptools callbacks
    def on_status(self, status: bytes) -> None:
        pass

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._answer is None:
            return
        name = name.lower()
        if name in (b"content-length", b"transfer-encoding"):
            self._answer.delimited = True
        elif name == b"content-type":
            for part in value.split(b";")[1:]:
                key, _, charset = part.strip().partition(b"=")
                if key.lower() == b"charset" and charset:
                    self._answer.charset = charset.strip(b'"').decode("latin-1")

    def on_headers_complete(self) -> None:
        if self._answer is not None and self._parser is not None:
            self._answer.status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        answer = self._answer
        if answer is None:
            return
        answer._size += len(body)
        if answer._size > MAX_ANSWER_BYTES:
            self._fail(f"answer larger than {MAX_ANSWER_BYTES} bytes")
            return
        answer.body.append(body)

    def on_message_complete(self) -> None:
        if self._answer is not None and 100 <= self._answer.status < 200:
            self._answer = _Answer()    # 1xx (103 Early Hints): the answer is still to come
            return
        if self._parser is not None and not self._parser.should_keep_alive():
            self.alive = False
        done, answer = self._done, self._answer
        self._parser = self._answer = self._done = None
        if done is not None and answer is not None and not done.done():
            done.set_result(answer)

    # the pool's side
    def send(self, request: bytes) -> asyncio.Future[_Answer]:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        self._done = loop.create_future()
        self._answer = _Answer()
        self._parser = httptools.HttpResponseParser(self)
        self.transport.write(request)
        return self._done

    def _fail(self, why: str) -> None:
        done = self._done
        self._parser = self._answer = self._done = None
        if done is not None and not done.done():
            done.set_exception(TransportError(why))
        self.close()

    def close(self) -> None:
        self.alive = False
        if self.transport is not None:
            self.transport.close()


class JsonPoster:
    """Kept-alive connections per service (scheme, host, port); one request on each at a
    time. How many are in flight per service is the caller's (the client's slots)."""

    def __init__(self) -> None:
        self._idle: dict[tuple[str, str, int], deque[_Connection]] = {}
        self._ssl: ssl.SSLContext | None = None
        self._targets: dict[str, tuple[tuple[str, str, int], bytes] | None] = {}
        self._closed = False

    def handles(self, url: str) -> bool:
        return self._target(url) is not None

    def _target(self, url: str) -> tuple[tuple[str, str, int], bytes] | None:
        """(service, the request's head up to its Content-Length value), or None for a URL
        this pool leaves to aiohttp."""
        if url in self._targets:
            return self._targets[url]
        target: tuple[tuple[str, str, int], bytes] | None = None
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            parts, port = None, None
        if (parts is not None and parts.scheme in ("http", "https") and parts.hostname
                and parts.username is None and parts.password is None
                and url.isascii() and not any(c in url for c in "\r\n\t ")):
            port = port or (443 if parts.scheme == "https" else 80)
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            netloc = parts.netloc.rpartition("@")[2]
            head = (f"POST {path} HTTP/1.1\r\nHost: {netloc}\r\nContent-Type: application/json\r\n"
                    f"Accept: application/json\r\nContent-Length: ").encode("ascii")
            target = ((parts.scheme, parts.hostname, port), head)
        if len(self._targets) < 1024:       # steps call the same few URLs over and over
            self._targets[url] = target
        return target

    async def post(self, url: str, body: bytes, timeout: float) -> tuple[int, bytes, str | None]:
        """(status, answer, its charset). Raises TransportTimeout when no complete answer
        came within ``timeout`` (connecting included), TransportError for anything else."""
        target = self._target(url)
        if target is None:
            raise ValueError(f"not a URL for {type(self).__name__}")
        service, head = target
        request = b"".join((head, str(len(body)).encode(), b"\r\n\r\n", body))
        try:
            async with asyncio.timeout(timeout):
                conn = await self._connection(service)
                try:
                    answer = await conn.send(request)
                except BaseException:
                    conn.close()        # a half-read answer: the connection cannot be reused
                    raise
        except TimeoutError:
            raise TransportTimeout() from None
        self._release(service, conn)
        return answer.status, b"".join(answer.body), answer.charset

    async def _connection(self, service: tuple[str, str, int]) -> _Connection:
        idle = self._idle.get(service)
        while idle:
            conn = idle.pop()
            if conn.alive and conn.transport is not None and not conn.transport.is_closing():
                return conn
            conn.close()
        scheme, host, port = service
        context: ssl.SSLContext | None = None
        if scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            context = self._ssl
        try:
            _, conn = await asyncio.get_running_loop().create_connection(
                _Connection, host, port, ssl=context, server_hostname=host if context else None)
        except ssl.SSLError:
            raise TransportError("ConnectError: TLS") from None
        except OSError:
            raise TransportError("ConnectError") from None
        return conn

    def _release(self, service: tuple[str, str, int], conn: _Connection) -> None:
        idle = self._idle.setdefault(service, deque())
        if self._closed or not conn.alive or len(idle) >= MAX_IDLE:
            conn.close()
        else:
            idle.append(conn)

    def close(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            while idle:
                idle.pop().close()

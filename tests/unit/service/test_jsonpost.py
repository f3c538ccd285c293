"""The steps' JSON POSTs against real HTTP servers on 127.0.0.1 (raw asyncio servers, so each
test can answer the way a real service sometimes does: chunked, close-delimited, slow, cut
off, too large, or closing a kept-alive connection)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from engine.exceptions import TransportError, TransportTimeout
from engine.service import jsonpost
from engine.service.jsonpost import JsonPoster
from engine.service.transport import AiohttpTransport

Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[bool]]


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    return head + await reader.readexactly(length)


class Server:
    """Answers every request with ``answer`` (False from it closes the connection)."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Server:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/api/v1/command?x=1"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    self.requests.append(await _read_request(reader))
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                if not await self.answer(reader, writer, len(self.requests)):
                    return
        finally:
            writer.close()


def raw(*parts: bytes, pause: float = 0.0, keep_open: bool = True) -> Answer:
    """Answers with ``parts`` as they are, ``pause`` seconds apart (and after the last), then
    keeps the connection for the next request or closes it."""
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        for part in parts:
            writer.write(part)
            await writer.drain()
            await asyncio.sleep(pause)
        return keep_open
    return answer


def ok(body: bytes, extra: bytes = b"") -> Answer:
    return raw(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s"
               % (len(body), extra, body))


def test_a_post_sends_json_and_reuses_its_connection() -> None:
    async def go() -> None:
        async with Server(ok(b'{"status": "success"}')) as server:
            poster = JsonPoster()
            answers = [await poster.post(server.url, b'{"a": 1}', 5.0) for _ in range(3)]
            poster.close()
        assert answers == [(200, b'{"status": "success"}', None)] * 3
        assert server.connections == 1
        head, _, body = server.requests[0].partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        assert lines[0] == b"POST /api/v1/command?x=1 HTTP/1.1" and body == b'{"a": 1}'
        assert b"Content-Type: application/json" in lines and b"Content-Length: 8" in lines
        assert any(line.startswith(b"Host: 127.0.0.1:") for line in lines)

    asyncio.run(go())


def test_chunked_and_close_delimited_answers_are_read_whole_with_their_charset() -> None:
    chunked = raw(b"HTTP/1.1 201 Created\r\nContent-Type: application/json; charset=latin-1\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n3\r\n 1}\r\n0\r\n\r\n")
    until_close = raw(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n", b'{"done": true}',
                      pause=0.05, keep_open=False)

    async def go() -> None:
        poster = JsonPoster()
        async with Server(chunked) as server:
            assert await poster.post(server.url, b"{}", 5.0) == (201, b'{"a": 1}', "latin-1")
        async with Server(until_close) as server:
            assert await poster.post(server.url, b"{}", 5.0) == (200, b'{"done": true}', None)
            assert await poster.post(server.url, b"{}", 5.0) == (200, b'{"done": true}', None)
            assert server.connections == 2      # HTTP/1.0: a connection per request
        poster.close()

    asyncio.run(go())


def test_a_service_that_closes_an_idle_connection_gets_the_next_request_on_a_new_one() -> None:
    # uvicorn closes idle connections after 5 s, many services sooner: the next request
    # goes out on a new connection instead of failing.
    # closes the kept-alive connection while it is idle
    answer_then_close_soon = raw(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", pause=0.05,
                                 keep_open=False)

    async def go() -> None:
        async with Server(answer_then_close_soon) as server:
            poster = JsonPoster()
            assert await poster.post(server.url, b"{}", 5.0) == (200, b"{}", None)
            await asyncio.sleep(0.2)
            assert await poster.post(server.url, b"{}", 5.0) == (200, b"{}", None)
            poster.close()
        assert server.connections == 2

    asyncio.run(go())


def test_no_answer_in_time_a_cut_off_answer_and_a_refused_connection_are_transport_errors() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        await asyncio.sleep(5)
        return False

    cut_off = raw(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"partial\"", keep_open=False)
    garbage = raw(b"SMTP ready\r\n\r\n")

    async def go() -> None:
        poster = JsonPoster()
        async with Server(silent) as server:
            with pytest.raises(TransportTimeout):
                await poster.post(server.url, b"{}", 0.2)
        async with Server(cut_off) as server:
            with pytest.raises(TransportError, match="RemoteProtocolError"):
                await poster.post(server.url, b"{}", 5.0)
        async with Server(garbage) as server:
            with pytest.raises(TransportError, match="RemoteProtocolError"):
                await poster.post(server.url, b"{}", 5.0)
        probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = probe.sockets[0].getsockname()[1]
        probe.close()
        await probe.wait_closed()
        with pytest.raises(TransportError, match="ConnectError"):
            await poster.post(f"http://127.0.0.1:{port}/x", b"{}", 5.0)
        poster.close()

    asyncio.run(go())


def test_an_answer_larger_than_the_bound_is_refused_not_held(monkeypatch) -> None:
    monkeypatch.setattr(jsonpost, "MAX_ANSWER_BYTES", 1000)

    huge = raw(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
               *[b"100\r\n" + b"x" * 256 + b"\r\n"] * 100, keep_open=False)

    async def go() -> None:
        poster = JsonPoster()
        async with Server(huge) as server:
            with pytest.raises(TransportError, match="larger than 1000 bytes"):
                await poster.post(server.url, b"{}", 5.0)
        poster.close()

    asyncio.run(go())


def test_urls_the_pool_does_not_take_go_through_aiohttp() -> None:
    poster = JsonPoster()
    assert poster.handles("http://agent-manager:8080/api/v1/command")
    assert poster.handles("https://hooks.slack.com/services/T0/B0/x")
    assert not poster.handles("http://user:secret@agent-manager:8080/api")   # credentials: basic auth
    assert not poster.handles("ftp://example.org/x")
    assert not poster.handles("http://exa mple.org/x")

    async def go() -> None:
        async with Server(ok(b'{"via": "aiohttp"}')) as server:
            transport = AiohttpTransport()
            url = server.url.replace("http://", "http://user:pw@")
            answer = await transport.post_json(url, b"{}", 5.0)
            await transport.aclose()
        assert (answer.status_code, answer.json()) == (200, {"via": "aiohttp"})
        assert b"Authorization: Basic dXNlcjpwdw==" in server.requests[0]

    asyncio.run(go())


def test_an_informational_answer_before_the_real_one_is_not_taken_for_it() -> None:
    early_hints = raw(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n",
                      b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 9\r\n\r\n{\"e\": 1}\n",
                      pause=0.02)

    async def go() -> None:
        async with Server(early_hints) as server:
            poster = JsonPoster()
            assert await poster.post(server.url, b"{}", 5.0) == (500, b'{"e": 1}\n', None)
            poster.close()

    asyncio.run(go())

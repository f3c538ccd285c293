"""An httpx transport that sends requests with aiohttp.

Steps speak httpx (the owner's HTTP client) and keep doing so; this transport only
replaces how bytes travel. Measured on this project's 2-core machine against a local
stub (benchmarks/stub.py): httpx's own transport managed ~960 requests/s one at a time
and ~150/s at 100 concurrent requests (httpx issue #3215), aiohttp 4,300/s and 6,100/s.
A service that runs hundreds of workflows at once cannot live with the former.

aiohttp errors become the matching httpx exceptions here, so callers handle one family.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any

import aiohttp
import httpx
import orjson

from engine.exceptions import TransportError, TransportTimeout
from engine.service.jsonpost import JsonPoster

_SKIP_REQUEST_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})


class AiohttpTransport(httpx.AsyncBaseTransport):
    def __init__(self, max_connections: int = 100) -> None:
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._poster = JsonPoster()

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # Created lazily: an aiohttp session belongs to the running event loop.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections, ttl_dns_cache=300),
                auto_decompress=False,   # httpx decodes by Content-Encoding itself
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts = request.extensions.get("timeout", {})
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeouts.get("connect"),
                                        sock_read=timeouts.get("read"))
        headers = [(k, v) for k, v in request.headers.multi_items()
                   if k.lower() not in _SKIP_REQUEST_HEADERS]
        body = await request.aread()
        try:
            async with self._get_session().request(
                request.method, str(request.url), headers=headers, data=body or None,
                allow_redirects=False, timeout=timeout,
            ) as response:
                content = await response.read()
                return httpx.Response(
                    status_code=response.status,
                    headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in response.raw_headers],
                    content=content, request=request,
                )
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise httpx.ReadTimeout(f"timed out: {exc}", request=request) from exc
        except aiohttp.ClientConnectorError as exc:
            raise httpx.ConnectError(str(exc), request=request) from exc
        except aiohttp.ServerDisconnectedError as exc:
            raise httpx.RemoteProtocolError(str(exc), request=request) from exc
        except aiohttp.ClientError as exc:
            raise httpx.NetworkError(f"{type(exc).__name__}: {exc}", request=request) from exc

    async def post_json(self, url: str, body: bytes, timeout: float) -> JsonAnswer:
        """A JSON POST without httpx's request and response objects (they cost a sixth of a
        five-step execution's CPU in the service benchmark), through the lean pool of
        :mod:`engine.service.jsonpost` where it takes the URL, else aiohttp."""
        if self._poster.handles(url):
            status, content, charset = await self._poster.post(url, body, timeout)
            return JsonAnswer(status, content, charset)
        try:
            async with self._get_session().post(
                url, data=body, headers=_JSON_POST_HEADERS, allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout),
            ) as response:
                return JsonAnswer(response.status, await response.read(), response.charset)
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise TransportTimeout() from None
        except aiohttp.ClientConnectorError:
            raise TransportError("ConnectError") from None      # the names the httpx path gives
        except aiohttp.ServerDisconnectedError:
            raise TransportError("RemoteProtocolError") from None
        except aiohttp.ClientError:
            raise TransportError("NetworkError") from None

    async def aclose(self) -> None:
        self._poster.close()
        if self._session is not None and not self._session.closed:
            await self._session.close()


_JSON_POST_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}


class JsonAnswer:
    """What a JSON POST answered: the part of a response the steps read (steps.http)."""

    __slots__ = ("_charset", "content", "status_code")

    def __init__(self, status_code: int, content: bytes, charset: str | None = None) -> None:
        self.status_code = status_code
        self.content = content
        self._charset = charset

    @property
    def text(self) -> str:
        return self.content.decode(self._charset or "utf-8", errors="replace")

    def json(self) -> Any:
        return orjson.loads(self.content)


_JSON_HEADERS = httpx.Headers({"content-type": "application/json", "accept": "application/json"})


@functools.lru_cache(maxsize=256)
def _parsed_url(url: str) -> httpx.URL:
    return httpx.URL(url)


class Client(httpx.AsyncClient):
    """An httpx client whose JSON POSTs go straight to its transport.

    Steps call services with one JSON POST and no redirects, cookies or auth flows; the
    client's layers for those cost a third of each call here (3,500 vs 5,300 requests/s at
    100 concurrent, measured against benchmarks/stub.py). Requests and responses are still
    httpx's own; other requests go through the full client.
    """

    def __init__(self, transport: httpx.AsyncBaseTransport, *, timeout: float = 30.0,
                 limits: Mapping[str, int] | None = None, default_limit: int = 100) -> None:
        super().__init__(transport=transport, timeout=timeout)
        self._direct = transport
        # Requests in flight per outside service (scheme://host:port): the configured limit of
        # each, else ``default_limit``. Waiting for one of these slots is not the request's time.
        self._limits = {_service(u): n for u, n in (limits or {}).items()}
        self._default_limit = default_limit
        self._slots: dict[str, asyncio.Semaphore] = {}

    def _slot(self, url: str) -> asyncio.Semaphore:
        service = _service(url)
        slot = self._slots.get(service)
        if slot is None:
            slot = self._slots[service] = asyncio.Semaphore(self._limits.get(service, self._default_limit))
        return slot

    async def post_json(self, url: str, payload: object, timeout: float,
                        wait: Callable[[], AbstractAsyncContextManager[None]] | None = None,
                        ) -> httpx.Response | JsonAnswer:
        """POST JSON once a slot of the service is free; ``wait`` wraps the waiting (the runner
        stops the step's timeout meanwhile), and ``timeout`` counts only the request itself."""
        slot = self._slot(url)
        if wait is not None and slot.locked():
            async with wait():
                await slot.acquire()
        else:
            await slot.acquire()
        try:
            return await self._post(url, payload, timeout)
        finally:
            slot.release()

    async def _post(self, url: str, payload: object, timeout: float) -> httpx.Response | JsonAnswer:
        if isinstance(self._direct, AiohttpTransport):
            return await self._direct.post_json(url, orjson.dumps(payload, default=str), timeout)
        # Parsing a URL costs ~90 us in httpx; steps call the same few URLs over and over.
        request = httpx.Request("POST", _parsed_url(url), content=orjson.dumps(payload, default=str),
                                headers=_JSON_HEADERS,
                                extensions={"timeout": {"connect": timeout, "read": timeout,
                                                        "write": timeout, "pool": timeout}})
        try:
            response = await self._direct.handle_async_request(request)
            await response.aread()
        except httpx.TimeoutException:
            raise TransportTimeout() from None
        except httpx.HTTPError as exc:
            raise TransportError(type(exc).__name__) from None
        return response


def _service(url: str) -> str:
    parsed = _parsed_url(url)
    return f"{parsed.scheme}://{parsed.host}:{parsed.port or (443 if parsed.scheme == 'https' else 80)}"


def make_client(max_connections: int = 100, timeout: float = 30.0,
                limits: Mapping[str, int] | None = None) -> Client:
    """The httpx client the runner and the service use: at most ``max_connections`` requests
    in flight to one outside service, or the limit ``limits`` gives its URL."""
    pool = max(max_connections, *(limits or {}).values()) if limits else max_connections
    return Client(AiohttpTransport(pool * max(1, len(limits or {}) + 1)), timeout=timeout, limits=limits,
                  default_limit=max_connections)

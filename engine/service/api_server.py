"""The HTTP API served by uvicorn inside the service's event loop."""

from __future__ import annotations

import contextlib
import logging

import uvicorn
from fastapi import FastAPI

log = logging.getLogger(__name__)


class ApiServer:
    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        # log_config=None: uvicorn's lines go through the service's one formatter (engine.logs).
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                lifespan="off", log_config=None)
        self.server = uvicorn.Server(config)
        # The service owns SIGTERM/SIGINT: uvicorn must not install its own handlers.
        self.server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
        self.url = f"http://{host}:{port}"

    async def serve(self) -> None:
        log.info("HTTP API on %s/api/v1 (OpenAPI at /docs)", self.url)
        await self.server.serve()

    def stop(self) -> None:
        self.server.should_exit = True

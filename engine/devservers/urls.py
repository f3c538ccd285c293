"""Where the servers are: free ports, URLs without their passwords, PostgreSQL DSNs.

Pure string and socket helpers, shared by :mod:`engine.devservers.embedded` (which builds
the URLs of the servers it starts) and :mod:`engine.devservers.resolver` (which reads them
from the configuration).
"""

from __future__ import annotations

import socket
from urllib.parse import quote, urlsplit, urlunsplit

from engine.config import DatabaseConfig, plain
from engine.devservers.errors import InfraError

DEFAULT_DATABASE = "aetherius_orchestrator"
#: The standard ports of NATS, PostgreSQL and Redis: the machine's own servers use them.
RESERVED_PORTS = frozenset({4222, 5432, 6379})
HOST = "127.0.0.1"


def free_port(host: str = HOST) -> int:
    """A TCP port nobody listens on now, never one of :data:`RESERVED_PORTS`."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
        if port not in RESERVED_PORTS:
            return port
    raise InfraError("no free TCP port")  # pragma: no cover


def redact(url: str | None) -> str:
    """``url`` without its password (userinfo or a ``password=`` query parameter)."""
    if not url:
        return ""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        if ":" in userinfo:
            user = userinfo.split(":", 1)[0]
            netloc = f"{user}:***@{hostport}"
    query = "&".join(
        f"{item.split('=', 1)[0]}=***" if item.lower().startswith(("password=", "pass=")) else item
        for item in parts.query.split("&")
    ) if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def dsn_with_database(dsn: str, database: str) -> str:
    """The PostgreSQL URL ``dsn`` pointing at another database (host, user, query kept)."""
    parts = urlsplit(dsn)
    if parts.scheme not in ("postgresql", "postgres"):
        raise InfraError(f"not a PostgreSQL URL: {redact(dsn)}")
    path = "/" + quote(database, safe="")
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, parts.fragment))


def database_dsn_from_config(database: DatabaseConfig) -> str | None:
    """``database.dsn``, else a URL built from ``database.host/port/database/user/password``
    (a host starting with ``/`` is a unix-socket directory); None if neither is set.
    The one place the password leaves its :class:`~pydantic.SecretStr`."""
    dsn = plain(database.dsn)
    if dsn:
        return dsn
    host = database.host
    if not host:
        return None
    auth = quote(database.user, safe="")
    password = plain(database.password)
    if password:
        auth += ":" + quote(password, safe="")
    name = quote(database.database, safe="")
    port = database.port
    if host.startswith("/"):
        return f"postgresql://{auth}@/{name}?host={quote(host, safe='/')}&port={port}"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # IPv6
    return f"postgresql://{auth}@{host}:{port}/{name}"


"""``aetherius token`` and ``aetherius audit``: tokens and the audit trail, straight from the
database the configuration names (or the embedded one in ``service.data_dir``, whether the
service runs or not). Whoever can run these can read the configuration and reach the
database: they are the administrators, recorded in the audit trail as ``cli:<user>``.

- ``aetherius token create NAME --role ROLE [--expires 30d]``  prints the token, once
- ``aetherius token list``, ``aetherius token revoke NAME``
- ``aetherius token new``   a random token to put in ``AETHERIUS_AUTH__BOOTSTRAP_TOKEN``
- ``aetherius audit [--actor NAME] [--action PREFIX] [--since ISO] [--limit N] [--json]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import sys
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

from engine.auth import Principal, Role, new_token, valid_name
from engine.config import Config, load_config
from engine.durations import parse_duration
from engine.exceptions import AetheriusError


@contextlib.asynccontextmanager
async def _pool(config: Config) -> AsyncIterator[Any]:
    """A pool on the configured database, or on the embedded one (started for the command
    if the service is not running)."""
    import asyncpg

    from engine.devservers import EmbeddedServers, database_dsn_from_config
    from engine.storage.db import create_pool, migrate

    dsn = database_dsn_from_config(config.database)
    embedded = None
    if dsn is None:
        socket = (config.service.data_dir / "postgres").absolute()
        dsn = f"postgresql://postgres@/{config.database.database}?host={socket}"
        try:
            await (await asyncpg.connect(dsn, timeout=3)).close()
        except (OSError, asyncpg.PostgresError):
            servers = EmbeddedServers(config.service.data_dir, nats=False, redis=False,
                                      database=config.database.database)
            embedded = await asyncio.to_thread(servers.start)
            dsn = str(embedded.database_dsn)
    pool = await create_pool(dsn, min_size=1, max_size=2)
    try:
        await migrate(pool)
        yield pool
    finally:
        await pool.close()
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)


def _me() -> Principal:
    try:
        user = getpass.getuser()
    except Exception:   # no user name in this environment
        user = "unknown"
    return Principal("cli", user)


def _run(args: argparse.Namespace, action: Callable[[Any], Any]) -> int:
    config = load_config(getattr(args, "config", None))

    async def go() -> int:
        async with _pool(config) as pool:
            result: int = await action(pool)
            return result

    return asyncio.run(go())


def _iso(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value else "-"


def cmd_token_create(args: argparse.Namespace) -> int:
    from engine.storage.tokens import Tokens

    if not valid_name(args.name):
        raise AetheriusError(f"token name {args.name!r}: letters, digits and _ . : @ - (at most 63)")
    expires = parse_duration(args.expires) if args.expires else None

    async def action(pool: Any) -> int:
        issued = await Tokens(pool).issue(args.name, Role(args.role), _me(), expires)
        if issued is None:
            print(f"aetherius: a live token is named {args.name!r}: revoke it first", file=sys.stderr)
            return 1
        token, record = issued
        print(token)
        print(f"token {record['name']!r}: role {record['role']}, expires {_iso(record['expires_at'])}; "
              "shown this once, stored only as a hash", file=sys.stderr)
        return 0

    return _run(args, action)


def cmd_token_list(args: argparse.Namespace) -> int:
    from engine.storage.tokens import Tokens

    async def action(pool: Any) -> int:
        rows = await Tokens(pool).list()
        if args.json:
            for row in rows:
                print(json.dumps(row, default=str))
            return 0
        print(f"{'NAME':24} {'ROLE':9} {'HINT':10} {'CREATED':26} {'EXPIRES':26} {'LAST USED':26} STATE")
        for row in rows:
            state = "revoked" if row["revoked_at"] else "live"
            print(f"{row['name']:24} {row['role']:9} {row['hint']:10} {_iso(row['created_at']):26} "
                  f"{_iso(row['expires_at']):26} {_iso(row['last_used_at']):26} {state}")
        return 0

    return _run(args, action)


def cmd_token_revoke(args: argparse.Namespace) -> int:
    from engine.storage.tokens import Tokens

    async def action(pool: Any) -> int:
        if not await Tokens(pool).revoke(args.name, _me()):
            print(f"aetherius: no live token {args.name!r}", file=sys.stderr)
            return 1
        print(f"token {args.name!r} revoked (every replica refuses it within auth.token_cache)",
              file=sys.stderr)
        return 0

    return _run(args, action)


def cmd_token_new(args: argparse.Namespace) -> int:
    print(new_token())
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from engine.storage.audit import AuditLog

    since = datetime.fromisoformat(args.since) if args.since else None

    async def action(pool: Any) -> int:
        page = await AuditLog(pool).page(actor=args.actor, action=args.action, target_id=args.target,
                                         since=since, limit=args.limit)
        for row in reversed(page.items):    # oldest first, as a log reads
            if args.json:
                print(json.dumps(row, default=str))
                continue
            target = f" {row['target_kind']}/{row['target_id']}" if row["target_id"] else ""
            role = f" ({row['actor_role']})" if row["actor_role"] else ""
            client = f" from {row['client']}" if row["client"] else ""
            detail = json.dumps(row["detail"], default=str) if row["detail"] else ""
            print(f"{_iso(row['at'])} {row['actor_kind']}:{row['actor']}{role}{client} {row['action']}"
                  f"{target} {detail}".rstrip())
        return 0

    return _run(args, action)


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    token = sub.add_parser("token", help="API tokens: create, list, revoke")
    tokens = token.add_subparsers(dest="token_command", required=True)
    create = tokens.add_parser("create", parents=[common], help="make a token and print it (once)")
    create.add_argument("name")
    create.add_argument("--role", required=True, choices=[str(r) for r in Role])
    create.add_argument("--expires", help="e.g. 30d, 12h (default: never)")
    create.set_defaults(func=cmd_token_create)
    listing = tokens.add_parser("list", parents=[common], help="list tokens (never the tokens themselves)")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_token_list)
    revoke = tokens.add_parser("revoke", parents=[common], help="revoke a token")
    revoke.add_argument("name")
    revoke.set_defaults(func=cmd_token_revoke)
    fresh = tokens.add_parser("new", help="print a random token (for auth.bootstrap_token); stores nothing")
    fresh.set_defaults(func=cmd_token_new)

    audit = sub.add_parser("audit", parents=[common], help="read the audit trail (newest last)")
    audit.add_argument("--actor", help="a token name, a rule file path, a user, ...")
    audit.add_argument("--action", help="a prefix: workflow. token. execution. remediation. ...")
    audit.add_argument("--target", help="a target id (workflow, execution, token ...)")
    audit.add_argument("--since", help="ISO 8601 time")
    audit.add_argument("--limit", type=int, default=100)
    audit.add_argument("--json", action="store_true", help="one JSON object per line")
    audit.set_defaults(func=cmd_audit)

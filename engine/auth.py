"""Who may do what: API tokens, roles and the permissions each role grants.

A token is random (``aeth_`` + 32 random bytes, URL-safe), shown once when it is created
and stored only as its SHA-256 (a token has 256 bits of entropy, so a fast hash is enough
and no salt is needed; comparisons are constant-time). Each token has a name, one role
and an optional expiry.

=========  ===================================================================
role       may
=========  ===================================================================
viewer     read everything except tokens and the audit trail
ingest     post events (for an event source; reads nothing)
operator   viewer + post events, start executions by hand, cancel, approve or deny changes
editor     viewer + create, replace and delete stored rules, reload the rules
admin      everything: tokens and the audit trail included
=========  ===================================================================
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from enum import StrEnum

TOKEN_PREFIX = "aeth_"
CSRF_CONTEXT = b"aetherius console csrf v1"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,62}$")


class Permission(StrEnum):
    READ = "read"              # GET the rules, executions, incidents, rule status
    INGEST = "ingest"          # POST events
    EXECUTE = "execute"        # start an execution by hand, cancel one
    APPROVE = "approve"        # approve or deny a change that waits for a human
    EDIT_RULES = "edit_rules"  # create, replace, delete stored rules; reload
    ADMIN = "admin"            # tokens and the audit trail


class Role(StrEnum):
    VIEWER = "viewer"
    INGEST = "ingest"
    OPERATOR = "operator"
    EDITOR = "editor"
    ADMIN = "admin"


GRANTS: dict[Role, frozenset[Permission]] = {
    Role.VIEWER: frozenset({Permission.READ}),
    Role.INGEST: frozenset({Permission.INGEST}),
    Role.OPERATOR: frozenset({Permission.READ, Permission.INGEST, Permission.EXECUTE, Permission.APPROVE}),
    Role.EDITOR: frozenset({Permission.READ, Permission.EDIT_RULES}),
    Role.ADMIN: frozenset(Permission),
}


@dataclass(frozen=True)
class Principal:
    """Who is acting: a token (name and role), or the service itself, a rule file, SQL or the CLI."""

    kind: str            # token | system | file | sql | cli
    name: str
    role: Role | None = None
    client: str | None = None   # where the request came from (the client address, for HTTP)

    def may(self, permission: Permission) -> bool:
        return self.role is not None and permission in GRANTS[self.role]

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.name}"


SYSTEM = Principal("system", "aetherius")


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def same_hash(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def csrf_token(session_id: str) -> str:
    """The CSRF token of a web console session: an HMAC keyed by the session id, which lives
    only in an HttpOnly cookie, so only pages that session loaded can know it."""
    return hmac.new(session_id.encode("utf-8", "surrogatepass"), CSRF_CONTEXT, hashlib.sha256).hexdigest()


def csrf_matches(session_id: str, sent: str | None) -> bool:
    return bool(sent) and hmac.compare_digest(csrf_token(session_id).encode(),
                                              str(sent).encode("utf-8", "surrogatepass"))


def valid_name(name: str) -> bool:
    return bool(NAME.match(name))

"""The first token: so that a fresh ``aetherius serve`` is usable, and still not open.

- With ``auth.bootstrap_token`` (``AETHERIUS_AUTH__BOOTSTRAP_TOKEN``), that token is the
  admin token ``bootstrap`` (stored as its hash; a changed value replaces the old one).
- Without it, the first start of a deployment (no live token at all) makes an admin token
  ``admin`` and prints it once on standard output, never in the log. Replicas starting
  together make one: the name is unique.

More tokens: ``aetherius token create NAME --role ROLE`` (or ``POST /api/v1/tokens``).
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

from engine.auth import SYSTEM, Role
from engine.storage.tokens import Tokens

log = logging.getLogger(__name__)

BOOTSTRAP, FIRST = "bootstrap", "admin"


async def ensure_admin(tokens: Tokens, configured: str | None, out: TextIO | None = None) -> None:
    if configured:
        principal = await tokens.verify(configured)
        if principal is not None and principal.role == Role.ADMIN:
            return
        await tokens.revoke(BOOTSTRAP, SYSTEM)     # an older value, if any
        if await tokens.issue(BOOTSTRAP, Role.ADMIN, SYSTEM, token=configured) is None:
            log.error("auth.bootstrap_token could not be stored as token %r", BOOTSTRAP)
        else:
            log.info("The admin token %r is the one in auth.bootstrap_token", BOOTSTRAP)
        return
    if await tokens.any_active():
        return
    issued = await tokens.issue(FIRST, Role.ADMIN, SYSTEM)
    if issued is None:
        return      # another replica starting at the same time made it
    token, _record = issued
    stream = out or sys.stdout
    stream.write(f"\nAn admin API token was created for this first start. It is shown this once:\n\n"
                 f"    {token}\n\nUse it as 'Authorization: Bearer <token>'; make others with "
                 f"'aetherius token create NAME --role ROLE', then revoke this one.\n\n")
    stream.flush()
    log.warning("No API token existed: admin token %r was created and printed once on standard output "
                "(not in this log). 'aetherius token create' makes more.", FIRST)

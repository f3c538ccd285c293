"""Mail for the steps, through whatever mailer the runner was given.

Like :mod:`steps.http`, steps import no SMTP library: they call :class:`Mailer` (the
service's is :class:`engine.service.mail.SmtpMailer`, on aiosmtplib), which raises
:class:`~engine.exceptions.TransportTimeout` / :class:`~engine.exceptions.TransportError`
when the server could not be reached or broke off, or :class:`MailRejected` when it
answered with a permanent refusal (5xx: bad credentials, a refused recipient). Those
become the step errors the runner's retry policy understands.
"""

from __future__ import annotations

from email.message import EmailMessage
from typing import Protocol

from engine.exceptions import ServiceRejected, ServiceUnavailable, StepError, TransportError, TransportTimeout
from steps.channels import EmailSettings


class MailRejected(Exception):
    """The SMTP server refused for good (a 5xx reply); ``code`` is its reply code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code} {message}")
        self.code = code


class Mailer(Protocol):
    async def send(self, message: EmailMessage, server: EmailSettings) -> list[str]:
        """Deliver ``message`` to its recipients through ``server`` (its ``timeout`` per command);
        return the recipients the server refused while it took the others."""
        ...


async def send_mail(mailer: Mailer | None, message: EmailMessage, server: EmailSettings) -> list[str]:
    """Send, translating the mailer's errors: unreachable, timed out or a 4xx (try later) is
    :class:`ServiceUnavailable`; a 5xx is :class:`ServiceRejected`. Never names the password."""
    if mailer is None:
        raise StepError("email: no mailer is configured for live calls", retryable=False)
    try:
        return await mailer.send(message, server)
    except TransportTimeout:
        raise ServiceUnavailable(f"the SMTP server did not answer within {server.timeout:g}s") from None
    except TransportError as exc:
        raise ServiceUnavailable(f"the SMTP server is unavailable: {exc}") from None
    except MailRejected as exc:
        raise ServiceRejected(f"the SMTP server refused the mail: {str(exc)[:200]}") from None

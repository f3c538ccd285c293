"""Email over SMTP with aiosmtplib: the :class:`steps.mail.Mailer` of the service and of
``aetherius run --live``.

One connection per mail (notifications are rare; a pooled connection would only go stale).
``security`` is ``starttls`` (upgrade a plain connection, usually port 587; refused if the
server does not offer it), ``tls`` (TLS from the first byte, usually 465) or ``none`` (a
local relay; no credentials then, the configuration refuses them). Certificates are
verified, against ``ca_file`` when one is given. Errors become what :func:`steps.mail.send_mail`
translates: no answer or a temporary refusal (4xx) is a transport error, a 5xx a rejection.
Neither the password nor the server's whole reply to AUTH is put in a message.
"""

from __future__ import annotations

import asyncio
import ssl
from email.message import EmailMessage

import aiosmtplib

from engine.exceptions import TransportError, TransportTimeout
from steps.channels import EmailSettings
from steps.mail import MailRejected


class SmtpMailer:
    async def send(self, message: EmailMessage, server: EmailSettings) -> list[str]:
        try:
            return await self._send(message, server)
        except BaseException:
            # A connection that failed (a TLS handshake refused, say) is closed by a callback the
            # loop runs next: let it run, or a loop that ends now (``aetherius run``) leaks the socket.
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            raise

    async def _send(self, message: EmailMessage, server: EmailSettings) -> list[str]:
        if not server.host:
            raise TransportError("notifications.email.host is not configured")
        context = ssl.create_default_context(cafile=server.ca_file) if server.security != "none" else None
        try:
            refused, _reply = await aiosmtplib.send(
                message, hostname=server.host, port=server.port,
                username=server.username, password=server.password,
                use_tls=server.security == "tls", start_tls=server.security == "starttls",
                tls_context=context, timeout=server.timeout)
        except aiosmtplib.SMTPTimeoutError:
            raise TransportTimeout() from None
        except aiosmtplib.SMTPAuthenticationError as exc:
            raise MailRejected(exc.code, "authentication failed (notifications.email.username and "
                                         "password)") from None
        except aiosmtplib.SMTPRecipientsRefused as exc:
            names = ", ".join(r.recipient for r in exc.recipients)
            if all(400 <= r.code < 500 for r in exc.recipients):
                raise TransportError(f"recipients deferred: {names}") from None
            raise MailRejected(550, f"recipients refused: {names}") from None
        except aiosmtplib.SMTPResponseException as exc:
            if 400 <= exc.code < 500:
                raise TransportError(f"SMTP {exc.code} {exc.message[:120]}") from None
            raise MailRejected(exc.code, exc.message[:200]) from None
        except (aiosmtplib.SMTPException, OSError, ssl.SSLError) as exc:
            raise TransportError(f"{type(exc).__name__}: {str(exc)[:200]}") from None
        # Some recipients refused, the others took it: the mail was sent; say to whom not.
        return sorted(refused)

    async def aclose(self) -> None:
        """Nothing is held between mails."""

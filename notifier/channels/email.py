"""``kind = "email"``: SMTP, STARTTLS before any credential or content.

Header injection is impossible by construction: the subject is one line (CR,
LF and other control characters in a value become spaces) and the message is
built by :class:`email.message.EmailMessage` with the SMTP policy, which
refuses a header containing a line break anyway; addresses come from the
config only, never from an event.
"""

from __future__ import annotations

import asyncio
import datetime
import email.policy
import re
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

from notifier.channels.base import DeliveryError, read_secret
from notifier.jobs import Job
from notifier.rules import render
from oceanus.config import EmailChannel

#: RFC 5322 recommends lines of at most 78 characters; a subject is cut well past that.
MAX_SUBJECT_CHARS = 200
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029\x85]")


def one_line(text: str) -> str:
    return _CONTROL.sub(" ", text)


class EmailSink:
    kind = "email"

    def __init__(self, name: str, cfg: EmailChannel) -> None:
        self.name = name
        self.cfg = cfg
        self.password = (
            read_secret(cfg.password_env, cfg.password_file, f"channels.{name}.password_env") if cfg.username else ""
        )
        self.context = ssl.create_default_context(cafile=cfg.ca_file or None)

    def message(self, job: Job) -> EmailMessage:
        msg = EmailMessage(policy=email.policy.SMTP)
        subject = render(job.subject, job.values, one_line)
        msg["Subject"] = subject[:MAX_SUBJECT_CHARS]
        msg["From"] = self.cfg.sender
        msg["To"] = ", ".join(self.cfg.to)
        msg["Date"] = format_datetime(datetime.datetime.now(datetime.UTC))
        msg["Message-ID"] = make_msgid(domain=self.cfg.sender.rsplit("@", 1)[-1])
        msg["X-Oceanus-Notification"] = one_line(job.id)
        msg.set_content(render(job.template, job.values) + "\n")
        return msg

    def _send(self, msg: EmailMessage) -> None:
        try:
            with smtplib.SMTP(self.cfg.host, self.cfg.port, timeout=self.cfg.timeout_s) as smtp:
                smtp.ehlo()
                if self.cfg.starttls:
                    smtp.starttls(context=self.context)
                    smtp.ehlo()
                if self.cfg.username:
                    smtp.login(self.cfg.username, self.password)
                smtp.send_message(msg)
        except smtplib.SMTPResponseException as exc:
            # 4yz: transient (greylisting, mailbox busy); 5yz: the server will not take it.
            text = exc.smtp_error.decode("utf-8", "replace") if isinstance(exc.smtp_error, bytes) else exc.smtp_error
            raise DeliveryError(f"SMTP {exc.smtp_code}: {text}", retryable=400 <= exc.smtp_code < 500) from None
        except smtplib.SMTPRecipientsRefused as exc:
            raise DeliveryError(f"SMTP refused the recipients: {exc.recipients}", retryable=False) from None
        except smtplib.SMTPNotSupportedError as exc:
            raise DeliveryError(f"SMTP server: {exc} (STARTTLS required)", retryable=False) from None
        except ssl.SSLCertVerificationError as exc:
            raise DeliveryError(f"SMTP TLS certificate refused: {exc.verify_message}", retryable=False) from None
        except (OSError, smtplib.SMTPException) as exc:
            raise DeliveryError(f"SMTP {type(exc).__name__}: {exc}", retryable=True) from None

    async def send(self, job: Job) -> None:
        await asyncio.to_thread(self._send, self.message(job))

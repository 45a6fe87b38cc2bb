"""What every channel implements, and the HTTP call they share.

A channel makes one attempt and classifies a failure (Vector's ``RetryLogic``):
:class:`DeliveryError` with ``retryable`` true for timeouts, connection errors,
408/425/429 and 5xx; false for any other 4xx (a Slack webhook that is gone, a
revoked token, a refused recipient), which retrying cannot fix. The delivery
worker (notifier/delivery.py) alone retries, backs off and dead-letters.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from notifier.jobs import Job
from oceanus.errors import OceanusError

#: HTTP statuses worth another attempt.
RETRYABLE_STATUSES = frozenset((408, 425, 429))
#: Bytes of a refusing answer kept in the reason.
REASON_BODY_CHARS = 200


class DeliveryError(OceanusError):
    def __init__(self, reason: str, retryable: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable


class Channel(Protocol):
    name: str
    kind: str

    async def send(self, job: Job) -> None:
        """Deliver once; raise :class:`DeliveryError` if the channel did not accept it."""
        ...


def read_secret(env_name: str, file: str, what: str, env: Mapping[str, str] | None = None) -> str:
    """A secret from its variable, else its file (trailing newline dropped); missing: a config error."""
    from oceanus.errors import ConfigError

    env = os.environ if env is None else env
    if env_name and env.get(env_name):
        return env[env_name]
    if file:
        try:
            return Path(file).read_text(encoding="utf-8").rstrip("\n")
        except OSError as exc:
            raise ConfigError(f"{what}: cannot read {file} ({exc.strerror})") from None
    raise ConfigError(f"{what}: missing (${env_name})" if env_name else f"{what}: missing")


def _post(url: str, body: bytes, headers: Mapping[str, str], timeout_s: float) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, headers=dict(headers), method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()
    except ssl.SSLCertVerificationError as exc:
        raise DeliveryError(f"TLS certificate refused: {exc.verify_message}", retryable=False) from None
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DeliveryError(f"{type(reason).__name__}: {reason}", retryable=True) from None


async def post(url: str, body: bytes, headers: Mapping[str, str], timeout_s: float) -> tuple[int, bytes]:
    """POST in a thread; a connection failure is a retryable :class:`DeliveryError`, a status is returned."""
    return await asyncio.to_thread(_post, url, body, headers, timeout_s)


def check_status(status: int, body: bytes, what: str) -> None:
    if 200 <= status < 300:
        return
    text = body[:REASON_BODY_CHARS].decode("utf-8", "replace")
    retryable = status >= 500 or status in RETRYABLE_STATUSES
    raise DeliveryError(f"{what} answered {status}: {text}", retryable=retryable)

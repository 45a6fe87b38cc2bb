"""Per-stream access rules: an ``Origin`` allow-list and write keys.

Write keys are for server-side senders: a browser would show its key to every
visitor. They come from an environment variable and/or a file, one per line
(blank lines and ``#`` comments skipped), never from ``oceanus.toml`` itself,
which is usually checked in. A request carries one as ``X-Oceanus-Key: <key>``
or as the user of HTTP Basic auth (``https://<key>@host/...``, ``curl -u key:``).

Keys are compared as SHA-256 digests with :func:`hmac.compare_digest`, against
every configured key without stopping at a match: the time taken says nothing
about how much of a guess was right, nor which key matched.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections.abc import Mapping

from oceanus.config import StreamAccess
from oceanus.errors import ConfigError

KEY_HEADER = b"x-oceanus-key"


def load_keys(stream: str, rule: StreamAccess, env: Mapping[str, str] | None = None) -> tuple[bytes, ...]:
    """The digests of a stream's write keys; ConfigError naming the key when a source is missing or empty."""
    env = os.environ if env is None else env
    where = f"collector.access.{stream}"
    lines: list[str] = []
    if rule.keys_env:
        if rule.keys_env not in env:
            raise ConfigError(f"{where}.keys_env: the environment variable {rule.keys_env} is not set")
        lines += env[rule.keys_env].splitlines()
    if rule.keys_file:
        try:
            with open(rule.keys_file, encoding="utf-8") as f:
                lines += f.read().splitlines()
        except OSError as exc:
            raise ConfigError(f"{where}.keys_file: cannot read {rule.keys_file} ({exc.strerror})") from None
    keys = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if (rule.keys_env or rule.keys_file) and not keys:
        raise ConfigError(f"{where}: keys_env/keys_file hold no key; every request would be refused")
    return tuple(_digest(k.encode()) for k in keys)


def _digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


class StreamGate:
    """The access rules of one stream, checked once per request."""

    __slots__ = ("keys", "origins")

    def __init__(self, origins: frozenset[bytes], keys: tuple[bytes, ...]) -> None:
        self.origins = origins
        self.keys = keys

    def check(self, headers: list[tuple[bytes, bytes]]) -> tuple[int, str, str, str] | None:
        """None when allowed, else (status, field, rule, detail)."""
        origin: bytes | None = None
        given: bytes | None = None
        for key, value in headers:
            if key == b"origin":
                origin = value
            elif key == KEY_HEADER:
                given = value.strip()
            elif key == b"authorization" and given is None:
                given = _basic_user(value)
        if self.origins and origin is not None and origin not in self.origins:
            return 403, "origin", "allowed", f"origin {origin.decode('latin-1')!r} may not send to this stream"
        if self.keys:
            if not given:
                return 401, "key", "required", "this stream wants a write key (X-Oceanus-Key or HTTP Basic user)"
            digest = _digest(given)
            match = False
            for k in self.keys:
                match |= hmac.compare_digest(digest, k)
            if not match:
                return 401, "key", "valid", "the write key is not one of this stream's keys"
        return None


def _basic_user(value: bytes) -> bytes | None:
    scheme, _, token = value.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    return decoded.partition(b":")[0]

"""The small error hierarchy every oceanus component raises.

Third-party exceptions are wrapped at the boundary into one of these, with a
message a user can act on.
"""

from __future__ import annotations


class OceanusError(Exception):
    """Base class: anything oceanus raises on purpose."""


class ConfigError(OceanusError):
    """The configuration is invalid. The message names the key path."""


class SinkError(OceanusError):
    """A warehouse write failed.

    ``retryable`` says whether the same batch may succeed later (5xx, 429,
    timeouts, connection errors); ``reason`` is a short label with few values,
    used as a metric label (``timeout``, ``throttled``, ``server``, ...).
    ``retry_after_s``, when set, is how long the sink knows the batch must wait
    (a quota's pacing): the flusher waits that long instead of backing off blindly.
    """

    def __init__(
        self, message: str, *, retryable: bool, reason: str = "error", retry_after_s: float | None = None
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.reason = reason
        self.retry_after_s = retry_after_s


class PayloadTooLarge(SinkError):
    """The sink refused the request for its size; the flusher splits the batch."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False, reason="too_large")


class QueryError(OceanusError):
    """The SQL was refused or failed, or the warehouse cannot be reached: one line for the user (HTTP 400)."""


class QueryTimeout(QueryError):
    """The query ran past ``flusher.query_timeout_s`` and was interrupted (HTTP 400, naming the limit)."""


class SourceError(OceanusError):
    """Reading a source database for ``oceanus import`` failed (connection, a refused
    query, a column type oceanus cannot store exactly). The message names the import
    and, where there is one, the column; never the source URL (it holds a password)."""

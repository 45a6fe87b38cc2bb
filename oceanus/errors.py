"""The small error hierarchy every oceanus component raises.

Third-party exceptions are wrapped at the boundary into one of these, with a
message a user can act on.
"""

from __future__ import annotations

from enum import StrEnum


class OceanusError(Exception):
    """Base class: anything oceanus raises on purpose."""


class ConfigError(OceanusError):
    """The configuration is invalid. The message names the key path."""


class Reason(StrEnum):
    """Why a sink write did not go through: the ``reason`` label of ``oceanus_sink_retries_total``.

    Sinks classify a failure into one of these and return; the flusher's worker
    alone decides what follows (``flusher/worker.py``). docs/TELEMETRY.md lists
    exactly these values (a test checks it).
    """

    # Transient: the same rows may succeed later.
    TIMEOUT = "timeout"
    CONNECTION = "connection"
    SERVER = "server"
    THROTTLED = "throttled"
    IO = "io"
    # The sink's schedule (a load job's quota slot), not a failure: never counted.
    PACING = "pacing"
    # The request was too big: the worker halves the batch, never counted.
    TOO_LARGE = "too_large"
    # Permanent: a configuration or data problem, retried at the same pace and alerted on.
    AUTH = "auth"
    NOT_FOUND = "not_found"
    INVALID = "invalid"
    ERROR = "error"
    # Set by the worker for exceptions that are not SinkErrors.
    ROW = "row"
    BUG = "bug"


class SinkError(OceanusError):
    """A warehouse write failed; ``reason`` says why (one :class:`Reason`).

    ``retryable`` says whether the same batch may succeed later (5xx, 429,
    timeouts, connection errors). Sinks raise one of the subclasses below;
    ``retry_after_s`` is set only by :class:`Pacing`.
    """

    def __init__(
        self, message: str, *, retryable: bool, reason: Reason | str = Reason.ERROR, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.reason = Reason(reason)  # an unknown label is a bug: ValueError here, not a new metric series
        self.retry_after_s = retry_after_s


class TransientError(SinkError):
    """The service failed (5xx, 429, a timeout, a lost connection): the worker backs off and retries."""

    def __init__(self, message: str, reason: Reason = Reason.SERVER) -> None:
        super().__init__(message, retryable=True, reason=reason)


class PermanentError(SinkError):
    """Retrying cannot help until someone acts (permissions, a missing table, a refused request)."""

    def __init__(self, message: str, reason: Reason = Reason.ERROR) -> None:
        super().__init__(message, retryable=False, reason=reason)


class Pacing(SinkError):
    """Not a failure: the sink's quota opens its next slot in ``retry_after_s``; the worker waits exactly that."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message, retryable=True, reason=Reason.PACING, retry_after_s=retry_after_s)


class PayloadTooLarge(SinkError):
    """The sink refused the request for its size; the flusher splits the batch."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False, reason=Reason.TOO_LARGE)


class QueryError(OceanusError):
    """The SQL was refused or failed, or the warehouse cannot be reached: one line for the user (HTTP 400)."""


class QueryTimeout(QueryError):
    """The query ran past ``flusher.query_timeout_s`` and was interrupted (HTTP 400, naming the limit)."""


class SourceError(OceanusError):
    """Reading a source database for ``oceanus import`` failed (connection, a refused
    query, a column type oceanus cannot store exactly). The message names the import
    and, where there is one, the column; never the source URL (it holds a password)."""

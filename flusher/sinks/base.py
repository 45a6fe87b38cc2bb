"""The one protocol every sink implements.

The flusher claims a batch from Redis, hands it to ``Sink.write`` (in a worker
thread: sinks are synchronous), and deletes the claim only once ``write``
returned. A sink never sees Redis; what it needs to remember across a crash
(a Storage Write API stream name and offset, a load job id) goes into the
batch's :class:`WriteState`, which the flusher persists beside the claim.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import msgspec

from oceanus.config import StreamConfig
from oceanus.errors import QueryError, QueryTimeout, Reason

if TYPE_CHECKING:
    from flusher.columns import Layout

__all__ = [
    "Batch",
    "Preparable",
    "QueryError",
    "QueryResult",
    "QueryTimeout",
    "Queryable",
    "RowError",
    "RowRetry",
    "Sink",
    "TakesArrow",
    "WriteResult",
    "WriteState",
]


class Batch(msgspec.Struct, frozen=True, kw_only=True):
    """Rows of one stream, normalised to the stream's current columns.

    ``rows[i][j]`` is the value of ``columns[j]`` as documented in
    :mod:`oceanus.buffer` (event_id as 16 raw bytes, timestamps as int
    microseconds, json as JSON text); a column the frame did not carry is None.
    ``batch_id`` is stable for the life of the claim, across re-claims after a
    crash: derive idempotency tokens (load job ids) from it.
    """

    stream: StreamConfig
    batch_id: str
    columns: tuple[str, ...]
    rows: Sequence[Sequence[Any]]
    #: Approximate encoded size, for request-size limits.
    nbytes: int = 0
    #: What the sink's :meth:`Preparable.prepare` derived from ``rows`` (its own type), or None.
    prepared: Any = None
    #: The rows as a ``pyarrow.Table`` of the stream's table columns (event ids as hex),
    #: when the native decoder built it (:mod:`flusher.columns`) for a :class:`TakesArrow` sink.
    arrow: Any = None


class RowError(msgspec.Struct, frozen=True):
    """One row the warehouse refused as invalid: it goes to the dead-letter list."""

    index: int
    reason: str


class RowRetry(msgspec.Struct, frozen=True):
    """One row the warehouse refused for a transient reason (insertAll's ``backendError``, ``stopped``).

    The sink does not re-send it: the flusher's worker writes the rows of
    ``WriteResult.retry`` again as a batch of their own, after its backoff.
    """

    index: int
    reason: Reason


class WriteResult(msgspec.Struct, frozen=True, kw_only=True):
    """``written`` rows stored; ``rejected`` refused for good (dead letters); ``retry`` to send again."""

    written: int
    rejected: tuple[RowError, ...] = ()
    retry: tuple[RowRetry, ...] = ()


class WriteState(Protocol):
    """Small string map persisted in Redis beside the claimed batch."""

    def get(self, key: str) -> str | None: ...

    def set(self, **values: str) -> None: ...


class Sink(Protocol):
    """A warehouse. Implementations live in ``flusher/sinks/<name>.py``."""

    name: str

    def ensure_tables(self, streams: Sequence[StreamConfig]) -> list[str]:
        """Create or migrate one table per stream; return what was changed, for humans.

        Adding a field adds a NULLABLE column; a type change raises
        :class:`oceanus.errors.ConfigError` naming the stream and column.
        """
        ...

    def write(self, batch: Batch, state: WriteState) -> WriteResult:
        """Write every row exactly once (per event_id) or raise.

        Makes one attempt and classifies what went wrong; never retries (the
        flusher's worker does, with its backoff). Raises one of
        :class:`oceanus.errors.TransientError`, :class:`~oceanus.errors.Pacing`,
        :class:`~oceanus.errors.PayloadTooLarge` (the worker splits the batch) or
        :class:`~oceanus.errors.PermanentError` for whole-batch failures. Per-row
        refusals come back in ``rejected`` (for good) or ``retry`` (transient).
        """
        ...

    def close(self) -> None: ...


class QueryResult(msgspec.Struct, frozen=True):
    """``POST /query``'s answer: JSON-friendly values (see :func:`flusher.sinks.common.plain`)."""

    columns: list[str]
    rows: list[list[Any]]


@runtime_checkable
class Preparable(Protocol):
    """A sink with CPU work that needs no connection (row -> column conversion).

    The flusher calls ``prepare`` in the thread that decodes the batch claimed
    ahead, so that work overlaps the previous batch's ``write``. ``prepare``
    must not touch the warehouse; ``write`` must accept unprepared batches too
    (a split batch is not prepared again).
    """

    def prepare(self, batch: Batch) -> Batch: ...


@runtime_checkable
class TakesArrow(Protocol):
    """A sink whose ``prepare`` uses ``Batch.arrow``: the flusher decodes its frames natively when it can.

    ``arrow_layout`` says how the stream's frame columns map to the sink's Arrow
    table (:class:`flusher.columns.Layout`), or None to always decode in Python.
    """

    def arrow_layout(self, stream: StreamConfig) -> Layout | None: ...


@runtime_checkable
class Queryable(Protocol):
    """A sink that can answer read-only SQL for other processes (DuckDB holds a file lock)."""

    def query(self, sql: str, timeout_s: float) -> QueryResult:
        """Run one read-only statement; interrupt it after ``timeout_s`` (raises :class:`QueryTimeout`)."""
        ...

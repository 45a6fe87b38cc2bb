"""insertAll mode (``mode = "insert_all"``): the streaming REST API, rows as JSON.

Delivery: at-least-once. Every row carries ``insertId`` = ``event_id`` so
BigQuery drops most replays (best effort, about a minute), and the
``<stream>_dedup`` view shipped beside each table removes the rest exactly.

One write call sends each request once. Rows the service refuses for a
transient reason (``backendError``, or ``stopped`` because another row of the
request was invalid) are handed back in ``WriteResult.retry``: the flusher's
worker sends them again as a batch of their own after its backoff.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from flusher.sinks.base import Batch, RowRetry, WriteResult, WriteState
from flusher.sinks.bigquery.errors import RETRY_ROW_REASONS, classify, row_reason, row_retry_reason
from flusher.sinks.bigquery.schema import json_row_converter
from flusher.sinks.common import (
    decode_refused,
    encode_refused,
    event_id_text,
    progress_mark,
    read_progress,
    refused_rows,
)
from oceanus.errors import PermanentError, Reason, TransientError

if TYPE_CHECKING:
    from flusher.sinks.bigquery import BigQuerySink

#: insertAll request bytes besides the rows (``{"rows": [], "skipInvalidRows": true}`` and slack).
REQUEST_OVERHEAD_BYTES = 256
#: Per row: ``{"insertId": "<32 hex>", "json": {}}`` plus the client's ``", "``/``": "`` separators.
ROW_OVERHEAD_BYTES = 64

#: WriteState keys remembering how many leading rows of a multi-request batch
#: were sent, and which of them were refused or are to be re-sent, so a retry
#: after a failed request does not send them again (nor forget them).
STATE_DONE = "bq_insert_all_done"
STATE_REJECTED = "bq_insert_all_rejected"
STATE_RETRY = "bq_insert_all_retry"

_json = msgspec.json.Encoder()


def _chunks(sizes: Sequence[int], start: int, max_rows: int, max_bytes: int) -> Iterator[tuple[int, int]]:
    """Split rows ``start..`` into [lo, hi) runs of at most ``max_rows`` rows and ``max_bytes`` bytes."""
    lo = start
    n = len(sizes)
    while lo < n:
        hi = lo
        total = REQUEST_OVERHEAD_BYTES
        while hi < n and hi - lo < max_rows and (hi == lo or total + sizes[hi] <= max_bytes):
            total += sizes[hi]
            hi += 1
        yield lo, hi
        lo = hi


class InsertAllWriter:
    """``mode = "insert_all"`` through ``sink`` (see the module docstring)."""

    def __init__(self, sink: BigQuerySink) -> None:
        self.sink = sink
        self.settings = sink.settings

    def write(self, batch: Batch, state: WriteState) -> WriteResult:
        n = len(batch.rows)
        if n == 0:
            return WriteResult(written=0)
        convert = json_row_converter(batch.stream, batch.columns)
        try:
            id_col = batch.columns.index("event_id")
        except ValueError:
            raise PermanentError(f"stream {batch.stream.name}: batch has no event_id column") from None
        rows = [convert(r) for r in batch.rows]
        ids = [event_id_text(r[id_col]) for r in batch.rows]
        sizes = [len(_json.encode(r)) + 2 * len(r) + ROW_OVERHEAD_BYTES for r in rows]

        done, rejected, retry = self._resume(batch, state)
        max_bytes = self.settings.max_request_bytes
        table_id = self.sink.table_id(batch.stream)
        # One row alone over the request limit can never be sent: dead-letter it
        # here instead of letting the flusher halve the batch down to it.
        oversize = {i for i in range(done, n) if sizes[i] + REQUEST_OVERHEAD_BYTES > max_bytes}
        for i in sorted(oversize):
            rejected[i] = f"too_large: row of ~{sizes[i]} bytes exceeds sink.bigquery.max_request_bytes ({max_bytes})"
        chunks = list(_chunks(sizes, done, self.settings.max_rows_per_request, max_bytes))
        for lo, hi in chunks:
            indexes = [i for i in range(lo, hi) if i not in oversize]
            refused, again = self._insert_chunk(table_id, rows, ids, indexes)
            rejected.update(refused)
            retry.update(again)
            if len(chunks) > 1 and hi < n:
                state.set(
                    **{
                        STATE_DONE: progress_mark(batch, hi),
                        STATE_REJECTED: encode_refused(rejected),
                        STATE_RETRY: encode_refused(retry),
                    }
                )
        return WriteResult(
            written=n - len(rejected) - len(retry),
            rejected=refused_rows(rejected),
            retry=tuple(RowRetry(i, Reason(reason)) for i, reason in sorted(retry.items())),
        )

    @staticmethod
    def _resume(batch: Batch, state: WriteState) -> tuple[int, dict[int, str], dict[int, str]]:
        """Rows already sent by an earlier attempt at this very batch, and what became of them."""
        mark = read_progress(batch, state.get(STATE_DONE), 1)
        if mark is None:
            return 0, {}, {}
        return int(mark[0]), decode_refused(state.get(STATE_REJECTED)), decode_refused(state.get(STATE_RETRY))

    def _insert_chunk(
        self, table_id: str, rows: list[dict[str, Any]], ids: list[str], indexes: list[int]
    ) -> tuple[dict[int, str], dict[int, str]]:
        """Send rows ``indexes`` once; return the invalid ones and those to re-send (row -> reason)."""
        if not indexes:
            return {}, {}
        try:
            errors = self.sink.client.insert_rows_json(
                table_id,
                [rows[i] for i in indexes],
                row_ids=[ids[i] for i in indexes],
                # Valid rows are stored and the invalid ones come back in
                # insertErrors, instead of one bad row failing the request.
                skip_invalid_rows=True,
                retry=self.sink.write_retry,
                timeout=self.sink.timeout_s,
            )
        except Exception as exc:
            raise classify(exc, f"insertAll into {table_id}") from exc
        rejected: dict[int, str] = {}
        again: dict[int, str] = {}
        for err in errors:
            pos = int(err["index"])
            if not 0 <= pos < len(indexes):
                raise TransientError(
                    f"insertAll into {table_id}: response names row {pos} of a {len(indexes)}-row request"
                )
            details = [e for e in err.get("errors", ()) if isinstance(e, dict)]
            reasons = {str(e.get("reason", "")) for e in details}
            if reasons and reasons <= RETRY_ROW_REASONS:
                again[indexes[pos]] = row_retry_reason(reasons)
            else:
                rejected[indexes[pos]] = row_reason(details)
        return rejected, again

    def close(self) -> None:
        """Nothing of its own: the sink closes the client."""

"""BigQuery load-job mode (``mode = "load"``): free ingestion, minutes of latency.

Load jobs cost nothing, but BigQuery allows about 1,500 of them per table per
day (failed ones included). So this writer starts at most one job per table
every ``sink.bigquery.load_interval_s`` (config refuses an interval under
86400 / 1500 = 57.6 s) and a batch handed over earlier is given back with
``Pacing(retry_after_s=...)``; give load streams a
``batch.max_wait_s`` near the interval so that each job carries a full batch.
The pacing is per flusher process: N flushers draining one load stream may
start N jobs per interval, so multiply ``load_interval_s`` by N.

Exactly-once: the job id is derived from the batch id and the table
(``oceanus_<stream>_<hash>``), and kept in the batch's write state. A batch
re-submitted after a crash or a timeout reuses the id; BigQuery answers 409
Conflict and the existing job is looked up and waited for instead of loading
the rows twice. Only a job that finished *failed* (so loaded nothing: load
jobs are atomic) gets a new id, ``..._r<attempt>``.
"""

from __future__ import annotations

import hashlib
import io
import time
from typing import TYPE_CHECKING, Any

import msgspec

from flusher.sinks.base import Batch, RowError, WriteResult, WriteState
from flusher.sinks.bigquery.errors import RETRY_JOB_REASONS, classify
from flusher.sinks.bigquery.schema import json_row_converter
from flusher.sinks.common import arrow_types, column_type, event_id_text
from oceanus.config import BIGQUERY_TIMESTAMP_END_US, BIGQUERY_TIMESTAMP_MIN_US
from oceanus.errors import Pacing, PermanentError, Reason, SinkError, TransientError

if TYPE_CHECKING:
    from google.cloud import bigquery

    from flusher.sinks.bigquery import BigQuerySink

#: WriteState keys: the job id of this batch's load, and how many failed jobs came before it.
STATE_JOB = "load_job"
STATE_ATTEMPT = "load_attempt"

_json = msgspec.json.Encoder()
#: What encoding raises on a value a load file cannot carry: that row is refused, the rest loaded
#: (the flusher's own rule for row-specific errors, flusher/worker.py ROW_ERRORS).
_ROW_ERRORS = (ArithmeticError, ValueError, TypeError, LookupError, msgspec.EncodeError)


def job_id_for(batch: Batch, table_id: str, attempt: int = 0) -> str:
    """Same batch, same table, same attempt -> same job id, in any process."""
    digest = hashlib.sha256(f"{table_id}\n{batch.batch_id}\n{len(batch.rows)}".encode()).hexdigest()[:32]
    base = f"oceanus_{batch.stream.name}_{digest}"
    return base if attempt == 0 else f"{base}_r{attempt}"


def ndjson(batch: Batch) -> bytes:
    """One JSON object per row; JSON columns embedded as JSON, not as strings holding JSON."""
    convert = json_row_converter(batch.stream, batch.columns)
    json_cols = [c for c in batch.columns if column_type(batch.stream, c) == "json"]
    out = bytearray()
    for row in batch.rows:
        obj = convert(row)
        for c in json_cols:
            if c in obj:
                text = obj[c]
                if not isinstance(text, str):
                    # A row-specific TypeError: the flusher dead-letters this row alone.
                    raise TypeError(f"{c}: a JSON column holds {type(text).__name__}, not JSON text")
                obj[c] = msgspec.Raw(text.encode())
        out += _json.encode(obj)
        out += b"\n"
    return bytes(out)


def parquet(batch: Batch) -> bytes:
    """Every table column, in table order: BigQuery matches Parquet columns by name, bqemulator by position."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    types = arrow_types("UTC")
    arrays = []
    fields = []
    for j, col in enumerate(batch.columns):
        kind = column_type(batch.stream, col)
        values = [r[j] for r in batch.rows]
        if col == "event_id":
            values = [event_id_text(v) if v is not None else None for v in values]
        array = pa.array(values, type=types[kind])
        if kind == "timestamp" and len(array) > array.null_count:
            # Arrow takes any int64; BigQuery would fail the whole job on one value out of its range.
            bounds = pc.min_max(array.cast(pa.int64()))
            if bounds["min"].as_py() < BIGQUERY_TIMESTAMP_MIN_US or bounds["max"].as_py() >= BIGQUERY_TIMESTAMP_END_US:
                raise ValueError(f"{col}: a timestamp outside BigQuery's range (years 1 to 9999)")
        arrays.append(array)
        fields.append(pa.field(col, types[kind]))
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_arrays(arrays, schema=pa.schema(fields)), buf, compression="zstd")
    return buf.getvalue()


class LoadWriter:
    """``mode = "load"`` through ``sink`` (see the module docstring)."""

    def __init__(self, sink: BigQuerySink, clock: Any = time.monotonic) -> None:
        self.sink = sink
        self.settings = sink.config.sink.bigquery
        self.clock = clock
        self._last_start: dict[str, float] = {}

    def write(self, batch: Batch, state: WriteState) -> WriteResult:
        from google.api_core import exceptions as gexc

        if not batch.rows:
            return WriteResult(written=0)
        # Encoded before a job slot is taken: a value no load file can carry is refused
        # for its row here, instead of costing paced jobs to isolate.
        data, rejected = self._encode(batch)
        if data is None:
            return WriteResult(written=0, rejected=rejected)
        table_id = self.sink.table_id(batch.stream)
        attempt = int(state.get(STATE_ATTEMPT) or 0)
        job_id = job_id_for(batch, table_id, attempt)
        resubmitted = state.get(STATE_JOB) == job_id
        if not resubmitted:
            self._pace(table_id)
        # Persisted before the job exists: a crash after submitting leaves an id to look up.
        state.set(**{STATE_JOB: job_id, STATE_ATTEMPT: str(attempt)})
        self._last_start[table_id] = self.clock()
        try:
            try:
                job: Any = self._submit(data, table_id, job_id)
            except gexc.Conflict:
                # This batch's job already exists (a re-submission): never load twice.
                job = self.sink.client.get_job(
                    job_id, location=self.settings.location, retry=self.sink.write_retry, timeout=self.sink.timeout_s
                )
            self._wait(job, table_id)
        except SinkError:
            raise
        except Exception as exc:
            raise classify(exc, f"load job {job_id} into {table_id}") from exc
        if job.error_result:
            self._failed(job, job_id, table_id, state, attempt)
        return WriteResult(written=len(batch.rows) - len(rejected), rejected=rejected)

    def _encode(self, batch: Batch) -> tuple[bytes | None, tuple[RowError, ...]]:
        """The load file of ``batch``, without the rows that cannot be encoded (None if no row can)."""
        encode = ndjson if self.settings.load_format == "ndjson" else parquet
        try:
            return encode(batch), ()
        except _ROW_ERRORS:
            pass
        # Only when some value failed: find the rows one by one, deterministically,
        # so a retry of this batch (same job id) loads exactly the same rows.
        bad: list[RowError] = []
        keep: list[Any] = []
        for i, row in enumerate(batch.rows):
            try:
                encode(msgspec.structs.replace(batch, rows=[row]))
            except _ROW_ERRORS as exc:
                bad.append(RowError(i, f"cannot be encoded for a load job: {type(exc).__name__}: {exc}"))
            else:
                keep.append(row)
        if not keep:
            return None, tuple(bad)
        return encode(msgspec.structs.replace(batch, rows=keep)), tuple(bad)

    def _pace(self, table_id: str) -> None:
        last = self._last_start.get(table_id)
        if last is None:
            return
        wait = last + self.settings.load_interval_s - self.clock()
        if wait > 0:
            raise Pacing(
                f"load into {table_id}: next job allowed in {wait:.0f} s (one per sink.bigquery.load_interval_s = "
                f"{self.settings.load_interval_s:g} s, to stay under BigQuery's 1,500 loads per table per day)",
                retry_after_s=wait,
            )

    def _submit(self, data: bytes, table_id: str, job_id: str) -> bigquery.LoadJob:
        from google.cloud import bigquery

        if self.settings.load_format == "ndjson":
            fmt = bigquery.SourceFormat.NEWLINE_DELIMITED_JSON
        else:
            fmt = bigquery.SourceFormat.PARQUET
        job_config = bigquery.LoadJobConfig(
            source_format=fmt,
            write_disposition=bigquery.WriteDisposition.WRITE_APPEND,
            create_disposition=bigquery.CreateDisposition.CREATE_NEVER,
        )
        # No size=: the emulator refuses the multipart upload path it selects.
        return self.sink.client.load_table_from_file(
            io.BytesIO(data),
            table_id,
            job_id=job_id,
            job_config=job_config,
            location=self.settings.location,
            timeout=self.sink.timeout_s,
        )

    def _wait(self, job: bigquery.LoadJob | Any, table_id: str) -> None:
        """Wait for the job up to ``timeout_s``; past it, the batch is retried and re-attaches by id."""
        import concurrent.futures

        try:
            job.result(timeout=self.sink.timeout_s, retry=self.sink.write_retry)
        except concurrent.futures.TimeoutError:
            raise TransientError(
                f"load job {job.job_id} into {table_id} still {job.state} after {self.sink.timeout_s:g} s",
                Reason.TIMEOUT,
            ) from None
        except Exception:
            if getattr(job, "error_result", None):
                return  # the job ran and failed: reported by the caller from error_result
            raise

    def _failed(self, job: Any, job_id: str, table_id: str, state: WriteState, attempt: int) -> None:
        """A failed load stored nothing: the next attempt gets a fresh job id."""
        state.set(**{STATE_ATTEMPT: str(attempt + 1)})
        result = job.error_result or {}
        reason = str(result.get("reason", ""))
        details = "; ".join(str(e.get("message", "")) for e in (job.errors or [])[:3]) or result.get("message", "")
        message = f"load job {job_id} into {table_id} failed: {reason or 'error'}: {details}"
        if reason in RETRY_JOB_REASONS:
            raise TransientError(message, Reason.SERVER)
        raise PermanentError(message, Reason.INVALID)

    def close(self) -> None:
        self._last_start.clear()

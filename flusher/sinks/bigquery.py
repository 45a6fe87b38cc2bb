"""BigQuery sink: the table manager, insertAll writes, and the per-stream mode dispatch.

One module answers the questions every sink answers (Vector's habit): how a
stream becomes a table, how a batch becomes requests, which errors are worth
retrying. The other write modes (Storage Write API, load jobs) live in
``bq_storage_write.py`` and ``bq_load.py`` and reuse this sink's client, table
ids and value conversion through :class:`ModeWriter`.

Delivery: insertAll is at-least-once. Every row carries ``insertId`` =
``event_id`` so BigQuery drops most replays (best effort, about a minute), and
the ``<stream>_dedup`` view shipped beside each table removes the rest exactly.
"""

from __future__ import annotations

import datetime as dt
import importlib
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from flusher.sinks.base import Batch, RowError, WriteResult, WriteState
from oceanus.config import Config, FieldType, StreamConfig
from oceanus.errors import ConfigError, PayloadTooLarge, SinkError

if TYPE_CHECKING:
    from google.cloud import bigquery

#: Warehouse type of each config field type (GoogleSQL names).
BQ_TYPES: dict[FieldType, str] = {
    "string": "STRING",
    "int": "INT64",
    "float": "FLOAT64",
    "bool": "BOOL",
    "timestamp": "TIMESTAMP",
    "json": "JSON",
}

#: Columns the collector sets: (name, type, mode).
SERVER_SCHEMA: tuple[tuple[str, str, str], ...] = (
    ("event_id", "STRING", "REQUIRED"),
    ("received_at", "TIMESTAMP", "REQUIRED"),
    ("ip", "STRING", "NULLABLE"),
    ("ua", "STRING", "NULLABLE"),
    ("device", "STRING", "NULLABLE"),
)
EXTRA_SCHEMA = ("extra", "JSON", "NULLABLE")

#: The API reports legacy SQL names for some types; compare in one vocabulary.
_TYPE_ALIASES = {"INTEGER": "INT64", "FLOAT": "FLOAT64", "BOOLEAN": "BOOL"}

PARTITION_FIELD = "received_at"
DEDUP_VIEW_SUFFIX = "_dedup"

#: insertAll per-row reasons that say "this row was fine, send it again":
#: ``stopped`` marks rows refused only because another row of the request was
#: invalid (skipInvalidRows=false); the others are transient service errors.
RETRY_ROW_REASONS = frozenset({"stopped", "backendError", "internalError", "timeout", "rateLimitExceeded"})
#: Rounds of re-sending such rows inside one write call before handing the
#: batch back to the flusher's backoff.
ROW_RETRY_ROUNDS = 3

#: insertAll request bytes besides the rows (``{"rows": [], "skipInvalidRows": true}`` and slack).
REQUEST_OVERHEAD_BYTES = 256
#: Per row: ``{"insertId": "<32 hex>", "json": {}}`` plus the client's ``", "``/``": "`` separators.
ROW_OVERHEAD_BYTES = 64

#: WriteState key remembering how many leading rows of a multi-request batch
#: are stored, so a retry after a failed request does not re-send them.
STATE_DONE = "bq_insert_all_done"
STATE_REJECTED = "bq_insert_all_rejected"

_json = msgspec.json.Encoder()
_EPOCH = dt.datetime(1970, 1, 1)


class ModeWriter(Protocol):
    """A BigQuery write mode other than insertAll, built lazily as ``Writer(sink)``.

    It may use ``sink.client``, ``sink.config``, ``sink.table_id(stream)``,
    ``sink.retry``/``sink.timeout_s``, :func:`table_schema` and
    :func:`json_row_converter`. ``write`` has the contract of
    :meth:`flusher.sinks.base.Sink.write`.
    """

    def write(self, batch: Batch, state: WriteState) -> WriteResult: ...

    def close(self) -> None: ...


#: stream.mode -> "module:class" of its writer (insert_all is this module's own).
MODE_WRITERS: dict[str, str] = {
    "storage_write": "flusher.sinks.bq_storage_write:StorageWriter",
    "load": "flusher.sinks.bq_load:LoadWriter",
}


# --------------------------------------------------------------------------- schema


def table_schema(stream: StreamConfig) -> list[bigquery.SchemaField]:
    """The table of a stream: server columns, the stream's fields, ``extra``.

    Stream fields are NULLABLE even when the collector requires them: the
    collector enforces ``required``, BigQuery cannot add a REQUIRED column to an
    existing table, and a field may stop being required without a migration.
    """
    from google.cloud import bigquery

    cols = [bigquery.SchemaField(n, t, mode=m) for n, t, m in SERVER_SCHEMA]
    for name, field in stream.fields.items():
        cols.append(bigquery.SchemaField(name, BQ_TYPES[field.type], mode="NULLABLE", description=field.description))
    cols.append(bigquery.SchemaField(EXTRA_SCHEMA[0], EXTRA_SCHEMA[1], mode=EXTRA_SCHEMA[2]))
    return cols


def _norm_type(field_type: str) -> str:
    return _TYPE_ALIASES.get(field_type.upper(), field_type.upper())


def dedup_view_sql(table_id: str) -> str:
    """One row per event_id.

    Replays re-send the collector's row unchanged, so duplicates share
    ``received_at`` too: partitioning the window by it as well changes nothing
    in the result but lets a filter on ``received_at`` (the partition column)
    be applied below the window instead of after a full scan.
    """
    return (
        "SELECT * EXCEPT (_oceanus_rn) FROM (\n"
        "  SELECT *, ROW_NUMBER() OVER (PARTITION BY received_at, event_id ORDER BY received_at) AS _oceanus_rn\n"
        f"  FROM `{table_id}`\n"
        ") WHERE _oceanus_rn = 1"
    )


# --------------------------------------------------------------------------- values


#: Second -> "YYYY-MM-DDTHH:MM:SS": rows of a batch share a few seconds, so
#: formatting the date once per second instead of per row halves conversion CPU.
_SECOND_TEXT: dict[int, str] = {}
_SECOND_TEXT_MAX = 4096


def timestamp_us_to_rfc3339(us: int) -> str:
    """Microseconds since the epoch -> ``2026-11-23T12:00:00.123456Z`` (exact, unlike float seconds)."""
    sec, frac = divmod(us, 1_000_000)
    text = _SECOND_TEXT.get(sec)
    if text is None:
        if len(_SECOND_TEXT) >= _SECOND_TEXT_MAX:
            _SECOND_TEXT.clear()
        text = _SECOND_TEXT[sec] = (_EPOCH + dt.timedelta(seconds=sec)).isoformat()
    return f"{text}.{frac:06d}Z"


def _event_id(v: Any) -> str:
    return v.hex() if isinstance(v, bytes | bytearray) else str(v)


def _column_converter(column: str, stream: StreamConfig) -> Callable[[Any], Any] | None:
    """How one column's frame value becomes its insertAll JSON value; None: as is."""
    if column == "event_id":
        return _event_id
    if column == "received_at":
        return timestamp_us_to_rfc3339
    field = stream.fields.get(column)
    if field is not None and field.type == "timestamp":
        return timestamp_us_to_rfc3339
    # str / int / float / bool pass through; JSON columns already hold JSON
    # text, which is what insertAll wants for a JSON column (a dict is refused).
    return None


def json_row_converter(stream: StreamConfig, columns: Sequence[str]) -> Callable[[Sequence[Any]], dict[str, Any]]:
    """Build once per batch: a frame row (in ``columns`` order) -> insertAll/NDJSON row dict.

    Null values are left out: a missing key is NULL and the request is smaller.
    """
    plan = tuple((name, _column_converter(name, stream)) for name in columns)

    def convert(row: Sequence[Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for (name, fn), value in zip(plan, row, strict=False):
            if value is not None:
                out[name] = fn(value) if fn is not None else value
        return out

    return convert


# --------------------------------------------------------------------------- errors


def _reasons(exc: BaseException) -> set[str]:
    errors = getattr(exc, "errors", None) or ()
    return {str(e.get("reason", "")) for e in errors if isinstance(e, dict)}


def map_error(exc: BaseException, what: str) -> SinkError:
    """Wrap a client-library exception into the oceanus hierarchy (see the protocol)."""
    import requests
    from google.api_core import exceptions as gexc
    from google.auth import exceptions as auth_exc

    if isinstance(exc, SinkError):
        return exc
    if isinstance(exc, gexc.RetryError) and exc.cause is not None:
        # The client's bounded retry gave up: classify what it last saw.
        return map_error(exc.cause, what)
    if isinstance(exc, requests.exceptions.Timeout | TimeoutError):
        return SinkError(f"{what}: BigQuery did not answer in time ({exc})", retryable=True, reason="timeout")
    if isinstance(exc, requests.exceptions.ConnectionError | ConnectionError | auth_exc.TransportError):
        return SinkError(f"{what}: cannot reach BigQuery ({exc})", retryable=True, reason="connection")
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return SinkError(f"{what}: connection broken mid-response ({exc})", retryable=True, reason="connection")
    if isinstance(exc, gexc.GoogleAPICallError):
        code = int(exc.code or 0)
        reasons = _reasons(exc)
        message = f"{what}: HTTP {code} {exc.message}"
        if code == 413 or "payload size exceeds" in str(exc.message).lower():
            return PayloadTooLarge(message)
        if code == 429 or reasons & {"rateLimitExceeded", "quotaExceeded"}:
            return SinkError(message, retryable=True, reason="throttled")
        if code >= 500 or reasons & {"backendError", "internalError", "badGateway"}:
            return SinkError(message, retryable=True, reason="server")
        if code == 408:
            return SinkError(message, retryable=True, reason="timeout")
        return SinkError(message, retryable=False, reason=f"http_{code}" if code else "error")
    return SinkError(f"{what}: {type(exc).__name__}: {exc}", retryable=False, reason="error")


# --------------------------------------------------------------------------- client


def _endpoint(cfg: Config) -> str:
    endpoint = cfg.sink.bigquery.api_endpoint or os.environ.get("BIGQUERY_EMULATOR_HOST", "")
    if endpoint and "://" not in endpoint:
        # BIGQUERY_EMULATOR_HOST is conventionally ``host:port``.
        endpoint = "http://" + endpoint
    return endpoint


def make_client(cfg: Config) -> bigquery.Client:
    """The REST client: ADC normally; anonymous against an explicit endpoint (an emulator)."""
    from google.api_core.client_options import ClientOptions
    from google.auth import exceptions as auth_exc
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import bigquery

    bq = cfg.sink.bigquery
    project = bq.project or None
    endpoint = _endpoint(cfg)
    if endpoint:
        if project is None:
            raise ConfigError("sink.bigquery.project: required when sink.bigquery.api_endpoint (or an emulator) is set")
        return bigquery.Client(
            project=project,
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            client_options=ClientOptions(api_endpoint=endpoint),
            location=bq.location,
        )
    try:
        return bigquery.Client(project=project, location=bq.location)
    except auth_exc.DefaultCredentialsError as exc:
        raise ConfigError(
            "sink.bigquery: no Google credentials found; set GOOGLE_APPLICATION_CREDENTIALS to a key file "
            f"or run `gcloud auth application-default login` ({exc})"
        ) from None
    except OSError as exc:
        raise ConfigError(f"sink.bigquery: cannot build the BigQuery client ({exc})") from None


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


# --------------------------------------------------------------------------- sink


class BigQuerySink:
    """``[sink] kind = "bigquery"``: one table per stream in ``sink.bigquery.dataset``."""

    name = "bigquery"

    def __init__(self, cfg: Config, client: bigquery.Client | None = None) -> None:
        from google.cloud import bigquery

        self.config = cfg
        self.settings = cfg.sink.bigquery
        self.client = client if client is not None else make_client(cfg)
        self.project: str = self.client.project
        self.dataset_id = f"{self.project}.{self.settings.dataset}"
        self.timeout_s = self.settings.timeout_s
        # None disables the library's retries; its annotations say Retry only, hence Any.
        self.retry: Any = (
            bigquery.DEFAULT_RETRY.with_deadline(self.settings.retry_deadline_s)
            if self.settings.retry_deadline_s > 0
            else None
        )
        self._writers: dict[str, ModeWriter] = {}
        # The flusher may write several streams from worker threads at once.
        self._writers_lock = threading.Lock()

    def table_id(self, stream: StreamConfig | str) -> str:
        name = stream if isinstance(stream, str) else stream.name
        return f"{self.dataset_id}.{name}"

    def dedup_view_id(self, stream: StreamConfig | str) -> str:
        return self.table_id(stream) + DEDUP_VIEW_SUFFIX

    # ----------------------------------------------------------------- tables

    def ensure_tables(self, streams: Sequence[StreamConfig]) -> list[str]:
        from google.api_core import exceptions as gexc
        from google.cloud import bigquery

        changes: list[str] = []
        dataset = bigquery.Dataset(self.dataset_id)
        dataset.location = self.settings.location
        try:
            try:
                self.client.get_dataset(self.dataset_id, retry=self.retry, timeout=self.timeout_s)
            except gexc.NotFound:
                self.client.create_dataset(dataset, exists_ok=True, retry=self.retry, timeout=self.timeout_s)
                changes.append(f"created dataset {self.dataset_id}")
            for stream in streams:
                changes.extend(self._ensure_table(stream))
                changes.extend(self._ensure_dedup_view(stream))
        except (ConfigError, SinkError):
            raise
        except Exception as exc:
            raise map_error(exc, "table sync") from exc
        return changes

    def _ensure_table(self, stream: StreamConfig) -> list[str]:
        from google.api_core import exceptions as gexc
        from google.cloud import bigquery

        table_id = self.table_id(stream)
        wanted = table_schema(stream)
        try:
            table = self.client.get_table(table_id, retry=self.retry, timeout=self.timeout_s)
        except gexc.NotFound:
            table = bigquery.Table(table_id, schema=wanted)
            # Event time, not ingestion time: a replayed backlog lands in the day it happened.
            table.time_partitioning = bigquery.TimePartitioning(
                type_=bigquery.TimePartitioningType.DAY, field=PARTITION_FIELD
            )
            table.clustering_fields = list(stream.clustering) or None
            table.description = stream.description
            self.client.create_table(table, exists_ok=True, retry=self.retry, timeout=self.timeout_s)
            return [f"created table {table_id} ({len(wanted)} columns)"]
        return self._migrate_table(stream, table, wanted)

    def _migrate_table(
        self, stream: StreamConfig, table: bigquery.Table, wanted: list[bigquery.SchemaField]
    ) -> list[str]:
        from google.cloud import bigquery

        table_id = self.table_id(stream)
        tp = table.time_partitioning
        if tp is None or tp.field != PARTITION_FIELD or tp.type_ != bigquery.TimePartitioningType.DAY:
            raise ConfigError(
                f"streams.{stream.name}: table {table_id} exists but is not partitioned by DAY on "
                f"`{PARTITION_FIELD}`; BigQuery cannot change partitioning in place (copy it to a new table)"
            )
        existing = {f.name: f for f in table.schema}
        for field in wanted:
            have = existing.get(field.name)
            if have is not None and _norm_type(have.field_type) != _norm_type(field.field_type):
                raise ConfigError(
                    f"streams.{stream.name}.fields.{field.name}: the config says {_norm_type(field.field_type)} "
                    f"but table {table_id} has {_norm_type(have.field_type)}; BigQuery cannot change a column's "
                    "type in place (use a new field name, or migrate the table by hand)"
                )
        added = [f for f in wanted if f.name not in existing]
        changes: list[str] = []
        update: list[str] = []
        if added:
            # New columns are NULLABLE (rows already stored have no value);
            # columns the config dropped stay: dropping data is never implicit.
            table.schema = [*table.schema, *(_as_nullable(f) for f in added)]
            update.append("schema")
            changes += [f"added column {table_id}.{f.name} {_norm_type(f.field_type)}" for f in added]
        clustering = list(stream.clustering) or None
        if (table.clustering_fields or None) != clustering:
            table.clustering_fields = clustering
            update.append("clustering_fields")
            changes.append(f"clustering of {table_id} set to {clustering or 'none'}")
        if update:
            self.client.update_table(table, update, retry=self.retry, timeout=self.timeout_s)
        return changes

    def _ensure_dedup_view(self, stream: StreamConfig) -> list[str]:
        from google.api_core import exceptions as gexc
        from google.cloud import bigquery

        view_id = self.dedup_view_id(stream)
        sql = dedup_view_sql(self.table_id(stream))
        try:
            view = self.client.get_table(view_id, retry=self.retry, timeout=self.timeout_s)
        except gexc.NotFound:
            view = bigquery.Table(view_id)
            view.view_query = sql
            view.description = f"{stream.name} with replayed rows removed: one row per event_id"
            self.client.create_table(view, exists_ok=True, retry=self.retry, timeout=self.timeout_s)
            return [f"created view {view_id}"]
        if view.table_type != "VIEW":
            raise ConfigError(f"streams.{stream.name}: {view_id} exists and is not a view; drop or rename it")
        # A view whose text we cannot read back is left alone rather than rewritten on every sync.
        if view.view_query is not None and view.view_query.strip() != sql:
            view.view_query = sql
            self.client.update_table(view, ["view_query"], retry=self.retry, timeout=self.timeout_s)
            return [f"updated view {view_id}"]
        return []

    # ----------------------------------------------------------------- writes

    def write(self, batch: Batch, state: WriteState) -> WriteResult:
        mode = batch.stream.mode
        if mode == "insert_all":
            return self._insert_all(batch, state)
        return self._mode_writer(mode).write(batch, state)

    def _mode_writer(self, mode: str) -> ModeWriter:
        writer = self._writers.get(mode)
        if writer is not None:
            return writer
        with self._writers_lock:
            writer = self._writers.get(mode)
            if writer is None:
                target = MODE_WRITERS.get(mode)
                if target is None:
                    raise ConfigError(f"stream mode `{mode}` is not supported by the BigQuery sink")
                module_name, class_name = target.split(":")
                try:
                    module = importlib.import_module(module_name)
                except ModuleNotFoundError as exc:
                    raise ConfigError(f"stream mode `{mode}` is not available in this build ({exc})") from None
                writer = getattr(module, class_name)(self)
                self._writers[mode] = writer
            return writer

    def _insert_all(self, batch: Batch, state: WriteState) -> WriteResult:
        n = len(batch.rows)
        if n == 0:
            return WriteResult(written=0)
        convert = json_row_converter(batch.stream, batch.columns)
        try:
            id_col = batch.columns.index("event_id")
        except ValueError:
            raise SinkError(
                f"stream {batch.stream.name}: batch has no event_id column", retryable=False, reason="error"
            ) from None
        rows = [convert(r) for r in batch.rows]
        ids = [_event_id(r[id_col]) for r in batch.rows]
        sizes = [len(_json.encode(r)) + 2 * len(r) + ROW_OVERHEAD_BYTES for r in rows]

        done, rejected = self._resume(batch, state)
        max_bytes = self.settings.max_request_bytes
        table_id = self.table_id(batch.stream)
        # One row alone over the request limit can never be sent: dead-letter it
        # here instead of letting the flusher halve the batch down to it.
        oversize = {i for i in range(done, n) if sizes[i] + REQUEST_OVERHEAD_BYTES > max_bytes}
        for i in sorted(oversize):
            rejected[i] = f"too_large: row of ~{sizes[i]} bytes exceeds sink.bigquery.max_request_bytes ({max_bytes})"
        chunks = list(_chunks(sizes, done, self.settings.max_rows_per_request, max_bytes))
        for lo, hi in chunks:
            indexes = [i for i in range(lo, hi) if i not in oversize]
            rejected.update(self._insert_chunk(table_id, rows, ids, indexes))
            if len(chunks) > 1 and hi < n:
                state.set(
                    **{
                        STATE_DONE: f"{batch.batch_id}:{n}:{hi}",
                        STATE_REJECTED: _json.encode(sorted(rejected.items())).decode(),
                    }
                )
        errors = tuple(RowError(i, reason) for i, reason in sorted(rejected.items()))
        return WriteResult(written=n - len(errors), rejected=errors)

    @staticmethod
    def _resume(batch: Batch, state: WriteState) -> tuple[int, dict[int, str]]:
        """Rows already stored by an earlier attempt at this very batch (same id, same size)."""
        mark = state.get(STATE_DONE)
        if not mark:
            return 0, {}
        parts = mark.rsplit(":", 2)
        if len(parts) != 3 or parts[0] != batch.batch_id or parts[1] != str(len(batch.rows)):
            # A mark from another batch (a split half, a different claim): ignore it.
            return 0, {}
        raw = state.get(STATE_REJECTED) or "[]"
        try:
            pairs = msgspec.json.decode(raw, type=list[tuple[int, str]])
        except msgspec.DecodeError:
            pairs = []
        return int(parts[2]), dict(pairs)

    def _insert_chunk(
        self, table_id: str, rows: list[dict[str, Any]], ids: list[str], indexes: list[int]
    ) -> dict[int, str]:
        """Send rows ``indexes``; return the invalid ones. Transient per-row refusals are re-sent."""
        rejected: dict[int, str] = {}
        pending = indexes
        for _ in range(ROW_RETRY_ROUNDS):
            if not pending:
                return rejected
            try:
                errors = self.client.insert_rows_json(
                    table_id,
                    [rows[i] for i in pending],
                    row_ids=[ids[i] for i in pending],
                    # Valid rows are stored and the invalid ones come back in
                    # insertErrors, instead of one bad row failing the request.
                    skip_invalid_rows=True,
                    retry=self.retry,
                    timeout=self.timeout_s,
                )
            except Exception as exc:
                raise map_error(exc, f"insertAll into {table_id}") from exc
            again: list[int] = []
            for err in errors:
                pos = int(err["index"])
                if not 0 <= pos < len(pending):
                    raise SinkError(
                        f"insertAll into {table_id}: response names row {pos} of a {len(pending)}-row request",
                        retryable=True,
                        reason="server",
                    )
                details = [e for e in err.get("errors", ()) if isinstance(e, dict)]
                reasons = {str(e.get("reason", "")) for e in details}
                if reasons and reasons <= RETRY_ROW_REASONS:
                    again.append(pending[pos])
                else:
                    rejected[pending[pos]] = _row_reason(details)
            pending = again
        if pending:
            raise SinkError(
                f"insertAll into {table_id}: {len(pending)} rows still refused as transient after "
                f"{ROW_RETRY_ROUNDS} attempts",
                retryable=True,
                reason="server",
            )
        return rejected

    def close(self) -> None:
        with self._writers_lock:
            writers, self._writers = list(self._writers.values()), {}
        for writer in writers:
            writer.close()
        self.client.close()  # type: ignore[no-untyped-call]


def _as_nullable(field: bigquery.SchemaField) -> bigquery.SchemaField:
    from google.cloud import bigquery

    return bigquery.SchemaField(field.name, field.field_type, mode="NULLABLE", description=field.description)


def _row_reason(details: list[dict[str, Any]]) -> str:
    """``invalid: <message> (at <location>)`` from insertAll's per-row errors, first non-``stopped`` one."""
    real = [e for e in details if e.get("reason") != "stopped"] or details
    if not real:
        return "invalid: refused without a reason"
    e = real[0]
    text = f"{e.get('reason') or 'invalid'}: {e.get('message') or 'no message'}"
    if e.get("location"):
        text += f" (at {e['location']})"
    return text

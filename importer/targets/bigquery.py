"""BigQuery target: imported tables in ``sink.bigquery.dataset``, next to the event tables.

Writes: each batch is one NDJSON load job (atomic: all rows or none; decimals
travel as exact strings). Its job id is derived from the run and the batch
number, so a client-library retry of the same call cannot load it twice.

State: ``_oceanus_import_state`` is append-only here: one row per update,
written by a DML ``INSERT`` after the load job finished; the newest row per
import is the state. BigQuery has no transaction spanning a load job and an
insert, so a crash between the two leaves the watermark one batch behind: the
next run loads that batch again (with a later ``_imported_at``), and the
``_latest`` view, which keeps the newest version per key, shows each key once.
The table may hold those few rows twice; ``_latest`` never does.

Deletes by key diff: the source's keys are loaded into a scratch table
``_oceanus_keys_<name>`` (WRITE_TRUNCATE), and one INSERT ... SELECT appends a
tombstone for every key of the view the scratch table lacks.

Quota: BigQuery allows 1,500 load jobs per table per day: a run costs one per
``batch_rows`` rows, so give large tables a large ``batch_rows``.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
from collections.abc import Iterator, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import msgspec
import pyarrow as pa

from importer.columns import DELETED, IMPORTED_AT, Column
from importer.targets.base import LATEST_SUFFIX, STATE_TABLE, ImportState
from oceanus.config import Config, ImportConfig
from oceanus.errors import SinkError, SourceError

if TYPE_CHECKING:
    from google.cloud import bigquery

_TYPES: dict[str, str] = {
    "bool": "BOOL",
    "int": "INT64",
    "float": "FLOAT64",
    "string": "STRING",
    "date": "DATE",
    "timestamp": "DATETIME",
    "timestamptz": "TIMESTAMP",
    "json": "JSON",
    "binary": "BYTES",
}
#: NUMERIC: 29 digits before the point, 9 after; BIGNUMERIC: 38 and 38.
NUMERIC_MAX = (29, 9)
BIGNUMERIC_MAX = (38, 38)


def bigquery_type(col: Column) -> tuple[str, int | None, int | None]:
    """(type, precision, scale) of the column; a DECIMAL keeps its precision and scale."""
    if col.kind != "decimal":
        return _TYPES[col.kind], None, None
    whole = col.precision - col.scale
    if whole <= NUMERIC_MAX[0] and col.scale <= NUMERIC_MAX[1]:
        return "NUMERIC", col.precision, col.scale
    if whole <= BIGNUMERIC_MAX[0] and col.scale <= BIGNUMERIC_MAX[1]:
        return "BIGNUMERIC", col.precision, col.scale
    raise SourceError(
        f"column `{col.name}` is {col.source_type}({col.precision},{col.scale}); BigQuery's BIGNUMERIC holds at most "
        f"{BIGNUMERIC_MAX[0]} digits before the point and {BIGNUMERIC_MAX[1]} after"
    )


def _json_value(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return value


def ndjson(batch: pa.Table) -> bytes:
    """NDJSON of an Arrow batch: decimals as strings (exact), times in ISO form, bytes in base64."""
    enc = msgspec.json.Encoder()
    names = batch.column_names
    columns = [batch.column(i).to_pylist() for i in range(batch.num_columns)]
    out = bytearray()
    for i in range(batch.num_rows):
        row = {name: _json_value(col[i]) for name, col in zip(names, columns, strict=True)}
        out += enc.encode(row)
        out += b"\n"
    return bytes(out)


def latest_view_sql(imp: ImportConfig, columns: Sequence[Column], table_id: str, state_id: str) -> str:
    cols = ", ".join(f"`{c.name}`" for c in columns)
    if imp.mode == "full":
        return (
            f"SELECT {cols}, {IMPORTED_AT} FROM `{table_id}` WHERE {IMPORTED_AT} = (SELECT full_loaded_at FROM "
            f"`{state_id}` WHERE name = '{imp.name}' ORDER BY updated_at DESC LIMIT 1) AND NOT {DELETED}"
        )
    return (
        f"SELECT {cols}, {IMPORTED_AT} FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY `{imp.primary_key}` "
        f"ORDER BY {IMPORTED_AT} DESC, {DELETED} DESC) AS _oceanus_rn FROM `{table_id}`) "
        f"WHERE _oceanus_rn = 1 AND NOT {DELETED}"
    )


class BigQueryTarget:
    name = "bigquery"

    def __init__(self, cfg: Config, client: bigquery.Client | None = None) -> None:
        from google.cloud import bigquery

        from flusher.sinks.bigquery import make_client

        self.settings = cfg.sink.bigquery
        self.client = client if client is not None else make_client(cfg)
        self.dataset_id = f"{self.client.project}.{self.settings.dataset}"
        self.state_id = f"{self.dataset_id}.{STATE_TABLE}"
        self.timeout_s = self.settings.timeout_s
        self.retry: Any = (
            bigquery.DEFAULT_RETRY.with_deadline(self.settings.retry_deadline_s)
            if self.settings.retry_deadline_s > 0
            else None
        )
        self._run_stamp = ""

    def _table_id(self, name: str) -> str:
        return f"{self.dataset_id}.{name}"

    def _call(self, what: str, fn: Any, *args: Any, **kw: Any) -> Any:
        try:
            return fn(*args, **kw)
        except (SinkError, SourceError):
            raise
        except Exception as exc:  # noqa: BLE001 - every client failure is classified, none passes unnamed
            from flusher.sinks.bigquery.errors import classify

            raise classify(exc, what) from None

    def _query(self, sql: str, params: Sequence[tuple[str, str, Any]] = ()) -> list[Any]:
        from google.cloud import bigquery

        job_config = bigquery.QueryJobConfig(
            query_parameters=[bigquery.ScalarQueryParameter(n, t, v) for n, t, v in params]
        )

        def run() -> list[Any]:
            job = self.client.query(
                sql, job_config=job_config, retry=self.retry, timeout=self.timeout_s, location=self.settings.location
            )
            return list(job.result(timeout=self.timeout_s, retry=self.retry))

        result: list[Any] = self._call("query", run)
        return result

    def prepare(self, imp: ImportConfig, columns: Sequence[Column]) -> None:
        from google.api_core import exceptions as gexc
        from google.cloud import bigquery

        def ensure() -> None:
            try:
                self.client.get_dataset(self.dataset_id, retry=self.retry, timeout=self.timeout_s)
            except gexc.NotFound:
                dataset = bigquery.Dataset(self.dataset_id)
                dataset.location = self.settings.location
                self.client.create_dataset(dataset, exists_ok=True, retry=self.retry, timeout=self.timeout_s)
            state_schema = [
                bigquery.SchemaField("name", "STRING"),
                bigquery.SchemaField("watermark", "STRING"),
                bigquery.SchemaField("full_loaded_at", "TIMESTAMP"),
                bigquery.SchemaField("key_diff_at", "TIMESTAMP"),
                bigquery.SchemaField("last_run_at", "TIMESTAMP"),
                bigquery.SchemaField("updated_at", "TIMESTAMP"),
            ]
            self.client.create_table(
                bigquery.Table(self.state_id, schema=state_schema),
                exists_ok=True,
                retry=self.retry,
                timeout=self.timeout_s,
            )
            wanted = [_field(col.name, *bigquery_type(col)) for col in columns]
            wanted += [bigquery.SchemaField(IMPORTED_AT, "TIMESTAMP"), bigquery.SchemaField(DELETED, "BOOL")]
            table_id = self._table_id(imp.name)
            try:
                table = self.client.get_table(table_id, retry=self.retry, timeout=self.timeout_s)
            except gexc.NotFound:
                self.client.create_table(
                    bigquery.Table(table_id, schema=wanted), exists_ok=True, retry=self.retry, timeout=self.timeout_s
                )
            else:
                have = {f.name: f.field_type for f in table.schema}
                added = [f for f in wanted if f.name not in have]
                for f in wanted:
                    if f.name in have and _canon(have[f.name]) != _canon(f.field_type):
                        raise SourceError(
                            f"column `{f.name}`: the table {table_id} stores {have[f.name]}, the source now has "
                            f"{f.field_type}; rename the import (a new table) or migrate the column by hand"
                        )
                if added:
                    table.schema = [*table.schema, *added]
                    self.client.update_table(table, ["schema"], retry=self.retry, timeout=self.timeout_s)
            view_id = table_id + LATEST_SUFFIX
            view = bigquery.Table(view_id)
            view.view_query = latest_view_sql(imp, columns, table_id, self.state_id)
            try:
                self.client.get_table(view_id, retry=self.retry, timeout=self.timeout_s)
                self.client.update_table(view, ["view_query"], retry=self.retry, timeout=self.timeout_s)
            except gexc.NotFound:
                self.client.create_table(view, exists_ok=True, retry=self.retry, timeout=self.timeout_s)

        self._call(f"prepare {imp.name}", ensure)
        self._run_stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%f")

    def load_state(self, imp: ImportConfig) -> ImportState:
        rows = self._query(
            f"SELECT watermark, full_loaded_at, key_diff_at, last_run_at FROM `{self.state_id}` "
            "WHERE name = @name ORDER BY updated_at DESC LIMIT 1",
            [("name", "STRING", imp.name)],
        )
        if not rows:
            return ImportState(name=imp.name)
        r = rows[0]
        return ImportState(name=imp.name, watermark=r[0], full_loaded_at=r[1], key_diff_at=r[2], last_run_at=r[3])

    def save_state(self, imp: ImportConfig, state: ImportState) -> None:
        self._query(
            f"INSERT INTO `{self.state_id}` (name, watermark, full_loaded_at, key_diff_at, last_run_at, updated_at) "
            "VALUES (@name, @watermark, @full_loaded_at, @key_diff_at, @last_run_at, CURRENT_TIMESTAMP())",
            [
                ("name", "STRING", state.name),
                ("watermark", "STRING", state.watermark),
                ("full_loaded_at", "TIMESTAMP", state.full_loaded_at),
                ("key_diff_at", "TIMESTAMP", state.key_diff_at),
                ("last_run_at", "TIMESTAMP", state.last_run_at),
            ],
        )

    def _load(self, table_id: str, data: bytes, job_id: str, truncate: bool = False) -> None:
        from google.cloud import bigquery

        job_config = bigquery.LoadJobConfig(
            source_format=bigquery.SourceFormat.NEWLINE_DELIMITED_JSON,
            write_disposition=(
                bigquery.WriteDisposition.WRITE_TRUNCATE if truncate else bigquery.WriteDisposition.WRITE_APPEND
            ),
            create_disposition=bigquery.CreateDisposition.CREATE_NEVER,
        )

        def run() -> None:
            from google.api_core import exceptions as gexc

            job: Any
            try:
                job = self.client.load_table_from_file(
                    io.BytesIO(data),
                    table_id,
                    job_id=job_id,
                    job_config=job_config,
                    location=self.settings.location,
                    timeout=self.timeout_s,
                )
            except gexc.Conflict:
                # The same job id ran already (a retried call): wait for that job instead.
                job = self.client.get_job(job_id, location=self.settings.location, retry=self.retry)
            job.result(timeout=self.timeout_s, retry=self.retry)

        self._call(f"load into {table_id}", run)

    def write(self, imp: ImportConfig, batch: pa.Table, state: ImportState, batch_no: int) -> None:
        job_id = f"oceanus_import_{imp.name}_{self._run_stamp}_{batch_no}"
        self._load(self._table_id(imp.name), ndjson(batch), job_id)
        # Only after the load job committed: the watermark never runs ahead of the rows.
        self.save_state(imp, state)

    def tombstone_missing(
        self,
        imp: ImportConfig,
        key_column: Column,
        keys: Iterator[list[Any]],
        imported_at: dt.datetime,
        state: ImportState,
    ) -> int:
        from google.cloud import bigquery

        scratch_id = self._table_id(f"_oceanus_keys_{imp.name}")
        self._call(
            "create the key table",
            self.client.create_table,
            bigquery.Table(scratch_id, schema=[_field("k", *bigquery_type(key_column))]),
            exists_ok=True,
            retry=self.retry,
            timeout=self.timeout_s,
        )
        conv = key_column.convert
        enc = msgspec.json.Encoder()
        first = True
        for n, batch in enumerate(keys):
            data = b"".join(
                enc.encode({"k": _json_value(v if conv is None or v is None else conv(v))}) + b"\n" for v in batch
            )
            self._load(scratch_id, data, f"oceanus_keys_{imp.name}_{self._run_stamp}_{n}", truncate=first)
            first = False
        if first:  # an empty source: every key goes
            self._query(f"DELETE FROM `{scratch_id}` WHERE TRUE")
        pk = f"`{imp.primary_key}`"
        before = self._count(imp)
        self._query(
            f"INSERT INTO `{self._table_id(imp.name)}` ({pk}, {IMPORTED_AT}, {DELETED}) "
            f"SELECT l.{pk}, @at, TRUE FROM `{self._table_id(imp.name)}{LATEST_SUFFIX}` l "
            f"WHERE l.{pk} NOT IN (SELECT k FROM `{scratch_id}`)",
            [("at", "TIMESTAMP", imported_at)],
        )
        written = self._count(imp) - before
        self.save_state(imp, state)
        return written

    def _count(self, imp: ImportConfig) -> int:
        rows = self._query(f"SELECT COUNT(*) FROM `{self._table_id(imp.name)}` WHERE {DELETED}")
        return int(rows[0][0])

    def close(self) -> None:
        self.client.close()  # type: ignore[no-untyped-call]


def _field(name: str, type_: str, precision: int | None, scale: int | None) -> bigquery.SchemaField:
    from google.cloud import bigquery

    if precision is None or scale is None:
        return bigquery.SchemaField(name, type_)
    return bigquery.SchemaField(name, type_, precision=precision, scale=scale)


def _canon(type_: str) -> str:
    return {"INTEGER": "INT64", "FLOAT": "FLOAT64", "BOOLEAN": "BOOL"}.get(type_.upper(), type_.upper())

"""How a stream becomes a BigQuery table, and a frame row an insertAll / NDJSON row.

The table: server columns, the stream's fields, ``extra`` (all derived from the
stream's config), DAY-partitioned on ``received_at``, with a ``<stream>_dedup``
view beside it that shows one row per ``event_id``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from flusher.sinks.bigquery.errors import classify
from flusher.sinks.common import REQUIRED_COLUMNS, SERVER_COLUMNS, LegacyColumn, event_id_text, legacy_columns
from oceanus.config import EXTRA_COLUMN, FieldType, StreamConfig
from oceanus.errors import ConfigError, SinkError

if TYPE_CHECKING:
    from google.cloud import bigquery

    from flusher.sinks.bigquery import BigQuerySink

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
SERVER_SCHEMA: tuple[tuple[str, str, str], ...] = tuple(
    (name, BQ_TYPES[ftype], "REQUIRED" if name in REQUIRED_COLUMNS else "NULLABLE") for name, ftype in SERVER_COLUMNS
)
EXTRA_SCHEMA = (EXTRA_COLUMN, "JSON", "NULLABLE")

#: The API reports legacy SQL names for some types; compare in one vocabulary.
_TYPE_ALIASES = {"INTEGER": "INT64", "FLOAT": "FLOAT64", "BOOLEAN": "BOOL"}

PARTITION_FIELD = "received_at"

_EPOCH = dt.datetime(1970, 1, 1)


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


def legacy_view_sql(stream: StreamConfig, dedup_view_id: str) -> str:
    """``streams.<s>.legacy_view``: the stream in the 2016 table layout, every column a STRING,
    read from the dedup view (one row per event)."""
    cols = ",\n  ".join(f"{_legacy_expr(c)} AS `{c.name}`" for c in legacy_columns(stream))
    return f"SELECT\n  {cols}\nFROM `{dedup_view_id}`"


def _legacy_expr(col: LegacyColumn) -> str:
    if col.from_extra:
        return f"JSON_VALUE(extra, '$.{col.source}')"
    src = f"`{col.source}`"
    if col.ftype == "timestamp":
        # Python's str(datetime): the fraction only when it is not zero.
        return (
            f"IF(MOD(UNIX_MICROS({src}), 1000000) = 0, FORMAT_TIMESTAMP('%Y-%m-%d %H:%M:%S', {src}), "
            f"FORMAT_TIMESTAMP('%Y-%m-%d %H:%M:%E6S', {src}))"
        )
    if col.ftype == "json":
        return f"TO_JSON_STRING({src})"
    return src if col.ftype == "string" else f"CAST({src} AS STRING)"


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


def _column_converter(column: str, stream: StreamConfig) -> Callable[[Any], Any] | None:
    """How one column's frame value becomes its insertAll JSON value; None: as is."""
    if column == "event_id":
        return event_id_text
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


# --------------------------------------------------------------------------- the table manager


class Tables:
    """Creates and migrates a sink's tables and dedup views (``oceanus tables sync``, flusher start)."""

    def __init__(self, sink: BigQuerySink) -> None:
        self.sink = sink
        self.client = sink.client
        # Table sync runs once, before any worker: a bounded library retry rides out a blip.
        self.retry = sink.retry
        self.timeout_s = sink.timeout_s

    def table_id(self, stream: StreamConfig | str) -> str:
        return self.sink.table_id(stream)

    def dedup_view_id(self, stream: StreamConfig | str) -> str:
        return self.sink.dedup_view_id(stream)

    def ensure_tables(self, streams: Sequence[StreamConfig]) -> list[str]:
        from google.api_core import exceptions as gexc
        from google.cloud import bigquery

        changes: list[str] = []
        dataset = bigquery.Dataset(self.sink.dataset_id)
        dataset.location = self.sink.settings.location
        try:
            try:
                self.client.get_dataset(self.sink.dataset_id, retry=self.retry, timeout=self.timeout_s)
            except gexc.NotFound:
                self.client.create_dataset(dataset, exists_ok=True, retry=self.retry, timeout=self.timeout_s)
                changes.append(f"created dataset {self.sink.dataset_id}")
            for stream in streams:
                changes.extend(self._ensure_table(stream))
                changes.extend(self._ensure_dedup_view(stream))
                changes.extend(self._ensure_legacy_view(stream))
        except (ConfigError, SinkError):
            raise
        except Exception as exc:
            raise classify(exc, "table sync") from exc
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
        view_id = self.dedup_view_id(stream)
        sql = dedup_view_sql(self.table_id(stream))
        description = f"{stream.name} with replayed rows removed: one row per event_id"
        return self._ensure_view(stream, view_id, sql, description)

    def _ensure_legacy_view(self, stream: StreamConfig) -> list[str]:
        if stream.legacy_view is None:
            return []
        view_id = f"{self.sink.dataset_id}.{stream.legacy_view}"
        sql = legacy_view_sql(stream, self.dedup_view_id(stream))
        description = f"{stream.name} in the 2016 oceanus's layout (docs/MIGRATION.md)"
        return self._ensure_view(stream, view_id, sql, description)

    def _ensure_view(self, stream: StreamConfig, view_id: str, sql: str, description: str) -> list[str]:
        from google.api_core import exceptions as gexc
        from google.cloud import bigquery

        try:
            view = self.client.get_table(view_id, retry=self.retry, timeout=self.timeout_s)
        except gexc.NotFound:
            view = bigquery.Table(view_id)
            view.view_query = sql
            view.description = description
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


def _as_nullable(field: bigquery.SchemaField) -> bigquery.SchemaField:
    from google.cloud import bigquery

    return bigquery.SchemaField(field.name, field.field_type, mode="NULLABLE", description=field.description)

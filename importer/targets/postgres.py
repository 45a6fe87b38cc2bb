"""PostgreSQL target: the imported tables in ``sink.postgres.schema``, beside the event tables.

Each batch is one transaction, as on DuckDB: a binary ``COPY`` of the rows into
the import's table and the upsert of its row in ``_oceanus_import_state`` (the
watermark) commit together, so a process killed at any point leaves a watermark
that matches the rows exactly; the server rolls the open transaction back and
the next run goes on from the last committed batch, no duplicate, no gap.

Types (the DuckDB target's, in PostgreSQL's spelling): DECIMAL(p,s) →
``numeric(p,s)``, TIMESTAMP → ``timestamp without time zone``, with time zone →
``timestamptz``, JSON → ``jsonb`` (as the event tables; the text is parsed, so
key order and spacing are the server's), BLOB → ``bytea``. ``_imported_at`` and
the state's times are UTC without a zone, as in DuckDB, so the ``_latest`` view's
SQL is the same. PostgreSQL cannot store a NUL character in text nor ``\\u0000``
in jsonb: such a value fails the batch, naming the import (the source must not
send it, or the column must be left out).

Connections are the PostgreSQL sink's (:func:`flusher.sinks.postgres.connect`:
same URL, schema, timeouts; ``application_name`` ``oceanus-import/<schema>``),
failures its classifier's. Unlike DuckDB, another process may write the
database meanwhile: ``oceanus import serve`` runs beside the flusher.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
import pyarrow as pa
from psycopg.types.json import Jsonb

from flusher.sinks.postgres import MAX_IDENTIFIER, classify, connect
from flusher.sinks.sql import database_url
from importer.columns import DELETED, IMPORTED_AT, Column
from importer.targets.base import LATEST_SUFFIX, STATE_TABLE, ImportState
from importer.targets.sql import batch_rows, check_name_length, latest_view_sql, naive_utc, state_from_row, state_row
from oceanus.config import Config, ImportConfig
from oceanus.errors import SinkError, SourceError

#: Column type of each kind, as ``format_type`` spells it (how an existing column is compared).
PG_TYPES: dict[str, str] = {
    "bool": "boolean",
    "int": "bigint",
    "float": "double precision",
    "string": "text",
    "date": "date",
    "timestamp": "timestamp without time zone",
    "timestamptz": "timestamp with time zone",
    "json": "jsonb",
    "binary": "bytea",
}
#: The type binary COPY sends each kind as.
COPY_TYPES: dict[str, str] = {**PG_TYPES, "decimal": "numeric"}


def pg_type(col: Column) -> str:
    if col.kind == "decimal":
        # numeric holds up to 1000 digits: every source decimal (76 at most, importer.columns) fits exactly.
        return f"numeric({col.precision},{col.scale})"
    return PG_TYPES[col.kind]


def _as_jsonb(text: str) -> Jsonb:
    # The source's JSON text goes as it is: Jsonb's own dumps would encode the str as a JSON string.
    return Jsonb(text, dumps=_same)


def _same(text: Any) -> str:
    return str(text)


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class PostgresTarget:
    name = "postgres"

    def __init__(self, cfg: Config) -> None:
        self.settings = cfg.sink.postgres
        self.schema = self.settings.schema
        url = database_url(self.settings.url_env, "sink.postgres.url_env")
        self.conn: psycopg.Connection[Any] = connect(
            url, self.settings, round(self.settings.statement_timeout_s * 1000), application_name="oceanus-import"
        )
        self._prefix = _q(self.schema) + "."
        #: Each prepared import's column kinds (JSON and text are both strings in Arrow).
        self._kinds: dict[str, dict[str, str]] = {}
        self.state_table = self._prefix + _q(STATE_TABLE)
        try:
            with self.conn.transaction():
                # Only when missing: CREATE SCHEMA wants the database's CREATE privilege even with IF NOT EXISTS.
                if (
                    self.conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (self.schema,)).fetchone()
                    is None
                ):
                    self.conn.execute(f"CREATE SCHEMA IF NOT EXISTS {_q(self.schema)}".encode())
                self.conn.execute(
                    (
                        f"CREATE TABLE IF NOT EXISTS {self.state_table} (name text PRIMARY KEY, watermark text, "
                        "full_loaded_at timestamp, key_diff_at timestamp, last_run_at timestamp, updated_at timestamp)"
                    ).encode()
                )
        except psycopg.Error as exc:
            self.close()
            raise classify(exc, f"cannot create {self.schema}.{STATE_TABLE}") from None

    def _table(self, name: str) -> str:
        return self._prefix + _q(name)

    def prepare(self, imp: ImportConfig, columns: Sequence[Column]) -> None:
        check_name_length(imp, MAX_IDENTIFIER, "PostgreSQL")
        self._kinds[imp.name] = {c.name: str(c.kind) for c in columns} | {IMPORTED_AT: "timestamp", DELETED: "bool"}
        wanted = [(c.name, pg_type(c)) for c in columns] + [
            (IMPORTED_AT, "timestamp without time zone"),
            (DELETED, "boolean"),
        ]
        table = self._table(imp.name)
        try:
            with self.conn.transaction():
                existing = {
                    str(n): str(t)
                    for n, t in self.conn.execute(
                        "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
                        "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace s ON s.oid = c.relnamespace "
                        "WHERE s.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped",
                        (self.schema, imp.name),
                    ).fetchall()
                }
                if not existing:
                    body = ", ".join(f"{_q(n)} {t}" for n, t in wanted)
                    self.conn.execute(f"CREATE TABLE IF NOT EXISTS {table} ({body})".encode())
                for name, type_ in wanted:
                    have = existing.get(name)
                    if existing and have is None:
                        # A column newly allowed: rows imported before it carry NULL there.
                        self.conn.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {_q(name)} {type_}".encode())
                    elif have is not None and have != type_:
                        raise SourceError(
                            f"column `{name}`: the table {self.schema}.{imp.name} stores {have}, the source now has "
                            f"{type_}; rename the import (a new table) or migrate the column by hand"
                        )
                self._replace_view(imp, columns)
        except psycopg.Error as exc:
            raise classify(exc, f"cannot create or migrate {self.schema}.{imp.name}") from None

    def _replace_view(self, imp: ImportConfig, columns: Sequence[Column]) -> None:
        view = self._table(imp.name + LATEST_SUFFIX)
        body = latest_view_sql(imp, columns, _q, self._prefix)
        try:
            with self.conn.transaction():
                self.conn.execute(f"CREATE OR REPLACE VIEW {view} AS {body}".encode())
        except psycopg.errors.InvalidTableDefinition:
            # CREATE OR REPLACE may only add columns at the end; a column left out of `columns`
            # (or a new order) needs the view made afresh.
            self.conn.execute(f"DROP VIEW {view}".encode())
            self.conn.execute(f"CREATE VIEW {view} AS {body}".encode())

    def load_state(self, imp: ImportConfig) -> ImportState:
        try:
            row = self.conn.execute(
                f"SELECT watermark, full_loaded_at, key_diff_at, last_run_at FROM {self.state_table} "
                "WHERE name = %s".encode(),
                (imp.name,),
            ).fetchone()
        except psycopg.Error as exc:
            raise classify(exc, f"cannot read {STATE_TABLE}") from None
        return state_from_row(imp.name, row)

    def _put_state(self, state: ImportState) -> None:
        self.conn.execute(
            f"INSERT INTO {self.state_table} VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (name) DO UPDATE SET "
            "watermark = EXCLUDED.watermark, full_loaded_at = EXCLUDED.full_loaded_at, "
            "key_diff_at = EXCLUDED.key_diff_at, last_run_at = EXCLUDED.last_run_at, "
            "updated_at = EXCLUDED.updated_at".encode(),
            state_row(state),
        )

    def _copy(self, table: str, names: Sequence[str], types: Sequence[str], rows: Iterator[Sequence[Any]]) -> None:
        cols = ", ".join(_q(n) for n in names)
        with self.conn.cursor() as cur, cur.copy(f"COPY {table} ({cols}) FROM STDIN (FORMAT BINARY)".encode()) as copy:
            copy.set_types(list(types))
            for row in rows:
                copy.write_row(row)

    def write(self, imp: ImportConfig, batch: pa.Table, state: ImportState, batch_no: int) -> None:
        kinds = self._kinds[imp.name]
        names = batch.column_names
        json_at = [i for i, n in enumerate(names) if kinds[n] == "json"]
        rows = batch_rows(batch)
        if json_at:
            rows = [_wrap_json(r, json_at) for r in rows]
        try:
            with self.conn.transaction():
                self._copy(self._table(imp.name), names, [COPY_TYPES[kinds[n]] for n in names], iter(rows))
                self._put_state(state)
        except (psycopg.Error, ValueError) as exc:
            raise self._refused(imp, exc, "the batch") from None

    def _refused(self, imp: ImportConfig, exc: Exception, what: str) -> SinkError:
        if isinstance(exc, psycopg.Error):
            return classify(exc, f"{self.schema}.{imp.name}: PostgreSQL refused {what}")
        # psycopg's dumpers refuse a NUL in text before the server sees it.
        return SinkError(f"postgres: {self.schema}.{imp.name}: cannot send {what}: {exc}", retryable=False)

    def save_state(self, imp: ImportConfig, state: ImportState) -> None:
        try:
            self._put_state(state)
        except psycopg.Error as exc:
            raise classify(exc, f"cannot store the state of {imp.name}") from None

    def tombstone_missing(
        self,
        imp: ImportConfig,
        key_column: Column,
        keys: Iterator[list[Any]],
        imported_at: dt.datetime,
        state: ImportState,
    ) -> int:
        conv = key_column.convert
        pk = _q(imp.primary_key)
        try:
            with self.conn.transaction():
                self.conn.execute(
                    f"CREATE TEMPORARY TABLE _oceanus_keys (k {pg_type(key_column)}) ON COMMIT DROP".encode()
                )
                for batch in keys:
                    values = batch if conv is None else [None if v is None else conv(v) for v in batch]
                    self._copy("_oceanus_keys", ["k"], [COPY_TYPES[key_column.kind]], ((v,) for v in values))
                self.conn.execute(b"ANALYZE _oceanus_keys")
                cur = self.conn.execute(
                    f"INSERT INTO {self._table(imp.name)} ({pk}, {IMPORTED_AT}, {DELETED}) "
                    f"SELECT l.{pk}, %s, true FROM {self._table(imp.name + LATEST_SUFFIX)} l "
                    f"WHERE NOT EXISTS (SELECT 1 FROM _oceanus_keys k WHERE k.k = l.{pk})".encode(),
                    (naive_utc(imported_at),),
                )
                written = cur.rowcount
                self._put_state(state)
        except (psycopg.Error, ValueError) as exc:
            raise self._refused(imp, exc, "the tombstones") from None
        return max(0, written)

    def query(self, sql_text: str) -> list[tuple[Any, ...]]:
        """Read back (tests, the benchmark)."""
        return list(self.conn.execute(sql_text.encode()).fetchall())

    def close(self) -> None:
        with contextlib.suppress(psycopg.Error):
            self.conn.close()


def _wrap_json(row: tuple[Any, ...], at: Sequence[int]) -> tuple[Any, ...]:
    out = list(row)
    for i in at:
        if out[i] is not None:
            out[i] = _as_jsonb(out[i])
    return tuple(out)

"""PostgreSQL source: psycopg 3, a named (server-side) cursor per read.

The SELECT names the allow-listed columns only, so nothing else leaves the
server. A read runs in a read-only REPEATABLE READ transaction: one snapshot for
the whole table, so a row appears at most once per run even while it changes.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.string import TextLoader

from importer.columns import Column, decimal_column, unmappable
from oceanus.errors import SourceError

_SIMPLE: dict[str, str] = {
    "boolean": "bool",
    "smallint": "int",
    "integer": "int",
    "bigint": "int",
    "real": "float",
    "double precision": "float",
    "text": "string",
    "character varying": "string",
    "character": "string",
    "citext": "string",
    "date": "date",
    "timestamp without time zone": "timestamp",
    "timestamp with time zone": "timestamptz",
    "json": "json",
    "jsonb": "json",
}


#: Seconds to wait for the server when the URL sets no ``connect_timeout``.
CONNECT_TIMEOUT_S = 10


def _wrap(exc: psycopg.Error, what: str, secret: str | None = None) -> SourceError:
    # psycopg's messages name the server, user and object; a malformed URL may be
    # quoted back, so its password is masked.
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if secret:
        message = message.replace(secret, "***")
    return SourceError(f"{what}: {message}")


class PostgresSource:
    def __init__(self, url: str) -> None:
        try:
            params = psycopg.conninfo.conninfo_to_dict(url)
        except psycopg.Error:
            raise SourceError("the PostgreSQL source URL is not valid (not shown: it holds a password)") from None
        password = str(params.get("password") or "") or None
        try:
            self.conn = psycopg.connect(
                url,
                autocommit=False,
                application_name="oceanus-import",
                connect_timeout=int(params.get("connect_timeout") or CONNECT_TIMEOUT_S),
            )
        except psycopg.Error as exc:
            raise _wrap(exc, "cannot connect to the PostgreSQL source", password) from None
        # JSON arrives as the text the server sends, not parsed into dicts: the
        # warehouse stores the text as it is.
        for name in ("json", "jsonb"):
            self.conn.adapters.register_loader(name, TextLoader)

    def _split(self, table: str) -> tuple[str | None, str]:
        schema, _, name = table.rpartition(".")
        return (schema or None), name

    def _ident(self, table: str) -> sql.Composable:
        schema, name = self._split(table)
        return sql.Identifier(schema, name) if schema else sql.Identifier(name)

    def describe(self, table: str, columns: Sequence[str]) -> list[Column]:
        schema, name = self._split(table)
        try:
            with self.conn.cursor() as cur:
                cur.execute(
                    "SELECT column_name, data_type, udt_name, numeric_precision, numeric_scale, is_nullable"
                    " FROM information_schema.columns"
                    " WHERE table_schema = COALESCE(%s, current_schema()) AND table_name = %s"
                    " AND column_name = ANY(%s)",
                    (schema, name, list(columns)),
                )
                found = {r[0]: r for r in cur.fetchall()}
            self.conn.rollback()
        except psycopg.Error as exc:
            self.conn.rollback()
            raise _wrap(exc, f"{table}: cannot read the column types") from None
        out: list[Column] = []
        for col in columns:
            row = found.get(col)
            if row is None:
                raise SourceError(f"column `{col}` is not a column of {table} (or the table does not exist)")
            _, data_type, udt, precision, scale, nullable = row
            out.append(_column(col, data_type, udt, precision, scale, nullable == "YES"))
        return out

    def rows(
        self, table: str, columns: Sequence[str], order: Sequence[str], after: Sequence[Any] | None, batch_rows: int
    ) -> Iterator[list[tuple[Any, ...]]]:
        select = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
        keys = sql.SQL(", ").join(sql.Identifier(c) for c in order)
        query = sql.SQL("SELECT {} FROM {}").format(select, self._ident(table))
        params: list[Any] = []
        if after is not None:
            # A row comparison: exact keyset pagination that an index on (cursor, key) serves.
            marks = sql.SQL(", ").join(sql.Placeholder() * len(order))
            query += sql.SQL(" WHERE ({}) > ({})").format(keys, marks)
            params.extend(after)
        if order:
            query += sql.SQL(" ORDER BY {}").format(keys)
        yield from self._stream(query, params, batch_rows, table)

    def keys(self, table: str, key: str, batch_rows: int) -> Iterator[list[Any]]:
        query = sql.SQL("SELECT {} FROM {}").format(sql.Identifier(key), self._ident(table))
        for batch in self._stream(query, [], batch_rows, table):
            yield [r[0] for r in batch]

    def _stream(
        self, query: sql.Composed, params: Sequence[Any], batch_rows: int, table: str
    ) -> Iterator[list[tuple[Any, ...]]]:
        try:
            self.conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            with self.conn.cursor(name=f"oceanus_import_{uuid.uuid4().hex[:12]}") as cur:
                cur.itersize = batch_rows
                cur.execute(query, params)
                while True:
                    batch = cur.fetchmany(batch_rows)
                    if not batch:
                        break
                    yield batch
            self.conn.rollback()
        except psycopg.Error as exc:
            self._rollback_quietly()
            raise _wrap(exc, f"{table}: reading failed") from None

    def _rollback_quietly(self) -> None:
        with contextlib.suppress(psycopg.Error):
            self.conn.rollback()

    def close(self) -> None:
        self._rollback_quietly()
        self.conn.close()


def _column(name: str, data_type: str, udt: str, precision: int | None, scale: int | None, nullable: bool) -> Column:
    if data_type == "numeric":
        return decimal_column(name, precision, scale, "numeric", nullable=nullable)
    kind = _SIMPLE.get(data_type) or _SIMPLE.get(udt)
    if kind is not None:
        return Column(name=name, kind=kind, source_type=data_type, nullable=nullable)  # type: ignore[arg-type]
    if data_type == "uuid":
        return Column(name=name, kind="string", source_type="uuid", nullable=nullable, convert=str)
    if data_type == "bytea":
        return Column(name=name, kind="binary", source_type="bytea", nullable=nullable)
    raise unmappable(name, data_type if data_type != "USER-DEFINED" else udt)

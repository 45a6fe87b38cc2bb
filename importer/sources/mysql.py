"""MySQL/MariaDB source: PyMySQL with an unbuffered ``SSCursor``.

The SELECT names the allow-listed columns only. The session runs in UTC (MySQL
TIMESTAMP columns are UTC instants; DATETIME columns are wall-clock values and
stay naive), and a read is one consistent-snapshot read-only transaction, so a
row appears at most once per run. ``net_write_timeout`` is raised because the
server waits on us while the warehouse commits a batch.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
from collections.abc import Iterator, Sequence
from decimal import Decimal
from typing import Any
from urllib.parse import unquote, urlsplit

import pymysql
import pymysql.cursors

from importer.columns import Column, decimal_column, unmappable
from oceanus.errors import SourceError

#: Seconds the server waits for us to take the next rows of a streamed result.
NET_WRITE_TIMEOUT_S = 3600
#: Seconds to wait for the server to answer the connection.
CONNECT_TIMEOUT_S = 10

_SIMPLE: dict[str, str] = {
    "tinyint": "int",
    "smallint": "int",
    "mediumint": "int",
    "int": "int",
    "bigint": "int",
    "float": "float",
    "double": "float",
    "char": "string",
    "varchar": "string",
    "tinytext": "string",
    "text": "string",
    "mediumtext": "string",
    "longtext": "string",
    "enum": "string",
    "set": "string",
    "date": "date",
    "datetime": "timestamp",
    "json": "json",
    "binary": "binary",
    "varbinary": "binary",
    "tinyblob": "binary",
    "blob": "binary",
    "mediumblob": "binary",
    "longblob": "binary",
}


def _wrap(exc: pymysql.Error, what: str) -> SourceError:
    args: tuple[Any, ...] = tuple(getattr(exc, "args", ()))
    message = str(args[1]) if len(args) > 1 else str(exc)
    return SourceError(f"{what}: {message}")


def _q(name: str) -> str:
    # Names are plain identifiers (the config's pattern), so quoting needs no escaping.
    return f"`{name}`"


def _utc(value: dt.datetime) -> dt.datetime:
    return value.replace(tzinfo=dt.UTC)


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


class MySQLSource:
    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        database = parts.path.lstrip("/")
        try:
            self.conn = pymysql.connect(
                host=parts.hostname or "127.0.0.1",
                port=parts.port or 3306,
                user=unquote(parts.username or "root"),
                password=unquote(parts.password or ""),
                database=database or None,
                charset="utf8mb4",
                cursorclass=pymysql.cursors.SSCursor,
                autocommit=True,
                init_command=f"SET time_zone = '+00:00', net_write_timeout = {NET_WRITE_TIMEOUT_S}",
                connect_timeout=CONNECT_TIMEOUT_S,
            )
        except pymysql.Error as exc:
            error = _wrap(exc, "cannot connect to the MySQL source")
            if parts.password:
                error = SourceError(str(error).replace(unquote(parts.password), "***"))
            raise error from None

    def _split(self, table: str) -> tuple[str | None, str]:
        schema, _, name = table.rpartition(".")
        return (schema or None), name

    def _ident(self, table: str) -> str:
        schema, name = self._split(table)
        return f"{_q(schema)}.{_q(name)}" if schema else _q(name)

    def _fetchall(self, query: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        with self.conn.cursor(pymysql.cursors.Cursor) as cur:
            cur.execute(query, tuple(params))
            return list(cur.fetchall())

    def describe(self, table: str, columns: Sequence[str]) -> list[Column]:
        schema, name = self._split(table)
        marks = ", ".join(["%s"] * len(columns))
        try:
            rows = self._fetchall(
                "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, NUMERIC_PRECISION, NUMERIC_SCALE, IS_NULLABLE"
                " FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = COALESCE(%s, DATABASE())"
                f" AND TABLE_NAME = %s AND COLUMN_NAME IN ({marks})",
                (schema, name, *columns),
            )
            # MariaDB's JSON is LONGTEXT with a json_valid() check; the check tells it apart.
            checks = self._fetchall(
                "SELECT CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS"
                " WHERE CONSTRAINT_SCHEMA = COALESCE(%s, DATABASE()) AND TABLE_NAME = %s",
                (schema, name),
            )
        except pymysql.Error as exc:
            raise _wrap(exc, f"{table}: cannot read the column types") from None
        json_checked = {m for (clause,) in checks for m in re.findall(r"json_valid\(`?(\w+)`?\)", str(clause))}
        found = {str(r[0]).lower(): r for r in rows}
        out: list[Column] = []
        for col in columns:
            row = found.get(col.lower())
            if row is None:
                raise SourceError(f"column `{col}` is not a column of {table} (or the table does not exist)")
            _, data_type, column_type, precision, scale, nullable = row
            out.append(
                _column(
                    col,
                    str(data_type).lower(),
                    str(column_type).lower(),
                    precision,
                    scale,
                    nullable == "YES",
                    col in json_checked,
                )
            )
        return out

    def rows(
        self, table: str, columns: Sequence[str], order: Sequence[str], after: Sequence[Any] | None, batch_rows: int
    ) -> Iterator[list[tuple[Any, ...]]]:
        query = f"SELECT {', '.join(_q(c) for c in columns)} FROM {self._ident(table)}"
        params: list[Any] = []
        if after is not None:
            # Keyset pagination spelled out: MySQL uses an index on (cursor, key) for
            # this form more reliably than for a row comparison.
            ors: list[str] = []
            for i, col in enumerate(order):
                terms = [f"{_q(order[j])} = %s" for j in range(i)] + [f"{_q(col)} > %s"]
                ors.append("(" + " AND ".join(terms) + ")")
                params.extend([*after[:i], after[i]])
            query += " WHERE " + " OR ".join(ors)
        if order:
            query += " ORDER BY " + ", ".join(_q(c) for c in order)
        yield from self._stream(query, params, batch_rows, table)

    def keys(self, table: str, key: str, batch_rows: int) -> Iterator[list[Any]]:
        query = f"SELECT {_q(key)} FROM {self._ident(table)}"
        for batch in self._stream(query, [], batch_rows, table):
            yield [r[0] for r in batch]

    def _stream(
        self, query: str, params: Sequence[Any], batch_rows: int, table: str
    ) -> Iterator[list[tuple[Any, ...]]]:
        cur = self.conn.cursor(pymysql.cursors.SSCursor)
        try:
            cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
            cur.execute(query, tuple(params))
            while True:
                batch = cur.fetchmany(batch_rows)
                if not batch:
                    break
                yield list(batch)
            cur.execute("COMMIT")
        except pymysql.Error as exc:
            raise _wrap(exc, f"{table}: reading failed") from None
        finally:
            # An unbuffered cursor closed early reads the rest off the wire.
            with contextlib.suppress(pymysql.Error):
                cur.close()

    def close(self) -> None:
        with contextlib.suppress(pymysql.Error):
            self.conn.close()


def _column(
    name: str, data_type: str, column_type: str, precision: Any, scale: Any, nullable: bool, json_checked: bool
) -> Column:
    if data_type == "decimal":
        return decimal_column(
            name,
            int(precision) if precision is not None else None,
            int(scale) if scale is not None else 0,
            column_type,
            nullable=nullable,
        )
    if column_type.startswith("tinyint(1)"):
        # MySQL's BOOLEAN is TINYINT(1).
        return Column(name=name, kind="bool", source_type="boolean", nullable=nullable, convert=bool)
    if data_type == "bigint" and "unsigned" in column_type:
        # Up to 2**64 - 1: past BIGINT, so an exact DECIMAL(20,0).
        return Column(
            name=name,
            kind="decimal",
            precision=20,
            scale=0,
            source_type=column_type,
            nullable=nullable,
            convert=Decimal,
        )
    if data_type == "timestamp":
        return Column(name=name, kind="timestamptz", source_type="timestamp", nullable=nullable, convert=_utc)
    if data_type == "longtext" and json_checked:
        return Column(name=name, kind="json", source_type="json", nullable=nullable, convert=_text)
    kind = _SIMPLE.get(data_type)
    if kind is None:
        raise unmappable(name, column_type)
    convert = _text if kind == "json" else None
    return Column(name=name, kind=kind, source_type=column_type, nullable=nullable, convert=convert)  # type: ignore[arg-type]

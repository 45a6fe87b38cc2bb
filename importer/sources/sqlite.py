"""SQLite as a source: ``sqlite:///absolute/path.db`` (``oceanus demo --shop`` writes one).

A shop with no database server (``make run``): the same import path as
PostgreSQL and MySQL, from a file opened read-only. Types come from the declared
column types (SQLite's affinity names); times are stored as ISO 8601 text and
read back as timestamps. One read transaction per statement is one snapshot.
"""

from __future__ import annotations

import datetime as dt
import re
import sqlite3
from collections.abc import Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

from importer.columns import Column, decimal_column, unmappable
from oceanus.errors import SourceError

#: Declared type (lowercase, without arguments) -> kind.
_SIMPLE: dict[str, str] = {
    "integer": "int",
    "int": "int",
    "bigint": "int",
    "smallint": "int",
    "text": "string",
    "varchar": "string",
    "char": "string",
    "character varying": "string",
    "real": "float",
    "double": "float",
    "double precision": "float",
    "float": "float",
    "boolean": "bool",
    "bool": "bool",
    "date": "date",
    "datetime": "timestamp",
    "timestamp": "timestamp",
    "json": "json",
    "blob": "binary",
}
_DECIMAL = re.compile(r"^(?:decimal|numeric)\s*\(\s*(\d+)\s*(?:,\s*(\d+)\s*)?\)$")


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _timestamp(value: Any) -> dt.datetime:
    return dt.datetime.fromisoformat(str(value))


def _date(value: Any) -> dt.date:
    return dt.date.fromisoformat(str(value))


def _decimal(value: Any) -> Decimal:
    return Decimal(str(value))


class SQLiteSource:
    def __init__(self, url: str) -> None:
        rest = url.split("://", 1)[1]
        if not rest.startswith("/"):
            raise SourceError(f"the SQLite URL must name an absolute path (sqlite:///path/shop.db), not {rest}")
        # sqlite:///abs and SQLAlchemy's sqlite:////abs both name /abs ("//abs" would be read as a URI authority).
        path = Path("/" + rest.lstrip("/"))
        if not path.exists():
            raise SourceError(f"no SQLite database at {path} (oceanus demo --shop writes one)")
        try:
            # Read-only: an import never changes its source.
            self.conn = sqlite3.connect(
                f"{path.as_uri()}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise SourceError(f"cannot open the SQLite source {path}: {exc}") from None

    def describe(self, table: str, columns: Sequence[str]) -> list[Column]:
        try:
            info = self.conn.execute(f"PRAGMA table_info({_ident(table)})").fetchall()
        except sqlite3.Error as exc:
            raise SourceError(f"{table}: cannot read the column types: {exc}") from None
        # An INTEGER PRIMARY KEY is the rowid, never NULL, though table_info says nothing of it.
        found = {str(r[1]): (str(r[2]), not (r[3] or (r[5] and str(r[2]).upper() == "INTEGER"))) for r in info}
        out: list[Column] = []
        for col in columns:
            if col not in found:
                raise SourceError(f"column `{col}` is not a column of {table} (or the table does not exist)")
            declared, nullable = found[col]
            out.append(_column(col, declared, nullable))
        return out

    def rows(
        self, table: str, columns: Sequence[str], order: Sequence[str], after: Sequence[Any] | None, batch_rows: int
    ) -> Iterator[list[tuple[Any, ...]]]:
        query = f"SELECT {', '.join(_ident(c) for c in columns)} FROM {_ident(table)}"
        params: list[Any] = []
        if after is not None:
            keys = ", ".join(_ident(c) for c in order)
            query += f" WHERE ({keys}) > ({', '.join('?' * len(order))})"
            params.extend(v.isoformat(" ") if isinstance(v, dt.datetime) else v for v in after)
        if order:
            query += " ORDER BY " + ", ".join(_ident(c) for c in order)
        yield from self._stream(query, params, batch_rows, table)

    def keys(self, table: str, key: str, batch_rows: int) -> Iterator[list[Any]]:
        for batch in self._stream(f"SELECT {_ident(key)} FROM {_ident(table)}", [], batch_rows, table):
            yield [r[0] for r in batch]

    def _stream(
        self, query: str, params: Sequence[Any], batch_rows: int, table: str
    ) -> Iterator[list[tuple[Any, ...]]]:
        try:
            # One read transaction: one snapshot for the whole statement.
            self.conn.execute("BEGIN")
            try:
                cur = self.conn.execute(query, params)
                while batch := cur.fetchmany(batch_rows):
                    yield batch
            finally:
                self.conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            raise SourceError(f"{table}: reading failed: {exc}") from None

    def close(self) -> None:
        self.conn.close()


def _column(name: str, declared: str, nullable: bool) -> Column:
    text = " ".join(declared.lower().split())
    match = _DECIMAL.match(text)
    if match:
        return decimal_column(
            name, int(match.group(1)), int(match.group(2) or 0), declared, nullable=nullable, convert=_decimal
        )
    kind = _SIMPLE.get(re.sub(r"\s*\(.*\)$", "", text))
    if kind is None:
        raise unmappable(name, declared or "(none declared)")
    convert = {"timestamp": _timestamp, "date": _date, "bool": bool}.get(kind)
    return Column(name=name, kind=kind, source_type=declared, nullable=nullable, convert=convert)  # type: ignore[arg-type]

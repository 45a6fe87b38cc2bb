"""MySQL / MariaDB target: the imported tables in the database of ``sink.mysql.url_env``.

Each batch is one InnoDB transaction, as on DuckDB: the rows (multi-row INSERTs
through PyMySQL's batched ``executemany``, at most ``sink.mysql.max_statement_bytes``
each) and the import's row in ``_oceanus_import_state`` (the watermark) commit
together, so a process killed at any point leaves a watermark that matches the
rows exactly; the server rolls the open transaction back and the next run goes
on from the last committed batch. DDL commits by itself in MySQL, so it happens
only in :meth:`MySQLTarget.prepare`, before any batch; the key diff's scratch
table is TEMPORARY (no implicit commit) and made before its transaction.

Types (the DuckDB target's, in MySQL's spelling): DECIMAL(p,s) → DECIMAL(p,s)
(MySQL's widest: 65 digits, 30 after the point; a wider source column is refused
naming it), TIMESTAMP → DATETIME(6), with time zone → DATETIME(6) holding UTC
(the session runs in UTC, as the event sink's; MySQL's TIMESTAMP would end in
2038), JSON → JSON (MariaDB: LONGTEXT checked by JSON_VALID), text → LONGTEXT,
BLOB → LONGBLOB. A text primary key is compared as binary (``utf8mb4_bin`` /
MariaDB ``utf8mb4_nopad_bin``, MySQL ``utf8mb4_0900_bin``): the ``_latest`` view
must not take ``'A'`` and ``'a'`` for one key. The session is strict
(``STRICT_ALL_TABLES``): a value MySQL cannot hold (a float NaN, a date before
year 1000) fails the batch rather than being stored coerced.

Connections are the MySQL sink's (:func:`flusher.sinks.mysql.connect`: URL,
session settings, timeouts), failures its classifier's.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow as pa
import pymysql

from flusher.sinks.mysql import MAX_IDENTIFIER, classify, connect, connect_params
from flusher.sinks.sql import database_url
from importer.columns import DELETED, IMPORTED_AT, Column
from importer.targets.base import LATEST_SUFFIX, STATE_TABLE, ImportState
from importer.targets.sql import batch_rows, check_name_length, latest_view_sql, naive_utc, state_from_row, state_row
from oceanus.config import Config, ImportConfig
from oceanus.errors import SinkError, SourceError

_TYPES: dict[str, str] = {
    "bool": "BOOLEAN",
    "int": "BIGINT",
    "float": "DOUBLE",
    "string": "LONGTEXT",
    "date": "DATE",
    "timestamp": "DATETIME(6)",
    "timestamptz": "DATETIME(6)",
    "json": "JSON",
    "binary": "LONGBLOB",
}
#: information_schema's DATA_TYPE of each (MariaDB's JSON is LONGTEXT with a JSON_VALID check).
_DATA_TYPES: dict[str, frozenset[str]] = {
    "bool": frozenset({"tinyint"}),
    "int": frozenset({"bigint"}),
    "float": frozenset({"double"}),
    "string": frozenset({"longtext"}),
    "date": frozenset({"date"}),
    "timestamp": frozenset({"datetime"}),
    "timestamptz": frozenset({"datetime"}),
    "json": frozenset({"json", "longtext"}),
    "binary": frozenset({"longblob"}),
    "decimal": frozenset({"decimal"}),
}
#: MySQL's widest DECIMAL: 65 digits, at most 30 after the point.
MAX_DECIMAL_PRECISION, MAX_DECIMAL_SCALE = 65, 30
#: Leading characters of a text key the scratch table of a key diff indexes (InnoDB indexes no whole LONGTEXT).
KEY_PREFIX_CHARS = 255


def mysql_type(col: Column) -> str:
    if col.kind == "decimal":
        if col.precision > MAX_DECIMAL_PRECISION or col.scale > MAX_DECIMAL_SCALE:
            raise SourceError(
                f"column `{col.name}` is {col.source_type}({col.precision},{col.scale}); MySQL's DECIMAL holds at "
                f"most {MAX_DECIMAL_PRECISION} digits, {MAX_DECIMAL_SCALE} after the point"
            )
        return f"DECIMAL({col.precision},{col.scale})"
    return _TYPES[col.kind]


def _q(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


class MySQLTarget:
    name = "mysql"

    def __init__(self, cfg: Config) -> None:
        self.settings = cfg.sink.mysql
        params = connect_params(database_url(self.settings.url_env, "sink.mysql.url_env"))
        self.database = str(params["database"])
        self.conn: pymysql.connections.Connection[Any] = connect(params, self.settings, self.settings.timeout_s)
        # A text key compares byte for byte and without padding: 'a' and 'a ' are two keys, as in the source.
        mariadb = "mariadb" in self.conn.get_server_info().lower()
        self._key_collation = "utf8mb4_nopad_bin" if mariadb else "utf8mb4_0900_bin"
        self.state_table = _q(STATE_TABLE)
        try:
            with self.conn.cursor() as cur:
                cur.execute(
                    f"CREATE TABLE IF NOT EXISTS {self.state_table} (name VARCHAR(64) NOT NULL PRIMARY KEY, "
                    "watermark LONGTEXT, full_loaded_at DATETIME(6), key_diff_at DATETIME(6), "
                    "last_run_at DATETIME(6), updated_at DATETIME(6)) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
                )
            self.conn.commit()
        except (pymysql.Error, OSError) as exc:
            self.close()
            raise classify(exc, f"cannot create {self.database}.{STATE_TABLE}") from None

    def _column_type(self, imp: ImportConfig, col: Column) -> str:
        type_ = mysql_type(col)
        if col.name == imp.primary_key and col.kind == "string":
            type_ += f" CHARACTER SET utf8mb4 COLLATE {self._key_collation}"
        return type_

    def prepare(self, imp: ImportConfig, columns: Sequence[Column]) -> None:
        check_name_length(imp, MAX_IDENTIFIER, "MySQL")
        wanted = [(c, self._column_type(imp, c)) for c in columns]
        table = _q(imp.name)
        try:
            with self.conn.cursor() as cur:
                cur.execute(
                    "SELECT COLUMN_NAME, DATA_TYPE, NUMERIC_PRECISION, NUMERIC_SCALE, COLUMN_TYPE "
                    "FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s",
                    (self.database, imp.name),
                )
                existing = {str(r[0]): (str(r[1]).lower(), r[2], r[3], str(r[4])) for r in cur.fetchall()}
                if not existing:
                    body = ", ".join(
                        [f"{_q(c.name)} {t}" for c, t in wanted] + [f"{IMPORTED_AT} DATETIME(6)", f"{DELETED} BOOLEAN"]
                    )
                    cur.execute(f"CREATE TABLE IF NOT EXISTS {table} ({body}) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4")
                else:
                    for col, type_ in wanted:
                        have = existing.get(col.name)
                        if have is None:
                            # A column newly allowed: rows imported before it carry NULL there.
                            cur.execute(f"ALTER TABLE {table} ADD COLUMN {_q(col.name)} {type_} NULL")
                        elif not _same_type(col, have):
                            raise SourceError(
                                f"column `{col.name}`: the table {self.database}.{imp.name} stores {have[3]}, the "
                                f"source now has {type_}; rename the import (a new table) or migrate the column by hand"
                            )
                # MySQL expands a view's column list when it is made: made again on every run.
                cur.execute(
                    f"CREATE OR REPLACE VIEW {_q(imp.name + LATEST_SUFFIX)} AS {latest_view_sql(imp, columns, _q, '')}"
                )
            self.conn.commit()
        except (pymysql.Error, OSError) as exc:
            raise self._fail(exc, f"cannot create or migrate {self.database}.{imp.name}") from None

    def _fail(self, exc: BaseException, what: str) -> SinkError:
        with contextlib.suppress(pymysql.Error, OSError):
            self.conn.rollback()
        return classify(exc, what)

    def load_state(self, imp: ImportConfig) -> ImportState:
        try:
            with self.conn.cursor() as cur:
                cur.execute(
                    f"SELECT watermark, full_loaded_at, key_diff_at, last_run_at FROM {self.state_table} "
                    "WHERE name = %s",
                    (imp.name,),
                )
                row = cur.fetchone()
            self.conn.commit()  # ends the read's transaction: the next one sees newer commits
        except (pymysql.Error, OSError) as exc:
            raise self._fail(exc, f"cannot read {STATE_TABLE}") from None
        return state_from_row(imp.name, row)

    def _put_state(self, cur: pymysql.cursors.Cursor, state: ImportState) -> None:
        cur.execute(f"REPLACE INTO {self.state_table} VALUES (%s, %s, %s, %s, %s, %s)", state_row(state))

    def _insert(self, cur: pymysql.cursors.Cursor, table: str, names: Sequence[str], rows: list[Any]) -> None:
        """Multi-row INSERTs of at most ``max_statement_bytes`` each (PyMySQL's executemany batches them)."""
        cur.max_stmt_length = self.settings.max_statement_bytes
        cols = ", ".join(_q(n) for n in names)
        cur.executemany(f"INSERT INTO {table} ({cols}) VALUES ({', '.join(['%s'] * len(names))})", rows)

    def write(self, imp: ImportConfig, batch: pa.Table, state: ImportState, batch_no: int) -> None:
        try:
            with self.conn.cursor() as cur:
                self._insert(cur, _q(imp.name), batch.column_names, batch_rows(batch))
                self._put_state(cur, state)
            self.conn.commit()
        except (pymysql.Error, OSError) as exc:
            raise self._fail(exc, f"{self.database}.{imp.name}: MySQL refused the batch") from None

    def save_state(self, imp: ImportConfig, state: ImportState) -> None:
        try:
            with self.conn.cursor() as cur:
                self._put_state(cur, state)
            self.conn.commit()
        except (pymysql.Error, OSError) as exc:
            raise self._fail(exc, f"cannot store the state of {imp.name}") from None

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
        prefix = f"({KEY_PREFIX_CHARS})" if key_column.kind in ("string", "binary", "json") else ""
        try:
            with self.conn.cursor() as cur:
                # TEMPORARY: neither statement commits the transaction implicitly, as other DDL would.
                cur.execute("DROP TEMPORARY TABLE IF EXISTS _oceanus_keys")
                cur.execute(
                    f"CREATE TEMPORARY TABLE _oceanus_keys (k {self._column_type(imp, key_column)}, KEY (k{prefix}))"
                )
                for batch in keys:
                    values = batch if conv is None else [None if v is None else conv(v) for v in batch]
                    self._insert(cur, "_oceanus_keys", ["k"], [(v,) for v in values])
                written = cur.execute(
                    f"INSERT INTO {_q(imp.name)} ({pk}, {IMPORTED_AT}, {DELETED}) "
                    f"SELECT l.{pk}, %s, TRUE FROM {_q(imp.name + LATEST_SUFFIX)} l "
                    f"WHERE NOT EXISTS (SELECT 1 FROM _oceanus_keys k WHERE k.k = l.{pk})",
                    (naive_utc(imported_at),),
                )
                self._put_state(cur, state)
                cur.execute("DROP TEMPORARY TABLE _oceanus_keys")
            self.conn.commit()
        except (pymysql.Error, OSError) as exc:
            raise self._fail(exc, f"{self.database}.{imp.name}: MySQL refused the tombstones") from None
        return int(written)

    def query(self, sql_text: str) -> list[tuple[Any, ...]]:
        """Read back (tests, the benchmark)."""
        with self.conn.cursor() as cur:
            cur.execute(sql_text)
            rows = list(cur.fetchall())
        self.conn.commit()
        return rows

    def close(self) -> None:
        with contextlib.suppress(pymysql.Error, OSError):
            self.conn.close()


def _same_type(col: Column, have: tuple[str, Any, Any, str]) -> bool:
    data_type, precision, scale, _column_type = have
    if data_type not in _DATA_TYPES[col.kind]:
        return False
    if col.kind == "decimal":
        return (precision, scale) == (col.precision, col.scale)
    return True

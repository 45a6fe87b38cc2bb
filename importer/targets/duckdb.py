"""DuckDB target: the imported tables in the flusher's warehouse file.

Each batch is one transaction: the rows and the import's row in
``_oceanus_import_state`` (the watermark) commit together, so a crash at any
point leaves a watermark that matches the rows exactly and the next run goes on
from there with no duplicate and no gap.

DuckDB lets one process open a file for writing: while the flusher holds
``sink.duckdb.path``, ``oceanus import`` cannot open it and says so. The flusher
runs the ``[imports]`` itself then, on a connection of its own to the database it
holds (:mod:`importer.hosted`); each batch is still one transaction with its
watermark (docs/ARCHITECTURE.md, importer).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from importer.columns import DELETED, IMPORTED_AT, Column, arrow_type
from importer.targets.base import LATEST_SUFFIX, STATE_TABLE, ImportState
from importer.targets.sql import latest_view_sql, naive_utc
from oceanus.config import Config, ImportConfig
from oceanus.errors import Reason, SinkError, SourceError, TransientError

_TYPES: dict[str, str] = {
    "bool": "BOOLEAN",
    "int": "BIGINT",
    "float": "DOUBLE",
    "string": "VARCHAR",
    "date": "DATE",
    "timestamp": "TIMESTAMP",
    "timestamptz": "TIMESTAMPTZ",
    "json": "JSON",
    "binary": "BLOB",
}
#: DuckDB's widest DECIMAL.
MAX_DECIMAL_PRECISION = 38


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def duckdb_type(col: Column) -> str:
    if col.kind == "decimal":
        if col.precision > MAX_DECIMAL_PRECISION:
            raise SourceError(
                f"column `{col.name}` is {col.source_type}({col.precision},{col.scale}); DuckDB's DECIMAL holds "
                f"at most {MAX_DECIMAL_PRECISION} digits"
            )
        return f"DECIMAL({col.precision},{col.scale})"
    return _TYPES[col.kind]


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    return None if value is None else value.replace(tzinfo=dt.UTC)


class DuckDBTarget:
    name = "duckdb"

    def __init__(self, cfg: Config, con: duckdb.DuckDBPyConnection | None = None) -> None:
        """``con``: a connection the caller opened (the flusher's, when it hosts the imports);
        this target closes it. Otherwise the file is opened here."""
        if con is not None:
            self.con = con
        else:
            self.con = self._open(cfg)
        self.con.execute(
            f"CREATE TABLE IF NOT EXISTS {STATE_TABLE} (name VARCHAR PRIMARY KEY, watermark VARCHAR, "
            "full_loaded_at TIMESTAMP, key_diff_at TIMESTAMP, last_run_at TIMESTAMP, updated_at TIMESTAMP)"
        )

    @staticmethod
    def _open(cfg: Config) -> duckdb.DuckDBPyConnection:
        db = cfg.sink.duckdb
        path = Path(db.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        settings: dict[str, str | bool | int | float | list[str]] = {}
        if db.threads:
            settings["threads"] = db.threads
        if db.memory_limit:
            settings["memory_limit"] = db.memory_limit
        try:
            return duckdb.connect(str(path), config=settings)
        except duckdb.IOException as exc:
            raise TransientError(
                f"sink.duckdb.path: cannot open {path} ({str(exc).splitlines()[0]}); DuckDB allows one "
                "writing process per file, and a running flusher runs the [imports] itself (every every_s): "
                "leave them to it, or stop it to import by hand",
                Reason.IO,
            ) from None

    def prepare(self, imp: ImportConfig, columns: Sequence[Column]) -> None:
        wanted = [(c.name, duckdb_type(c)) for c in columns] + [(IMPORTED_AT, "TIMESTAMP"), (DELETED, "BOOLEAN")]
        existing = {
            str(name): str(type_)
            for name, type_ in self.con.execute(
                "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = ? "
                "AND table_schema = current_schema()",
                [imp.name],
            ).fetchall()
        }
        if not existing:
            body = ", ".join(f"{_q(n)} {t}" for n, t in wanted)
            self.con.execute(f"CREATE TABLE {_q(imp.name)} ({body})")
        else:
            for name, type_ in wanted:
                have = existing.get(name)
                if have is None:
                    # A column newly allowed: rows imported before it carry NULL there.
                    self.con.execute(f"ALTER TABLE {_q(imp.name)} ADD COLUMN {_q(name)} {type_}")
                elif str(duckdb.sqltype(have)) != str(duckdb.sqltype(type_)):
                    raise SourceError(
                        f"column `{name}`: the table {imp.name} stores {have}, the source now has {type_}; "
                        "rename the import (a new table) or migrate the column by hand"
                    )
        view = _q(imp.name + LATEST_SUFFIX)
        self.con.execute(f"CREATE OR REPLACE VIEW {view} AS {latest_view_sql(imp, columns, _q, '')}")

    def load_state(self, imp: ImportConfig) -> ImportState:
        row = self.con.execute(
            f"SELECT watermark, full_loaded_at, key_diff_at, last_run_at FROM {STATE_TABLE} WHERE name = ?",
            [imp.name],
        ).fetchone()
        if row is None:
            return ImportState(name=imp.name)
        return ImportState(
            name=imp.name,
            watermark=row[0],
            full_loaded_at=_aware(row[1]),
            key_diff_at=_aware(row[2]),
            last_run_at=_aware(row[3]),
        )

    def _put_state(self, state: ImportState) -> None:
        self.con.execute(
            f"INSERT OR REPLACE INTO {STATE_TABLE} VALUES (?, ?, ?, ?, ?, ?)",
            [
                state.name,
                state.watermark,
                naive_utc(state.full_loaded_at),
                naive_utc(state.key_diff_at),
                naive_utc(state.last_run_at),
                dt.datetime.now(dt.UTC).replace(tzinfo=None),
            ],
        )

    def write(self, imp: ImportConfig, batch: pa.Table, state: ImportState, batch_no: int) -> None:
        con = self.con
        con.begin()
        try:
            con.register("_oceanus_batch", batch)
            try:
                con.execute(f"INSERT INTO {_q(imp.name)} BY NAME SELECT * FROM _oceanus_batch")
            finally:
                con.unregister("_oceanus_batch")
            self._put_state(state)
            con.commit()
        except duckdb.Error as exc:
            con.rollback()
            raise SinkError(f"{imp.name}: DuckDB refused the batch: {exc}", retryable=False) from None

    def save_state(self, imp: ImportConfig, state: ImportState) -> None:
        self._put_state(state)

    def tombstone_missing(
        self,
        imp: ImportConfig,
        key_column: Column,
        keys: Iterator[list[Any]],
        imported_at: dt.datetime,
        state: ImportState,
    ) -> int:
        con = self.con
        key_type = duckdb_type(key_column)
        ktype = arrow_type(key_column)
        conv = key_column.convert
        con.begin()
        try:
            con.execute(f"CREATE OR REPLACE TEMP TABLE _oceanus_keys (k {key_type})")
            for batch in keys:
                values = batch if conv is None else [None if v is None else conv(v) for v in batch]
                con.register("_oceanus_key_batch", pa.table({"k": pa.array(values, type=ktype)}))
                try:
                    con.execute("INSERT INTO _oceanus_keys SELECT k FROM _oceanus_key_batch")
                finally:
                    con.unregister("_oceanus_key_batch")
            pk = _q(imp.primary_key)
            row = con.execute(
                f"INSERT INTO {_q(imp.name)} ({pk}, {IMPORTED_AT}, {DELETED}) "
                f"SELECT l.{pk}, ?, true FROM {_q(imp.name + LATEST_SUFFIX)} l "
                f"WHERE NOT EXISTS (SELECT 1 FROM _oceanus_keys k WHERE k.k = l.{pk})",
                [naive_utc(imported_at)],
            ).fetchone()
            self._put_state(state)
            con.execute("DROP TABLE _oceanus_keys")
            con.commit()
        except duckdb.Error as exc:
            con.rollback()
            raise SinkError(f"{imp.name}: DuckDB refused the tombstones: {exc}", retryable=False) from None
        return int(row[0]) if row else 0

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        """Read back (tests, the benchmark)."""
        return self.con.execute(sql).fetchall()

    def close(self) -> None:
        self.con.close()

"""Configs and read-back for the importer tests, for every warehouse an import writes to.

A config names its warehouse (``[sink]``); :func:`read` reads any of them back: the
DuckDB file, or the sink's schema (PostgreSQL) / database (MariaDB) through the URL
in the sink's ``url_env`` (the :class:`Warehouse` fixture puts it in the environment).
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb

from oceanus import config
from tests.support.shopdb import ALLOWED, ShopDB, normalize
from tests.support.sqlwarehouse import SqlWarehouse

URL_ENV = "SHOP_DB_URL"
REPO = Path(__file__).resolve().parents[2]
#: The warehouses an import writes to (``sink.kind``), BigQuery aside (tests/importer/test_import_bigquery.py).
TARGETS = ("duckdb", "postgres", "mysql")


class Warehouse:
    """One test's warehouse: a DuckDB file under ``tmp_path``, or a schema/database of the machine's
    PostgreSQL/MariaDB (``sql``, dropped by the fixture)."""

    def __init__(self, kind: str, tmp_path: Path, sql: SqlWarehouse | None = None) -> None:
        self.kind = kind
        self.path = tmp_path / "wh.duckdb"
        self.sql = sql

    def sink_toml(self) -> str:
        if self.sql is None:
            return f'[sink.duckdb]\npath = "{self.path}"\n'
        if self.kind == "postgres":
            return f'[sink]\nkind = "postgres"\n[sink.postgres]\nschema = "{self.sql.name}"\n'
        return '[sink]\nkind = "mysql"\n'

    def env(self) -> dict[str, str]:
        """What a process needs to write here (the sink's URL); nothing for DuckDB."""
        if self.sql is None:
            return {}
        env = self.sql.env()
        env.pop("OCEANUS_SINK_POSTGRES_SCHEMA", None)  # the config names the schema
        return env

    def toml(self, shop: ShopDB, **keys: Any) -> str:
        return import_toml(self.path, shop, sink=self.sink_toml(), **keys)

    def config(self, shop: ShopDB, **keys: Any) -> config.Config:
        return config.loads(self.toml(shop, **keys))


def import_toml(
    db_path: Path, shop: ShopDB, *, columns: tuple[str, ...] = ALLOWED, sink: str | None = None, **keys: Any
) -> str:
    body = {
        "source_url_env": URL_ENV,
        "table": shop.table,
        "columns": list(columns),
        "primary_key": "id",
        "cursor_column": "updated_at",
        "batch_rows": 100,
        **keys,
    }
    lines = []
    for k, v in body.items():
        if v is None:
            continue
        if isinstance(v, str):
            lines.append(f'{k} = "{v}"')
        elif isinstance(v, bool):
            lines.append(f"{k} = {'true' if v else 'false'}")
        elif isinstance(v, list):
            lines.append(f"{k} = [{', '.join(repr(x).replace(chr(39), chr(34)) for x in v)}]")
        else:
            lines.append(f"{k} = {v}")
    sink = sink if sink is not None else f'[sink.duckdb]\npath = "{db_path}"\n'
    return sink + '[streams.pageview.fields]\nurl = { type = "string" }\n[imports.users]\n' + "\n".join(lines) + "\n"


def import_config(tmp_path: Path, shop: ShopDB, **keys: Any) -> config.Config:
    return config.loads(import_toml(tmp_path / "wh.duckdb", shop, **keys))


def warehouse(cfg: config.Config) -> duckdb.DuckDBPyConnection:
    return duckdb.connect(cfg.sink.duckdb.path, read_only=True)


def read(cfg: config.Config, sql: str) -> list[tuple[Any, ...]]:
    """``sql`` on the warehouse ``cfg`` names; table names unqualified (the sink's schema/database)."""
    if cfg.sink.kind == "postgres":
        import psycopg

        with psycopg.connect(
            os.environ[cfg.sink.postgres.url_env], options=f"-c search_path={cfg.sink.postgres.schema} -c TimeZone=UTC"
        ) as conn:
            return list(conn.execute(sql.encode()).fetchall())
    if cfg.sink.kind == "mysql":
        import pymysql

        from flusher.sinks.mysql import connect_params

        my = pymysql.connect(
            **connect_params(os.environ[cfg.sink.mysql.url_env]), init_command="SET time_zone = '+00:00'"
        )
        try:
            with my.cursor() as cur:
                cur.execute(sql)
                return list(cur.fetchall())
        finally:
            my.close()
    con = warehouse(cfg)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def relations(cfg: config.Config) -> list[str]:
    """Every table and view of the warehouse's schema/database."""
    if cfg.sink.kind == "duckdb":
        return [str(r[0]) for r in read(cfg, "SELECT table_name FROM information_schema.tables")]
    schema = "current_schema()" if cfg.sink.kind == "postgres" else "DATABASE()"
    return [
        str(r[0]) for r in read(cfg, f"SELECT table_name FROM information_schema.tables WHERE table_schema = {schema}")
    ]


def column_names(cfg: config.Config) -> list[tuple[str, str]]:
    """(table, column) of every table and view of the warehouse's schema/database."""
    where = {
        "duckdb": "",
        "postgres": " WHERE table_schema = current_schema()",
        "mysql": " WHERE table_schema = DATABASE()",
    }
    return [
        (str(t), str(c))
        for t, c in read(cfg, "SELECT table_name, column_name FROM information_schema.columns" + where[cfg.sink.kind])
    ]


def latest_rows(cfg: config.Config, columns: tuple[str, ...] = ALLOWED) -> list[tuple[Any, ...]]:
    rows = read(cfg, f"SELECT {', '.join(columns)} FROM users_latest ORDER BY id")
    return [normalize(columns, r) for r in rows]


def column_checksums(rows: list[tuple[Any, ...]], columns: tuple[str, ...]) -> dict[str, str]:
    return {
        name: hashlib.sha256(repr([r[i] for r in rows]).encode()).hexdigest()[:16] for i, name in enumerate(columns)
    }


def assert_same(
    shop: ShopDB,
    cfg: config.Config,
    where: str = "",
    columns: tuple[str, ...] = ALLOWED,
    got: list[tuple[Any, ...]] | None = None,
) -> int:
    """The warehouse's ``users_latest`` equals the source's allowed columns: count, per-column
    checksums, then row by row (so a failure names the column and the row)."""
    source = shop.allowed_rows(columns)
    if where:
        kept = {r[0] for r in shop.query(f"SELECT id FROM {shop.table} WHERE {where}")}
        source = [r for r in source if r[0] in kept]
    got = latest_rows(cfg, columns) if got is None else got
    assert len(got) == len(source), f"{len(got)} rows in users_latest, {len(source)} in the source"
    ids = [r[0] for r in got]
    assert len(set(ids)) == len(ids), "users_latest has a primary key twice"
    want_sums, got_sums = column_checksums(source, columns), column_checksums(got, columns)
    differing = [c for c in columns if want_sums[c] != got_sums[c]]
    if differing:
        for s_row, g_row in zip(source, got, strict=True):
            for i, c in enumerate(columns):
                assert s_row[i] == g_row[i], f"column {c}, id {s_row[0]}: source {s_row[i]!r}, warehouse {g_row[i]!r}"
    assert not differing
    return len(got)


def table_count(cfg: config.Config, sql: str = "SELECT count(*) FROM users") -> int:
    (row,) = read(cfg, sql)
    return int(row[0])


def import_process(cfg_path: Path, shop: ShopDB, *args: str) -> subprocess.Popen[str]:
    """``oceanus import ARGS --config CFG_PATH`` as a process of its own, reading ``shop``."""
    env = {**os.environ, URL_ENV: shop.url, "OCEANUS_LOG_LEVEL": "INFO"}
    env.pop("OCEANUS_CONFIG", None)
    return subprocess.Popen(
        [sys.executable, "-m", "oceanus.cli", "import", *args, "--config", str(cfg_path)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def signal_at(proc: subprocess.Popen[str], marker: str, sig: signal.Signals) -> None:
    """Send ``sig`` to ``proc`` as soon as a line of its stderr contains ``marker``."""
    assert proc.stderr is not None
    for line in proc.stderr:
        if marker in line:
            proc.send_signal(sig)
            return


def kill_after_first_batch(cfg_path: Path, shop: ShopDB) -> None:
    """``oceanus import run``, killed with SIGKILL as soon as it logs its first committed batch."""
    proc = import_process(cfg_path, shop, "run")
    try:
        signal_at(proc, "batch 1 committed", signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

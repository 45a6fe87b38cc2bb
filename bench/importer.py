"""``python -m bench importer [--rows N] [--batch-rows B] [--target duckdb|postgres|mysql] [--json]``: import rows/s
from each source into a warehouse (DuckDB unless ``--target`` names a SQL one).

A shop-like ``orders`` table (id, user_id, total DECIMAL(12,2), status,
updated_at, created_at with time zone, a JSON note; plus a personal column the
import leaves out) is created in a scratch schema of the local PostgreSQL
(127.0.0.1:5432, database ``test``) and a scratch database of the local
MariaDB/MySQL (127.0.0.1:3306), filled server-side, then imported once with
``oceanus import``'s own runner into a fresh DuckDB file, or with ``--target``
a fresh schema of the same PostgreSQL / database of the same MariaDB (the SQL
targets: binary COPY, batched INSERTs). Reported per source: rows/s of the whole
run (describe, server-side cursor, Arrow, the target's commits with the
watermark) and the peak of Python allocations (tracemalloc off for
the timed run, on for a second run of the same size). A source that is not
reachable is reported as skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from importer.runner import run_import
from oceanus import config

PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"
MYSQL_URL = "mysql://root@127.0.0.1:3306"
COLUMNS = ["id", "user_id", "total", "status", "updated_at", "created_at", "note"]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _postgres(rows: int) -> tuple[str, str, Callable[[], None]]:
    import psycopg

    conn = psycopg.connect(PG_DSN, autocommit=True, connect_timeout=3)
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    conn.execute(f"CREATE SCHEMA {schema}".encode())
    conn.execute(
        f"CREATE TABLE {schema}.orders (id bigint PRIMARY KEY, user_id bigint, total numeric(12,2), status text, "
        "updated_at timestamp NOT NULL, created_at timestamptz, note jsonb, email text)".encode()
    )
    conn.execute(
        f"INSERT INTO {schema}.orders SELECT g, g % 5000, (g % 100000) * 0.01, "
        "(ARRAY['new','paid','shipped','cancelled'])[1 + g % 4], TIMESTAMP '2026-01-01' + g * INTERVAL '1 second', "
        "TIMESTAMPTZ '2026-01-01 00:00:00+00' + g * INTERVAL '1 second', jsonb_build_object('items', g % 7), "
        f"'person' || g || '@example.com' FROM generate_series(1, {rows}) g".encode()
    )

    def drop() -> None:
        conn.execute(f"DROP SCHEMA {schema} CASCADE".encode())
        conn.close()

    return PG_DSN, f"{schema}.orders", drop


def _mysql(rows: int) -> tuple[str, str, Callable[[], None]]:
    import pymysql

    conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", autocommit=True, connect_timeout=3)
    db = f"bench_{uuid.uuid4().hex[:10]}"
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {db}")
        cur.execute(f"USE {db}")
        cur.execute(
            "CREATE TABLE orders (id bigint PRIMARY KEY, user_id bigint, total decimal(12,2), status varchar(16), "
            "updated_at datetime(6) NOT NULL, created_at timestamp(6) NULL, note json, email varchar(100))"
        )
        cur.execute(
            "INSERT INTO orders SELECT seq, seq % 5000, (seq % 100000) * 0.01, ELT(1 + seq % 4, 'new', 'paid', "
            "'shipped', 'cancelled'), TIMESTAMP '2026-01-01 00:00:00' + INTERVAL seq SECOND, "
            "TIMESTAMP '2026-01-01 00:00:00' + INTERVAL seq SECOND, JSON_OBJECT('items', seq % 7), "
            f"CONCAT('person', seq, '@example.com') FROM seq_1_to_{rows}"
        )

    def drop() -> None:
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE {db}")
        conn.close()

    return f"{MYSQL_URL}/{db}", "orders", drop


def _warehouse(target: str, db_path: Path) -> tuple[str, Callable[[], None]]:
    """A fresh warehouse: its ``[sink]`` TOML (a SQL target's URL goes into the sink's variable) and its cleanup."""
    if target == "duckdb":
        return f'[sink.duckdb]\npath = "{db_path}"\n', lambda: None
    name = f"bench_wh_{uuid.uuid4().hex[:10]}"
    if target == "postgres":
        import psycopg

        os.environ["OCEANUS_PG_URL"] = PG_DSN

        def drop_schema() -> None:
            with psycopg.connect(PG_DSN, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE".encode())

        return f'[sink]\nkind = "postgres"\n[sink.postgres]\nschema = "{name}"\n', drop_schema
    import pymysql

    conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", autocommit=True)
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    os.environ["OCEANUS_MYSQL_URL"] = f"{MYSQL_URL}/{name}"

    def drop_database() -> None:
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.close()

    return '[sink]\nkind = "mysql"\n', drop_database


def _config(sink: str, table: str, batch_rows: int) -> config.Config:
    cols = ", ".join(f'"{c}"' for c in COLUMNS)
    return config.loads(
        f'{sink}[streams.pageview.fields]\nurl = {{ type = "string" }}\n'
        f'[imports.orders]\nsource_url_env = "BENCH_SOURCE_URL"\ntable = "{table}"\ncolumns = [{cols}]\n'
        f'primary_key = "id"\ncursor_column = "updated_at"\nbatch_rows = {batch_rows}\n'
    )


def _timed_import(target: str, db_path: Path, table: str, batch_rows: int, url: str) -> tuple[int, float]:
    sink, drop = _warehouse(target, db_path)
    try:
        cfg = _config(sink, table, batch_rows)
        t0 = time.perf_counter()
        result = run_import(cfg, cfg.imports["orders"], env={"BENCH_SOURCE_URL": url})
        return result.rows, time.perf_counter() - t0
    finally:
        drop()


def measure(kind: str, rows: int, batch_rows: int, work: Path, target: str = "duckdb") -> dict[str, Any]:
    setup = _postgres if kind == "postgres" else _mysql
    try:
        url, table, drop = setup(rows)
    except Exception as exc:  # noqa: BLE001 - an unreachable server is reported, not fatal
        return {"skipped": f"{type(exc).__name__}: {exc}"}
    try:
        imported, seconds = _timed_import(target, work / f"{kind}.duckdb", table, batch_rows, url)
        tracemalloc.start()
        _timed_import(target, work / f"{kind}-traced.duckdb", table, batch_rows, url)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    finally:
        drop()
    return {
        "rows": imported,
        "seconds": round(seconds, 2),
        "rows_per_s": round(imported / seconds),
        "peak_python_mb": round(peak / 1e6, 1),
    }


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench importer", description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--batch-rows", type=int, default=10_000)
    p.add_argument("--sources", default="postgres,mysql")
    p.add_argument("--target", choices=["duckdb", "postgres", "mysql"], default="duckdb", help="the warehouse")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    out: dict[str, Any] = {"rows": args.rows, "batch_rows": args.batch_rows, "target": args.target}
    with tempfile.TemporaryDirectory(prefix="oceanus-bench-import-") as d:
        for kind in args.sources.split(","):
            out[kind] = measure(kind, args.rows, args.batch_rows, Path(d), args.target)
            log(f"{kind}: {out[kind]}")
    if args.json:
        print(json.dumps(out))
    return 0

"""Configs and read-back for the importer tests."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import duckdb

from oceanus import config
from tests.support.shopdb import ALLOWED, ShopDB, normalize

URL_ENV = "SHOP_DB_URL"


def import_toml(db_path: Path, shop: ShopDB, *, columns: tuple[str, ...] = ALLOWED, **keys: Any) -> str:
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
    return (
        f'[sink.duckdb]\npath = "{db_path}"\n[streams.pageview.fields]\nurl = {{ type = "string" }}\n'
        "[imports.users]\n" + "\n".join(lines) + "\n"
    )


def import_config(tmp_path: Path, shop: ShopDB, **keys: Any) -> config.Config:
    return config.loads(import_toml(tmp_path / "wh.duckdb", shop, **keys))


def warehouse(cfg: config.Config) -> duckdb.DuckDBPyConnection:
    return duckdb.connect(cfg.sink.duckdb.path, read_only=True)


def latest_rows(cfg: config.Config, columns: tuple[str, ...] = ALLOWED) -> list[tuple[Any, ...]]:
    con = warehouse(cfg)
    try:
        rows = con.execute(f"SELECT {', '.join(columns)} FROM users_latest ORDER BY id").fetchall()
    finally:
        con.close()
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
    con = warehouse(cfg)
    try:
        row = con.execute(sql).fetchone()
    finally:
        con.close()
    assert row is not None
    return int(row[0])

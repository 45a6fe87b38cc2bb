"""Fixtures: a shop database and a warehouse (each test its own schema/database, dropped in finally)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.importer.helpers import TARGETS, Warehouse
from tests.support.shopdb import MYSQL_HOST, MYSQL_PORT, PG_DSN, MariaDB, PostgresDB, ShopDB
from tests.support.sqlwarehouse import open_warehouse


def _open(kind: str) -> ShopDB:
    if kind == "postgres":
        import psycopg

        try:
            return PostgresDB()
        except psycopg.OperationalError as exc:
            pytest.skip(f"PostgreSQL is not reachable at {PG_DSN.rsplit('@', 1)[1]} ({exc})")
    import pymysql

    try:
        return MariaDB()
    except pymysql.err.OperationalError as exc:
        pytest.skip(f"MariaDB/MySQL is not reachable at {MYSQL_HOST}:{MYSQL_PORT} ({exc})")


@pytest.fixture(params=["postgres", "mysql"])
def shop(request: pytest.FixtureRequest) -> Iterator[ShopDB]:
    db = _open(request.param)
    try:
        yield db
    finally:
        db.drop()


@pytest.fixture
def pg_shop() -> Iterator[ShopDB]:
    db = _open("postgres")
    try:
        yield db
    finally:
        db.drop()


@pytest.fixture
def mysql_shop() -> Iterator[ShopDB]:
    db = _open("mysql")
    try:
        yield db
    finally:
        db.drop()


@pytest.fixture(params=TARGETS)
def target(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Warehouse]:
    """Where the import writes: DuckDB, or a schema (PostgreSQL) / database (MariaDB) of this test,
    its URL in the sink's variable (for this process and the ones it starts)."""
    if request.param == "duckdb":
        yield Warehouse("duckdb", tmp_path)
        return
    sql = open_warehouse(request.param)
    try:
        wh = Warehouse(request.param, tmp_path, sql)
        for key, value in wh.env().items():
            monkeypatch.setenv(key, value)
        yield wh
    finally:
        sql.drop()

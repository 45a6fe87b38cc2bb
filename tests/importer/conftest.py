"""Fixtures: a shop database (each test its own schema/database, dropped in finally)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.shopdb import MYSQL_HOST, MYSQL_PORT, PG_DSN, MariaDB, PostgresDB, ShopDB


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

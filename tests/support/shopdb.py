"""The shop databases the importer tests read: the machine's PostgreSQL and MariaDB.

Each :class:`ShopDB` owns a uniquely named schema (PostgreSQL) or database
(MariaDB) and drops it in ``drop()``; tests call that in ``finally`` (through
the fixtures in tests/importer/conftest.py). A server that is not reachable
makes the fixture skip with its address in the reason; CI runs both.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from decimal import Decimal
from typing import Any

PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"
MYSQL_HOST, MYSQL_PORT = "127.0.0.1", 3306

#: Columns of the test ``users`` table that an import lists; the rest hold secrets.
ALLOWED = (
    "id",
    "age",
    "gender",
    "occupation",
    "points",
    "balance",
    "updated_at",
    "created_at",
    "birthday",
    "prefs",
    "active",
    "deleted_at",
)
SECRET_COLUMNS = ("email", "password_hash")
#: Columns whose values are instants (compared as UTC) and JSON (compared parsed).
INSTANT_COLUMNS = frozenset({"created_at"})
JSON_COLUMNS = frozenset({"prefs"})


class ShopDB:
    kind: str
    url: str
    table: str
    now_sql: str
    secret: str

    def execute(self, sql: str) -> None:
        raise NotImplementedError

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def create_users(self) -> None:
        raise NotImplementedError

    def fill(self, start: int, n: int, updated_at: str | None = None) -> None:
        """Rows ``start .. start+n-1``; three rows share each ``updated_at`` (ties across batches)."""
        raise NotImplementedError

    def drop(self) -> None:
        raise NotImplementedError

    def allowed_rows(self, columns: tuple[str, ...] = ALLOWED) -> list[tuple[Any, ...]]:
        rows = self.query(f"SELECT {', '.join(columns)} FROM {self.table} ORDER BY id")
        return [normalize(columns, r) for r in rows]


def normalize(columns: tuple[str, ...], row: tuple[Any, ...]) -> tuple[Any, ...]:
    out: list[Any] = []
    for name, value in zip(columns, row, strict=True):
        if value is None:
            out.append(None)
        elif name in INSTANT_COLUMNS:
            aware = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
            out.append(aware.astimezone(dt.UTC))
        elif name in JSON_COLUMNS:
            out.append(json.loads(value) if isinstance(value, str | bytes) else value)
        elif name == "active":
            out.append(bool(value))
        elif isinstance(value, Decimal):
            # Same number, same checksum: BigQuery's NUMERIC answers with 9 decimals.
            out.append(value.normalize())
        else:
            out.append(value)
    return tuple(out)


class PostgresDB(ShopDB):
    kind = "postgres"
    now_sql = "clock_timestamp()::timestamp"

    def __init__(self) -> None:
        import psycopg

        self.conn = psycopg.connect(PG_DSN, autocommit=True, connect_timeout=3)
        self.schema = f"oc_{uuid.uuid4().hex[:12]}"
        self.url = PG_DSN
        self.table = f"{self.schema}.users"
        self.secret = f"s3cr3t{uuid.uuid4().hex}"
        self.execute(f"CREATE SCHEMA {self.schema}")

    def execute(self, sql: str) -> None:
        self.conn.execute(sql.encode())

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        with self.conn.cursor() as cur:
            cur.execute(sql.encode())
            return list(cur.fetchall())

    def create_users(self) -> None:
        self.execute(
            f"CREATE TABLE {self.table} (id bigint PRIMARY KEY, age integer, gender text, occupation varchar(40), "
            "email text, password_hash text, points numeric(12,2), balance numeric(30,10), "
            "updated_at timestamp(6) NOT NULL, created_at timestamptz, birthday date, prefs jsonb, "
            "active boolean, deleted_at timestamp NULL)"
        )

    def fill(self, start: int, n: int, updated_at: str | None = None) -> None:
        upd = f"TIMESTAMP '{updated_at}'" if updated_at else "TIMESTAMP '2026-01-01' + (g / 3) * INTERVAL '1 second'"
        self.execute(
            f"INSERT INTO {self.table} SELECT g, 18 + g % 60, CASE WHEN g % 2 = 0 THEN 'F' ELSE 'M' END, "
            f"'occ' || (g % 17), '{self.secret}-mail-' || g || '@example.com', '{self.secret}-hash-' || g, "
            "(g * 1.37)::numeric(12,2), (g * 12345.0123456789)::numeric(30,10), "
            f"{upd}, TIMESTAMPTZ '2026-01-01 09:00:00+09' + g * INTERVAL '1 minute', "
            "DATE '1980-01-01' + g % 9000, jsonb_build_object('g', g, 'tags', jsonb_build_array('a', 'b')), "
            f"g % 3 = 0, NULL FROM generate_series({start}, {start + n - 1}) AS g"
        )

    def drop(self) -> None:
        try:
            self.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")
        finally:
            self.conn.close()


class MariaDB(ShopDB):
    kind = "mysql"
    now_sql = "NOW(6)"

    def __init__(self) -> None:
        import pymysql

        self.conn = pymysql.connect(
            host=MYSQL_HOST,
            port=MYSQL_PORT,
            user="root",
            password="",
            autocommit=True,
            connect_timeout=3,
            init_command="SET time_zone = '+00:00'",
        )
        self.database = f"oc_{uuid.uuid4().hex[:12]}"
        self.url = f"mysql://root@{MYSQL_HOST}:{MYSQL_PORT}/{self.database}"
        self.table = f"{self.database}.users"
        self.secret = f"s3cr3t{uuid.uuid4().hex}"
        self.execute(f"CREATE DATABASE {self.database}")
        self.execute(f"USE {self.database}")  # MariaDB's seq_1_to_N tables need a current database

    def execute(self, sql: str) -> None:
        with self.conn.cursor() as cur:
            cur.execute(sql)

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        with self.conn.cursor() as cur:
            cur.execute(sql)
            return list(cur.fetchall())

    def create_users(self) -> None:
        self.execute(
            f"CREATE TABLE {self.table} (id bigint PRIMARY KEY, age int, gender varchar(1), occupation varchar(40), "
            "email varchar(200), password_hash varchar(200), points decimal(12,2), balance decimal(30,10), "
            "updated_at datetime(6) NOT NULL, created_at timestamp(6) NULL, birthday date, prefs json, "
            "active boolean, deleted_at datetime(6) NULL)"
        )

    def fill(self, start: int, n: int, updated_at: str | None = None) -> None:
        upd = (
            f"TIMESTAMP '{updated_at}'"
            if updated_at
            else "TIMESTAMP '2026-01-01 00:00:00' + INTERVAL (seq DIV 3) SECOND"
        )
        self.execute(
            f"INSERT INTO {self.table} SELECT seq, 18 + seq % 60, IF(seq % 2 = 0, 'F', 'M'), "
            f"CONCAT('occ', seq % 17), CONCAT('{self.secret}-mail-', seq, '@example.com'), "
            f"CONCAT('{self.secret}-hash-', seq), seq * 1.37, seq * 12345.0123456789, {upd}, "
            "TIMESTAMP '2026-01-01 00:00:00' + INTERVAL seq MINUTE, DATE '1980-01-01' + INTERVAL (seq % 9000) DAY, "
            "JSON_OBJECT('g', seq, 'tags', JSON_ARRAY('a', 'b')), seq % 3 = 0, NULL "
            f"FROM seq_{start}_to_{start + n - 1}"
        )

    def drop(self) -> None:
        try:
            self.execute(f"DROP DATABASE IF EXISTS {self.database}")
        finally:
            self.conn.close()


def decimal_sum(rows: list[tuple[Any, ...]], index: int) -> Decimal:
    return sum((r[index] for r in rows if r[index] is not None), Decimal(0))

"""The SQL warehouses the postgres and mysql sink tests write to: the machine's PostgreSQL and MariaDB.

Each :class:`SqlWarehouse` owns a uniquely named schema (PostgreSQL) or database
(MariaDB), gives the environment a sink (or a flusher process) needs to write
there, and drops it in ``drop()``; tests call that in ``finally``. A server that
is not reachable makes :func:`open_warehouse` skip with its address; CI runs both.
The servers are shared with other people: tests only ever touch their own
schema/database and their own sink's connections.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import msgspec
import pytest

from oceanus.config import Config

PG_HOST, PG_PORT, PG_DB = "127.0.0.1", 5432, "test"
MYSQL_HOST, MYSQL_PORT = "127.0.0.1", 3306
KINDS = ("postgres", "mysql")


class SqlWarehouse:
    kind: str
    #: Where the sink writes: the schema (PostgreSQL) or database (MariaDB) of this test.
    name: str

    def url(self, port: int | None = None) -> str:
        """The sink's URL, optionally through a proxy on ``port``."""
        raise NotImplementedError

    def env(self, port: int | None = None) -> dict[str, str]:
        """What a flusher process needs to write here (the URL in its default ``url_env``)."""
        raise NotImplementedError

    def configure(self, cfg: Config) -> Config:
        """``cfg`` with ``[sink] kind`` set to this warehouse (the URL comes from :meth:`env`)."""
        raise NotImplementedError

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def execute(self, sql: str) -> None:
        raise NotImplementedError

    def kill_sink_connections(self) -> int:
        """End every connection of this warehouse's sinks server-side; returns how many."""
        raise NotImplementedError

    def drop(self) -> None:
        raise NotImplementedError


class PostgresWarehouse(SqlWarehouse):
    kind = "postgres"

    def __init__(self) -> None:
        import psycopg

        self.conn = psycopg.connect(self.url(), autocommit=True, connect_timeout=3)
        self.name = f"oc_{uuid.uuid4().hex[:12]}"

    def url(self, port: int | None = None) -> str:
        return f"postgresql://postgres@{PG_HOST}:{port or PG_PORT}/{PG_DB}"

    def env(self, port: int | None = None) -> dict[str, str]:
        return {"OCEANUS_PG_URL": self.url(port), "OCEANUS_SINK_POSTGRES_SCHEMA": self.name}

    def configure(self, cfg: Config) -> Config:
        sink = msgspec.structs.replace(
            cfg.sink, kind="postgres", postgres=msgspec.structs.replace(cfg.sink.postgres, schema=self.name)
        )
        return msgspec.structs.replace(cfg, sink=sink)

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self.conn.cursor() as cur:
            cur.execute(sql.replace("{s}", self.name).encode(), params or None)
            return list(cur.fetchall())

    def execute(self, sql: str) -> None:
        self.conn.execute(sql.replace("{s}", self.name).encode())

    def kill_sink_connections(self) -> int:
        # The sink's connections name themselves after their schema: only this test's are ended.
        rows = self.rows(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s "
            "AND pid <> pg_backend_pid()",
            (f"oceanus-flusher/{self.name}",),
        )
        return sum(1 for (ok,) in rows if ok)

    def drop(self) -> None:
        try:
            self.execute("DROP SCHEMA IF EXISTS {s} CASCADE")
        finally:
            self.conn.close()


class MariaDBWarehouse(SqlWarehouse):
    kind = "mysql"

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
        self.name = f"oc_{uuid.uuid4().hex[:12]}"
        self.execute("CREATE DATABASE {s}")

    def url(self, port: int | None = None) -> str:
        return f"mysql://root@{MYSQL_HOST}:{port or MYSQL_PORT}/{self.name}"

    def env(self, port: int | None = None) -> dict[str, str]:
        return {"OCEANUS_MYSQL_URL": self.url(port)}

    def configure(self, cfg: Config) -> Config:
        return msgspec.structs.replace(cfg, sink=msgspec.structs.replace(cfg.sink, kind="mysql"))

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self.conn.cursor() as cur:
            cur.execute(sql.replace("{s}", self.name), params or None)
            return list(cur.fetchall())

    def execute(self, sql: str) -> None:
        with self.conn.cursor() as cur:
            cur.execute(sql.replace("{s}", self.name))

    def kill_sink_connections(self) -> int:
        ids = [
            r[0]
            for r in self.rows(
                "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = %s AND ID <> CONNECTION_ID()", (self.name,)
            )
        ]
        for i in ids:
            self.execute(f"KILL {int(i)}")
        return len(ids)

    def drop(self) -> None:
        try:
            self.execute("DROP DATABASE IF EXISTS {s}")
        finally:
            self.conn.close()


def open_warehouse(kind: str) -> SqlWarehouse:
    """A fresh schema/database on the machine's server, or a skip naming the address it tried."""
    if kind == "postgres":
        import psycopg

        try:
            return PostgresWarehouse()
        except psycopg.OperationalError as exc:
            pytest.skip(f"PostgreSQL is not reachable at {PG_HOST}:{PG_PORT} ({exc})")
    import pymysql

    try:
        return MariaDBWarehouse()
    except pymysql.err.OperationalError as exc:
        pytest.skip(f"MariaDB/MySQL is not reachable at {MYSQL_HOST}:{MYSQL_PORT} ({exc})")


@contextmanager
def warehouse(kind: str) -> Iterator[SqlWarehouse]:
    wh = open_warehouse(kind)
    try:
        yield wh
    finally:
        wh.drop()

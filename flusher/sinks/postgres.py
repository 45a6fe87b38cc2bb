"""PostgreSQL sink: one day-partitioned table per stream, exactly once by ``event_id``.

Table of a stream (derived from its config), in ``sink.postgres.schema``::

    event_id text NOT NULL           -- 32 hex digits
    received_at timestamptz NOT NULL -- the partition key
    ip, ua, device text
    <fields> text | bigint | double precision | boolean | timestamptz | jsonb
    extra jsonb
    PRIMARY KEY (event_id, received_at)
    PARTITION BY RANGE (received_at)  -- one partition per UTC day, <table>_pYYYYMMDD

plus ``<stream>_dedup``, a plain view (the table is already unique), so queries
port from BigQuery and DuckDB.

Why the key holds ``received_at``: PostgreSQL wants the partition key in every
unique constraint of a partitioned table. It changes nothing for dedupe: a
repeated row is byte-identical (no path gives one event two ids), so its
second copy has the same ``received_at``, lands in the same partition and
conflicts there.

One write, one transaction: the checked rows go by binary ``COPY`` into a
temporary staging table (``ON COMMIT DELETE ROWS``, made once per connection),
then ``INSERT ... SELECT DISTINCT ON (event_id) ... ON CONFLICT (event_id,
received_at) DO NOTHING`` moves them into the table. A batch written twice (a
flusher killed after its commit, a commit whose answer was lost) inserts
nothing the second time. Timestamps travel as int microseconds and become
``timestamptz`` in the INSERT (exact, and no datetime object per value).

Partitions: the days a batch touches are created (``IF NOT EXISTS``) before
its transaction, remembered per process; ``ensure_tables`` creates today and
``partition_days_ahead`` days more. There is no DEFAULT partition: one would
have to be scanned (and emptied) before each new day's partition is attached.

Rejects: values are checked in Python first (types, ranges, JSON, NUL
characters PostgreSQL cannot store); a row that fails is a dead letter. Should
the server still refuse the batch's data (class 22/23), the write falls back
to one INSERT per row, each in a savepoint, and returns the ones refused.

Failures are classified (:func:`classify`), never retried here. A connection
that broke (server restart, ``pg_terminate_backend``, a network cut) is
dropped, and the next attempt — the worker's retry — connects afresh.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import threading
from collections.abc import Iterable, Sequence
from typing import Any

import psycopg
from psycopg import sql

from flusher.sinks.base import Batch, QueryResult, RowError, WriteResult, WriteState
from flusher.sinks.common import DEDUP_VIEW_SUFFIX, REQUIRED_COLUMNS, column_types, plain
from flusher.sinks.sql import (
    DAY_US,
    MAX_QUERY_ROWS,
    Converter,
    check_bool,
    check_float,
    check_int,
    check_json,
    check_read_only,
    check_text,
    check_timestamp_us,
    convert_rows,
    database_url,
    event_id_hex,
    one_line,
    table_columns,
)
from oceanus.config import Config, FieldType, PostgresConfig, StreamConfig
from oceanus.errors import (
    ConfigError,
    PermanentError,
    QueryError,
    QueryTimeout,
    Reason,
    SinkError,
    TransientError,
)

#: Warehouse type of each config field type (information_schema's spelling).
PG_TYPES: dict[FieldType, str] = {
    "string": "text",
    "int": "bigint",
    "float": "double precision",
    "bool": "boolean",
    "timestamp": "timestamp with time zone",
    "json": "jsonb",
}
#: Staging column type of each config type: what binary COPY carries (timestamps as µs, JSON as text).
STAGE_TYPES: dict[FieldType, str] = {
    "string": "text",
    "int": "int8",
    "float": "float8",
    "bool": "bool",
    "timestamp": "int8",
    "json": "text",
}
#: A query's timeout when the caller gives none (seconds; flusher.query_timeout_s).
QUERY_TIMEOUT_S = 10.0
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
#: PostgreSQL's identifier length (NAMEDATALEN - 1); longer names are cut without an error.
MAX_IDENTIFIER = 63

#: SQLSTATEs, by what the worker should do (https://www.postgresql.org/docs/current/errcodes-appendix.html).
_TRANSIENT_STATES: dict[str, Reason] = {
    "40001": Reason.SERVER,  # serialization_failure
    "40P01": Reason.SERVER,  # deadlock_detected
    "55P03": Reason.SERVER,  # lock_not_available
    "57014": Reason.TIMEOUT,  # query_canceled (statement_timeout)
    "57P01": Reason.CONNECTION,  # admin_shutdown: pg_terminate_backend, a fast shutdown
    "57P02": Reason.CONNECTION,  # crash_shutdown
    "57P03": Reason.CONNECTION,  # cannot_connect_now: starting up
    "53100": Reason.IO,  # disk_full
    "53200": Reason.IO,  # out_of_memory
    "53300": Reason.THROTTLED,  # too_many_connections
    "58030": Reason.IO,  # io_error
    "XX001": Reason.IO,  # data_corrupted: a bad block, retried while someone looks
    "25006": Reason.SERVER,  # read_only_sql_transaction: a standby promoted by failover soon
}
_PERMANENT_STATES: dict[str, Reason] = {
    "28000": Reason.AUTH,
    "28P01": Reason.AUTH,
    "42501": Reason.AUTH,  # insufficient_privilege
    "3D000": Reason.NOT_FOUND,  # invalid_catalog_name
    "3F000": Reason.NOT_FOUND,  # invalid_schema_name
    "42P01": Reason.NOT_FOUND,  # undefined_table
    "42703": Reason.NOT_FOUND,  # undefined_column: run `oceanus tables sync`
}
#: Connection failures have no SQLSTATE in libpq's message: these words decide (all else is transient).
_CONNECT_AUTH = ("password authentication failed", "no pg_hba.conf entry", 'role "', "permission denied")


def _no_partition(exc: BaseException) -> bool:
    """A row whose day has no partition (23514, as a CHECK): the process's list of partitions is stale."""
    return getattr(exc, "sqlstate", None) == "23514" and "no partition of relation" in str(exc)


def _data_error(exc: BaseException) -> bool:
    """A refusal of some row's values (class 22 data exception, 23 integrity), not of the batch."""
    state = getattr(exc, "sqlstate", None) or ""
    return isinstance(exc, UnicodeEncodeError) or state.startswith(("22", "23"))


def classify(exc: BaseException, what: str) -> SinkError:
    """PostgreSQL's classifier: a failure -> one ``Reason``, transient or permanent."""
    message = f"postgres: {what}: {one_line(exc)}"
    state = getattr(exc, "sqlstate", None)
    if state in _TRANSIENT_STATES:
        return TransientError(message, _TRANSIENT_STATES[state])
    if state in _PERMANENT_STATES:
        return PermanentError(message, _PERMANENT_STATES[state])
    if state and state.startswith("08"):  # connection_exception
        return TransientError(message, Reason.CONNECTION)
    if state and state.startswith(("22", "23", "42")):
        return PermanentError(message, Reason.INVALID)
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError) and not state:
        text = str(exc)
        if 'database "' in text and "does not exist" in text:
            return PermanentError(message, Reason.NOT_FOUND)
        if any(words in text for words in _CONNECT_AUTH):
            return PermanentError(message, Reason.AUTH)
        if "timeout" in text.lower():
            return TransientError(message, Reason.TIMEOUT)
        return TransientError(message, Reason.CONNECTION)
    if isinstance(exc, OSError):
        return TransientError(message, Reason.CONNECTION)
    return PermanentError(message)


def connect(
    url: str, settings: PostgresConfig, timeout_ms: int, *, application_name: str, read_only: bool = False
) -> psycopg.Connection[Any]:
    """An autocommit connection in UTC with ``settings.schema`` first on the search path, for the sink
    and the importer's target alike; a failure is classified. ``application_name`` gets ``/<schema>``
    (tests end one schema's connections by it)."""
    # The sink's schema first: `oceanus query "SELECT ... FROM pageview"` works as with DuckDB.
    options = f"-c statement_timeout={timeout_ms} -c TimeZone=UTC -c search_path={settings.schema},public"
    if read_only:
        options += " -c default_transaction_read_only=on"
    try:
        return psycopg.connect(
            url,
            autocommit=True,
            connect_timeout=max(1, round(settings.connect_timeout_s)),
            options=options,
            application_name=f"{application_name}/{settings.schema}"[:63],
            # A peer that vanished without a reset (a cut cable, a dropped proxy) is noticed.
            keepalives=1,
            keepalives_idle=10,
            keepalives_interval=5,
            keepalives_count=3,
            tcp_user_timeout=timeout_ms,
        )
    except psycopg.Error as exc:
        raise classify(exc, "cannot connect") from None


def _q(*names: str) -> sql.Composable:
    return sql.Identifier(*names)


def short_name(prefix: str, table: str, suffix: str) -> str:
    """``prefix + table + suffix``; past PostgreSQL's 63 bytes (where it would cut names silently, and two
    long tables could share one) the table's name is shortened and a hash of it added."""
    if len(prefix) + len(table) + len(suffix) <= MAX_IDENTIFIER:
        return prefix + table + suffix
    keep = MAX_IDENTIFIER - len(prefix) - len(suffix) - 9
    return f"{prefix}{table[:keep]}_{hashlib.sha1(table.encode()).hexdigest()[:8]}{suffix}"


def partition_name(table: str, day: dt.date) -> str:
    """``<table>_pYYYYMMDD`` (shortened with a hash past 63 bytes)."""
    return short_name("", table, f"_p{day:%Y%m%d}")


def _converters(columns: Sequence[tuple[int, str, FieldType]]) -> list[Converter]:
    out: list[Converter] = []
    for _j, name, ftype in columns:
        if name == "event_id":
            out.append(event_id_hex)
        elif ftype == "string":
            out.append(lambda v: check_text(v, nul_ok=False))
        elif ftype == "json":
            out.append(lambda v: check_json(v, nul_ok=False))
        elif ftype == "int":
            out.append(check_int)
        elif ftype == "float":
            out.append(lambda v: check_float(v, finite=False))
        elif ftype == "bool":
            out.append(check_bool)
        else:
            out.append(check_timestamp_us)
    return out


def _select_expr(name: str, ftype: FieldType) -> sql.Composable:
    """A staging column as the table's type."""
    col = _q(name)
    if ftype == "timestamp":
        # Whole seconds, then the microseconds: `bigint * interval` goes through a double and
        # rounds past 2^53 µs (year 2255); these two parts are exact over 0001..9999.
        return sql.SQL("to_timestamp({} / 1000000) + mod({}, 1000000) * interval '1 microsecond'").format(col, col)
    if ftype == "json":
        return sql.SQL("{}::jsonb").format(col)
    return col


class PostgresSink:
    """``[sink] kind = "postgres"``: the database of ``$sink.postgres.url_env``."""

    name = "postgres"

    def __init__(self, cfg: Config) -> None:
        self._settings = cfg.sink.postgres
        self.schema = self._settings.schema
        self._url = database_url(self._settings.url_env, "sink.postgres.url_env")
        self._query_url = (
            database_url(self._settings.query_url_env, "sink.postgres.query_url_env")
            if self._settings.query_url_env
            else self._url
        )
        # One connection for every write (the worker threads of several streams take turns:
        # a write is one transaction). None after a failure: the next write reconnects.
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()
        #: Staging table columns made on the current connection, per stream.
        self._staged: dict[str, tuple[str, ...]] = {}
        #: Partitions known to exist: (table, day).
        self._partitions: set[tuple[str, dt.date]] = set()
        #: Table columns with their config type, per stream, as last synced.
        self._tables: dict[str, dict[str, FieldType]] = {}
        self.connects = 0

    # ------------------------------------------------------------------ connection

    def _connect(self, url: str, timeout_ms: int, read_only: bool = False) -> psycopg.Connection[Any]:
        return connect(url, self._settings, timeout_ms, read_only=read_only, application_name="oceanus-flusher")

    def _connection(self) -> psycopg.Connection[Any]:
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            self._drop()
            conn = self._connect(self._url, round(self._settings.statement_timeout_s * 1000))
            self._conn = conn
            self.connects += 1
        return conn

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
        self._conn = None
        self._staged.clear()

    def _fail(self, exc: BaseException, what: str) -> SinkError:
        """Classify; a connection that may be in any state afterwards is dropped (reconnect next time)."""
        error = classify(exc, what)
        conn = self._conn
        if conn is None or conn.closed or conn.broken or error.reason in (Reason.CONNECTION, Reason.TIMEOUT):
            self._drop()
        if error.reason is Reason.NOT_FOUND:
            # A table or schema dropped under this process: the next attempt makes it again from the config.
            self._tables.clear()
            self._partitions.clear()
        return error

    # ------------------------------------------------------------------ tables

    def _existing(self, conn: psycopg.Connection[Any], table: str) -> dict[str, str]:
        rows = conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
            (self.schema, table),
        ).fetchall()
        return {str(n): str(t) for n, t in rows}

    def ensure_tables(self, streams: Sequence[StreamConfig]) -> list[str]:
        with self._lock:
            try:
                conn = self._connection()
                # Only when missing: CREATE SCHEMA wants the database's CREATE privilege even with IF NOT
                # EXISTS, which a role granted only its own schema does not have.
                if conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (self.schema,)).fetchone() is None:
                    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(_q(self.schema)))
                plans = [(s, self._plan(conn, s)) for s in streams]  # refuse before changing anything
                changes: list[str] = []
                for stream, (create, added) in plans:
                    changes += self._apply(conn, stream, create, added)
                return changes
            except psycopg.Error as exc:
                raise self._fail(exc, "cannot create or migrate tables") from None

    def _plan(self, conn: psycopg.Connection[Any], stream: StreamConfig) -> tuple[bool, list[tuple[str, FieldType]]]:
        if len(stream.name + DEDUP_VIEW_SUFFIX) > MAX_IDENTIFIER:
            raise ConfigError(
                f"streams.{stream.name}: PostgreSQL names are at most {MAX_IDENTIFIER} bytes and the "
                f"view {stream.name}{DEDUP_VIEW_SUFFIX} would be longer; shorten the stream's name"
            )
        existing = self._existing(conn, stream.name)
        if not existing:
            return True, column_types(stream)
        added: list[tuple[str, FieldType]] = []
        for name, ftype in column_types(stream):
            have = existing.get(name)
            if have is None:
                added.append((name, ftype))
            elif have != PG_TYPES[ftype]:
                raise ConfigError(
                    f"streams.{stream.name}.fields.{name}: the PostgreSQL table {self.schema}.{stream.name} has "
                    f"this column as {have}, the config says {ftype} ({PG_TYPES[ftype]}); column types are never "
                    "changed in place — add a field with a new name instead"
                )
        return False, added

    def _apply(
        self, conn: psycopg.Connection[Any], stream: StreamConfig, create: bool, added: list[tuple[str, FieldType]]
    ) -> list[str]:
        table, changes = stream.name, []
        with conn.transaction():
            if create:
                cols = sql.SQL(", ").join(
                    sql.SQL("{} {}{}").format(
                        _q(n), sql.SQL(PG_TYPES[t]), sql.SQL(" NOT NULL" if n in REQUIRED_COLUMNS else "")
                    )
                    for n, t in added
                )
                conn.execute(
                    sql.SQL(
                        "CREATE TABLE IF NOT EXISTS {} ({}, PRIMARY KEY (event_id, received_at)) "
                        "PARTITION BY RANGE (received_at)"
                    ).format(_q(self.schema, table), cols)
                )
                changes.append(
                    f"postgres: created table {self.schema}.{table} ({len(added)} columns, partitioned by day)"
                )
            else:
                for n, t in added:
                    conn.execute(
                        sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}").format(
                            _q(self.schema, table), _q(n), sql.SQL(PG_TYPES[t])
                        )
                    )
                    changes.append(f"postgres: added column {table}.{n} {PG_TYPES[t]} (NULL in existing rows)")
            view = table + DEDUP_VIEW_SUFFIX
            has_view = conn.execute(
                "SELECT 1 FROM information_schema.views WHERE table_schema = %s AND table_name = %s",
                (self.schema, view),
            ).fetchone()
            if create or added or has_view is None:
                # New columns come last, so CREATE OR REPLACE keeps views built on this one working.
                conn.execute(
                    sql.SQL("CREATE OR REPLACE VIEW {} AS SELECT * FROM {}").format(
                        _q(self.schema, view), _q(self.schema, table)
                    )
                )
                if not create:
                    changes.append(f"postgres: (re)created view {self.schema}.{view}")
        today = dt.datetime.now(dt.UTC).date()
        self._ensure_partitions(
            conn, table, (today + dt.timedelta(days=d) for d in range(self._settings.partition_days_ahead + 1))
        )
        self._tables[table] = {n: stream_type for n, stream_type in column_types(stream)}
        self._staged.pop(table, None)
        return changes

    def _ensure_partitions(self, conn: psycopg.Connection[Any], table: str, days: Iterable[dt.date]) -> None:
        for day in sorted(set(days)):
            if (table, day) in self._partitions:
                continue
            lo = dt.datetime.combine(day, dt.time(), dt.UTC)
            # Another flusher may make it between IF NOT EXISTS's check and this one's catalog insert.
            with contextlib.suppress(psycopg.errors.DuplicateTable, psycopg.errors.UniqueViolation):
                self._create_partition(conn, table, day, lo)
            self._partitions.add((table, day))

    def _create_partition(self, conn: psycopg.Connection[Any], table: str, day: dt.date, lo: dt.datetime) -> None:
        with conn.transaction():
            conn.execute(
                sql.SQL("CREATE TABLE IF NOT EXISTS {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
                    _q(self.schema, partition_name(table, day)),
                    _q(self.schema, table),
                    sql.Literal(lo.isoformat()),
                    sql.Literal((lo + dt.timedelta(days=1)).isoformat()),
                )
            )

    # ------------------------------------------------------------------ writes

    def write(self, batch: Batch, state: WriteState) -> WriteResult:
        # ON CONFLICT on the key makes a replayed batch harmless: no write state is needed.
        if not batch.rows:
            return WriteResult(written=0)
        columns = table_columns(batch)
        kept, values, refused = convert_rows(batch, columns, _converters(columns))
        with self._lock:
            try:
                conn = self._connection()
                table = batch.stream.name
                if table not in self._tables:
                    create, added = self._plan(conn, batch.stream)
                    self._apply(conn, batch.stream, create, added)
                rpos = [c for _j, c, _t in columns].index("received_at")
                self._ensure_partitions(conn, table, (_day(v[rpos]) for v in values))
                # Outside the write's transaction: a rollback there would take the table with it.
                stage = self._stage(conn, table, columns)
                try:
                    with conn.transaction():
                        self._bulk(conn, batch.stream, stage, columns, values)
                except psycopg.Error as exc:
                    if _no_partition(exc):
                        # A day was dropped under this process (retention): what it knew of the table's
                        # partitions is stale; the worker's next attempt makes the day again.
                        self._partitions = {p for p in self._partitions if p[0] != table}
                        raise TransientError(
                            f"postgres: insert into {self.schema}.{table}: {one_line(exc)} "
                            "(a dropped day partition: made again on the next attempt)"
                        ) from None
                    if not _data_error(exc) or conn.broken:
                        raise
                    refused.update(self._row_by_row(conn, batch.stream, columns, kept, values))
                except UnicodeEncodeError:
                    refused.update(self._row_by_row(conn, batch.stream, columns, kept, values))
            except psycopg.Error as exc:
                raise self._fail(exc, f"insert into {self.schema}.{batch.stream.name} failed") from None
        rejected = tuple(RowError(i, reason) for i, reason in sorted(refused.items()))
        return WriteResult(written=len(batch.rows) - len(rejected), rejected=rejected)

    def _stage(self, conn: psycopg.Connection[Any], table: str, columns: Sequence[tuple[int, str, FieldType]]) -> str:
        """The connection's staging table for ``table`` with exactly these columns (made when they change)."""
        names = tuple(c for _j, c, _t in columns)
        stage = short_name("_oceanus_stage_", table, "")
        if self._staged.get(table) != names:
            self._staged.pop(table, None)
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(_q(stage)))
            cols = sql.SQL(", ").join(sql.SQL("{} {}").format(_q(c), sql.SQL(STAGE_TYPES[t])) for _j, c, t in columns)
            conn.execute(sql.SQL("CREATE TEMPORARY TABLE {} ({}) ON COMMIT DELETE ROWS").format(_q(stage), cols))
            self._staged[table] = names
        return stage

    def _bulk(
        self,
        conn: psycopg.Connection[Any],
        stream: StreamConfig,
        stage: str,
        columns: Sequence[tuple[int, str, FieldType]],
        values: Sequence[tuple[Any, ...]],
    ) -> None:
        names = [c for _j, c, _t in columns]
        with conn.cursor() as cur:
            with cur.copy(
                sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(_q(stage), sql.SQL(", ").join(map(_q, names)))
            ) as copy:
                copy.set_types([STAGE_TYPES[t] for _j, _c, t in columns])
                for row in values:
                    copy.write_row(row)
            cur.execute(
                sql.SQL(
                    "INSERT INTO {} ({}) SELECT DISTINCT ON (event_id) {} FROM {} "
                    "ON CONFLICT (event_id, received_at) DO NOTHING"
                ).format(
                    _q(self.schema, stream.name),
                    sql.SQL(", ").join(map(_q, names)),
                    sql.SQL(", ").join(_select_expr(c, t) for _j, c, t in columns),
                    _q(stage),
                )
            )

    def _row_by_row(
        self,
        conn: psycopg.Connection[Any],
        stream: StreamConfig,
        columns: Sequence[tuple[int, str, FieldType]],
        kept: Sequence[int],
        values: Sequence[tuple[Any, ...]],
    ) -> dict[int, str]:
        """The server refused the batch's data: one INSERT per row, each in a savepoint; the refused rows."""
        names = sql.SQL(", ").join(_q(c) for _j, c, _t in columns)
        insert = sql.SQL(
            "INSERT INTO {} ({}) SELECT {} FROM (VALUES ({})) AS v ({}) ON CONFLICT (event_id, received_at) DO NOTHING"
        ).format(
            _q(self.schema, stream.name),
            names,
            sql.SQL(", ").join(_select_expr(c, t) for _j, c, t in columns),
            sql.SQL(", ").join(sql.SQL("%s::" + STAGE_TYPES[t]) for _j, _c, t in columns),
            names,
        )
        refused: dict[int, str] = {}
        with conn.transaction():
            for i, row in zip(kept, values, strict=True):
                try:
                    with conn.transaction():
                        conn.execute(insert, row)
                except psycopg.Error as exc:
                    if not _data_error(exc) or conn.broken:
                        raise
                    refused[i] = f"refused by PostgreSQL: {one_line(exc)}"
                except UnicodeEncodeError as exc:
                    refused[i] = f"not valid UTF-8: {exc.reason}"
        return refused

    # ------------------------------------------------------------------ reads

    def query(self, sql_text: str, timeout_s: float = QUERY_TIMEOUT_S) -> QueryResult:
        """One read-only statement in a READ ONLY transaction on a connection of its own, rolled back."""
        statement = check_read_only(sql_text)
        timeout_ms = max(1, round(timeout_s * 1000))
        try:
            conn = self._connect(self._query_url, timeout_ms, read_only=True)
        except SinkError as exc:
            raise QueryError(str(exc)) from None
        try:
            conn.autocommit = False
            with conn.cursor() as cur:
                cur.execute("SET TRANSACTION READ ONLY")
                # Prepared: the extended protocol refuses a second statement after a `;`.
                cur.execute(statement.encode(), prepare=True)
                columns = [d.name for d in cur.description] if cur.description else []
                fetched = cur.fetchmany(MAX_QUERY_ROWS + 1) if columns else []
            conn.rollback()
        except psycopg.Error as exc:
            if getattr(exc, "sqlstate", None) == "57014":
                raise QueryTimeout(
                    f"query interrupted after {timeout_s:g} s (flusher.query_timeout_s); "
                    "narrow it with a WHERE or a LIMIT"
                ) from None
            raise QueryError(one_line(exc)) from None
        finally:
            conn.close()
        if len(fetched) > MAX_QUERY_ROWS:
            raise QueryError(f"the result has more than {MAX_QUERY_ROWS} rows; add a LIMIT")
        return QueryResult(columns=columns, rows=[[plain(v) for v in row] for row in fetched])

    def close(self) -> None:
        with self._lock:
            self._drop()


def _day(received_at_us: int) -> dt.date:
    return (_EPOCH + dt.timedelta(microseconds=received_at_us - received_at_us % DAY_US)).date()

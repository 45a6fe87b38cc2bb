"""MySQL / MariaDB sink: one InnoDB table per stream, exactly once by ``event_id``.

Table of a stream (derived from its config) in the database the URL names::

    event_id CHAR(32) ASCII NOT NULL  -- PRIMARY KEY
    received_at DATETIME(6) NOT NULL  -- UTC, microseconds; KEY
    ip, ua, device MEDIUMTEXT
    <fields> MEDIUMTEXT | BIGINT | DOUBLE | BOOLEAN | DATETIME(6) | JSON
    extra JSON

plus ``<stream>_dedup``, a plain view (the table is already unique), so queries
port from the other sinks.

Not partitioned, on purpose: MySQL wants the partitioning column in every
unique key, so the key would become ``(event_id, received_at)``, and each new
day would need an ``ALTER TABLE ... REORGANIZE PARTITION`` of a MAXVALUE
partition, which locks the table. The event id begins with the receive time
in milliseconds, so the clustered primary key on it appends in time order like
a partitioned one, and the ``received_at`` key serves time ranges. Old data
goes with ``DELETE ... WHERE received_at < ...`` in chunks.

One write, one transaction: multi-row ``INSERT IGNORE`` statements of at most
``sink.mysql.max_statement_bytes`` each, then COMMIT. A row whose event_id is
stored already is skipped (warning 1062): a batch written twice inserts
nothing the second time. ``IGNORE`` also turns data errors into warnings and
stores a coerced value (or, for a CHECK, nothing) instead, so after each
statement any warning other than 1062 makes the write roll back and go row by
row without ``IGNORE``, in strict mode: duplicates (1062) are skipped, a row
the server refuses is a dead letter. Values are checked in Python first
(types, ranges, JSON, finite floats), so that path is rare.

The session runs with ``time_zone = '+00:00'`` and ``STRICT_ALL_TABLES``.
Failures are classified (:func:`classify`), never retried here; a broken
connection is dropped and the next attempt connects afresh.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import threading
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pymysql
import pymysql.cursors
from pymysql.converters import escape_float, escape_string

from flusher.sinks.base import Batch, QueryResult, RowError, WriteResult, WriteState
from flusher.sinks.common import DEDUP_VIEW_SUFFIX, REQUIRED_COLUMNS, column_types, plain
from flusher.sinks.sql import (
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
from oceanus.config import Config, FieldType, MySQLConfig, StreamConfig
from oceanus.errors import (
    ConfigError,
    PermanentError,
    QueryError,
    QueryTimeout,
    Reason,
    SinkError,
    TransientError,
)

#: Column type of each config field type (``event_id`` and ``received_at`` are declared apart).
MYSQL_TYPES: dict[FieldType, str] = {
    "string": "MEDIUMTEXT",
    "int": "BIGINT",
    "float": "DOUBLE",
    "bool": "BOOLEAN",
    "timestamp": "DATETIME(6)",
    "json": "JSON",
}
#: information_schema's DATA_TYPE for each (MariaDB's JSON is LONGTEXT with a JSON_VALID check).
MYSQL_DATA_TYPES: dict[FieldType, frozenset[str]] = {
    "string": frozenset({"mediumtext"}),
    "int": frozenset({"bigint"}),
    "float": frozenset({"double"}),
    "bool": frozenset({"tinyint"}),
    "timestamp": frozenset({"datetime"}),
    "json": frozenset({"json", "longtext"}),
}
SERVER_TYPES = {
    "event_id": ("CHAR(32) CHARACTER SET ascii NOT NULL", frozenset({"char"})),
    "received_at": ("DATETIME(6) NOT NULL", frozenset({"datetime"})),
}
QUERY_TIMEOUT_S = 10.0
#: MySQL's identifier length.
MAX_IDENTIFIER = 64
#: Warning 1062: a duplicate key that INSERT IGNORE skipped; any other warning is a coerced value.
DUPLICATE_KEY = 1062
SESSION_INIT = (
    "SET time_zone = '+00:00', sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION', max_error_count = 65535"
)
_EPOCH = dt.datetime(1970, 1, 1)
_INTO_FILE = re.compile(r"\binto\s+(?:outfile|dumpfile)\b", re.I)

_TRANSIENT_CODES: dict[int, Reason] = {
    1040: Reason.THROTTLED,  # too many connections
    1203: Reason.THROTTLED,  # max_user_connections
    1205: Reason.TIMEOUT,  # lock wait timeout
    1213: Reason.SERVER,  # deadlock
    1053: Reason.CONNECTION,  # server shutdown in progress
    1927: Reason.CONNECTION,  # MariaDB: connection was killed
    1317: Reason.CONNECTION,  # query execution was interrupted (KILL QUERY, shutdown)
    1021: Reason.IO,  # disk full
    1114: Reason.IO,  # table is full
    1290: Reason.SERVER,  # --read-only: a replica being promoted
    1836: Reason.SERVER,  # read-only mode
    1969: Reason.TIMEOUT,  # MariaDB max_statement_time
    3024: Reason.TIMEOUT,  # MySQL max_execution_time
}
_PERMANENT_CODES: dict[int, Reason] = {
    1044: Reason.AUTH,  # access denied to the database
    1045: Reason.AUTH,  # access denied (password)
    1698: Reason.AUTH,  # access denied (no password / plugin)
    1142: Reason.AUTH,  # command denied on a table
    1227: Reason.AUTH,  # needs a privilege
    1049: Reason.NOT_FOUND,  # unknown database
    1146: Reason.NOT_FOUND,  # table doesn't exist
    1054: Reason.NOT_FOUND,  # unknown column: run `oceanus tables sync`
}


def _code(exc: BaseException) -> int:
    args = getattr(exc, "args", ())
    return int(args[0]) if args and isinstance(args[0], int) else 0


def classify(exc: BaseException, what: str) -> SinkError:
    """MySQL's classifier: a failure -> one ``Reason``, transient or permanent."""
    message = f"mysql: {what}: {one_line(exc)}"
    code = _code(exc)
    if code in _TRANSIENT_CODES:
        return TransientError(message, _TRANSIENT_CODES[code])
    if code in _PERMANENT_CODES:
        return PermanentError(message, _PERMANENT_CODES[code])
    if isinstance(exc, pymysql.err.InterfaceError | OSError) or 2000 <= code < 3000:
        # Client-side errors (2003 cannot connect, 2006 gone away, 2013 lost, 0 closed).
        reason = Reason.TIMEOUT if "timed out" in str(exc) else Reason.CONNECTION
        return TransientError(message, reason)
    if isinstance(exc, pymysql.err.DataError | pymysql.err.IntegrityError | pymysql.err.ProgrammingError):
        return PermanentError(message, Reason.INVALID)
    return PermanentError(message)


def _data_error(exc: BaseException) -> bool:
    """A refusal of one row's values (not the connection's, not the table's)."""
    if isinstance(exc, pymysql.err.DataError | pymysql.err.IntegrityError):
        return True
    # 1264 out of range, 1366 incorrect value, 1292 bad datetime, 1406 too long, 3140 bad JSON, 4025 CHECK.
    return _code(exc) in {1264, 1366, 1292, 1406, 3140, 4025, 1048, 1265}


def _q(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


# The converters below return SQL literals, built here rather than by PyMySQL's per-value
# ``escape`` (a third of the write's CPU): strings through PyMySQL's own ``escape_string``
# (the session's sql_mode keeps backslash escapes on), numbers as Python prints them.


def _text_literal(value: Any) -> str:
    return "'" + str(escape_string(check_text(value, nul_ok=True))) + "'"


def _json_literal(value: Any) -> str:
    return "'" + str(escape_string(check_json(value, nul_ok=True))) + "'"


def _int_literal(value: Any) -> str:
    return str(check_int(value))


def _float_literal(value: Any) -> str:
    return str(escape_float(check_float(value, finite=True)))  # "1.5e0": a DOUBLE, not a DECIMAL literal


def _bool_literal(value: Any) -> str:
    return "1" if check_bool(value) else "0"


def _datetime_literal(value: Any) -> str:
    return "'" + (_EPOCH + dt.timedelta(microseconds=check_timestamp_us(value))).isoformat(" ") + "'"


def _event_id_literal(value: Any) -> str:
    return "'" + event_id_hex(value) + "'"


_LITERALS: dict[FieldType, Converter] = {
    "string": _text_literal,
    "json": _json_literal,
    "int": _int_literal,
    "float": _float_literal,
    "bool": _bool_literal,
    "timestamp": _datetime_literal,
}


def _converters(columns: Sequence[tuple[int, str, FieldType]]) -> list[Converter]:
    return [_event_id_literal if name == "event_id" else _LITERALS[ftype] for _j, name, ftype in columns]


def connect_params(url: str) -> dict[str, Any]:
    """``mysql://user:password@host:port/database`` -> PyMySQL's keyword arguments."""
    parts = urlsplit(url)
    if parts.scheme not in ("mysql", "mariadb", "mysql+pymysql"):
        raise ConfigError(f"sink.mysql.url_env: expected a mysql:// URL, got {parts.scheme or 'no'} scheme")
    database = unquote(parts.path.lstrip("/"))
    if not database:
        raise ConfigError("sink.mysql.url_env: the URL names no database (mysql://user:password@host:3306/DB)")
    params: dict[str, Any] = {
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or 3306,
        "user": unquote(parts.username or "root"),
        "password": unquote(parts.password or ""),
        "database": database,
    }
    socket = parse_qs(parts.query).get("unix_socket")
    if socket:
        params["unix_socket"] = socket[0]
    return params


def connect(params: dict[str, Any], settings: MySQLConfig, timeout_s: float) -> pymysql.connections.Connection[Any]:
    """A connection (not autocommit) in UTC and strict mode, for the sink and the importer's target alike;
    a failure is classified, with the password masked."""
    try:
        return pymysql.connect(
            **params,
            charset="utf8mb4",
            autocommit=False,
            init_command=SESSION_INIT,
            connect_timeout=settings.connect_timeout_s,
            read_timeout=timeout_s,
            write_timeout=timeout_s,
            cursorclass=pymysql.cursors.Cursor,
        )
    except (pymysql.Error, OSError) as exc:
        error = classify(exc, "cannot connect")
        password = str(params.get("password") or "")
        if password and password in str(error):
            error.args = (str(error).replace(password, "***"),)
        raise error from None


class MySQLSink:
    """``[sink] kind = "mysql"``: the database of ``$sink.mysql.url_env`` (MySQL 8 or MariaDB 10.5+)."""

    name = "mysql"

    def __init__(self, cfg: Config) -> None:
        self._settings = cfg.sink.mysql
        self._params = connect_params(database_url(self._settings.url_env, "sink.mysql.url_env"))
        self._query_params = (
            connect_params(database_url(self._settings.query_url_env, "sink.mysql.query_url_env"))
            if self._settings.query_url_env
            else self._params
        )
        self.database = str(self._params["database"])
        self._conn: pymysql.connections.Connection[Any] | None = None
        self._lock = threading.Lock()
        self._tables: set[str] = set()
        self.connects = 0

    # ------------------------------------------------------------------ connection

    def _connect(self, params: dict[str, Any], timeout_s: float) -> pymysql.connections.Connection[Any]:
        return connect(params, self._settings, timeout_s)

    def _connection(self) -> pymysql.connections.Connection[Any]:
        conn = self._conn
        if conn is None or not conn.open:
            self._drop()
            conn = self._connect(self._params, self._settings.timeout_s)
            self._conn = conn
            self.connects += 1
        return conn

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(pymysql.Error, OSError):
                self._conn.close()
        self._conn = None

    def _fail(self, exc: BaseException, what: str) -> SinkError:
        error = classify(exc, what)
        if error.reason is Reason.NOT_FOUND:
            self._tables.clear()  # a table dropped under this process: the next attempt makes it again
        conn = self._conn
        if conn is not None and conn.open and error.reason not in (Reason.CONNECTION, Reason.TIMEOUT):
            try:
                conn.rollback()
            except (pymysql.Error, OSError):
                self._drop()
        else:
            self._drop()
        return error

    # ------------------------------------------------------------------ tables

    def _existing(self, cur: pymysql.cursors.Cursor, table: str) -> dict[str, str]:
        cur.execute(
            "SELECT COLUMN_NAME, DATA_TYPE FROM information_schema.COLUMNS "
            "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s ORDER BY ORDINAL_POSITION",
            (self.database, table),
        )
        return {str(n): str(t).lower() for n, t in cur.fetchall()}

    def ensure_tables(self, streams: Sequence[StreamConfig]) -> list[str]:
        with self._lock:
            try:
                conn = self._connection()
                with conn.cursor() as cur:
                    plans = [(s, self._plan(cur, s)) for s in streams]  # refuse before changing anything
                    changes: list[str] = []
                    for stream, (create, added) in plans:
                        changes += self._apply(cur, stream, create, added)
                conn.commit()
                return changes
            except (pymysql.Error, OSError) as exc:
                raise self._fail(exc, "cannot create or migrate tables") from None

    def _plan(self, cur: pymysql.cursors.Cursor, stream: StreamConfig) -> tuple[bool, list[tuple[str, FieldType]]]:
        if len(stream.name + DEDUP_VIEW_SUFFIX) > MAX_IDENTIFIER:
            raise ConfigError(
                f"streams.{stream.name}: MySQL names are at most {MAX_IDENTIFIER} characters and the "
                f"view {stream.name}{DEDUP_VIEW_SUFFIX} would be longer; shorten the stream's name"
            )
        existing = self._existing(cur, stream.name)
        if not existing:
            return True, column_types(stream)
        added: list[tuple[str, FieldType]] = []
        for name, ftype in column_types(stream):
            have = existing.get(name)
            want = SERVER_TYPES[name][1] if name in SERVER_TYPES else MYSQL_DATA_TYPES[ftype]
            if have is None:
                added.append((name, ftype))
            elif have not in want:
                raise ConfigError(
                    f"streams.{stream.name}.fields.{name}: the MySQL table {self.database}.{stream.name} has this "
                    f"column as {have}, the config says {ftype} ({MYSQL_TYPES[ftype]}); column types are never "
                    "changed in place — add a field with a new name instead"
                )
        return False, added

    def _apply(
        self, cur: pymysql.cursors.Cursor, stream: StreamConfig, create: bool, added: list[tuple[str, FieldType]]
    ) -> list[str]:
        table, changes = stream.name, []
        if create:
            cols = ", ".join(
                f"{_q(n)} {SERVER_TYPES[n][0] if n in REQUIRED_COLUMNS else MYSQL_TYPES[t]}" for n, t in added
            )
            # DDL commits by itself in MySQL; IF NOT EXISTS lets two flushers start together.
            cur.execute(
                f"CREATE TABLE IF NOT EXISTS {_q(table)} ({cols}, PRIMARY KEY (`event_id`), "
                "KEY `received_at` (`received_at`)) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
            )
            changes.append(f"mysql: created table {self.database}.{table} ({len(added)} columns)")
        else:
            for n, t in added:
                cur.execute(f"ALTER TABLE {_q(table)} ADD COLUMN {_q(n)} {MYSQL_TYPES[t]} NULL")
                changes.append(f"mysql: added column {table}.{n} {MYSQL_TYPES[t]} (NULL in existing rows)")
        view = table + DEDUP_VIEW_SUFFIX
        cur.execute(
            "SELECT 1 FROM information_schema.VIEWS WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s", (self.database, view)
        )
        if create or added or cur.fetchone() is None:
            # Re-created on every column change: MySQL expands a view's `*` when it is created.
            cur.execute(f"CREATE OR REPLACE VIEW {_q(view)} AS SELECT * FROM {_q(table)}")
            if not create:
                changes.append(f"mysql: (re)created view {self.database}.{view}")
        self._tables.add(table)
        return changes

    # ------------------------------------------------------------------ writes

    def write(self, batch: Batch, state: WriteState) -> WriteResult:
        # The primary key makes a replayed batch harmless: no write state is needed.
        if not batch.rows:
            return WriteResult(written=0)
        columns = table_columns(batch)
        kept, values, refused = convert_rows(batch, columns, _converters(columns), null="NULL")
        with self._lock:
            try:
                conn = self._connection()
                with conn.cursor() as cur:
                    if batch.stream.name not in self._tables:
                        create, added = self._plan(cur, batch.stream)
                        self._apply(cur, batch.stream, create, added)
                    head = (
                        f"INSERT {{}}INTO {_q(batch.stream.name)} ({', '.join(_q(c) for _j, c, _t in columns)}) VALUES "
                    )
                    literals = ["(" + ",".join(row) + ")" for row in values]
                    if not self._bulk(cur, head.format("IGNORE "), literals):
                        conn.rollback()
                        refused.update(self._row_by_row(cur, head.format(""), kept, literals))
                conn.commit()
            except (pymysql.Error, OSError) as exc:
                raise self._fail(exc, f"insert into {self.database}.{batch.stream.name} failed") from None
        rejected = tuple(RowError(i, reason) for i, reason in sorted(refused.items()))
        return WriteResult(written=len(batch.rows) - len(rejected), rejected=rejected)

    def _bulk(self, cur: pymysql.cursors.Cursor, head: str, literals: Sequence[str]) -> bool:
        """Multi-row INSERT IGNOREs; False when the server coerced or dropped a value (a warning but 1062)."""
        limit = self._settings.max_statement_bytes
        start = 0
        while start < len(literals):
            size, end = len(head), start
            while end < len(literals) and (end == start or size + len(literals[end]) + 1 <= limit):
                size += len(literals[end]) + 1
                end += 1
            cur.execute(head + ",".join(literals[start:end]))
            if cur.warning_count:
                cur.execute("SHOW WARNINGS")
                if any(int(code) != DUPLICATE_KEY for _level, code, _msg in cur.fetchall()):
                    return False
            start = end
        return True

    def _row_by_row(
        self, cur: pymysql.cursors.Cursor, head: str, kept: Sequence[int], literals: Sequence[str]
    ) -> dict[int, str]:
        """One strict INSERT per row: a duplicate is skipped, a refused row returned. A failed statement
        rolls back only itself (InnoDB), so the transaction goes on."""
        refused: dict[int, str] = {}
        for i, literal in zip(kept, literals, strict=True):
            try:
                cur.execute(head + literal)
            except pymysql.err.IntegrityError as exc:
                if _code(exc) != DUPLICATE_KEY:
                    refused[i] = f"refused by MySQL: {one_line(exc)}"
            except (pymysql.err.DataError, pymysql.err.OperationalError, pymysql.err.InternalError) as exc:
                if not _data_error(exc):
                    raise
                refused[i] = f"refused by MySQL: {one_line(exc)}"
        return refused

    # ------------------------------------------------------------------ reads

    def query(self, sql_text: str, timeout_s: float = QUERY_TIMEOUT_S) -> QueryResult:
        """One read-only statement in a READ ONLY transaction on a connection of its own, rolled back."""
        statement = check_read_only(sql_text)
        if _INTO_FILE.search(statement):
            # A read-only transaction still lets SELECT write a file on the server's disk.
            raise QueryError("SELECT ... INTO OUTFILE/DUMPFILE writes a file on the server; not served here")
        try:
            # The socket timeout is a backstop: the server stops the statement first.
            conn = self._connect(self._query_params, timeout_s + 5)
        except SinkError as exc:
            raise QueryError(str(exc)) from None
        try:
            with conn.cursor() as cur:
                if "mariadb" in conn.get_server_info().lower():
                    cur.execute("SET SESSION max_statement_time = %s", (timeout_s,))
                else:
                    cur.execute("SET SESSION max_execution_time = %s", (max(1, round(timeout_s * 1000)),))
                cur.execute("START TRANSACTION READ ONLY")
                # No args: PyMySQL sends the text as is, and without CLIENT.MULTI_STATEMENTS the
                # server refuses a second statement after a `;`.
                cur.execute(statement)
                columns = [d[0] for d in cur.description] if cur.description else []
                fetched = cur.fetchmany(MAX_QUERY_ROWS + 1) if columns else []
            conn.rollback()
        except (pymysql.Error, OSError) as exc:
            if _code(exc) in (1969, 3024):
                raise QueryTimeout(
                    f"query interrupted after {timeout_s:g} s (flusher.query_timeout_s); "
                    "narrow it with a WHERE or a LIMIT"
                ) from None
            raise QueryError(one_line(exc)) from None
        finally:
            with contextlib.suppress(pymysql.Error, OSError):
                conn.close()
        if len(fetched) > MAX_QUERY_ROWS:
            raise QueryError(f"the result has more than {MAX_QUERY_ROWS} rows; add a LIMIT")
        return QueryResult(columns=columns, rows=[[plain(v) for v in row] for row in fetched])

    def close(self) -> None:
        with self._lock:
            self._drop()

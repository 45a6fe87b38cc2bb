"""DuckDB sink: the embedded warehouse, one table per stream, exact dedupe.

Table of a stream (derived from its config, nothing hand-written)::

    event_id VARCHAR               -- 32 hex digits; replays insert nothing twice
    received_at TIMESTAMP          -- UTC, microseconds
    ip, ua, device VARCHAR
    <fields>  VARCHAR | BIGINT | DOUBLE | BOOLEAN | TIMESTAMP | JSON
    extra JSON

plus a ``<stream>_dedup`` view, the name the BigQuery sink uses for its
de-duplicating view, so queries port between the two (here the table is
already unique and the view is a plain ``SELECT *``).

Writes: the batch becomes one Arrow table (a column at a time: one C call per
column, event ids hexed in one ``bytes.hex()``), inserted with one
``INSERT ... SELECT`` (one transaction) that skips rows already stored.

Exact dedupe without a key: a replayed row is byte-identical, so an existing
copy has the same ``received_at``. The sink keeps the table's high-water mark,
the newest ``received_at`` stored (read with ``max()`` when it first writes a
table, then kept: it is the file's only writer). Rows received after it cannot
have a stored copy and go straight in, which is every row in the normal case;
only the others (a replay, or a batch overlapping the last one) are
anti-joined with the event ids stored in their ``[min, high-water]`` range of
``received_at``, whose zone maps (exact min/max per row group, rows arrive
roughly in time order) make that a scan of the newest row group or two, not
of the table. The anti-join cost 5-20 % of a plain insert's CPU when every
batch paid it (bench/RESULTS.md). A ``PRIMARY KEY`` did the same at
1.5-2x the insert cost, and DuckDB keeps its ART index in memory: gigabytes
for a year of pageviews. It is safe because DuckDB lets one process write the
file and this sink serialises its writes. Tables created by earlier versions
keep their key (DuckDB cannot drop it); the anti-join runs there too, so the
key is never hit. Duplicates inside one batch (a frame pushed twice) are
dropped before the insert.

A value Arrow or DuckDB refuses (a string in an int column, malformed JSON)
rejects that row only: it is reported back for the dead-letter list and the
rest is inserted.

DuckDB runs ``sink.duckdb.threads`` threads (default 1): an insert of one
batch does not parallelise, and on a small box the threads it would start
only compete with the flusher's own decoding of the next batch.

Readers: DuckDB lets one process open a file for writing and no other process
open it at all meanwhile. The flusher therefore answers read-only SQL for
other processes through :meth:`DuckDBSink.query` (its admin ``POST /query``,
off unless ``flusher.query_enabled``), on a reader connection of its own inside
a transaction that is rolled back. The database is opened locked down
(:data:`LOCKED_DOWN`): no file outside the database itself (``read_text``,
``glob``, ``COPY``, ``ATTACH``), no extension installed or loaded, and no
``SET`` that could undo it. A query is interrupted after its timeout
(``connection.interrupt()`` from a timer), so a cross join costs its caller
an error, not the flusher a core for ever.

Memory: DuckDB keeps what it loaded for each row group the dedupe scans
touched, and the newest blocks in its buffer pool, for the life of the open
database (~10 B and ~28 B per stored row, measured; bench/RESULTS.md). The
file is closed and reopened every ``sink.duckdb.reopen_rows`` rows written,
which keeps the flusher's memory flat however large the tables grow.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import duckdb
import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from flusher.columns import Layout
from flusher.sinks.base import Batch, QueryResult, RowError, WriteResult, WriteState
from flusher.sinks.common import DEDUP_VIEW_SUFFIX, LegacyColumn, arrow_types, column_types, legacy_columns, plain
from oceanus.config import Config, FieldType, StreamConfig
from oceanus.errors import ConfigError, PermanentError, QueryError, QueryTimeout, Reason, SinkError, TransientError

#: Warehouse type of each config field type.
DUCKDB_TYPES: dict[FieldType, str] = {
    "string": "VARCHAR",
    "int": "BIGINT",
    "float": "DOUBLE",
    "bool": "BOOLEAN",
    "timestamp": "TIMESTAMP",
    "json": "JSON",
}
#: ``POST /query`` answers at most this many rows; more is a 400 asking for a LIMIT.
MAX_QUERY_ROWS = 10_000
#: Statement kinds /query runs: nothing that writes, attaches or copies files.
READ_ONLY_STATEMENTS = frozenset({duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN})
#: Database settings fixed at open. The settings are per database, so the writer
#: runs under them too: it needs nothing outside its own file, and the JSON type
#: is built into the Python package. Queries arrive over HTTP, so any file the
#: flusher can read (``read_text('/etc/passwd')``), any directory (``glob``) and
#: the network (extension auto-install) would otherwise be theirs.
LOCKED_DOWN: dict[str, str | bool | int] = {
    "enable_external_access": False,
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    # Last: nothing (a `SET enable_external_access = true` in a query) changes them afterwards.
    "lock_configuration": True,
}
#: A query's timeout when the caller gives none (seconds; flusher.query_timeout_s).
QUERY_TIMEOUT_S = 10.0
#: Passes of one write: rows Arrow refuses, then rows whose JSON DuckDB refuses, then the insert.
ISOLATION_PASSES = 3

#: Naive timestamps: DuckDB's TIMESTAMP holds UTC without a zone.
_ARROW: dict[FieldType, pa.DataType] = arrow_types(None)
_ARROW_ERRORS = (pa.ArrowException, OverflowError, TypeError, ValueError, AttributeError)
_json_dec = msgspec.json.Decoder()


def _q(name: str) -> str:
    """Quote an identifier (names are validated by the config, this is belt and braces)."""
    return '"' + name.replace('"', '""') + '"'


def _value_ok(ftype: FieldType, value: Any) -> bool:
    if value is None:
        return True
    if ftype in ("string", "json"):
        return isinstance(value, str)
    if ftype in ("int", "timestamp"):
        return isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63
    if ftype == "float":
        if isinstance(value, bool):
            return False
        # pyarrow refuses an int no double holds exactly: that row, not the batch.
        return isinstance(value, float) or (isinstance(value, int) and -(2**53) <= value <= 2**53)
    return isinstance(value, bool)


def _event_id_hex(value: Any) -> str | None:
    if isinstance(value, bytes) and len(value) == 16:
        return value.hex()
    if isinstance(value, str) and len(value) == 32:
        try:
            int(value, 16)
        except ValueError:
            return None
        return value.lower()
    return None


class DuckDBSink:
    """``[sink] kind = "duckdb"``: a local file, ``sink.duckdb.path``."""

    name = "duckdb"

    def __init__(self, cfg: Config) -> None:
        self.path = Path(cfg.sink.duckdb.path)
        self._settings = cfg.sink.duckdb
        self._con, self._reader = self._open()
        # One writer connection, used by one write at a time (DuckDB connections
        # are not safe for concurrent use), and one reader connection for queries,
        # made with it so a query never touches the writer's. A query that called
        # into the writer's connection while an insert scanned its Arrow view
        # deadlocked: the insert held the connection and waited for the GIL, the
        # query held the GIL and waited for the connection, and the process froze.
        # Lock order: ``_lock`` before ``_read_lock``.
        self._lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._rows_since_open = 0
        self._reopen_failed = False
        self.reopens = 0
        self._tables: dict[str, list[str]] = {}
        #: Per table, the newest ``received_at`` stored (µs; None: none), read once and
        #: then kept by this, the file's only writer; dropped when a write fails.
        self._high: dict[str, int | None] = {}

    def _config(self) -> dict[str, str | bool | int | float | list[str]]:
        settings: dict[str, str | bool | int | float | list[str]] = {}
        if self._settings.threads:
            settings["threads"] = int(self._settings.threads)
        if self._settings.memory_limit:
            settings["memory_limit"] = self._settings.memory_limit
        # At connect time: with the configuration locked, no later SET is possible.
        return {**settings, **LOCKED_DOWN}

    def _open(self) -> tuple[duckdb.DuckDBPyConnection, duckdb.DuckDBPyConnection]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            con = duckdb.connect(str(self.path), config=self._config())
            return con, con.cursor()
        except (OSError, duckdb.Error) as exc:
            text = " ".join(str(exc).split())
            raise ConfigError(f"sink.duckdb.path: cannot open {self.path} for writing: {text}") from None

    def _reopen(self) -> None:
        """Close the database and open it again (caller holds ``_lock``).

        DuckDB keeps what it loaded for each row group a scan touched (the
        anti-join's) for the life of the database, and its buffer pool keeps
        the newest blocks: both grow with the table until the file is closed.
        On failure the old connections stay closed and the next write retries.
        """
        with self._read_lock:
            self._reader.close()
            self._con.close()
            try:
                self._con, self._reader = self._open()
            except ConfigError as exc:
                self._reopen_failed = True
                raise TransientError(f"duckdb: cannot reopen {self.path}: {exc}", Reason.IO) from None
        self._rows_since_open = 0
        self._reopen_failed = False
        self.reopens += 1

    # ------------------------------------------------------------------ tables

    def _existing(self, table: str) -> dict[str, str]:
        rows = self._con.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'main' AND table_name = ? ORDER BY ordinal_position",
            [table],
        ).fetchall()
        return {str(n): str(t).upper() for n, t in rows}

    def ensure_tables(self, streams: Sequence[StreamConfig]) -> list[str]:
        with self._lock:
            plans = [(s, self._plan(s)) for s in streams]  # refuse before changing anything
            changes: list[str] = []
            for stream, (create, added) in plans:
                changes += self._apply(stream, create, added)
            return changes

    def _plan(self, stream: StreamConfig) -> tuple[bool, list[tuple[str, FieldType]]]:
        existing = self._existing(stream.name)
        if not existing:
            return True, column_types(stream)
        added: list[tuple[str, FieldType]] = []
        for name, ftype in column_types(stream):
            want = DUCKDB_TYPES[ftype]
            have = existing.get(name)
            if have is None:
                added.append((name, ftype))
            elif have != want:
                raise ConfigError(
                    f"streams.{stream.name}.fields.{name}: the DuckDB table {stream.name} has this column as "
                    f"{have}, the config says {ftype} ({want}); column types are never changed in place — "
                    "add a field with a new name instead"
                )
        return False, added

    def _apply(self, stream: StreamConfig, create: bool, added: list[tuple[str, FieldType]]) -> list[str]:
        table = stream.name
        changes: list[str] = []
        try:
            if create:
                # No PRIMARY KEY on event_id: the insert's anti-join dedupes (module docstring).
                cols = ", ".join(f"{_q(n)} {DUCKDB_TYPES[t]}" for n, t in added)
                self._con.execute(f"CREATE TABLE {_q(table)} ({cols})")
                changes.append(f"duckdb: created table {table} ({len(added)} columns)")
            else:
                for n, t in added:
                    self._con.execute(f"ALTER TABLE {_q(table)} ADD COLUMN {_q(n)} {DUCKDB_TYPES[t]}")
                    changes.append(f"duckdb: added column {table}.{n} {DUCKDB_TYPES[t]} (NULL in existing rows)")
            view = table + DEDUP_VIEW_SUFFIX
            has_view = self._con.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'main' AND table_name = ? "
                "AND table_type = 'VIEW'",
                [view],
            ).fetchone()
            if create or added or not (has_view and has_view[0]):
                # Re-created on every column change: a view's `*` is expanded when it is created.
                self._con.execute(f"CREATE OR REPLACE VIEW {_q(view)} AS SELECT * FROM {_q(table)}")
                if not create:
                    changes.append(f"duckdb: (re)created view {view}")
            changes += self._legacy_view(stream, create or bool(added))
        except duckdb.Error as exc:
            raise PermanentError(f"duckdb: cannot create or migrate table {table}: {exc}") from None
        self._tables[table] = list(self._existing(table))
        return changes

    def _legacy_view(self, stream: StreamConfig, changed: bool) -> list[str]:
        """``streams.<s>.legacy_view``: the table in the 2016 layout, every column a string."""
        if stream.legacy_view is None:
            return []
        exists = self._con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'main' AND table_name = ? "
            "AND table_type = 'VIEW'",
            [stream.legacy_view],
        ).fetchone()
        if exists and exists[0] and not changed:
            return []
        cols = ", ".join(f"{_legacy_expr(c)} AS {_q(c.name)}" for c in legacy_columns(stream))
        self._con.execute(f"CREATE OR REPLACE VIEW {_q(stream.legacy_view)} AS SELECT {cols} FROM {_q(stream.name)}")
        return [f"duckdb: (re)created view {stream.legacy_view} (the 2016 layout of {stream.name})"]

    # ------------------------------------------------------------------ writes

    def write(self, batch: Batch, state: WriteState) -> WriteResult:
        # The insert's anti-join on event_id (module docstring) makes a replayed
        # batch harmless, so no write state is needed: ``state`` stays untouched.
        if not batch.rows:
            return WriteResult(written=0)
        with self._lock:
            if self._reopen_failed:
                self._reopen()
            if batch.stream.name not in self._tables:
                self._plan_and_apply(batch.stream)
            result = self._write(batch)
            self._rows_since_open += len(batch.rows)
            limit = self._settings.reopen_rows
            if limit and self._rows_since_open >= limit:
                # This batch is written; the next write retries the reopen first.
                with contextlib.suppress(SinkError):
                    self._reopen()
            return result

    def checkpoint(self) -> None:
        """Move what the write-ahead log holds into the database file (DuckDB's ``CHECKPOINT``)."""
        with self._lock:
            self._con.execute("CHECKPOINT")

    def _plan_and_apply(self, stream: StreamConfig) -> None:
        create, added = self._plan(stream)
        self._apply(stream, create, added)

    def arrow_layout(self, stream: StreamConfig) -> Layout | None:
        """The stream's frame columns as this sink's Arrow table (:class:`~flusher.sinks.base.TakesArrow`).

        Built once per stream by its worker, which keeps it.
        """
        types = dict(column_types(stream))
        try:
            return Layout(stream.columns, [_ARROW[types[c]] if c in types else None for c in stream.columns])
        except ValueError:
            return None

    def prepare(self, batch: Batch) -> Batch:
        """The Arrow table of a batch whose values all convert, built outside the write lock."""
        if batch.arrow is not None and batch.arrow.num_rows == len(batch.rows):
            # Built by the native decoder from the frames, in this sink's layout.
            return msgspec.structs.replace(batch, prepared=_Prepared(batch.arrow, len(batch.rows)))
        table = self._arrow(batch, batch.rows, None, {}) if batch.rows else None
        return batch if table is None else msgspec.structs.replace(batch, prepared=_Prepared(table, len(batch.rows)))

    def _write(self, batch: Batch) -> WriteResult:
        rows = batch.rows
        rejected: dict[int, str] = {}
        ready = batch.prepared if isinstance(batch.prepared, _Prepared) and batch.prepared.rows == len(rows) else None
        # Not a retry: each pass drops the rows the last one found invalid (Arrow
        # conversion first, then JSON the insert refused); the third must insert.
        for _pass in range(ISOLATION_PASSES):
            keep = [i for i in range(len(rows)) if i not in rejected] if rejected else None
            if ready is not None and keep is None:
                unique, bounds = ready.table, ready.bounds
            else:
                table = self._arrow(batch, rows if keep is None else [rows[i] for i in keep], keep, rejected)
                if table is None:  # a column had bad values: they are in `rejected` now, rebuild
                    continue
                unique = _unique_event_ids(table)
                bounds = _received_bounds(unique.column("received_at"))
            try:
                self._insert(batch.stream, unique, bounds)
            except duckdb.ConversionException as exc:
                bad = self._bad_json(batch, keep)
                if not bad:
                    raise PermanentError(f"duckdb: insert into {batch.stream.name} failed: {exc}") from None
                rejected.update(bad)
                continue
            except duckdb.Error as exc:
                raise _classify(exc, batch.stream.name) from None
            errors = tuple(RowError(i, reason) for i, reason in sorted(rejected.items()))
            return WriteResult(written=unique.num_rows, rejected=errors)
        raise PermanentError(f"duckdb: could not isolate the invalid rows of {batch.stream.name}")

    def _arrow(
        self, batch: Batch, rows: Sequence[Sequence[Any]], index: list[int] | None, rejected: dict[int, str]
    ) -> pa.Table | None:
        """Rows -> Arrow, transposed once, one C call per column; None after recording rows a column refused."""
        types = dict(column_types(batch.stream))
        names: list[str] = []
        arrays: list[pa.Array] = []
        columns = list(zip(*rows, strict=True)) if rows else [() for _ in batch.columns]
        for name, values in zip(batch.columns, columns, strict=True):
            ftype = types.get(name)
            if ftype is None:
                continue
            try:
                arr = _event_id_array(values) if name == "event_id" else pa.array(values, _ARROW[ftype])
            except _ARROW_ERRORS:
                bad = _bad_values(name, ftype, values)
                if not bad:
                    raise PermanentError(f"duckdb: column {name} of {batch.stream.name} cannot be converted") from None
                for pos, reason in bad:
                    rejected[index[pos] if index is not None else pos] = reason
                return None
            names.append(name)
            arrays.append(arr)
        return pa.Table.from_arrays(arrays, names=names)

    def _high_water(self, table: str) -> int | None:
        """µs since the epoch at or after every ``received_at`` stored in ``table`` (None: none stored)."""
        if table not in self._high:
            row = self._con.execute(f"SELECT epoch_us(max(received_at)) FROM {_q(table)}").fetchone()
            self._high[table] = None if row is None or row[0] is None else int(row[0])
        return self._high[table]

    def _insert(self, stream: StreamConfig, table: pa.Table, bounds: _Bounds) -> None:
        cols = ", ".join(_q(n) for n in table.column_names)
        name = _q(stream.name)
        view_name = f"_oceanus_batch_{threading.get_ident()}"
        view = _q(view_name)
        lo, hi, nulls = bounds
        high = self._high_water(stream.name)
        # A stored copy of a row has its received_at, which is at or before the
        # high-water mark: rows after it are new and go straight in, and only the
        # others are anti-joined with the stored event ids of their range.
        cut = high if high is not None else (lo - 1 if lo is not None else 0)
        params: list[int] = []
        stored = []
        if lo is not None and lo <= cut:
            stored.append("received_at BETWEEN make_timestamp(?::BIGINT) AND make_timestamp(?::BIGINT)")
            params += [lo, cut]
        if nulls:
            stored.append("received_at IS NULL")
        if not stored:  # every row is after the mark (or there is none)
            insert = f"INSERT INTO {name} ({cols}) SELECT {cols} FROM {view}"
        else:
            later = "received_at > make_timestamp(?::BIGINT)"
            insert = (
                f"INSERT INTO {name} ({cols}) SELECT {cols} FROM {view} WHERE {later} UNION ALL "
                f"SELECT {', '.join('b.' + _q(n) for n in table.column_names)} "
                f"FROM (SELECT * FROM {view} WHERE NOT coalesce({later}, false)) AS b "
                f"ANTI JOIN (SELECT event_id FROM {name} WHERE {' OR '.join(stored)}) AS s USING (event_id)"
            )
            params = [cut, cut, *params]
        self._con.register(view_name, table)
        # Unknown until read again if the insert fails: it may have committed before the error.
        self._high.pop(stream.name, None)
        try:
            try:
                self._con.execute(insert, params)
            except duckdb.ConstraintException:
                # Only on a table of an earlier version, with its key: a row with the same
                # event_id but another received_at. The key wins, as it always did.
                self._con.execute(f"INSERT INTO {name} ({cols}) SELECT {cols} FROM {view} ON CONFLICT DO NOTHING")
        finally:
            self._con.unregister(view_name)
        known = [v for v in (high, hi) if v is not None]
        if known:
            self._high[stream.name] = max(known)

    def _bad_json(self, batch: Batch, keep: list[int] | None) -> dict[int, str]:
        types = dict(column_types(batch.stream))
        json_cols = [(j, c) for j, c in enumerate(batch.columns) if types.get(c) == "json"]
        bad: dict[int, str] = {}
        indices = keep if keep is not None else range(len(batch.rows))
        for i in indices:
            row = batch.rows[i]
            for j, c in json_cols:
                v = row[j]
                if v is None:
                    continue
                try:
                    _json_dec.decode(v)
                except msgspec.DecodeError as exc:
                    bad[i] = f"{c}: not valid JSON ({exc})"
                    break
                except RecursionError:
                    # Deeper than the decoder goes: refused as this row's, not raised for the batch.
                    bad[i] = f"{c}: not valid JSON (nested too deeply to check)"
                    break
        return bad

    def connect(self) -> duckdb.DuckDBPyConnection:
        """A connection of its own to this sink's database, for work the flusher process hosts
        (``[imports]``: DuckDB lets no other process open the file while the flusher holds it).

        Same path and settings, so DuckDB hands back the database this process already has
        open rather than refusing a second one. It never shares the writer's or the reader's
        connection (their locks stay theirs), and closing it is the caller's. While it is
        open a :meth:`_reopen` keeps the database itself open: the memory it would free is
        freed at the first reopen after the caller closed it.
        """
        try:
            return duckdb.connect(str(self.path), config=self._config())
        except duckdb.Error as exc:
            raise TransientError(f"duckdb: cannot connect to {self.path}: {_one_line(exc)}", Reason.IO) from None

    # ------------------------------------------------------------------ reads

    def query(self, sql: str, timeout_s: float = QUERY_TIMEOUT_S) -> QueryResult:
        with self._read_lock:
            cur = self._reader
            try:
                statements = cur.extract_statements(sql)
            except duckdb.Error as exc:
                raise QueryError(_one_line(exc)) from None
            if len(statements) != 1:
                raise QueryError(f"send exactly one SQL statement (got {len(statements)})")
            if statements[0].type not in READ_ONLY_STATEMENTS:
                kind = statements[0].type.name
                raise QueryError(f"only read-only statements are served here (SELECT, EXPLAIN), not {kind}")
            # The timer only interrupts while this query's statement runs: ``running``
            # is cleared under ``guard`` before the ROLLBACK and before the next query
            # can take ``_read_lock`` (an interrupt of an idle connection is a no-op).
            guard = threading.Lock()
            running = True
            fired = False

            def interrupt() -> None:
                nonlocal fired
                with guard:
                    if running:
                        fired = True
                        cur.interrupt()

            timer = threading.Timer(timeout_s, interrupt)
            timer.daemon = True
            try:
                cur.execute("BEGIN TRANSACTION")
                try:
                    timer.start()
                    try:
                        cur.execute(sql)
                        columns = [d[0] for d in cur.description] if cur.description else []
                        fetched = cur.fetchmany(MAX_QUERY_ROWS + 1) if columns else []
                    finally:
                        with guard:
                            running = False
                        timer.cancel()
                finally:
                    cur.execute("ROLLBACK")
            except duckdb.Error as exc:
                if fired and isinstance(exc, duckdb.InterruptException):
                    raise QueryTimeout(
                        f"query interrupted after {timeout_s:g} s (flusher.query_timeout_s); "
                        "narrow it with a WHERE or a LIMIT"
                    ) from None
                raise QueryError(_one_line(exc)) from None
        if len(fetched) > MAX_QUERY_ROWS:
            raise QueryError(f"the result has more than {MAX_QUERY_ROWS} rows; add a LIMIT")
        return QueryResult(columns=columns, rows=[[plain(v) for v in row] for row in fetched])

    def close(self) -> None:
        with self._lock, self._read_lock:
            self._reader.close()
            self._con.close()


#: A batch's ``received_at`` as µs since the epoch: (min, max, whether some are NULL).
_Bounds = tuple[int | None, int | None, bool]


class _Prepared:
    """A batch's Arrow table, built by :meth:`DuckDBSink.prepare`, with what its insert needs.

    All of it is computed on the thread that prepares the batch, so the writing
    thread, which holds the write lock, does not wait for the GIL to compute it.
    """

    __slots__ = ("bounds", "rows", "table")

    def __init__(self, table: pa.Table, rows: int) -> None:
        self.table = _unique_event_ids(table)
        self.bounds = _received_bounds(self.table.column("received_at"))
        self.rows = rows


def _event_id_array(values: Sequence[Any]) -> pa.Array:
    n = len(values)
    try:
        # The collector's form, 16 raw bytes each: one join, one hex, one cast
        # (fixed-size binary -> string) instead of a str object per row.
        joined = b"".join(values)
    except TypeError:
        joined = b""
    if n and len(joined) == 16 * n and set(map(len, values)) == {16}:
        hexed = pa.py_buffer(joined.hex().encode("ascii"))
        return pa.FixedSizeBinaryArray.from_buffers(pa.binary(32), n, [None, hexed]).cast(pa.string())
    hexes = [_event_id_hex(v) for v in values]
    if any(h is None for h in hexes):
        raise ValueError("invalid event_id")
    return pa.array(hexes, pa.string())


def _unique_event_ids(table: pa.Table) -> pa.Table:
    """Keep the first row of each event_id (a frame pushed twice puts a row twice in one batch)."""
    ids = table.column("event_id")
    if pc.count_distinct(ids).as_py() == table.num_rows:
        return table
    seen: set[str] = set()
    first = [i for i, v in enumerate(ids.to_pylist()) if not (v in seen or seen.add(v))]  # type: ignore[func-returns-value]
    return table.take(first)


def _received_bounds(column: pa.ChunkedArray) -> _Bounds:
    bounds = pc.min_max(column.cast(pa.int64()))
    return bounds["min"].as_py(), bounds["max"].as_py(), column.null_count > 0


def _bad_values(name: str, ftype: FieldType, values: Sequence[Any]) -> list[tuple[int, str]]:
    check: Callable[[Any], bool]
    if name == "event_id":

        def check(v: Any) -> bool:
            return _event_id_hex(v) is not None

        want = "16 bytes"
    else:

        def check(v: Any) -> bool:
            return _value_ok(ftype, v)

        want = ftype
    return [(i, f"{name}: expected {want}, got {type(v).__name__}") for i, v in enumerate(values) if not check(v)]


def _legacy_expr(col: LegacyColumn) -> str:
    """A column of the 2016-layout view as the 2016 string."""
    if col.from_extra:
        return f"json_extract_string(extra, '$.{col.source}')"
    src = _q(col.source)
    if col.ftype == "timestamp":
        # Python's str(datetime): the fraction only when it is not zero.
        return (
            f"CASE WHEN epoch_us({src}) % 1000000 = 0 THEN strftime({src}, '%Y-%m-%d %H:%M:%S') "
            f"ELSE strftime({src}, '%Y-%m-%d %H:%M:%S.%f') END"
        )
    return src if col.ftype == "string" else f"CAST({src} AS VARCHAR)"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _classify(exc: duckdb.Error, table: str) -> SinkError:
    """DuckDB's classifier. Disk full, I/O hiccups and write-write conflicts pass; a
    constraint or catalog error will not, but the worker backs off either way and alerts."""
    message = f"duckdb: insert into {table} failed: {_one_line(exc)}"
    if isinstance(exc, duckdb.IOException | duckdb.TransactionException | duckdb.OutOfMemoryException):
        return TransientError(message, Reason.IO)
    return PermanentError(message)

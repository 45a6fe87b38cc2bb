"""What the SQL targets (DuckDB, PostgreSQL, MySQL/MariaDB) share.

The two servers keep the DuckDB target's layout and guarantees: the append-only table, the
``<name>_latest`` view written the same way (only the quoting differs), and the
import's row in ``_oceanus_import_state`` committed in the batch's own
transaction. Connections, URLs and the failure classifiers are the SQL sinks'
(``flusher/sinks/{postgres,mysql}.py``): the imported tables live in the sink's
schema or database, beside the event tables.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import Any

import pyarrow as pa

from importer.columns import DELETED, IMPORTED_AT, Column
from importer.targets.base import LATEST_SUFFIX, STATE_TABLE, ImportState
from oceanus.config import ImportConfig
from oceanus.errors import ConfigError


def latest_view_sql(imp: ImportConfig, columns: Sequence[Column], q: Callable[[str], str], prefix: str) -> str:
    """One row per primary key: the newest version, tombstones and soft-deleted rows removed; ``q``
    quotes a name the target's way, ``prefix`` qualifies the table names (``schema.``, or ``""``)."""
    cols = ", ".join(q(c.name) for c in columns)
    table = prefix + q(imp.name)
    if imp.mode == "full":
        # Only the last complete reload: a run killed half-way committed rows the
        # state does not point at yet, and rows gone from the source are simply absent.
        return (
            f"SELECT {cols}, {IMPORTED_AT} FROM {table} WHERE {IMPORTED_AT} = "
            f"(SELECT full_loaded_at FROM {prefix}{q(STATE_TABLE)} WHERE name = '{imp.name}') AND NOT {DELETED}"
        )
    # A key is read at most once per run (one snapshot), and runs are stamped in
    # increasing order: the newest ``_imported_at`` is the newest version. A tombstone
    # written in the same run as a row wins (``_deleted DESC``).
    return (
        f"SELECT {cols}, {IMPORTED_AT} FROM (SELECT *, row_number() OVER "
        f"(PARTITION BY {q(imp.primary_key)} ORDER BY {IMPORTED_AT} DESC, {DELETED} DESC) AS _oceanus_rn "
        f"FROM {table}) AS _oceanus_v WHERE _oceanus_rn = 1 AND NOT {DELETED}"
    )


def check_name_length(imp: ImportConfig, limit: int, server: str) -> None:
    """A name past the server's limit would be cut (PostgreSQL, silently) or refused mid-run: refuse it first."""
    view = imp.name + LATEST_SUFFIX
    if len(view) > limit:
        raise ConfigError(
            f"imports.{imp.name}: {server} names are at most {limit} characters and the view {view} would be "
            "longer; shorten the import's name"
        )


def naive_utc(value: dt.datetime | None) -> dt.datetime | None:
    """State times are stored as DuckDB stores them: UTC without a zone."""
    return None if value is None else value.astimezone(dt.UTC).replace(tzinfo=None)


def aware(value: dt.datetime | None) -> dt.datetime | None:
    return None if value is None else value.replace(tzinfo=dt.UTC)


def state_row(state: ImportState) -> tuple[Any, ...]:
    """``_oceanus_import_state``'s columns, in order."""
    return (
        state.name,
        state.watermark,
        naive_utc(state.full_loaded_at),
        naive_utc(state.key_diff_at),
        naive_utc(state.last_run_at),
        dt.datetime.now(dt.UTC).replace(tzinfo=None),
    )


def state_from_row(name: str, row: Sequence[Any] | None) -> ImportState:
    if row is None:
        return ImportState(name=name)
    return ImportState(
        name=name, watermark=row[0], full_loaded_at=aware(row[1]), key_diff_at=aware(row[2]), last_run_at=aware(row[3])
    )


def batch_rows(batch: pa.Table) -> list[tuple[Any, ...]]:
    """An Arrow batch as row tuples of Python values (Decimal, datetime, date, bytes: exact)."""
    columns = [batch.column(i).to_pylist() for i in range(batch.num_columns)]
    return list(zip(*columns, strict=True))

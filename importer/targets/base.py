"""The protocol every warehouse target implements (DuckDB, BigQuery, PostgreSQL, MySQL/MariaDB).

A target owns three things per import: the append-only table ``<name>`` (the
allow-listed columns, ``_imported_at``, ``_deleted``), the ``<name>_latest``
view, and the import's row in ``_oceanus_import_state``. It commits a batch's
rows and the state that says they are there as one step where the warehouse
allows it (DuckDB: one transaction), and says what it does otherwise.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import msgspec
import pyarrow as pa

from importer.columns import Column
from oceanus.config import ImportConfig

STATE_TABLE = "_oceanus_import_state"
LATEST_SUFFIX = "_latest"


class ImportState(msgspec.Struct, frozen=True, kw_only=True):
    """What an import remembers between runs, kept in the warehouse itself."""

    name: str
    #: JSON of the (cursor, key) values of the last committed row (importer.columns).
    watermark: str | None = None
    #: ``_imported_at`` of the last complete full reload (the rows the view shows).
    full_loaded_at: dt.datetime | None = None
    #: When the last key diff committed its tombstones.
    key_diff_at: dt.datetime | None = None
    #: ``_imported_at`` of the newest run that committed anything (runs stamp later ones).
    last_run_at: dt.datetime | None = None


class Target(Protocol):
    name: str

    def prepare(self, imp: ImportConfig, columns: Sequence[Column]) -> None:
        """Create (or add new columns to) the table, the state table and the ``_latest`` view.
        A column whose stored type differs from the source's is refused, naming it."""
        ...

    def load_state(self, imp: ImportConfig) -> ImportState: ...

    def write(self, imp: ImportConfig, batch: pa.Table, state: ImportState, batch_no: int) -> None:
        """Append ``batch`` and store ``state``; the state never says more than the table holds."""
        ...

    def save_state(self, imp: ImportConfig, state: ImportState) -> None: ...

    def tombstone_missing(
        self,
        imp: ImportConfig,
        key_column: Column,
        keys: Iterator[list[Any]],
        imported_at: dt.datetime,
        state: ImportState,
    ) -> int:
        """Append a tombstone for every key in the ``_latest`` view that ``keys`` (the source's
        keys, in batches) lacks; store ``state`` with them. Returns the tombstones written."""
        ...

    def close(self) -> None: ...

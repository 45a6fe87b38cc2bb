"""The protocol every source database implements."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from importer.columns import Column


class Source(Protocol):
    """A connection to one source database. Errors are :class:`oceanus.errors.SourceError`."""

    def describe(self, table: str, columns: Sequence[str]) -> list[Column]:
        """The listed columns of ``table`` in that order, typed; refuses a missing or unmappable one."""
        ...

    def rows(
        self, table: str, columns: Sequence[str], order: Sequence[str], after: Sequence[Any] | None, batch_rows: int
    ) -> Iterator[list[tuple[Any, ...]]]:
        """Batches of rows (values in ``columns`` order) ordered by ``order``, strictly after the
        ``order`` values ``after`` (keyset pagination), from a server-side cursor: one
        statement, one snapshot, at most ``batch_rows`` rows in memory."""
        ...

    def keys(self, table: str, key: str, batch_rows: int) -> Iterator[list[Any]]:
        """Every value of the primary key column ``key``, in batches (any order)."""
        ...

    def close(self) -> None: ...

"""Frames -> one Arrow table without a Python object per value (the native decoder).

:mod:`flusher._columns` (C, built by ``pip install``; see ``flusher/_columns.c``)
parses the frames' msgpack with the GIL released and fills Arrow buffers
directly. The Python path of :mod:`flusher.batch` costs ~3.5 CPU µs per
pageview row (msgspec objects, a transpose, pyarrow copying each object) and
holds the GIL throughout, which the DuckDB insert of the batch before needs
at every step of its statement; this costs a fraction of that and holds the
GIL only to wrap the buffers.

It is used only when every frame has exactly the stream's columns and every
value is exactly what its column's type expects. Anything else (an old
frame's column list, a string in an int field, a corrupt frame) returns None
and the batch takes the Python path, which owns the per-row refusals and the
dead letters: the two paths never disagree about a row, because this one
declines every row it is not sure of. Without the extension (a build
without a C compiler) everything takes the Python path.

The batch's rows are then a :class:`LazyRows`: their length is known, and
they are decoded by the Python path only if something asks for a row (a sink
without Arrow, a write that must isolate a bad row, a split batch).
"""

from __future__ import annotations

import logging
import types
from collections.abc import Callable, Iterator, Sequence
from typing import Any, overload

import pyarrow as pa

from oceanus.buffer import FrameError, frame_payload

_columns: types.ModuleType | None
try:
    from flusher import _columns
except ImportError:  # pragma: no cover - a build without a C compiler
    _columns = None

log = logging.getLogger(__name__)

#: Whether the extension is built (the bench reports it).
AVAILABLE = _columns is not None

#: The decoder's kind of each Arrow type a table column may have.
_KINDS: dict[pa.DataType, bytes] = {
    pa.string(): b"s",
    pa.int64(): b"i",
    pa.float64(): b"f",
    pa.bool_(): b"b",
}


def _kind(name: str, arrow: pa.DataType | None) -> bytes | None:
    if arrow is None:
        return b"x"
    if name == "event_id":
        return b"e" if arrow == pa.string() else None
    if pa.types.is_timestamp(arrow) and arrow.unit == "us":
        return b"i"
    return _KINDS.get(arrow)


class Layout:
    """How one stream's frames map to a table: a kind per frame column, the Arrow type per table column."""

    __slots__ = ("kinds", "names", "table_columns")

    def __init__(self, columns: Sequence[str], types: Sequence[pa.DataType | None]) -> None:
        kinds = [_kind(c, t) for c, t in zip(columns, types, strict=True)]
        if any(k is None for k in kinds):
            raise ValueError("a column type the native decoder does not build")
        self.names = tuple(c.encode() for c in columns)
        self.kinds = b"".join(k for k in kinds if k is not None)
        self.table_columns = [(c, t) for c, t in zip(columns, types, strict=True) if t is not None]


def decode(layout: Layout, frames: Sequence[bytes]) -> pa.Table | None:
    """The frames as one table of ``layout.table_columns``, or None for the Python path."""
    if _columns is None:
        return None
    try:
        payloads = [frame_payload(f) for f in frames]
    except FrameError:
        return None
    try:
        out = _columns.decode(payloads, layout.names, layout.kinds)
        if out is None:
            return None
        rows, buffers = out
        arrays = []
        column_buffers = (b for b in buffers if b is not None)
        for (_name, arrow), (nulls, validity, offsets, data) in zip(layout.table_columns, column_buffers, strict=True):
            bufs = [None if validity is None else pa.py_buffer(validity)]
            if offsets is not None:
                bufs.append(pa.py_buffer(offsets))
            bufs.append(pa.py_buffer(data))
            arrays.append(pa.Array.from_buffers(arrow, rows, bufs, null_count=nulls))
        return pa.Table.from_arrays(arrays, names=[n for n, _ in layout.table_columns])
    except Exception:  # a bug here must not stop the stream: the Python path decodes the batch
        log.warning("the native decoder failed on a batch; decoding it in Python", exc_info=True)
        return None


class LazyRows(Sequence[Sequence[Any]]):
    """A batch's rows, decoded by the Python path on first access; the length is known without it."""

    __slots__ = ("_load", "_n", "_rows")

    def __init__(self, n: int, load: Callable[[], Sequence[Sequence[Any]]]) -> None:
        self._n = n
        self._load: Callable[[], Sequence[Sequence[Any]]] | None = load
        self._rows: Sequence[Sequence[Any]] | None = None

    def rows(self) -> Sequence[Sequence[Any]]:
        if self._rows is None:
            assert self._load is not None
            rows = self._load()
            if len(rows) != self._n:
                # The native decoder accepted a row the Python path refused: never silently.
                raise RuntimeError(f"the frames decode to {len(rows)} rows, not {self._n}")
            self._rows, self._load = rows, None
        return self._rows

    @property
    def loaded(self) -> bool:
        return self._rows is not None

    def __len__(self) -> int:
        return self._n

    @overload
    def __getitem__(self, index: int) -> Sequence[Any]: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Sequence[Any]]: ...

    def __getitem__(self, index: int | slice) -> Sequence[Any] | Sequence[Sequence[Any]]:
        return self.rows()[index]

    def __iter__(self) -> Iterator[Sequence[Any]]:
        return iter(self.rows())

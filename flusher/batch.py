"""Frames -> one :class:`~flusher.sinks.base.Batch` in the stream's current columns.

Frames carry the column list they were encoded with, so a config change while
frames wait in Redis is harmless:

- a column of the config the frame lacks is None;
- a column the frame has but the config no longer lists is **moved into**
  ``extra`` (``{"old_column": value, ...}`` merged with the frame's own extra
  keys, which win on a clash), so dropping a field from the config never
  throws buffered data away;
- a frame that does not decode, or a row of the wrong length, goes to the
  dead-letter list with the reason, and the rest of the batch goes on; so does
  a frame whose values cannot be normalised (a msgpack extension type, say):
  no frame can make decoding fail for the whole batch.

Fast path: frames encoded with exactly the stream's columns (the normal case)
are passed through without touching a row.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

import msgspec

from flusher import columns
from flusher.sinks.base import Batch
from oceanus.buffer import FrameError, event_id_hex, frame_payload, row_arrival_ms
from oceanus.config import EXTRA_COLUMN, StreamConfig

_json_enc = msgspec.json.Encoder()


def _as_text(value: Any) -> str:
    return repr(value)


#: Dead letters must always encode: a value JSON has no form for is kept as its repr.
_dead_enc = msgspec.json.Encoder(enc_hook=_as_text)
_json_dec = msgspec.json.Decoder()
#: The frame codec of :mod:`oceanus.buffer`, with rows as tuples: a tuple of plain
#: values is untracked by the garbage collector after its first pass, a list never
#: is, and with a batch of lists alive every collection walks all of them (decoding
#: into lists measured ~3x slower than into tuples in a busy process).
_frame_decoder = msgspec.msgpack.Decoder(tuple[list[str], list[tuple[Any, ...]]])


def decode_frame_rows(item: bytes) -> tuple[list[str], list[tuple[Any, ...]]]:
    """:func:`oceanus.buffer.decode_frame` with tuple rows (same format, same errors)."""
    payload = frame_payload(item)
    try:
        return _frame_decoder.decode(payload)
    except msgspec.DecodeError as exc:
        raise FrameError(f"corrupt frame: {exc}") from None


class DeadRow(msgspec.Struct, frozen=True):
    """One dead-letter item (``P:dead:{stream}``), stored as JSON."""

    stream: str
    reason: str
    #: The row as ``{column: value}`` (event_id as hex), or None for an undecodable frame.
    row: dict[str, Any] | None = None
    #: The raw frame (base64) when it could not be decoded at all.
    frame_b64: str | None = None


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return bytes(value).hex()
    return value


def dead_row(stream: str, reason: str, columns: Sequence[str], row: Sequence[Any]) -> bytes:
    obj = {
        c: (event_id_hex(v) if c == "event_id" and isinstance(v, bytes) else _jsonable(v))
        for c, v in zip(columns, row, strict=False)
    }
    return _dead_enc.encode(DeadRow(stream=stream, reason=reason, row=obj))


def dead_frame(stream: str, reason: str, frame: bytes) -> bytes:
    return _json_enc.encode(DeadRow(stream=stream, reason=reason, frame_b64=base64.b64encode(frame).decode()))


def frame_oldest_ms(frame: bytes) -> int | None:
    """Receive time of the first event in a frame (collectors append in time order), or None."""
    try:
        columns, rows = decode_frame_rows(frame)
        return row_arrival_ms(columns, rows[0])
    except (FrameError, IndexError, TypeError):
        return None


def _merge_extra(extra: Any, moved: dict[str, Any]) -> str | None:
    """Fold columns the config dropped into ``extra``; the frame's own extra keys win."""
    if not moved:
        return extra if isinstance(extra, str) or extra is None else None
    merged = dict(moved)
    if isinstance(extra, str) and extra:
        try:
            own = _json_dec.decode(extra)
        except msgspec.DecodeError:
            own = {"_extra": extra}
        if isinstance(own, dict):
            merged.update(own)
        else:
            merged["_extra"] = own
    return _json_enc.encode(merged).decode()


class _Plan:
    """How rows encoded with one column list map onto the stream's columns."""

    __slots__ = ("extra_src", "identity", "moved", "take", "width")

    def __init__(self, frame_cols: Sequence[str], target: Sequence[str]) -> None:
        self.identity = tuple(frame_cols) == tuple(target)
        self.width = len(frame_cols)
        pos = {c: i for i, c in enumerate(frame_cols)}
        # For each target column except extra: the frame's index or -1 (None).
        self.take = tuple(pos.get(c, -1) for c in target if c != EXTRA_COLUMN)
        kept = set(target)
        self.moved = tuple((c, i) for i, c in enumerate(frame_cols) if c not in kept)
        self.extra_src = pos.get(EXTRA_COLUMN, -1)

    def apply(self, row: Sequence[Any]) -> list[Any]:
        out = [row[i] if i >= 0 else None for i in self.take]
        extra = row[self.extra_src] if self.extra_src >= 0 else None
        moved = {c: _jsonable(row[i]) for c, i in self.moved if row[i] is not None}
        out.append(_merge_extra(extra, moved))
        return out


class Built(msgspec.Struct, kw_only=True):
    batch: Batch
    dead: list[bytes]


class BatchBuilder:
    """Per stream; caches one plan per distinct frame column list."""

    def __init__(self, stream: StreamConfig) -> None:
        self.stream = stream
        self.columns = stream.columns
        self._plans: dict[tuple[str, ...], _Plan] = {}

    def _plan(self, cols: Sequence[str]) -> _Plan:
        key = tuple(cols)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = _Plan(key, self.columns)
        return plan

    def build(self, batch_id: str, frames: Sequence[bytes], layout: columns.Layout | None = None) -> Built:
        """The frames as one batch; with a ``layout``, as an Arrow table too when the native decoder takes them."""
        if layout is not None and frames:
            table = columns.decode(layout, frames)
            if table is not None:
                rows = columns.LazyRows(table.num_rows, lambda: self._build(batch_id, frames).batch.rows)
                nbytes = int(sum(map(len, frames)) * _expansion(frames[0]))
                batch = Batch(
                    stream=self.stream, batch_id=batch_id, columns=self.columns, rows=rows, nbytes=nbytes, arrow=table
                )
                return Built(batch=batch, dead=[])
        return self._build(batch_id, frames)

    def _build(self, batch_id: str, frames: Sequence[bytes]) -> Built:
        rows: list[Sequence[Any]] = []
        dead: list[bytes] = []
        name = self.stream.name
        compressed = 0
        ratio = 0.0
        for frame in frames:
            try:
                cols, frows = decode_frame_rows(frame)
            except FrameError as exc:
                dead.append(dead_frame(name, str(exc), frame))
                continue
            if "event_id" not in cols:
                dead.append(dead_frame(name, "frame has no event_id column", frame))
                continue
            plan = self._plan(cols)
            if plan.identity and all(len(r) == plan.width for r in frows):
                rows.extend(frows)
            else:
                try:
                    frame_rows, frame_dead = self._normalise(plan, cols, frows)
                except Exception as exc:  # noqa: BLE001 - one odd frame must not stop the batch
                    dead.append(dead_frame(name, f"cannot normalise the frame: {type(exc).__name__}: {exc}", frame))
                    continue
                rows.extend(frame_rows)
                dead.extend(frame_dead)
            compressed += len(frame)
            if ratio == 0.0:
                ratio = _expansion(frame)
        nbytes = int(compressed * ratio)
        batch = Batch(stream=self.stream, batch_id=batch_id, columns=self.columns, rows=rows, nbytes=nbytes)
        return Built(batch=batch, dead=dead)

    def _normalise(
        self, plan: _Plan, cols: Sequence[str], frows: Sequence[Sequence[Any]]
    ) -> tuple[list[Sequence[Any]], list[bytes]]:
        rows: list[Sequence[Any]] = []
        dead: list[bytes] = []
        for r in frows:
            if len(r) != plan.width:
                dead.append(dead_row(self.stream.name, f"row has {len(r)} values for {plan.width} columns", cols, r))
            else:
                rows.append(r if plan.identity else plan.apply(r))
        return rows, dead


def _expansion(frame: bytes) -> float:
    """Uncompressed / compressed size of one frame: ``nbytes`` is estimated from the batch's first frame.

    Frames of one stream compress alike, and decompressing every frame twice
    only to size it would cost more than msgpack decoding does.
    """
    try:
        raw = frame_payload(frame)
    except FrameError:
        return 1.0
    return len(raw) / max(1, len(frame))

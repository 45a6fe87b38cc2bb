"""What every sink shares: the server columns, value conversions, the dedup view's name.

A new sink (PostgreSQL, MySQL) writes its table DDL, row encoder, write call and
error classifier; the facts below are the same for all of them.
"""

from __future__ import annotations

import datetime as dt
import decimal
import re
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import msgspec

from flusher.sinks.base import Batch, RowError
from oceanus.config import EXTRA_COLUMN, FieldType, StreamConfig

if TYPE_CHECKING:
    import pyarrow as pa

#: Columns the collector sets, first in every table, with their config type.
SERVER_COLUMNS: tuple[tuple[str, FieldType], ...] = (
    ("event_id", "string"),  # 32 hex digits
    ("received_at", "timestamp"),
    ("ip", "string"),
    ("ua", "string"),
    ("device", "string"),
)
#: Server columns every row has (a warehouse may declare them NOT NULL / REQUIRED).
REQUIRED_COLUMNS = frozenset({"event_id", "received_at"})
#: Suffix of the view beside each table that shows one row per event_id (same name in every sink).
DEDUP_VIEW_SUFFIX = "_dedup"

_json = msgspec.json.Encoder()


def column_types(stream: StreamConfig) -> list[tuple[str, FieldType]]:
    """Every column of the stream's table with its config type, in table order."""
    cols: list[tuple[str, FieldType]] = list(SERVER_COLUMNS)
    cols += [(name, f.type) for name, f in stream.fields.items()]
    cols.append((EXTRA_COLUMN, "json"))
    return cols


def column_type(stream: StreamConfig, column: str) -> FieldType:
    """The config type of one column of the stream's table (a column the config dropped: string)."""
    for name, ftype in SERVER_COLUMNS:
        if name == column:
            return ftype
    if column == EXTRA_COLUMN:
        return "json"
    field = stream.fields.get(column)
    return field.type if field is not None else "string"


def arrow_types(timestamp_tz: str | None) -> dict[FieldType, pa.DataType]:
    """Arrow type of each config type; timestamps are microseconds (``timestamp_tz`` None: naive)."""
    import pyarrow as pa

    return {
        "string": pa.string(),
        "json": pa.string(),
        "int": pa.int64(),
        "float": pa.float64(),
        "bool": pa.bool_(),
        "timestamp": pa.timestamp("us", tz=timestamp_tz),
    }


def event_id_text(value: Any) -> str:
    """An event id as the warehouse stores it: 16 raw bytes -> 32 hex digits (text passes as is)."""
    return value.hex() if isinstance(value, bytes | bytearray) else str(value)


# --------------------------------------------------------------------------- progress marks
#
# A sink that sends one batch in several requests records how far it got in the
# batch's WriteState, so the retry the worker makes does not send stored rows
# again. A mark names the batch and its size: a mark of another batch (a split
# half, a new claim) is ignored.


def progress_mark(batch: Batch, *fields: object) -> str:
    """``<batch_id>:<rows>:<field>:...``."""
    return ":".join([batch.batch_id, str(len(batch.rows)), *map(str, fields)])


def read_progress(batch: Batch, mark: str | None, fields: int) -> list[str] | None:
    """The ``fields`` values of ``mark`` if it is this batch's, else None."""
    if not mark:
        return None
    parts = mark.rsplit(":", fields + 1)
    if len(parts) != fields + 2 or parts[0] != batch.batch_id or parts[1] != str(len(batch.rows)):
        return None
    return parts[2:]


def encode_refused(refused: Mapping[int, str]) -> str:
    """Rows refused so far, for the WriteState (JSON ``[[row, reason], ...]``)."""
    return _json.encode(sorted(refused.items())).decode()


def decode_refused(raw: str | None) -> dict[int, str]:
    try:
        return dict(msgspec.json.decode(raw or "[]", type=list[tuple[int, str]]))
    except msgspec.DecodeError:
        return {}


def refused_rows(refused: Mapping[int, str]) -> tuple[RowError, ...]:
    """``{row: reason}`` -> ``WriteResult.rejected``, in row order."""
    return tuple(RowError(i, reason) for i, reason in sorted(refused.items()))


def plain(value: Any) -> Any:
    """A JSON-friendly form of a warehouse value (``POST /query`` and ``oceanus query`` answer alike)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, decimal.Decimal):
        # DuckDB types a literal like 1.5 as DECIMAL; JSON readers want a number.
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, uuid.UUID | dt.timedelta):
        return str(value)
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    return str(value)


#: The 2016 oceanus's names of the server columns (docs/MIGRATION.md, "Columns and tables").
LEGACY_SERVER_NAMES: tuple[tuple[str, str], ...] = (("ip", "rad"), ("ua", "ua"), ("device", "dev"))
#: The 2016 name of ``received_at``: ``str(datetime.utcnow())``.
LEGACY_TIME_COLUMN = "dt"
_LEGACY_EXTRA_KEY = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class LegacyColumn(NamedTuple):
    """One column of a stream's 2016-layout view (``streams.<s>.legacy_view``): always a string."""

    name: str
    #: The column it is read from; for ``from_extra``, the key of ``extra``.
    source: str
    ftype: FieldType
    from_extra: bool = False


def legacy_columns(stream: StreamConfig) -> list[LegacyColumn]:
    """The 2016 table's columns for ``stream``: ``dt`` (``received_at`` as the 2016 text), the
    fields, ``rad``/``ua``/``dev``, then the keys a profile keeps in ``extra`` (the 2016 form's
    ``uid``, ``oid``, ``url``, ``enc``) that are no field. ``event_id`` and ``extra`` had no 2016
    column. Each sink renders them as strings in its own SQL."""
    cols = [LegacyColumn(LEGACY_TIME_COLUMN, "received_at", "timestamp")]
    cols += [LegacyColumn(name, name, f.type) for name, f in stream.fields.items()]
    cols += [LegacyColumn(legacy, source, "string") for source, legacy in LEGACY_SERVER_NAMES]
    seen = {c.name for c in cols}
    for profile in stream.profiles.values():
        for key in profile.keep:
            if key not in seen and _LEGACY_EXTRA_KEY.match(key):
                seen.add(key)
                cols.append(LegacyColumn(key, key, "string", from_extra=True))
    return cols

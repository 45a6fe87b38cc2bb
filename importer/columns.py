"""Column types between a source database and a warehouse, and the watermark codec.

A source maps its own type names to one :data:`Kind` (``sources/*``); a target
maps each kind to its column type (``targets/*``). Arrow sits in between, so a
batch is built once, a column at a time, whatever the pair.

Exactness: DECIMAL(p,s) stays a decimal of the same precision and scale (Arrow
decimal128/256, DuckDB DECIMAL, BigQuery NUMERIC/BIGNUMERIC); a timestamp keeps
its "with/without time zone" meaning; JSON is carried as the text the source
returned. A type without an exact counterpart is refused, naming the column.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any, Literal

import msgspec
import pyarrow as pa

from oceanus.errors import SourceError

Kind = Literal["bool", "int", "float", "decimal", "string", "date", "timestamp", "timestamptz", "json", "binary"]

#: Widest DECIMAL Arrow's decimal128 holds; wider ones use decimal256.
DECIMAL128_MAX_PRECISION = 38
#: Widest DECIMAL any target stores (BigQuery BIGNUMERIC: 76 digits and a bit).
DECIMAL_MAX_PRECISION = 76


class Column(msgspec.Struct, frozen=True, kw_only=True):
    """One allow-listed source column, as the warehouse will store it."""

    name: str
    kind: Kind
    precision: int = 0
    scale: int = 0
    #: The source's own type name, for error messages.
    source_type: str = ""
    nullable: bool = True
    #: Applied to each non-NULL value before Arrow sees it (a MySQL tinyint(1) to
    #: bool, a UUID to text); None when the driver's value is already right.
    convert: Callable[[Any], Any] | None = None


def decimal_column(name: str, precision: int | None, scale: int | None, source_type: str, **kw: Any) -> Column:
    if precision is None or precision <= 0:
        raise SourceError(
            f"column `{name}` is {source_type} without a precision, which no warehouse column holds exactly; "
            "declare it numeric(p,s) or leave it out of `columns`"
        )
    if precision > DECIMAL_MAX_PRECISION:
        raise SourceError(f"column `{name}` is {source_type}({precision}), wider than any warehouse decimal (76)")
    return Column(name=name, kind="decimal", precision=precision, scale=scale or 0, source_type=source_type, **kw)


def unmappable(name: str, source_type: str) -> SourceError:
    return SourceError(
        f"column `{name}` has type {source_type}, which oceanus cannot store exactly; "
        "leave it out of `columns` or expose it through a view with a cast"
    )


def arrow_type(col: Column) -> pa.DataType:
    if col.kind == "decimal":
        if col.precision <= DECIMAL128_MAX_PRECISION:
            return pa.decimal128(col.precision, col.scale)
        return pa.decimal256(col.precision, col.scale)
    return _ARROW[col.kind]


_ARROW: dict[Kind, pa.DataType] = {
    "bool": pa.bool_(),
    "int": pa.int64(),
    "float": pa.float64(),
    "string": pa.string(),
    "date": pa.date32(),
    "timestamp": pa.timestamp("us"),
    "timestamptz": pa.timestamp("us", tz="UTC"),
    "json": pa.string(),
    "binary": pa.binary(),
}

IMPORTED_AT = "_imported_at"
DELETED = "_deleted"


def is_deleted(value: Any) -> bool:
    """A soft-delete column marks a row deleted when it is set: non-NULL and not false/0."""
    return value is not None and value is not False and value != 0


def to_arrow(
    columns: Sequence[Column],
    rows: Sequence[Sequence[Any]],
    imported_at: dt.datetime,
    soft_delete_index: int | None,
) -> pa.Table:
    """One batch as an Arrow table: the source columns, ``_imported_at``, ``_deleted``."""
    arrays: list[pa.Array] = []
    for i, col in enumerate(columns):
        values = [r[i] for r in rows]
        if col.convert is not None:
            conv = col.convert
            values = [None if v is None else conv(v) for v in values]
        try:
            arrays.append(pa.array(values, type=arrow_type(col)))
        except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
            raise SourceError(f"column `{col.name}`: a value does not fit {col.source_type} ({exc})") from None
    n = len(rows)
    naive_utc = imported_at.astimezone(dt.UTC).replace(tzinfo=None)
    arrays.append(pa.array([naive_utc] * n, type=pa.timestamp("us")))
    if soft_delete_index is None:
        arrays.append(pa.array([False] * n, type=pa.bool_()))
    else:
        arrays.append(pa.array([is_deleted(r[soft_delete_index]) for r in rows], type=pa.bool_()))
    names = [c.name for c in columns] + [IMPORTED_AT, DELETED]
    return pa.Table.from_arrays(arrays, names=names)


# --------------------------------------------------------------------------- watermark

# A watermark is the (cursor, primary key) of the last committed row. It is stored
# as JSON text; values JSON cannot tell apart (a date, a decimal) carry a tag.


def _tag(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, int | str | float):
        return value
    if isinstance(value, Decimal):
        return {"decimal": str(value)}
    if isinstance(value, dt.datetime):
        return {"datetime": value.isoformat()}
    if isinstance(value, dt.date):
        return {"date": value.isoformat()}
    raise SourceError(f"a cursor or primary key value of type {type(value).__name__} cannot be a watermark")


def _untag(value: Any) -> Any:
    if isinstance(value, dict):
        ((tag, text),) = value.items()
        if tag == "decimal":
            return Decimal(text)
        if tag == "datetime":
            return dt.datetime.fromisoformat(text)
        if tag == "date":
            return dt.date.fromisoformat(text)
        raise ValueError(f"unknown watermark tag {tag!r}")
    return value


def encode_watermark(values: Sequence[Any]) -> str:
    return msgspec.json.encode([_tag(v) for v in values]).decode()


def decode_watermark(text: str | None) -> tuple[Any, ...] | None:
    if not text:
        return None
    return tuple(_untag(v) for v in msgspec.json.decode(text))

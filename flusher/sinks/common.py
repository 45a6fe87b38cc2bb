"""What every sink shares: the server columns, value conversions, the dedup view's name.

A new sink (PostgreSQL, MySQL) writes its table DDL, row encoder, write call and
error classifier; the facts below are the same for all of them.
"""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from typing import Any


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

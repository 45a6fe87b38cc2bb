"""What the two SQL-server sinks (PostgreSQL, MySQL/MariaDB) share.

Both check every value in Python before it reaches the server, so that a row
the server would refuse is a dead letter of its own and the batch goes on;
both serve ``POST /query`` and ``oceanus query`` with the same statement check.
The server still has the last word: each sink falls back to one statement per
row when a batch fails on its data anyway (docs/ARCHITECTURE.md, "SQL sinks").
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from flusher.sinks.base import Batch
from flusher.sinks.common import column_types
from oceanus.config import FieldType
from oceanus.errors import ConfigError, QueryError

#: ``POST /query`` answers at most this many rows (as DuckDB's); more is a 400 asking for a LIMIT.
MAX_QUERY_ROWS = 10_000
#: 0001-01-01 and 9999-12-31T23:59:59.999999 UTC in microseconds since the epoch: what every sink stores.
MIN_TIMESTAMP_US = -62_135_596_800_000_000
MAX_TIMESTAMP_US = 253_402_300_799_999_999
#: Microseconds per UTC day: a PostgreSQL partition holds one.
DAY_US = 86_400_000_000
#: The first word of a statement /query serves. The server's read-only transaction is the real guard
#: (a data-modifying WITH fails there); this only turns obvious mistakes into a clear message.
READ_ONLY_VERBS = frozenset({"select", "with", "explain", "values", "table", "show", "describe", "desc"})

_json_dec = msgspec.json.Decoder()
_COMMENT = re.compile(r"^\s*(?:--[^\n]*(?:\n|$)|/\*.*?\*/)", re.S)

#: One value in, the value the sink sends out; raises ValueError with the reason.
Converter = Callable[[Any], Any]


def database_url(env_name: str, key: str) -> str:
    """The URL in ``$env_name``; a ConfigError naming ``key`` when it is unset."""
    url = os.environ.get(env_name, "").strip()
    if not url:
        raise ConfigError(f"{key}: the environment variable {env_name} is not set (it holds the database URL)")
    return url


def event_id_hex(value: Any) -> str:
    if isinstance(value, bytes) and len(value) == 16:
        return value.hex()
    if isinstance(value, str) and len(value) == 32:
        try:
            int(value, 16)
        except ValueError:
            pass
        else:
            return value.lower()
    raise ValueError(f"expected 16 bytes, got {type(value).__name__}")


def check_int(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63:
        return value
    raise ValueError(f"expected int (64 bits), got {_what(value)}")


def check_timestamp_us(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and MIN_TIMESTAMP_US <= value <= MAX_TIMESTAMP_US:
        return value
    raise ValueError(f"expected timestamp (0001-01-01 to 9999-12-31), got {_what(value)}")


def check_float(value: Any, *, finite: bool) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
        if finite and not math.isfinite(number):
            raise ValueError(f"expected a finite float, got {number}")
        return number
    raise ValueError(f"expected float, got {_what(value)}")


def check_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError(f"expected bool, got {_what(value)}")


def check_text(value: Any, *, nul_ok: bool) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected string, got {_what(value)}")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("not valid UTF-8 (a lone surrogate)") from None
    if not nul_ok and "\x00" in value:
        raise ValueError("contains a NUL character, which the warehouse cannot store")
    return value


def check_json(value: Any, *, nul_ok: bool) -> str:
    text = check_text(value, nul_ok=nul_ok)
    try:
        decoded = _json_dec.decode(text)
    except msgspec.DecodeError as exc:
        raise ValueError(f"not valid JSON ({exc})") from None
    except RecursionError:
        raise ValueError("not valid JSON (nested too deeply to check)") from None
    # PostgreSQL's jsonb refuses \u0000 inside a string; look only when the escape is there at all.
    if not nul_ok and "\\u0000" in text and _has_nul(decoded):
        raise ValueError("contains \\u0000, which the warehouse's JSON type cannot store")
    return text


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def _what(value: Any) -> str:
    return type(value).__name__


def table_columns(batch: Batch) -> list[tuple[int, str, FieldType]]:
    """(position in the batch's rows, column, config type) of every batch column the table has."""
    types = dict(column_types(batch.stream))
    return [(j, c, types[c]) for j, c in enumerate(batch.columns) if c in types]


def convert_rows(
    batch: Batch, columns: Sequence[tuple[int, str, FieldType]], converters: Sequence[Converter], null: Any = None
) -> tuple[list[int], list[tuple[Any, ...]], dict[int, str]]:
    """Each row's values through its column's converter: (row numbers kept, their values, refused rows).

    A None becomes ``null`` except in ``event_id`` and ``received_at``, which every row has.
    Repeats of an event_id inside the batch (a frame pushed twice) are kept once.
    """
    kept: list[int] = []
    values: list[tuple[Any, ...]] = []
    refused: dict[int, str] = {}
    seen: set[Any] = set()
    plan = list(zip(columns, converters, strict=True))
    eid = [name for _j, name, _t in columns].index("event_id")
    for i, row in enumerate(batch.rows):
        out: list[Any] = []
        try:
            for (j, name, _t), convert in plan:
                value = row[j]
                if value is None:
                    if name in ("event_id", "received_at"):
                        raise ValueError(f"{name}: missing")
                    out.append(null)
                    continue
                try:
                    out.append(convert(value))
                except ValueError as exc:
                    raise ValueError(f"{name}: {exc}") from None
        except ValueError as exc:
            refused[i] = str(exc)
            continue
        key = out[eid]
        if key in seen:
            continue
        seen.add(key)
        kept.append(i)
        values.append(tuple(out))
    return kept, values, refused


def check_read_only(sql: str) -> str:
    """One statement whose first word reads; returns it without a trailing semicolon."""
    text = sql.strip()
    while True:
        m = _COMMENT.match(text)
        if not m:
            break
        text = text[m.end() :].lstrip()
    text = text.rstrip().rstrip(";").rstrip()
    if not text:
        raise QueryError("send exactly one SQL statement (got 0)")
    verb = re.split(r"[\s(]", text, maxsplit=1)[0].lower()
    if verb not in READ_ONLY_VERBS:
        raise QueryError(f"only read-only statements are served here (SELECT, WITH, EXPLAIN, ...), not {verb.upper()}")
    return sql.strip().rstrip(";")


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())

"""Per-stream validation, compiled once from the stream's config Struct.

A :class:`StreamValidator` turns one event (query/form pairs, or a decoded JSON
object) into the values of the stream's own fields plus the ``extra`` JSON text,
or raises :class:`Invalid` naming the field and the rule. The server-set columns
(``event_id``, ``received_at``, ``ip``, ``ua``, ``device``) are added by the app.

Rules, in the order they are applied to one value:

- the field's ``aliases`` (another key that names it), ``null_values`` (stored
  as NULL), ``map`` (exact replacements) and ``default`` (when absent);
- transforms (``strip``, ``lowercase``, ``uppercase``, ``truncate``,
  ``remove:<chars>``, in the configured order; ``sort_keys`` for json);
- type: query/form values are text and are parsed (``int``, ``float``, ``bool``
  ``1/0/true/false``, ``timestamp`` ISO 8601 or unix seconds/milliseconds,
  ``json`` a JSON text); JSON bodies must carry the matching JSON type (a
  ``json`` field takes any JSON value, or a string holding JSON text; a
  ``coerce`` field also the text form); timestamps without an offset are in the
  stream's ``timezone``;
- ``required``: absent, null, or an empty string after the transforms;
  ``present``: absent only;
- ``max_length`` (characters; UTF-8 bytes for ``json``), ``pattern``
  (``re.search``, with ``$`` meaning the end of the value: ``\\Z``), ``enum``,
  ``format = "email"``, ``min``/``max``.

Every value accepted here converts in every sink: ints are ``-?[0-9]+`` text
(or JSON integers) within signed 64 bits, numbers are plain ASCII decimal text,
timestamps fall inside the range every warehouse stores (BigQuery's TIMESTAMP,
0001-01-01 to 9999-12-31 UTC, the narrowest), after the time-zone conversion.

Unknown keys go to ``extra`` as one JSON object. It is bounded by
``collector.max_extra_keys``, ``collector.max_extra_bytes`` and
``collector.max_extra_depth``; going over is a 400 naming ``extra`` and the
limit, never a silent drop, so a client that sends too much finds out at once.
"""

from __future__ import annotations

import codecs
import importlib
import json
import math
import re
import sys
import types
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, tzinfo
from typing import Any
from urllib.parse import unquote_plus
from zoneinfo import ZoneInfo

import msgspec

from oceanus.config import (
    BIGQUERY_TIMESTAMP_END_US,
    BIGQUERY_TIMESTAMP_MIN_US,
    REMOVE_PREFIX,
    RESERVED_NAMES,
    CollectorConfig,
    FieldConfig,
    ProfileConfig,
    StreamConfig,
)


def _native(module: str) -> types.ModuleType | None:
    try:
        return importlib.import_module(module)
    except ImportError:  # pragma: no cover - a build without a C compiler
        return None


#: collector/_query.c, or None (see :func:`parse_query`).
_query = _native("collector._query")

#: Cheap address check: something@domain.tld, no spaces, one @. Full RFC 5322
#: parsing belongs to whoever mails the address, not to the beacon edge. ``\Z``, not
#: ``$``: ``$`` also matches before a trailing newline and stored ``a@b.co\n``.
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s.]+(\.[^@\s.]+)+\Z")

_json_encode = msgspec.json.Encoder().encode
_json_decode = msgspec.json.Decoder().decode

_TRUE = frozenset(("1", "true", "yes", "on"))
_FALSE = frozenset(("0", "false", "no", "off"))

# Unix seconds below this, milliseconds above (1e11 s is the year 5138).
_MS_THRESHOLD = 100_000_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: Year 10000 in microseconds (exclusive) and 0001-01-01T00:00:00Z: BigQuery's TIMESTAMP range,
#: the narrowest of the sinks' (DuckDB's is wider).
MAX_TIMESTAMP_US = BIGQUERY_TIMESTAMP_END_US
MIN_TIMESTAMP_US = BIGQUERY_TIMESTAMP_MIN_US
#: The only int text accepted: ``int()`` would also take " 5 ", "1_0" and non-ASCII digits.
_INT_RE = re.compile(r"-?[0-9]+\Z")
#: Decimal number text, ASCII only (``float()`` would take "1_0", "٣", " 5 ", "infinity").
_NUMBER_RE = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?\Z")
#: Frame values are msgpack integers; BigQuery INT64 and DuckDB BIGINT are signed 64-bit.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_TS_RANGE = "0001-01-01 to 9999-12-31 UTC"
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


class Invalid(ValueError):
    """One event broke one rule of one field."""

    __slots__ = ("detail", "field", "index", "rule")

    def __init__(self, field: str, rule: str, detail: str, index: int | None = None) -> None:
        super().__init__(f"{field}: {detail}")
        self.field = field
        self.rule = rule
        self.detail = detail
        self.index = index

    def header(self) -> str:
        """The ``X-Oceanus-Error`` value: field, rule, detail; latin-1 safe."""
        text = f"{self.field}: {self.rule}: {self.detail}"
        # Control characters (CR/LF, NUL) from a client's path or key would break the header line.
        text = _CONTROL_RE.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
        return text.encode("ascii", "backslashreplace").decode("ascii")

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"field": self.field, "rule": self.rule, "message": self.detail}
        if self.index is not None:
            out["index"] = self.index
        return out


_TRANSFORMS: dict[str, Callable[[str], str]] = {"strip": str.strip, "lowercase": str.lower, "uppercase": str.upper}

Check = Callable[[Any, bool], Any]
"""``check(value, from_text) -> stored value``; raises :class:`Invalid`."""


def _transform(transforms: tuple[str, ...], max_length: int | None = None) -> Callable[[str], str] | None:
    funcs: list[Callable[[str], str]] = []
    for t in transforms:
        if t.startswith(REMOVE_PREFIX):
            table = str.maketrans("", "", t[len(REMOVE_PREFIX) :])
            funcs.append(lambda v, table=table: v.translate(table))  # type: ignore[misc]
        elif t == "truncate":
            n = max_length or sys.maxsize
            funcs.append(lambda v, n=n: v[:n])  # type: ignore[misc]
        else:
            funcs.append(_TRANSFORMS[t])
    if not funcs:
        return None
    if len(funcs) == 1:
        return funcs[0]

    def apply(v: str) -> str:
        for f in funcs:
            v = f(v)
        return v

    return apply


def _string_check(name: str, f: FieldConfig) -> Check:
    transform = _transform(f.transforms, f.max_length)
    max_length = f.max_length
    pattern = re.compile(end_anchored(f.pattern)) if f.pattern is not None else None
    enum = frozenset(f.enum) if f.enum is not None else None
    enum_text = "|".join(f.enum) if f.enum is not None else ""
    pattern_text = f.pattern or ""
    email = f.format == "email"
    required = f.required

    def check(v: Any, from_text: bool) -> Any:
        if type(v) is not str:
            raise Invalid(name, "type", f"expected a string, got {_json_type(v)}")
        if transform is not None:
            v = transform(v)
        if not v:
            if required:
                raise Invalid(name, "required", "is required and may not be empty")
            return v
        if max_length is not None and len(v) > max_length:
            raise Invalid(name, "max_length", f"longer than {max_length} characters")
        if pattern is not None and pattern.search(v) is None:
            raise Invalid(name, "pattern", f"does not match {pattern_text}")
        if enum is not None and v not in enum:
            raise Invalid(name, "enum", f"must be one of {enum_text}")
        if email and EMAIL_RE.match(v) is None:
            raise Invalid(name, "format", "is not an email address")
        return v

    return check


def _range_check(name: str, f: FieldConfig) -> Callable[[float], None]:
    lo, hi = f.min, f.max

    def check(v: float) -> None:
        if lo is not None and v < lo:
            raise Invalid(name, "min", f"less than {lo:g}")
        if hi is not None and v > hi:
            raise Invalid(name, "max", f"greater than {hi:g}")

    return check


def _int_check(name: str, f: FieldConfig) -> Check:
    in_range = _range_check(name, f)

    def check(v: Any, from_text: bool) -> Any:
        if from_text:
            if _INT_RE.match(v) is None:
                raise Invalid(name, "type", "expected an integer (-?[0-9]+)")
            try:
                v = int(v)
            except ValueError:  # past Python's 4300-digit limit: far past int64 too
                raise Invalid(name, "type", "outside the signed 64-bit integer range") from None
        elif type(v) is not int:
            raise Invalid(name, "type", f"expected an integer, got {_json_type(v)}")
        if not INT64_MIN <= v <= INT64_MAX:
            raise Invalid(name, "type", "outside the signed 64-bit integer range")
        in_range(v)
        return v

    return check


def _float_check(name: str, f: FieldConfig) -> Check:
    in_range = _range_check(name, f)

    def check(v: Any, from_text: bool) -> Any:
        if from_text:
            if _NUMBER_RE.match(v) is None:
                raise Invalid(name, "type", "expected a number")
            v = float(v)
        elif type(v) is int:
            try:
                v = float(v)
            except OverflowError:  # a JSON integer of hundreds of digits
                raise Invalid(name, "type", "expected a finite number") from None
        elif type(v) is not float:
            raise Invalid(name, "type", f"expected a number, got {_json_type(v)}")
        if not math.isfinite(v):
            raise Invalid(name, "type", "expected a finite number")
        in_range(v)
        return v

    return check


def _bool_check(name: str, f: FieldConfig) -> Check:
    def check(v: Any, from_text: bool) -> Any:
        if from_text:
            low = v.lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise Invalid(name, "type", "expected a boolean (1/0/true/false)")
        if type(v) is not bool:
            raise Invalid(name, "type", f"expected a boolean, got {_json_type(v)}")
        return v

    return check


def parse_timestamp(v: Any, tz: tzinfo = UTC) -> int:
    """ISO 8601 text or unix seconds/milliseconds -> int microseconds (UTC).

    Raises ``ValueError``. Naive ISO times are taken in ``tz`` (a time that
    does not exist or occurs twice there takes the offset before the change).
    """
    if type(v) is str:
        if _NUMBER_RE.match(v) is None:
            dt = datetime.fromisoformat(v)
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=tz)
            delta = dt - _EPOCH
            iso = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
            # 9999-12-31T23:59:59-14:00 is in the year 10000 UTC, 0001-01-01T00:00+14:00 in year 0.
            if not MIN_TIMESTAMP_US <= iso < MAX_TIMESTAMP_US:
                raise ValueError(_TS_RANGE)
            return iso
        number: float = float(v)
    elif type(v) is int or type(v) is float:
        number = v
    else:
        raise ValueError("not a timestamp")
    if not math.isfinite(number) or number < 0:
        raise ValueError("not a timestamp")
    micros = round(number * 1_000) if number >= _MS_THRESHOLD else round(number * 1_000_000)
    if micros >= MAX_TIMESTAMP_US:
        raise ValueError(_TS_RANGE)
    return micros


def _timestamp_check(name: str, f: FieldConfig, tz: tzinfo = UTC) -> Check:
    def check(v: Any, from_text: bool) -> Any:
        try:
            return parse_timestamp(v, tz)
        except (ValueError, OverflowError) as exc:
            if str(exc) == _TS_RANGE:
                raise Invalid(name, "range", f"outside {_TS_RANGE}") from None
            raise Invalid(name, "type", "expected ISO 8601 or unix seconds/milliseconds") from None

    return check


def _json_check(name: str, f: FieldConfig) -> Check:
    max_length = f.max_length
    sort_keys = "sort_keys" in f.transforms

    def check(v: Any, from_text: bool) -> Any:
        if type(v) is str:
            # Text (a query value, or a string in a JSON body): it must be JSON.
            # Bytes, not characters: at most 4 per character, so short text skips the encode.
            if max_length is not None and 4 * len(v) > max_length and _utf8_len(v) > max_length:
                raise Invalid(name, "max_length", f"longer than {max_length} bytes")
            try:
                value = _json_decode(v)
            except (msgspec.DecodeError, RecursionError):
                raise Invalid(name, "type", "is not valid JSON text (or nested too deeply)") from None
            return _python_json(value) if sort_keys else v
        text = _json_encode(v)
        if max_length is not None and len(text) > max_length:
            raise Invalid(name, "max_length", f"longer than {max_length} bytes")
        return _python_json(v) if sort_keys else text.decode()

    return check


def _python_json(value: Any) -> str:
    """``json.dumps(value, sort_keys=True)``: the text the 2016 oceanus stored
    (", " and ": " separators, non-ASCII as \\u escapes), so old SQL that matches
    on it keeps matching."""
    return json.dumps(value, sort_keys=True)


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def end_anchored(pattern: str) -> str:
    """``pattern`` with every unescaped ``$`` outside a character class made ``\\Z``.

    Python's ``$`` also matches before a trailing newline, so ``^[a-z]+$`` would
    take ``ab%0A`` and store ``ab\\n``: the author of the pattern meant the end.
    """
    if "$" not in pattern:
        return pattern
    out: list[str] = []
    i, n = 0, len(pattern)
    in_class = False
    while i < n:
        c = pattern[i]
        if c == "\\":
            out.append(pattern[i : i + 2])
            i += 2
            continue
        if in_class:
            if c == "]":
                in_class = False
        elif c == "[":
            in_class = True
            out.append(c)
            i += 1
            # A "]" first in the class (after an optional "^") is a literal.
            if i < n and pattern[i] == "^":
                out.append("^")
                i += 1
            if i < n and pattern[i] == "]":
                out.append("]")
                i += 1
            continue
        elif c == "$":
            out.append("\\Z")
            i += 1
            continue
        out.append(c)
        i += 1
    return "".join(out)


def nesting_over(value: Any, limit: int) -> bool:
    """True when JSON ``value`` nests objects/arrays more than ``limit`` levels deep."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if depth > limit:
            return True
        children = v.values() if type(v) is dict else v
        for child in children:
            if type(child) is dict or type(child) is list:
                stack.append((child, depth + 1))
    return False


_BUILDERS: dict[str, Callable[[str, FieldConfig], Check]] = {
    "string": _string_check,
    "int": _int_check,
    "float": _float_check,
    "bool": _bool_check,
    "timestamp": _timestamp_check,
    "json": _json_check,
}


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "an array"
    return "an object"


def unquote(text: str) -> str:
    """``unquote_plus`` for the hot path, in C calls only.

    ``%XX`` becomes ``\\xXX`` and ``codecs.escape_decode`` (C) turns the escapes into
    bytes, which are then read as UTF-8 (invalid sequences replaced). Backslashes
    already in the text are doubled first so they stay literal. A malformed
    escape (``%zz``, a lone ``%``) makes escape_decode raise; the stdlib function
    then handles the value the standard way. About ten times faster than
    ``urllib.parse.unquote_plus`` on percent-encoded URLs and titles.
    """
    if "+" in text:
        text = text.replace("+", " ")
    if "%" not in text:
        return text
    escaped = text.replace("\\", "\\\\").replace("%", "\\x").encode("utf-8", "surrogateescape")
    try:
        return codecs.escape_decode(escaped)[0].decode("utf-8", "replace")
    except ValueError:
        return unquote_plus(text)


def parse_pairs(text: str) -> dict[str, str]:
    """``a=1&b=x+y`` -> dict. Faster than ``parse_qsl`` on beacon query strings:
    values without ``%`` or ``+`` are taken as they are. A repeated key keeps its
    last value."""
    out: dict[str, str] = {}
    if not text:
        return out
    for part in text.split("&"):
        if not part:
            continue
        # One scan of the whole pair decides: most pairs need no decoding at all.
        if "%" in part or "+" in part:
            key, _, value = part.partition("=")
            if "%" in key or "+" in key:
                key = unquote(key)
            out[key] = unquote(value)
        else:
            key, _, value = part.partition("=")
            out[key] = value
    return out


def parse_query(raw: bytes) -> dict[str, str]:
    """:func:`parse_pairs` of raw query bytes read as UTF-8 (invalid bytes replaced).

    collector/_query.c takes every query it can decode exactly as parse_pairs
    does (ASCII with well-formed escapes: what browsers send) in one C call,
    ~4x faster; anything else, or a build without the module, goes through
    parse_pairs.
    """
    if _query is not None:
        fast: dict[str, str] | None = _query.parse(raw)
        if fast is not None:
            return fast
    return parse_pairs(raw.decode("utf-8", "replace"))


def _plain_max(f: FieldConfig) -> int:
    """The longest value a string field takes with no check but its length, or
    0 when the field has any other rule (one falsy test skips the fast path in ``values``)."""
    if f.type != "string" or f.transforms or f.pattern is not None or f.enum is not None or f.format is not None:
        return 0
    return f.max_length if f.max_length is not None else sys.maxsize


class StreamValidator:
    """The compiled rules of one stream."""

    __slots__ = (
        "_fields",
        "_index",
        "_max_extra_bytes",
        "_max_extra_depth",
        "_max_extra_keys",
        "_plain",
        "_required",
        "columns",
        "name",
    )

    def __init__(self, stream: StreamConfig, collector: CollectorConfig) -> None:
        self.name = stream.name
        self.columns = stream.columns
        tz = _zone(stream.timezone)
        self._fields: tuple[tuple[str, Check, bool, bool, int], ...] = tuple(
            (name, _build(name, f, tz), f.required, f.type != "string", _plain_max(f))
            for name, f in stream.fields.items()
        )
        self._max_extra_keys = collector.max_extra_keys
        self._max_extra_bytes = collector.max_extra_bytes
        self._max_extra_depth = collector.max_extra_depth
        # For query_values: each field's slot, and what the C side may settle alone.
        self._index = {name: i for i, (name, *_) in enumerate(self._fields)}
        self._plain = tuple(plain_max for *_, plain_max in self._fields)
        self._required = tuple(required for _, _, required, _, _ in self._fields)

    def query_values(self, raw: bytes) -> list[Any]:
        """``values(parse_query(raw), True)``: a pixel's query string straight into the field values.

        collector/_query.c splits the query into the fields' slots and settles every field whose
        only rule is its length (or that is absent and optional); the rest goes through the same
        checks as in :meth:`values`, in field order, so a bad query raises the same
        :class:`Invalid`. A query the C side does not take (see :func:`parse_query`), or a build
        without it, goes the whole way through :meth:`values`.
        """
        fast = _query.fields(raw, self._index, self._plain, self._required) if _query is not None else None
        if fast is None:
            return self.values(parse_query(raw), True)
        out: list[Any]
        todo: list[int]
        unknown: dict[str, str] | None
        out, todo, unknown = fast
        fields = self._fields
        for i in todo:
            name, check, required, empty_is_absent, _ = fields[i]
            v = out[i]
            if v is None or (empty_is_absent and v == ""):
                if required:
                    raise Invalid(name, "required", "is required")
                out[i] = None
                continue
            out[i] = check(v, True)
        out.append(self._extra(unknown) if unknown else None)
        return out

    def values(self, event: dict[str, Any], from_text: bool) -> list[Any]:
        """The stream's field values in column order, then ``extra``.

        ``event`` is consumed (its known keys are popped). ``from_text`` says the
        values are query/form text rather than typed JSON values.
        """
        out: list[Any] = []
        append = out.append
        pop = event.pop
        for name, check, required, empty_is_absent, plain_max in self._fields:
            v = pop(name, None)
            # Fast path: a non-empty string within max_length for a string field with
            # no other rule is stored as it is; every other case takes the full check.
            if plain_max and type(v) is str and 0 < len(v) <= plain_max:
                append(v)
                continue
            if v is None or (from_text and empty_is_absent and v == ""):
                if required:
                    raise Invalid(name, "required", "is required")
                append(None)
                continue
            append(check(v, from_text))
        if event:
            append(self._extra(event))
        else:
            append(None)
        return out

    def _extra(self, event: dict[str, Any]) -> str:
        if len(event) > self._max_extra_keys:
            raise Invalid("extra", "max_extra_keys", f"more than {self._max_extra_keys} unknown keys")
        if not RESERVED_NAMES.isdisjoint(event):  # one C call; the loop only to name the key
            for key in event:
                if key in RESERVED_NAMES:
                    raise Invalid(key, "reserved", "is set by the server and may not be sent")
        limit = self._max_extra_depth
        for v in event.values():
            # extra is one level; each object/array inside it one more.
            if (type(v) is dict or type(v) is list) and nesting_over(v, limit - 1):
                raise Invalid("extra", "max_extra_depth", f"unknown keys nest deeper than {limit} levels")
        text = _json_encode(event)
        if len(text) > self._max_extra_bytes:
            raise Invalid("extra", "max_extra_bytes", f"unknown keys exceed {self._max_extra_bytes} bytes as JSON")
        return text.decode()


def _zone(name: str) -> tzinfo:
    return UTC if name == "UTC" else ZoneInfo(name)


def _build(name: str, f: FieldConfig, tz: tzinfo) -> Check:
    if f.type == "timestamp":
        return _timestamp_check(name, f, tz)
    return _BUILDERS[f.type](name, f)


def _is_plain(f: FieldConfig) -> bool:
    """True when the field needs none of what only :class:`MappedValidator` does."""
    return not (f.aliases or f.null_values or f.map or f.default is not None or f.coerce or f.present)


_MISSING: Any = object()


class MappedValidator(StreamValidator):
    """A stream (or a profile of one) that renames, maps, nulls or defaults values
    before the checks. Streams without any of that keep :class:`StreamValidator`,
    whose loop has none of these steps: they cost nothing where they are not used."""

    __slots__ = ("_drop_unknown", "_keep", "_mapped")

    def __init__(
        self,
        stream: StreamConfig,
        collector: CollectorConfig,
        *,
        drop_unknown: bool = False,
        keep: tuple[str, ...] = (),
    ) -> None:
        super().__init__(stream, collector)
        self._drop_unknown = drop_unknown
        self._keep = keep
        self._mapped = tuple(
            (
                name,
                check,
                required,
                empty_is_absent,
                f.present,
                f.aliases,
                frozenset(f.null_values),
                dict(f.map),
                f.default,
                f.coerce,
            )
            for (name, check, required, empty_is_absent, _plain), f in zip(
                self._fields, stream.fields.values(), strict=True
            )
        )

    def query_values(self, raw: bytes) -> list[Any]:
        # Aliases, maps, nulls and defaults act on the whole event first: no shortcut here.
        return self.values(parse_query(raw), True)

    def values(self, event: dict[str, Any], from_text: bool) -> list[Any]:
        out: list[Any] = []
        append = out.append
        pop = event.pop
        for name, check, required, empty_is_absent, present, aliases, nulls, mapping, default, coerce in self._mapped:
            v = pop(name, _MISSING)
            for alias in aliases:
                other = pop(alias, _MISSING)
                if v is _MISSING:
                    v = other
            text = from_text
            if v is _MISSING:
                if present:
                    raise Invalid(name, "required", "is required (it may be empty)")
                if default is None:
                    if required:
                        raise Invalid(name, "required", "is required")
                    append(None)
                    continue
                v, text = default, True
            if nulls and v is not None and (v if type(v) is str else _json_encode(v).decode()) in nulls:
                v = None
            elif mapping and type(v) is str:
                v = mapping.get(v, v)
            if coerce and type(v) is str:
                text = True
            if v is None or (text and empty_is_absent and v == ""):
                if required:
                    raise Invalid(name, "required", "is required")
                append(None)
                continue
            append(check(v, text))
        if event and self._drop_unknown:
            event = {k: event[k] for k in self._keep if k in event}
        if event:
            append(self._extra(event))
        else:
            append(None)
        return out


def make_validator(
    stream: StreamConfig, collector: CollectorConfig, profile: ProfileConfig | None = None
) -> StreamValidator:
    """The validator of ``stream``, or of one of its profiles (same columns, other rules)."""
    drop = False
    keep: tuple[str, ...] = ()
    if profile is not None:
        stream = msgspec.structs.replace(stream, fields={**stream.fields, **profile.fields})
        drop, keep = profile.unknown == "drop", profile.keep
    if drop or not all(_is_plain(f) for f in stream.fields.values()):
        return MappedValidator(stream, collector, drop_unknown=drop, keep=keep)
    return StreamValidator(stream, collector)


def compile_streams(streams: Iterable[StreamConfig], collector: CollectorConfig) -> dict[str, StreamValidator]:
    return {s.name: make_validator(s, collector) for s in streams}

"""Every field type against every rule, at and past each limit, with the exact stored value or error.

One field per stream, so each case names the rule it pins; the same cases run
as query text and as typed JSON where both apply.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest

from collector.validate import EMAIL_RE, INT64_MAX, INT64_MIN, Invalid, make_validator, parse_timestamp
from oceanus import config

_ABSENT: Any = object()


@functools.cache
def _validator(field: str, timezone: str = "UTC"):  # type: ignore[no-untyped-def]
    cfg = config.loads(f'[streams.s]\ntimezone = "{timezone}"\n[streams.s.fields]\nf = {field}\n', env={})
    return make_validator(cfg.streams["s"], cfg.collector)


def check(field: str, value: Any, from_text: bool, timezone: str = "UTC") -> Any:
    """The stored value, or (rule, detail) of the refusal."""
    event = {} if value is _ABSENT else {"f": value}
    try:
        stored, extra = _validator(field, timezone).values(event, from_text)
    except Invalid as exc:
        return (exc.rule, exc.detail) if exc.field == "f" else ("wrong field", exc.field)
    assert extra is None
    return stored


TEXT, JSON = True, False

CASES: list[tuple[str, Any, bool, Any]] = [
    # string: type, required, max_length, pattern, enum, format, transforms
    ('{ type = "string" }', "x y", TEXT, "x y"),
    ('{ type = "string" }', 5, JSON, ("type", "expected a string, got a number")),
    ('{ type = "string" }', True, JSON, ("type", "expected a string, got a boolean")),
    ('{ type = "string" }', [1], JSON, ("type", "expected a string, got an array")),
    ('{ type = "string" }', {"a": 1}, JSON, ("type", "expected a string, got an object")),
    ('{ type = "string" }', None, JSON, None),
    ('{ type = "string" }', "", TEXT, ""),
    ('{ type = "string", required = true }', "", TEXT, ("required", "is required and may not be empty")),
    ('{ type = "string", required = true }', _ABSENT, TEXT, ("required", "is required")),
    ('{ type = "string", required = true }', None, JSON, ("required", "is required")),
    (
        '{ type = "string", required = true, transforms = ["strip"] }',
        "  ",
        TEXT,
        ("required", "is required and may not be empty"),
    ),
    ('{ type = "string", max_length = 3 }', "abc", TEXT, "abc"),
    ('{ type = "string", max_length = 3 }', "abcd", TEXT, ("max_length", "longer than 3 characters")),
    ('{ type = "string", max_length = 3 }', "日本語", JSON, "日本語"),
    ('{ type = "string", max_length = 3, enum = ["abcd"] }', "abcd", TEXT, ("max_length", "longer than 3 characters")),
    ('{ type = "string", pattern = "^[a-z]+$" }', "abc", TEXT, "abc"),
    ('{ type = "string", pattern = "^[a-z]+$" }', "ABC", TEXT, ("pattern", "does not match ^[a-z]+$")),
    ('{ type = "string", pattern = "^[a-z]+$" }', "abc\n", TEXT, ("pattern", "does not match ^[a-z]+$")),
    ('{ type = "string", pattern = "[0-9]" }', "a1b", JSON, "a1b"),
    ('{ type = "string", enum = ["a", "b"] }', "b", TEXT, "b"),
    ('{ type = "string", enum = ["a", "b"] }', "c", TEXT, ("enum", "must be one of a|b")),
    ('{ type = "string", format = "email" }', "a.b+c@example.co.jp", TEXT, "a.b+c@example.co.jp"),
    ('{ type = "string", format = "email" }', "a@example", TEXT, ("format", "is not an email address")),
    ('{ type = "string", format = "email" }', "a@example.com\n", TEXT, ("format", "is not an email address")),
    ('{ type = "string", format = "email" }', "a@example.com x", JSON, ("format", "is not an email address")),
    ('{ type = "string", transforms = ["strip", "lowercase"] }', " AbC ", TEXT, "abc"),
    ('{ type = "string", transforms = ["uppercase"] }', "abc", TEXT, "ABC"),
    ('{ type = "string", transforms = ["truncate"], max_length = 2 }', "abc", TEXT, "ab"),
    ('{ type = "string", transforms = ["remove:-"], max_length = 3 }', "1-2-3", TEXT, "123"),
    ('{ type = "string", transforms = ["remove:- ", "strip"] }', "a- b", TEXT, "ab"),
    # int: type, required, int64 range, min, max
    ('{ type = "int" }', "42", TEXT, 42),
    ('{ type = "int" }', "-7", TEXT, -7),
    ('{ type = "int" }', "", TEXT, None),
    ('{ type = "int", required = true }', "", TEXT, ("required", "is required")),
    ('{ type = "int" }', " 5", TEXT, ("type", "expected an integer (-?[0-9]+)")),
    ('{ type = "int" }', "5 ", TEXT, ("type", "expected an integer (-?[0-9]+)")),
    ('{ type = "int" }', "5\n", TEXT, ("type", "expected an integer (-?[0-9]+)")),
    ('{ type = "int" }', "1_0", TEXT, ("type", "expected an integer (-?[0-9]+)")),
    ('{ type = "int" }', "1.0", TEXT, ("type", "expected an integer (-?[0-9]+)")),
    ('{ type = "int" }', 42, JSON, 42),
    ('{ type = "int" }', 4.0, JSON, ("type", "expected an integer, got a number")),
    ('{ type = "int" }', True, JSON, ("type", "expected an integer, got a boolean")),
    ('{ type = "int" }', "42", JSON, ("type", "expected an integer, got a string")),
    ('{ type = "int" }', str(INT64_MAX), TEXT, INT64_MAX),
    ('{ type = "int" }', str(INT64_MAX + 1), TEXT, ("type", "outside the signed 64-bit integer range")),
    ('{ type = "int" }', INT64_MIN, JSON, INT64_MIN),
    ('{ type = "int" }', INT64_MIN - 1, JSON, ("type", "outside the signed 64-bit integer range")),
    # The bounds as numbers, not as the module's names for them: BigQuery INT64, DuckDB BIGINT.
    ('{ type = "int" }', -9_223_372_036_854_775_808, JSON, -9_223_372_036_854_775_808),
    ('{ type = "int" }', -9_223_372_036_854_775_809, JSON, ("type", "outside the signed 64-bit integer range")),
    ('{ type = "int" }', "-9223372036854775809", TEXT, ("type", "outside the signed 64-bit integer range")),
    # map: text only; any other JSON value meets the type check, never the mapping.
    ('{ type = "string", map = { a = "b" } }', "a", TEXT, "b"),
    ('{ type = "string", map = { a = "b" } }', "c", TEXT, "c"),
    ('{ type = "string", map = { a = "b" } }', [1], JSON, ("type", "expected a string, got an array")),
    ('{ type = "string", map = { a = "b" } }', {"a": 1}, JSON, ("type", "expected a string, got an object")),
    ('{ type = "int" }', 9_223_372_036_854_775_807, JSON, 9_223_372_036_854_775_807),
    ('{ type = "int" }', 9_223_372_036_854_775_808, JSON, ("type", "outside the signed 64-bit integer range")),
    ('{ type = "int" }', "9" * 5000, TEXT, ("type", "outside the signed 64-bit integer range")),
    ('{ type = "int", min = 0, max = 10 }', "0", TEXT, 0),
    ('{ type = "int", min = 0, max = 10 }', "-1", TEXT, ("min", "less than 0")),
    ('{ type = "int", min = 0, max = 10 }', 10, JSON, 10),
    ('{ type = "int", min = 0, max = 10 }', 11, JSON, ("max", "greater than 10")),
    # float: type, finiteness, min, max
    ('{ type = "float" }', "1.5", TEXT, 1.5),
    ('{ type = "float" }', "-.5", TEXT, -0.5),
    ('{ type = "float" }', "2.", TEXT, 2.0),
    ('{ type = "float" }', "1e3", TEXT, 1000.0),
    ('{ type = "float" }', "1E-2", TEXT, 0.01),
    ('{ type = "float" }', "1e", TEXT, ("type", "expected a number")),
    ('{ type = "float" }', "1.5 ", TEXT, ("type", "expected a number")),
    ('{ type = "float" }', "inf", TEXT, ("type", "expected a number")),
    ('{ type = "float" }', "1e999", TEXT, ("type", "expected a finite number")),
    ('{ type = "float" }', 1.5, JSON, 1.5),
    ('{ type = "float" }', 2, JSON, 2.0),
    ('{ type = "float" }', float("inf"), JSON, ("type", "expected a finite number")),
    ('{ type = "float" }', float("nan"), JSON, ("type", "expected a finite number")),
    ('{ type = "float" }', 10**400, JSON, ("type", "expected a finite number")),
    ('{ type = "float" }', True, JSON, ("type", "expected a number, got a boolean")),
    ('{ type = "float" }', "1.5", JSON, ("type", "expected a number, got a string")),
    ('{ type = "float", required = true }', "", TEXT, ("required", "is required")),
    ('{ type = "float", min = 0.5, max = 2.5 }', "0.5", TEXT, 0.5),
    ('{ type = "float", min = 0.5, max = 2.5 }', 0.25, JSON, ("min", "less than 0.5")),
    ('{ type = "float", min = 0.5, max = 2.5 }', 2.5, JSON, 2.5),
    ('{ type = "float", min = 0.5, max = 2.5 }', "2.75", TEXT, ("max", "greater than 2.5")),
    # bool
    *[('{ type = "bool" }', t, TEXT, True) for t in ("1", "true", "TRUE", "yes", "On")],
    *[('{ type = "bool" }', t, TEXT, False) for t in ("0", "false", "False", "no", "OFF")],
    ('{ type = "bool" }', "2", TEXT, ("type", "expected a boolean (1/0/true/false)")),
    ('{ type = "bool" }', True, JSON, True),
    ('{ type = "bool" }', False, JSON, False),
    ('{ type = "bool" }', 1, JSON, ("type", "expected a boolean, got a number")),
    ('{ type = "bool" }', "true", JSON, ("type", "expected a boolean, got a string")),
    ('{ type = "bool", required = true }', "", TEXT, ("required", "is required")),
    ('{ type = "bool", required = true }', False, JSON, False),
    # timestamp: ISO, unix seconds/ms, range
    ('{ type = "timestamp" }', "2024-03-10T13:45:30.123456Z", TEXT, 1_710_078_330_123_456),
    ('{ type = "timestamp" }', "2024-03-10T13:45:30.123456Z", JSON, 1_710_078_330_123_456),
    ('{ type = "timestamp" }', "1710078330.5", TEXT, 1_710_078_330_500_000),
    ('{ type = "timestamp" }', 1_710_078_330, JSON, 1_710_078_330_000_000),
    ('{ type = "timestamp" }', 1_710_078_330_123, JSON, 1_710_078_330_123_000),
    ('{ type = "timestamp" }', 99_999_999_999, JSON, 99_999_999_999_000_000),  # seconds, the last
    ('{ type = "timestamp" }', 100_000_000_000, JSON, 100_000_000_000_000),  # milliseconds, the first
    ('{ type = "timestamp" }', 0, JSON, 0),
    ('{ type = "timestamp" }', -1, JSON, ("type", "expected ISO 8601 or unix seconds/milliseconds")),
    ('{ type = "timestamp" }', True, JSON, ("type", "expected ISO 8601 or unix seconds/milliseconds")),
    ('{ type = "timestamp" }', "yesterday", TEXT, ("type", "expected ISO 8601 or unix seconds/milliseconds")),
    ('{ type = "timestamp" }', "9999-12-31T23:59:59.999999Z", TEXT, 253_402_300_799_999_999),
    ('{ type = "timestamp" }', "9999-12-31T23:59:59-01:00", TEXT, ("range", "outside 0001-01-01 to 9999-12-31 UTC")),
    ('{ type = "timestamp" }', "0001-01-01T00:00:00Z", TEXT, -62_135_596_800_000_000),
    ('{ type = "timestamp" }', "0001-01-01T00:30:00+01:00", TEXT, ("range", "outside 0001-01-01 to 9999-12-31 UTC")),
    ('{ type = "timestamp" }', 253_402_300_799_999, JSON, 253_402_300_799_999_000),
    ('{ type = "timestamp" }', 253_402_300_800_000, JSON, ("range", "outside 0001-01-01 to 9999-12-31 UTC")),
    ('{ type = "timestamp", required = true }', "", TEXT, ("required", "is required")),
    # json: text or any JSON value, max_length in bytes, sort_keys
    ('{ type = "json" }', '{"b": 1, "a": [2]}', TEXT, '{"b": 1, "a": [2]}'),
    ('{ type = "json" }', "{bad", TEXT, ("type", "is not valid JSON text (or nested too deeply)")),
    ('{ type = "json" }', {"b": 1, "a": [2]}, JSON, '{"b":1,"a":[2]}'),
    ('{ type = "json" }', 7, JSON, "7"),
    ('{ type = "json", transforms = ["sort_keys"] }', {"b": 1, "a": "é"}, JSON, '{"a": "\\u00e9", "b": 1}'),
    ('{ type = "json", transforms = ["sort_keys"] }', '{"b":1,"a":2}', TEXT, '{"a": 2, "b": 1}'),
    ('{ type = "json", max_length = 6 }', '"日"', TEXT, '"日"'),  # 5 bytes
    (
        '{ type = "json", max_length = 6 }',
        '["日"]',
        TEXT,
        ("max_length", "longer than 6 bytes"),
    ),  # 5 characters, 7 bytes
    # Seven characters, 22 bytes: over a 21-byte limit though 3 bytes a character would not be.
    ('{ type = "json", max_length = 21 }', '"' + "\U0001f600" * 5 + '"', TEXT, ("max_length", "longer than 21 bytes")),
    ('{ type = "json", max_length = 22 }', '"' + "\U0001f600" * 5 + '"', TEXT, '"' + "\U0001f600" * 5 + '"'),
    ('{ type = "json", max_length = 6 }', [1, 23], JSON, "[1,23]"),
    ('{ type = "json", max_length = 6 }', [1, 234], JSON, ("max_length", "longer than 6 bytes")),
    ('{ type = "json", required = true }', "", TEXT, ("required", "is required")),
]


@pytest.mark.parametrize(("field", "value", "from_text", "expected"), CASES)
def test_every_type_and_rule(field: str, value: Any, from_text: bool, expected: Any) -> None:
    got = check(field, value, from_text)
    assert got == expected
    assert type(got) is type(expected)


@pytest.mark.parametrize(
    ("timezone", "local"),
    [
        ("UTC", "2024-03-10T13:45:30.123456"),
        ("Asia/Tokyo", "2024-03-10T22:45:30.123456"),  # +09:00, no DST
        ("Asia/Kolkata", "2024-03-10T19:15:30.123456"),  # +05:30
        ("Asia/Kathmandu", "2024-03-10T19:30:30.123456"),  # +05:45
        ("Etc/GMT+12", "2024-03-10T01:45:30.123456"),  # -12:00 (POSIX sign)
        ("Pacific/Kiritimati", "2024-03-11T03:45:30.123456"),  # +14:00, the next day
    ],
)
def test_naive_times_are_in_the_streams_zone(timezone: str, local: str) -> None:
    assert check('{ type = "timestamp" }', local, TEXT, timezone) == 1_710_078_330_123_456
    # an explicit offset wins over the zone
    assert check('{ type = "timestamp" }', "2024-03-10T13:45:30.123456+00:00", TEXT, timezone) == 1_710_078_330_123_456


@pytest.mark.parametrize(
    ("text", "micros"),
    [
        ("2024-03-09T23:59:59.999999-14:00", 1_710_079_199_999_999),  # 2024-03-10T13:59:59.999999Z
        ("2024-03-10T13:45:30+05:45", 1_710_057_630_000_000),
        ("1969-12-31T23:59:59.5Z", -500_000),  # before the epoch: days negative, seconds positive
        ("1970-01-01T00:00:01Z", 1_000_000),
        ("2024-02-29T12:00:00-03:30", 1_709_220_600_000_000),
    ],
)
def test_iso_offsets_to_exact_micros(text: str, micros: int) -> None:
    assert parse_timestamp(text) == micros


@pytest.mark.parametrize(
    ("address", "ok"),
    [
        ("a@b.co", True),
        ("first.last+tag@mail.example.co.jp", True),
        ("a@b", False),  # no top-level domain
        ("a@b.", False),
        ("a@.co", False),
        ("a@b..co", False),
        ("@b.co", False),
        ("a@@b.co", False),
        ("a b@c.de", False),
        ("a@b.co x", False),
        ("a@b.co\n", False),  # "$" would match before a trailing newline
        (" a@b.co", False),
    ],
)
def test_email_pattern(address: str, ok: bool) -> None:
    assert (EMAIL_RE.match(address) is not None) is ok


def test_only_a_rule_keeps_a_field_off_the_fast_path() -> None:
    # A string whose only rule is a pattern, an enum, a format or a transform must be checked.
    assert check('{ type = "string", pattern = "^a" }', "b", TEXT) == ("pattern", "does not match ^a")
    assert check('{ type = "string", enum = ["a"] }', "b", TEXT) == ("enum", "must be one of a")
    assert check('{ type = "string", format = "email" }', "b", TEXT) == ("format", "is not an email address")
    assert check('{ type = "string", transforms = ["lowercase"] }', "B", TEXT) == "b"
    assert check('{ type = "string", max_length = 1 }', "bb", TEXT) == ("max_length", "longer than 1 characters")
    assert check('{ type = "int" }', "b", TEXT) == ("type", "expected an integer (-?[0-9]+)")


def test_the_error_header_escapes_every_control_character_and_non_ascii() -> None:
    # C0 controls (NUL, LF, CR, US) and DEL would break the header line or be dropped by proxies.
    got = Invalid("a\x1fb\x7f\x00\n\x1e é", "type", "bad\r").header()
    assert got == "a\\x1fb\\x7f\\x00\\x0a\\x1e \\xe9: type: bad\\x0d"
    assert Invalid("~ !", "type", "ok").header() == "~ !: type: ok"

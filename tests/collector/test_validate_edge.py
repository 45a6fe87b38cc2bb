"""The edge refuses what no sink can store, naming the field and the rule."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from collector.app import App
from collector.validate import MAX_TIMESTAMP_US, MIN_TIMESTAMP_US, Invalid, StreamValidator, end_anchored
from oceanus import config
from tests.collector.asgi import request, running
from tests.collector.conftest import frame_count
from tests.support.servers import RedisServer

TOML = """
[collector]
max_extra_depth = 3

[streams.s.fields]
i = { type = "int" }
f = { type = "float" }
t = { type = "timestamp" }
j = { type = "json", max_length = 12 }
p = { type = "string", pattern = "^[a-z]+$" }
c = { type = "string", pattern = "^[$]?[0-9]+\\\\$?$" }
"""


@pytest.fixture(scope="module")
def validator() -> StreamValidator:
    cfg = config.loads(TOML, env={})
    return StreamValidator(cfg.streams["s"], cfg.collector)


def outcome(v: StreamValidator, event: dict[str, Any], from_text: bool = True) -> Any:
    names = ("i", "f", "t", "j", "p", "c")
    try:
        values = v.values(dict(event), from_text)
    except Invalid as exc:
        return (exc.field, exc.rule, exc.detail)
    return {n: x for n, x in zip((*names, "extra"), values, strict=True) if x is not None}


TS_RANGE = ("t", "range", "outside 0001-01-01 to 9999-12-31 UTC")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # The first and last microseconds BigQuery stores, reached through a time zone.
        ("0001-01-01T09:00:00+09:00", {"t": MIN_TIMESTAMP_US}),
        ("9999-12-31T14:59:59.999999-09:00", {"t": MAX_TIMESTAMP_US - 1}),
        ("9999-12-31T23:59:59-14:00", TS_RANGE),
        ("0001-01-01T00:00:00+14:00", TS_RANGE),
        ("0001-01-01T13:59:59.999999+14:00", TS_RANGE),
        ("0001-01-01T14:00:00+14:00", {"t": MIN_TIMESTAMP_US}),
        (" 1704067200", ("t", "type", "expected ISO 8601 or unix seconds/milliseconds")),
        ("1_704_067_200", ("t", "type", "expected ISO 8601 or unix seconds/milliseconds")),
        ("\u0661\u0667\u0660\u0664", ("t", "type", "expected ISO 8601 or unix seconds/milliseconds")),
        ("1704067200.5", {"t": 1_704_067_200_500_000}),
    ],
)
def test_timestamps_outside_every_warehouse_are_refused(validator: StreamValidator, value: str, expected: Any) -> None:
    assert outcome(validator, {"t": value}) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("-9223372036854775808", {"i": -(2**63)}),
        ("9223372036854775807", {"i": 2**63 - 1}),
        ("9223372036854775808", ("i", "type", "outside the signed 64-bit integer range")),
        ("9" * 5000, ("i", "type", "outside the signed 64-bit integer range")),
        (" 5 ", ("i", "type", "expected an integer (-?[0-9]+)")),
        ("1_0", ("i", "type", "expected an integer (-?[0-9]+)")),
        ("\u0663", ("i", "type", "expected an integer (-?[0-9]+)")),
        ("+5", ("i", "type", "expected an integer (-?[0-9]+)")),
        ("5\n", ("i", "type", "expected an integer (-?[0-9]+)")),
        ("007", {"i": 7}),
    ],
)
def test_int_text_is_ascii_digits_within_64_bits(validator: StreamValidator, value: str, expected: Any) -> None:
    assert outcome(validator, {"i": value}) == expected


def test_json_ints_past_64_bits_and_floats_past_double(validator: StreamValidator) -> None:
    assert outcome(validator, {"i": 2**63}, False) == ("i", "type", "outside the signed 64-bit integer range")
    huge = msgspec.json.decode(b"1" + b"0" * 400)
    assert outcome(validator, {"f": huge}, False) == ("f", "type", "expected a finite number")
    for text in ("1_0", " 5 ", "\u0663", "infinity"):
        assert outcome(validator, {"f": text}) == ("f", "type", "expected a number"), text
    assert outcome(validator, {"f": "-1.5e3"}) == {"f": -1500.0}


def test_pattern_dollar_is_the_end_of_the_value(validator: StreamValidator) -> None:
    # `sid=ab%0A` decodes to "ab\n": Python's `$` matches before that newline.
    assert outcome(validator, {"p": "ab\n"}) == ("p", "pattern", "does not match ^[a-z]+$")
    assert outcome(validator, {"p": "ab"}) == {"p": "ab"}
    # `$` inside a class and an escaped `\$` stay literal dollars.
    assert outcome(validator, {"c": "$12$"}) == {"c": "$12$"}
    assert outcome(validator, {"c": "12\n"})[1] == "pattern"


@pytest.mark.parametrize(
    ("pattern", "anchored"),
    [
        ("^a$", "^a\\Z"),
        ("[$]$", "[$]\\Z"),
        ("\\$$", "\\$\\Z"),
        ("[]$]x", "[]$]x"),
        ("[^]$]$", "[^]$]\\Z"),
        ("a|b$", "a|b\\Z"),
        ("no", "no"),
        # A class left open at the very end (the regex compiler refuses it later): no IndexError here.
        ("a$[", "a\\Z["),
        ("a$[^", "a\\Z[^"),
    ],
)
def test_end_anchored(pattern: str, anchored: str) -> None:
    assert end_anchored(pattern) == anchored


def test_json_max_length_counts_utf8_bytes(validator: StreamValidator) -> None:
    # Five characters, twelve bytes: at the limit. One more two-byte character is past it.
    assert outcome(validator, {"j": '"\u00e9\u00e9\u00e9\u00e9\u00e9"'}) == {"j": '"\u00e9\u00e9\u00e9\u00e9\u00e9"'}
    assert outcome(validator, {"j": '"\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9"'}) == (
        "j",
        "max_length",
        "longer than 12 bytes",
    )
    assert outcome(validator, {"j": '"\U0001f600\U0001f600\U0001f600"'}) == ("j", "max_length", "longer than 12 bytes")


def test_extra_nesting_is_capped(validator: StreamValidator) -> None:
    at_limit = {"x": {"y": [1]}}  # extra, x's object, y's array: three levels
    assert outcome(validator, dict(at_limit), False) == {"extra": '{"x":{"y":[1]}}'}
    assert outcome(validator, {"x": {"y": [[1]]}}, False) == (
        "extra",
        "max_extra_depth",
        "unknown keys nest deeper than 3 levels",
    )
    assert outcome(validator, {"x": [{}, [[{"z": 1}]]]}, False) == (
        "extra",
        "max_extra_depth",
        "unknown keys nest deeper than 3 levels",
    )
    deep = msgspec.json.decode(b"[" * 900 + b"]" * 900)
    assert outcome(validator, {"x": deep}, False)[1] == "max_extra_depth"


def test_default_extra_depth_is_documented_value() -> None:
    assert config.CollectorConfig().max_extra_depth == 16


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_far_future_timestamp_is_a_400_and_nothing_is_queued(make_config: Any, redis_server: RedisServer) -> None:
    body = b'{"user_id":"x","viewed_at":"9999-12-31T23:59:59-14:00"}'
    async with running(App(make_config())) as app:
        bad = await request(app, "POST", "/e/ecview", body=body)
        ok = await request(app, "POST", "/e/ecview", body=b'{"user_id":"x","viewed_at":"9999-12-31T23:59:59Z"}')
    assert bad.status == 400
    assert bad.json()["error"] == {
        "field": "viewed_at",
        "rule": "range",
        "message": "outside 0001-01-01 to 9999-12-31 UTC",
    }
    assert ok.status == 200
    assert frame_count(redis_server, "ecview") == 1

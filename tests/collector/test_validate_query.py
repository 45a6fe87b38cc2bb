"""StreamValidator.query_values: a pixel's query straight into field values, exactly as
``values(parse_query(raw), True)`` decides, value for value and error for error."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector import validate
from collector.validate import Invalid, StreamValidator, compile_streams, parse_query
from oceanus import config

TOML = """
[streams.s.fields]
plain = { type = "string", max_length = 3 }
need = { type = "string", required = true, max_length = 4 }
free = { type = "string" }
low = { type = "string", max_length = 3, transforms = ["lowercase"] }
hex = { type = "string", pattern = "^[0-9a-f]{1,4}$" }
n = { type = "int", min = 0, max = 99 }
ok = { type = "bool" }
j = { type = "json", max_length = 40 }
"""


@pytest.fixture(scope="module")
def validator() -> StreamValidator:
    cfg = config.loads(TOML, env={})
    return StreamValidator(cfg.streams["s"], cfg.collector)


def outcome(call: Any) -> Any:
    try:
        return call()
    except Invalid as exc:
        return (exc.field, exc.rule, exc.detail)


def both(v: StreamValidator, raw: bytes) -> tuple[Any, Any]:
    return outcome(lambda: v.query_values(raw)), outcome(lambda: v.values(parse_query(raw), True))


def test_the_c_side_is_built() -> None:
    assert validate._query is not None
    assert hasattr(validate._query, "fields")


def test_a_full_query(validator: StreamValidator) -> None:
    raw = b"need=ab%2Bc&plain=x&free=%E8%AB%8B+x&low=AB&hex=0f&n=7&ok=true&j=%7B%22a%22%3A1%7D&zz=1&yy=&zz=2"
    fast, full = both(validator, raw)
    assert fast == full
    assert fast == ["x", "ab+c", "請 x", "ab", "0f", 7, True, '{"a":1}', '{"zz":"2","yy":""}']


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"", ("need", "required", "is required")),
        (b"need=", ("need", "required", "is required and may not be empty")),
        (b"need=abcde", ("need", "max_length", "longer than 4 characters")),
        (b"need=a&plain=abcd&n=x", ("plain", "max_length", "longer than 3 characters")),
        (b"need=a&n=100", ("n", "max", "greater than 99")),
        (b"need=a&n=", None),  # an empty non-string value is absent
        (b"need=a&hex=xyz", ("hex", "pattern", "does not match ^[0-9a-f]{1,4}$")),
        (b"need=a&event_id=1", ("event_id", "reserved", "is set by the server and may not be sent")),
        (b"need=a&need=abcde", ("need", "max_length", "longer than 4 characters")),  # the last one counts
        (b"need=abcde&need=a", None),
        (b"need=a&plain=", None),
        (b"need=a&t=\xe8", None),  # not the C side's: the Python path decides
    ],
)
def test_each_verdict_is_the_python_paths(validator: StreamValidator, raw: bytes, expected: Any) -> None:
    fast, full = both(validator, raw)
    assert fast == full
    if expected is not None:
        assert fast == expected
    else:
        assert isinstance(fast, list)


def test_an_aliased_profile_takes_the_whole_python_path() -> None:
    # Aliases, maps and defaults act on the whole event: MappedValidator keeps values().
    cfg = config.loads(
        TOML.replace('free = { type = "string" }', 'free = { type = "string", aliases = ["f"], default = "d" }'),
        env={},
    )
    v = compile_streams(cfg.streams.values(), cfg.collector)["s"]
    assert type(v) is not StreamValidator
    for raw in (b"need=a&f=x", b"need=a", b"need=a&free=y&f=x"):
        fast, full = both(v, raw)
        assert fast == full
    assert v.query_values(b"need=a")[2] == "d"


_keys = st.sampled_from(["plain", "need", "free", "low", "hex", "n", "ok", "j", "x", "event_id", "", "ne%65d"])
_values = st.lists(
    st.sampled_from(["a", "B", "0", "7", "99", "100", "-1", "true", "", "%", "%41", "%E8%AB%8B", "+", "%FF", "%7B%7D"]),
    max_size=6,
).map("".join)
_pairs = st.lists(st.tuples(_keys, st.sampled_from(["=", ""]), _values), max_size=10)


@settings(max_examples=600, deadline=None)
@given(_pairs, st.booleans())
def test_any_query_gets_the_python_paths_verdict(pairs: list[tuple[str, str, str]], need_first: bool) -> None:
    cfg = config.loads(TOML, env={})
    v = StreamValidator(cfg.streams["s"], cfg.collector)
    parts = [f"{k}{eq}{val}" for k, eq, val in pairs]
    if need_first:
        parts.insert(0, "need=ok")  # most queries then pass the required field and reach the others
    raw = "&".join(parts).encode()
    fast, full = both(v, raw)
    assert fast == full


def test_a_long_query_uses_the_heap_buffer(validator: StreamValidator) -> None:
    raw = b"need=a&free=" + b"%41" * 400 + b"&x=" + b"b" * 300
    fast, full = both(validator, raw)
    assert fast == full
    assert fast[2] == "A" * 400

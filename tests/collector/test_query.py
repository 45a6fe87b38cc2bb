"""collector/_query.c: the same dict as parse_pairs for every query, or None and parse_pairs decides."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from collector import validate
from collector.validate import parse_pairs, parse_query


def _python(raw: bytes) -> dict[str, str]:
    return parse_pairs(raw.decode("utf-8", "replace"))


def test_the_extension_is_built() -> None:
    # A build that lost its compiler would fall back to Python silently: the tests say so.
    assert validate._query is not None


def test_a_pageview_beacon_takes_the_c_path() -> None:
    raw = b"sid=3f9a&evt=view&tit=%E8%AB%8B%E6%B1%82+%E6%9B%B8&url=https%3A%2F%2Fx.jp%2F&&d&=v&sid=2&k%2Bx=1"
    assert validate._query is not None
    fast = validate._query.parse(raw)
    assert fast == _python(raw)
    assert fast == {"sid": "2", "evt": "view", "tit": "請求 書", "url": "https://x.jp/", "d": "", "": "v", "k+x": "1"}
    assert list(fast) == list(_python(raw))  # a repeated key keeps its first place, as in a dict


def test_what_the_c_path_declines_goes_to_parse_pairs() -> None:
    assert validate._query is not None
    for raw in (b"a=%zz", b"a=%4", b"a=%", b"t=\xe8\xab\x8b", b"a=1&b=\xff", b"a=%E8%AB&b=\xe8"):
        assert validate._query.parse(raw) is None
        assert parse_query(raw) == _python(raw)


def test_invalid_utf8_behind_escapes_is_replaced_alike() -> None:
    for raw in (b"a=%FF", b"a=%E8%AB", b"a=%C0%AF&b=%ED%A0%80", b"a=%00b"):
        assert parse_query(raw) == _python(raw)


_alphabet = st.sampled_from(
    [
        b"a",
        b"b",
        b"k",
        b"=",
        b"&",
        b"+",
        b"%",
        b"%41",
        b"%e6%97%a5",
        b"%2B",
        b"%26",
        b"%3D",
        b"%FF",
        b"\\",
        b"x",
        b"\xe6",
        b"~",
    ]
)


@settings(max_examples=500, deadline=None)
@given(st.lists(_alphabet, max_size=30).map(b"".join))
def test_any_query_parses_as_parse_pairs_does(raw: bytes) -> None:
    assert parse_query(raw) == _python(raw)

"""Pure units of the validator and the enrichment."""

from __future__ import annotations

from urllib.parse import quote, unquote_plus

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collector.enrich import ClientIp, classify_device
from collector.validate import parse_pairs, parse_timestamp, unquote


@given(st.text())
def test_unquote_matches_the_stdlib_on_encoded_text(text: str) -> None:
    encoded = quote(text, safe="")
    assert unquote(encoded) == unquote_plus(encoded)


@given(st.text(alphabet=st.sampled_from("%+\\xaAfF09 zé日")))
def test_unquote_matches_the_stdlib_on_malformed_text(text: str) -> None:
    assert unquote(text) == unquote_plus(text)


def test_parse_pairs() -> None:
    assert parse_pairs("a=1&b=x+y&c=%E6%97%A5&&d&a=2") == {"a": "2", "b": "x y", "c": "日", "d": ""}
    # Keys are decoded like values: with a "+", a "%XX" or both.
    assert parse_pairs("k+1=a&k%212=b&k+3%21=c&k4=%21") == {"k 1": "a", "k!2": "b", "k 3!": "c", "k4": "!"}


@pytest.mark.parametrize(
    ("value", "micros"),
    [
        ("2024-01-01T00:00:00Z", 1_704_067_200_000_000),
        ("2024-01-01T09:00:00+09:00", 1_704_067_200_000_000),
        ("2024-01-01 00:00:00.5", 1_704_067_200_500_000),
        ("1704067200", 1_704_067_200_000_000),
        (1704067200.25, 1_704_067_200_250_000),
        (1704067200123, 1_704_067_200_123_000),
    ],
)
def test_timestamps(value: object, micros: int) -> None:
    assert parse_timestamp(value) == micros


@pytest.mark.parametrize(
    ("ua", "device"),
    [
        ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36", "pc"),
        ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) Mobile/15E148", "mobile"),
        ("Mozilla/5.0 (Linux; Android 14; Pixel 8) Chrome/126.0 Mobile Safari/537.36", "mobile"),
        ("Mozilla/5.0 (Linux; Android 13; SM-X700) Chrome/126.0 Safari/537.36", "tablet"),
        ("Mozilla/5.0 (iPad; CPU OS 17_5 like Mac OS X)", "tablet"),
        ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", "bot"),
        ("curl/8.5.0", "bot"),
        ("", "bot"),
    ],
)
def test_device(ua: str, device: str) -> None:
    assert classify_device(ua) == device


def test_ipv6_proxies() -> None:
    ips = ClientIp(["::1/128", "10.0.0.0/8"])
    assert ips.resolve("::1", "2001:db8::7, 10.1.2.3", None) == "2001:db8::7"
    assert ips.resolve("2001:db8::9", "1.2.3.4", None) == "2001:db8::9"

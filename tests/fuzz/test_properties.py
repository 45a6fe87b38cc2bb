"""Property tests of every parser and validator on the request path.

Whatever a client sends, the answer is a 2xx or a 4xx whose X-Oceanus-Error
names the field (or limit) and the rule -- never an exception, never a 5xx.
And the converse: an event built to satisfy the stream's config is accepted.
"""

from __future__ import annotations

import gzip
import json
import string
from typing import Any
from urllib.parse import quote, urlencode

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.validate import parse_pairs, parse_timestamp
from oceanus.buffer import FrameError, decode_frame, encode_frame
from oceanus.config import Config, FieldConfig, StreamConfig
from tests.fuzz.asgi import Driver, assert_answer

# The driver is shared by every example of a test (package-scoped on purpose).
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
FEW = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

STREAMS = ("pageview", "form", "ecview", "nosuch")
FIELD_NAMES = (
    "sid",
    "evt",
    "uid",
    "oid",
    "url",
    "jsn",
    "name",
    "email",
    "tel",
    "user_id",
    "age",
    "gender",
    "viewed_at",
    "event_id",
    "extra",
    "ip",
    "x",
    "",
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
text_values = st.text(max_size=60) | st.sampled_from(
    ["", " ", "0", "-1", "1e400", "nan", "inf", "true", "[]", "{", "2024-02-30T00:00:00", "9" * 40, "ABCDEF", "a@b"]
)
events = st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=10), json_values, max_size=8)
text_events = st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=10), text_values, max_size=8)


# --------------------------------------------------------------------------- pure parsers


@given(st.text())
def test_parse_pairs_takes_any_text(text: str) -> None:
    pairs = parse_pairs(text)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in pairs.items())


@given(st.dictionaries(st.text(), st.text(), max_size=6))
def test_parse_pairs_inverts_urlencode(pairs: dict[str, str]) -> None:
    assert parse_pairs(urlencode(pairs)) == pairs


@given(st.one_of(st.text(max_size=40), st.integers(), st.floats(), st.none(), st.booleans()))
def test_parse_timestamp_raises_only_value_errors(value: Any) -> None:
    try:
        micros = parse_timestamp(value)
    except (ValueError, OverflowError):
        return
    assert isinstance(micros, int)
    assert micros >= 0


@given(st.binary(max_size=512))
def test_decode_frame_refuses_garbage_with_frame_error(item: bytes) -> None:
    # Neither magic nor checksum can be met by chance: every such item is refused,
    # with FrameError and nothing else (the flusher dead-letters on exactly that).
    with pytest.raises(FrameError):
        decode_frame(item)


@given(st.binary(max_size=256))
def test_decode_frame_refuses_corrupt_frames(noise: bytes) -> None:
    frame = encode_frame(["a"], [[1]])
    if not noise:
        assert decode_frame(frame) == (["a"], [[1]])
        return
    with pytest.raises(FrameError):
        decode_frame(frame[:2] + noise + frame[2:])


# Frame values are what the validator produced: ints within msgpack's 64-bit range.
frame_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@given(st.lists(st.lists(frame_values, min_size=2, max_size=2), max_size=20))
def test_frames_round_trip(rows: list[list[Any]]) -> None:
    cols, out = decode_frame(encode_frame(["a", "b"], rows))
    assert cols == ["a", "b"]
    assert msgspec.json.encode(out) == msgspec.json.encode(rows)


# --------------------------------------------------------------------------- the app


@FUZZ
@given(stream=st.sampled_from(STREAMS), query=st.binary(max_size=400))
def test_pixel_any_query_bytes(driver: Driver, stream: str, query: bytes) -> None:
    assert_answer(driver.request("GET", f"/b/{stream}", query=query))


@FUZZ
@given(stream=st.sampled_from(STREAMS), event=text_events)
def test_pixel_field_values(driver: Driver, stream: str, event: dict[str, str]) -> None:
    query = urlencode({k: v.encode("utf-8", "surrogatepass") for k, v in event.items()}).encode()
    assert_answer(driver.request("GET", f"/b/{stream}", query=query))


@FUZZ
@given(stream=st.sampled_from(STREAMS), body=st.one_of(events, st.lists(events, max_size=5), json_values))
def test_json_bodies(driver: Driver, stream: str, body: Any) -> None:
    data = json.dumps(body).encode()
    resp = driver.request("POST", f"/e/{stream}", body=data, headers=[(b"content-type", b"application/json")])
    assert_answer(resp)
    if resp.status == 200:
        n = len(body) if isinstance(body, list) else 1
        assert msgspec.json.decode(resp.body) == {"accepted": n}


@FUZZ
@given(stream=st.sampled_from(STREAMS), event=text_events)
def test_form_bodies(driver: Driver, stream: str, event: dict[str, str]) -> None:
    body = urlencode({k: v.encode("utf-8", "surrogatepass") for k, v in event.items()}).encode()
    assert_answer(
        driver.request(
            "POST", f"/e/{stream}", body=body, headers=[(b"content-type", b"application/x-www-form-urlencoded")]
        )
    )


@FUZZ
@given(
    body=st.binary(max_size=600),
    content_type=st.sampled_from([b"application/json", b"application/x-www-form-urlencoded", b"text/plain", b""]),
    encoding=st.sampled_from([b"", b"gzip", b"identity", b"br", b"GZIP "]),
    gzipped=st.booleans(),
    chunked=st.integers(min_value=1, max_value=4),
)
def test_any_body_bytes(
    driver: Driver, body: bytes, content_type: bytes, encoding: bytes, gzipped: bool, chunked: int
) -> None:
    data = gzip.compress(body) if gzipped else body
    step = max(1, len(data) // chunked)
    chunks = [data[i : i + step] for i in range(0, len(data), step)] or [b""]
    headers = [(b"content-type", content_type)] + ([(b"content-encoding", encoding)] if encoding else [])
    assert_answer(driver.request("POST", "/e/pageview", body=chunks, headers=headers))


header_values = st.binary(max_size=120).map(lambda b: bytes(c for c in b if c not in (10, 13)))


@FUZZ
@given(
    ua=header_values,
    xff=header_values,
    real_ip=header_values,
    origin=header_values,
    length=header_values,
    method=st.sampled_from(["GET", "POST", "HEAD", "OPTIONS", "PUT", "DELETE", "PATCH"]),
    path=st.sampled_from(["/b/pageview", "/e/pageview", "/healthz", "/readyz", "/nowhere", "/b/", "/e/"]),
)
def test_headers_and_methods(
    driver: Driver, ua: bytes, xff: bytes, real_ip: bytes, origin: bytes, length: bytes, method: str, path: str
) -> None:
    headers = [
        (b"user-agent", ua),
        (b"x-forwarded-for", xff),
        (b"x-real-ip", real_ip),
        (b"origin", origin),
        (b"content-length", length),
        (b"content-type", b"application/json"),
    ]
    resp = driver.request(method, path, query=b"sid=ab&evt=pv", body=b'{"sid":"ab","evt":"pv"}', headers=headers)
    assert_answer(resp)


# --------------------------------------------------------------------------- valid => accepted


def _string_strategy(f: FieldConfig) -> st.SearchStrategy[str]:
    if f.enum is not None:
        return st.sampled_from(f.enum)
    if f.format == "email":
        part = st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=10)
        return st.builds(lambda a, b, c: f"{a}@{b}.{c}", part, part, part)
    if f.pattern is not None:
        # Characters from the pattern's own class: patterns here are anchored character classes.
        return st.from_regex(f.pattern, fullmatch=True).filter(
            lambda s: (f.max_length is None or len(s) <= f.max_length) and (not f.required or s.strip())
        )
    alphabet = st.characters(blacklist_categories=("Cs", "Cc"))
    return st.text(alphabet, min_size=1 if f.required else 0, max_size=f.max_length or 80).filter(
        lambda s: not f.required or bool(s.strip())
    )


def field_strategy(f: FieldConfig) -> st.SearchStrategy[Any]:
    if f.type == "string":
        return _string_strategy(f)
    if f.type == "int":
        lo = int(f.min) if f.min is not None else -(2**53)
        hi = int(f.max) if f.max is not None else 2**53
        return st.integers(lo, hi)
    if f.type == "float":
        return st.floats(f.min, f.max, allow_nan=False, allow_infinity=False)
    if f.type == "bool":
        return st.booleans()
    if f.type == "timestamp":
        return st.integers(0, 4_000_000_000) | st.datetimes().map(lambda d: d.isoformat())
    # json: a small object stays under any configured max_length
    return st.dictionaries(st.text(string.ascii_letters, max_size=5), st.integers(), max_size=3)


def valid_event(stream: StreamConfig) -> st.SearchStrategy[dict[str, Any]]:
    required = {n: field_strategy(f) for n, f in stream.fields.items() if f.required}
    optional = {n: field_strategy(f) for n, f in stream.fields.items() if not f.required}
    return st.fixed_dictionaries(required, optional=optional)


@pytest.mark.parametrize("name", ["pageview", "form", "ecview"])
def test_valid_events_are_accepted(driver: Driver, fuzz_config: Config, name: str) -> None:
    stream = fuzz_config.streams[name]

    @FEW
    @given(event=valid_event(stream))
    def check(event: dict[str, Any]) -> None:
        resp = driver.request(
            "POST", f"/e/{name}", body=json.dumps(event).encode(), headers=[(b"content-type", b"application/json")]
        )
        assert resp.status == 200, (resp.status, resp.error, event)
        text = {k: v if isinstance(v, str) else json.dumps(v) for k, v in event.items()}
        query = "&".join(f"{quote(k)}={quote(v, safe='')}" for k, v in text.items()).encode()
        if len(query) < fuzz_config.collector.max_url_bytes - 100:
            resp = driver.request("GET", f"/b/{name}", query=query)
            assert resp.status == 200, (resp.status, resp.error, text)

    check()

"""Property tests of the Segment and Snowplow decoders and the retry-stable ids.

Whatever a tracker sends, decoding plus the stream's validator either gives a
row or raises :class:`Invalid` naming a field and a rule -- never another
exception. Well-formed messages are accepted, and a message decoded again
later (an SDK retry: another arrival, another ``sentAt``/``stm``) gets the same
``event_id`` and ``received_at``.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import string
import uuid
from collections.abc import Iterator
from datetime import UTC
from typing import Any
from urllib.parse import urlencode

import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from collector.protocols import segment, snowplow
from collector.protocols.ids import placement_us, stable_id
from collector.validate import Invalid, make_validator, parse_timestamp
from oceanus import config
from tests.fuzz.asgi import Driver, assert_answer

CFG = config.load(config.REPO_CONFIG, env={})
SEGMENT = make_validator(CFG.streams["segment"], CFG.collector)
SNOWPLOW = make_validator(CFG.streams["snowplow"], CFG.collector)
NOW_US = 1_796_400_000_000_000  # 2026-12-04T16:00:00Z
HOUR_US = 3_600_000_000
KEY = b"k" * 32
FUZZ = settings(max_examples=300, deadline=None)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
SEGMENT_KEYS = (
    "type",
    "event",
    "userId",
    "anonymousId",
    "messageId",
    "timestamp",
    "originalTimestamp",
    "sentAt",
    "name",
    "category",
    "groupId",
    "previousId",
    "context",
    "properties",
    "traits",
    "integrations",
    "writeKey",
    "event_id",
    "x",
)
times = st.one_of(
    st.integers(-(2**63), 2**63),
    st.floats(allow_nan=True),
    st.text(max_size=30),
    st.datetimes().map(lambda d: d.isoformat()),
    st.sampled_from(["2026-12-04T09:00:00Z", "2026-12-04T09:00:00+09:00", "1733300000123", "-1", "9" * 30]),
)
segment_messages = st.dictionaries(
    st.sampled_from(SEGMENT_KEYS),
    st.one_of(json_values, times, st.sampled_from([*segment.TYPES, "purchase"])),
    max_size=10,
)


def _only_invalid(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except Invalid as exc:
        err = exc
    assert err.field
    assert err.rule
    return None


@FUZZ
@given(
    body=st.one_of(json_values, st.fixed_dictionaries({"batch": st.lists(segment_messages | json_values, max_size=4)})),
    call=st.sampled_from([None, *segment.TYPES]),
    size=st.integers(0, 2 * segment.MAX_BATCH_BYTES),
)
def test_segment_bodies_decode_or_name_a_field(body: Any, call: str | None, size: int) -> None:
    out = _only_invalid(segment.messages, body, call, size)
    if out is None:
        return
    raw, sent_at, _key = out
    sent_us = _only_invalid(segment.sent_time, sent_at)
    for msg in raw:
        m = _only_invalid(segment.decode, msg, call, sent_us, NOW_US, segment.stored_time(NOW_US))
        if m is not None:
            assert "writeKey" not in m.event
            _only_invalid(SEGMENT.values, dict(m.event), False)


@FUZZ
@given(msg=segment_messages, sent=times)
def test_segment_messages_decode_or_name_a_field(msg: dict[str, Any], sent: Any) -> None:
    sent_us = _only_invalid(segment.sent_time, sent)
    m = _only_invalid(segment.decode, msg, None, sent_us, NOW_US, segment.stored_time(NOW_US + 1))
    if m is not None:
        _only_invalid(SEGMENT.values, dict(m.event), False)


ids = st.text(string.ascii_letters + string.digits + "-_", min_size=1, max_size=40)


@FUZZ
@given(
    kind=st.sampled_from(segment.TYPES),
    mid=ids,
    user=ids,
    age_ms=st.integers(0, 3_000_000),
    delays=st.tuples(st.integers(0, 600_000_000), st.integers(0, 600_000_000)),
    props=st.dictionaries(st.text(max_size=8), json_values, max_size=4),
)
def test_a_well_formed_segment_message_is_accepted_and_retries_alike(
    kind: str, mid: str, user: str, age_ms: int, delays: tuple[int, int], props: dict[str, Any]
) -> None:
    own_us = NOW_US - age_ms * 1000
    msg = {
        "type": kind,
        "userId": user,
        "previousId": "p",
        "groupId": "g",
        "event": "E",
        "messageId": mid,
        "properties": props,
        "timestamp": segment.iso(own_us),
    }
    placed = []
    for delay in delays:
        arrival = NOW_US + delay
        m = segment.decode(dict(msg), None, arrival - 1000, arrival, segment.stored_time(arrival))
        row = SEGMENT.values(dict(m.event), False)
        assert row[list(CFG.streams["segment"].fields).index("message_id")] == mid
        at = placement_us(m.own_us, arrival, HOUR_US)
        placed.append((at, stable_id(at, m.message_id or "", KEY)))
    assert placed[0] == placed[1]
    assert placed[0][0] == own_us
    assert placed[0][1][:6] == (own_us // 1000).to_bytes(6, "big")


params = st.dictionaries(
    st.sampled_from(["e", "eid", "dtm", "stm", "ttm", "vid", "se_va", "url", "ue_pr", "ue_px", "co", "cx", "ip", "x"]),
    st.one_of(st.text(max_size=40), st.integers(), json_values),
    max_size=8,
)
b64_junk = st.one_of(
    st.binary(max_size=60).map(lambda b: base64.urlsafe_b64encode(b).decode().rstrip("=")),
    json_values.map(lambda v: base64.b64encode(json.dumps(v).encode()).decode()),
    st.text(max_size=40),
)


@FUZZ
@given(p=params, ue=b64_junk, cx=b64_junk, nuid=st.none() | st.text(max_size=40))
def test_snowplow_parameters_decode_or_name_a_parameter(p: dict[str, Any], ue: str, cx: str, nuid: str | None) -> None:
    for extra in ({}, {"ue_px": ue}, {"cx": cx}):
        ev = _only_invalid(snowplow.decode, {**p, **extra}, nuid, segment.stored_time(NOW_US))
        if ev is not None:
            _only_invalid(SNOWPLOW.values, dict(ev.event), True)
    _only_invalid(snowplow.payload_items, {"schema": snowplow.PAYLOAD_SCHEMA + "0-4", "data": [p]})


entities = st.lists(
    st.fixed_dictionaries(
        {"schema": st.sampled_from(["iglu:com.acme/a/jsonschema/1-0-0", "iglu:io.x/b_c/jsonschema/2-1-3"])},
        optional={"data": json_values},
    ).map(lambda e: {**e, "data": e.get("data")}),
    max_size=3,
)


@FUZZ
@given(
    data=json_values,
    contexts=entities,
    padded=st.booleans(),
    eid=st.uuids(),
    stms=st.tuples(st.integers(0, 10**13), st.integers(0, 10**13)),
)
# The retry that arrives in the last 5 s of the hour: still within the window of an own time 5 s before NOW.
@example(data=None, contexts=[], padded=True, eid=uuid.UUID(int=7), stms=(0, HOUR_US - 1))
def test_self_describing_events_round_trip_in_every_base64_form(
    data: Any, contexts: list[dict[str, Any]], padded: bool, eid: Any, stms: tuple[int, int]
) -> None:
    inner = {"schema": "iglu:com.acme/buy/jsonschema/1-0-0", "data": data}
    ue = json.dumps({"schema": snowplow.UNSTRUCT_SCHEMA + "0-0", "data": inner}).encode()
    cx = json.dumps({"schema": snowplow.CONTEXTS_SCHEMA + "0-1", "data": contexts}).encode()
    encoded = base64.urlsafe_b64encode(ue).decode()
    dtm = str(NOW_US // 1000 - 5000)
    # Each copy arrives up to an hour after NOW, but no later than the window allows for an own time
    # 5 s before NOW: later than that, the arrival time is used and no retry can match (ids.py).
    latest_us = HOUR_US - 5_000_000
    decoded = []
    for stm, ue_px in zip(
        stms, (encoded if padded else encoded.rstrip("="), base64.b64encode(ue).decode()), strict=True
    ):
        p = {"e": "ue", "eid": str(eid), "dtm": dtm, "stm": str(stm), "ue_px": ue_px, "co": cx.decode()}
        ev = snowplow.decode(p, None, segment.stored_time(NOW_US + stm))
        assert ev.event["ue"] == inner
        assert ev.event["contexts"] == contexts
        at = placement_us(ev.own_us, NOW_US + stm % (latest_us + 1), HOUR_US)
        decoded.append((at, stable_id(at, ev.eid or "", KEY)))
    assert decoded[0] == decoded[1]
    assert decoded[0][0] == int(dtm) * 1000


@given(a=ids, b=ids, t=st.integers(0, 2**47 * 1000))
def test_stable_ids_keep_the_time_prefix_and_separate_keys(a: str, b: str, t: int) -> None:
    x = stable_id(t, a, KEY)
    assert len(x) == 16
    assert x == stable_id(t, a, KEY)
    assert int.from_bytes(x[:6], "big") == t // 1000
    assert x != stable_id(t, a, b"j" * 32)
    if a != b:
        assert x != stable_id(t, b, KEY)


@given(us=st.integers(config.BIGQUERY_TIMESTAMP_MIN_US, config.BIGQUERY_TIMESTAMP_END_US - 1))
def test_stored_times_read_back_to_the_same_microsecond(us: int) -> None:
    assert parse_timestamp(segment.stored_time(us)) == us
    assert parse_timestamp(segment.stored_time(us - us % 1000)) == us - us % 1000


extreme_times = st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat())


@FUZZ
@given(original=extreme_times, sent=extreme_times, arrival=st.integers(0, config.BIGQUERY_TIMESTAMP_END_US - 1))
def test_any_clock_skew_correction_is_a_row_or_a_400(original: str, sent: str, arrival: int) -> None:
    msg = {"type": "track", "event": "x", "userId": "u", "originalTimestamp": original, "sentAt": sent}
    m = _only_invalid(segment.decode, msg, None, None, arrival, segment.stored_time(arrival))
    if m is not None:
        _only_invalid(SEGMENT.values, dict(m.event), False)


@pytest.fixture(scope="module")
def keyed_driver(fuzz_config: config.Config) -> Iterator[Driver]:
    """An app whose Segment routes know one write key (the package's app has none: every call is a 401)."""
    seg = config.SegmentConfig(stream="segment", keys_env="FUZZ_SEGMENT_WRITE_KEYS")
    cfg = msgspec.structs.replace(fuzz_config, collector=msgspec.structs.replace(fuzz_config.collector, segment=seg))
    os.environ["FUZZ_SEGMENT_WRITE_KEYS"] = "fuzz-key"
    try:
        d = Driver(cfg)
    finally:
        del os.environ["FUZZ_SEGMENT_WRITE_KEYS"]
    try:
        yield d
    finally:
        d.close()


AUTH = (b"authorization", b"Basic " + base64.b64encode(b"fuzz-key:"))
bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"batch": st.lists(segment_messages | json_values, max_size=4)}).map(
        lambda v: json.dumps(v, default=str).encode()
    ),
    st.fixed_dictionaries(
        {"schema": st.just(snowplow.PAYLOAD_SCHEMA + "0-4"), "data": st.lists(params | json_values, max_size=4)}
    ).map(lambda v: json.dumps(v).encode()),
)
PATHS = ("/v1/batch", "/v1/track", "/v1/p", "/com.snowplowanalytics.snowplow/tp2")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(PATHS), body=bodies, gz=st.booleans(), query=params)
def test_protocol_routes_answer_2xx_or_a_4xx_naming_the_field(
    keyed_driver: Driver, path: str, body: bytes, gz: bool, query: dict[str, Any]
) -> None:
    headers = [AUTH, (b"content-type", b"application/json")]
    if gz:
        headers.append((b"content-encoding", b"gzip"))
        body = gzip.compress(body)
    assert_answer(keyed_driver.request("POST", path, body=body, headers=headers))
    assert_answer(keyed_driver.request("GET", "/i", query=urlencode({k: str(v) for k, v in query.items()}).encode()))


def test_an_own_time_counts_up_to_the_window_either_side_of_arrival_and_not_a_microsecond_past() -> None:
    own = NOW_US - 5_000_000
    for arrival in (own + HOUR_US, own - HOUR_US):  # at the window, late and early
        assert placement_us(own, arrival, HOUR_US) == own
    for arrival in (own + HOUR_US + 1, own - HOUR_US - 1):  # one past: the arrival time is used
        assert placement_us(own, arrival, HOUR_US) == arrival
    assert placement_us(None, NOW_US, HOUR_US) == NOW_US

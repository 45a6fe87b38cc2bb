"""The Segment HTTP API's edges, in process against a real Redis: write keys, the spec's limits,
the clock-skew correction, the retry-stable ids, and hostile bodies (4xx naming the field, nothing stored)."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest

from collector.app import App
from collector.protocols import segment
from collector.protocols.ids import stable_id
from oceanus import config
from oceanus.errors import ConfigError
from tests.collector.asgi import Response, request, running
from tests.collector.conftest import queued_rows
from tests.support.servers import RedisServer

pytestmark = pytest.mark.anyio

KEY = "wk_live_0123"
MakeConfig = Callable[..., config.Config]


@pytest.fixture
def keyed(make_config: MakeConfig, monkeypatch: pytest.MonkeyPatch) -> config.Config:
    monkeypatch.setenv("SEGMENT_TEST_KEYS", f"{KEY}\n")
    return make_config(segment=config.SegmentConfig(stream="segment", keys_env="SEGMENT_TEST_KEYS"))


def _auth(key: str = KEY) -> tuple[str, str]:
    return ("authorization", "Basic " + base64.b64encode(f"{key}:".encode()).decode())


def _track(mid: str = "m1", **kw: Any) -> dict[str, Any]:
    return {"type": "track", "event": "Clicked", "userId": "u1", "messageId": mid, **kw}


async def _post(app: App, path: str, body: Any, *headers: tuple[str, str]) -> Response:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return await request(app, "POST", path, headers=[("content-type", "application/json"), *headers], body=raw)


async def test_a_retried_batch_repeats_event_id_and_received_at(
    keyed: config.Config, redis_server: RedisServer
) -> None:
    own = datetime.now(UTC).replace(microsecond=250_000) - timedelta(seconds=5)
    batch = {"batch": [_track("m1", timestamp=own.isoformat()), _track("m2")], "sentAt": own.isoformat()}
    async with running(App(keyed)) as app:
        first = await _post(app, "/v1/batch", batch, _auth())
        again = await _post(app, "/v1/batch", {**batch, "sentAt": "2026-12-04T09:00:09Z"}, _auth())
    assert (first.status, first.json()) == (200, {"success": True})
    assert again.status == 200
    rows = queued_rows(redis_server, "segment")
    assert [r["message_id"] for r in rows] == ["m1", "m2", "m1", "m2"]
    own_us = int(own.timestamp()) * 1_000_000 + 250_000
    # m1 carries its own time: both copies are placed at it, with the same id.
    assert (rows[0]["event_id"], rows[0]["received_at"]) == (rows[2]["event_id"], rows[2]["received_at"])
    assert rows[0]["received_at"] == own_us
    assert rows[0]["event_id"] == stable_id(own_us, "m1", _id_key())
    assert rows[0]["event_id"][:6] == (own_us // 1000).to_bytes(6, "big")
    # m2 has no time of its own: placed at each arrival, so the copies differ (documented).
    assert rows[1]["received_at"] == rows[1]["collected_at"]
    assert rows[3]["received_at"] == rows[3]["collected_at"]


def _id_key() -> bytes:
    return hashlib.sha256(b"oceanus segment event id\0" + KEY.encode()).digest()


async def test_the_clock_skew_correction(keyed: config.Config, redis_server: RedisServer) -> None:
    # A device clock far off: by that clock the call happened 10 s before it was sent.
    msg = _track(originalTimestamp="2026-12-04T07:00:00Z", sentAt="2026-12-04T07:00:10Z")
    async with running(App(keyed)) as app:
        assert (await _post(app, "/v1/track", msg, _auth())).status == 200
    (row,) = queued_rows(redis_server, "segment")
    assert row["timestamp"] == row["collected_at"] - 10_000_000
    assert row["original_timestamp"] == 1_796_367_600_000_000
    assert row["sent_at"] == 1_796_367_610_000_000
    # A device clock hours off is outside own_time_window_s: placed at arrival.
    assert row["received_at"] == row["collected_at"]
    assert row["message_id"] == "m1"


async def test_write_key_in_the_body_and_gzip(keyed: config.Config, redis_server: RedisServer) -> None:
    body = gzip.compress(json.dumps({"batch": [_track()], "writeKey": KEY}).encode())
    async with running(App(keyed)) as app:
        r = await _post(app, "/v1/b", body, ("content-encoding", "gzip"))
    assert r.status == 200
    (row,) = queued_rows(redis_server, "segment")
    # The key itself is never stored.
    assert KEY not in json.dumps({k: v for k, v in row.items() if k != "event_id"})
    assert row["extra"] is None


@pytest.mark.parametrize(
    ("headers", "body", "error"),
    [
        ((), {"batch": [_track()]}, "writeKey: required: send the write key as the HTTP Basic user or as writeKey"),
        ((_auth("wk_guess"),), {"batch": [_track()]}, "writeKey: valid: not a write key"),
        ((), {"batch": [_track()], "writeKey": "wk_guess"}, "writeKey: valid: not a write key"),
    ],
)
async def test_missing_or_wrong_write_key_is_401_and_nothing_stored(
    keyed: config.Config, redis_server: RedisServer, headers: tuple[tuple[str, str], ...], body: Any, error: str
) -> None:
    async with running(App(keyed)) as app:
        r = await _post(app, "/v1/batch", body, *headers)
    assert r.status == 401
    assert r.error.startswith(error)
    assert r.json()["code"] in ("required", "valid")
    assert r.headers["www-authenticate"] == 'Basic realm="oceanus"'
    assert queued_rows(redis_server, "segment") == []


async def test_without_configured_keys_every_call_is_401(make_config: MakeConfig, redis_server: RedisServer) -> None:
    async with running(App(make_config())) as app:
        r = await _post(app, "/v1/track", _track(), _auth())
    assert r.status == 401
    assert queued_rows(redis_server, "segment") == []


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _padded(size: int, mid: str = "m") -> dict[str, Any]:
    """A track message whose JSON (as the collector counts it) is exactly ``size`` bytes."""
    msg = _track(mid, properties={"pad": ""})
    msg["properties"]["pad"] = "x" * (size - len(json.dumps(msg, separators=(",", ":"))))
    return msg


async def test_the_spec_limits_at_and_past(keyed: config.Config, redis_server: RedisServer) -> None:
    at = segment.MAX_MESSAGE_BYTES
    async with running(App(keyed)) as app:
        ok_one = await _post(app, "/v1/track", _compact(_padded(at, "a")).encode(), _auth())
        big_one = await _post(app, "/v1/track", _compact(_padded(at + 1, "b")).encode(), _auth())
        big_in_batch = await _post(app, "/v1/batch", {"batch": [_track("c"), _padded(at + 1, "d")]}, _auth())
        # 500 KB of batch: 15 messages of 32 KB and one that makes up the rest, exactly at the limit.
        msgs = [_padded(at, f"e{i}") for i in range(15)]
        head = len('{"batch":[') + len("]}") + 15
        used = head + 15 * at
        msgs.append(_padded(segment.MAX_BATCH_BYTES - used, "e15"))
        full = _compact({"batch": msgs}).encode()
        assert len(full) == segment.MAX_BATCH_BYTES
        ok_batch = await _post(app, "/v1/batch", full, _auth())
        msgs[-1] = _padded(segment.MAX_BATCH_BYTES - used + 1, "e15")
        over = _compact({"batch": msgs}).encode()
        big_batch = await _post(app, "/v1/batch", over, _auth())
    assert ok_one.status == 200
    assert (big_one.status, big_one.error) == (400, "body: max_message_bytes: a message is larger than 32768 bytes")
    assert big_in_batch.status == 400
    assert big_in_batch.json()["error"] == {
        "field": "batch",
        "rule": "max_message_bytes",
        "message": "a message is larger than 32768 bytes",
        "index": 1,
    }
    assert ok_batch.status == 200
    assert (big_batch.status, big_batch.error) == (400, "body: max_batch_bytes: a batch is larger than 512000 bytes")
    stored = sorted(r["message_id"] for r in queued_rows(redis_server, "segment"))
    assert stored == sorted(["a", *(f"e{i}" for i in range(16))])


@pytest.mark.parametrize(
    ("path", "body", "status", "error"),
    [
        ("/v1/batch", [_track()], 400, "body: type: expected a JSON object"),
        ("/v1/batch", {"batch": {}}, 400, "batch: type: expected an array of messages"),
        ("/v1/batch", {"batch": []}, 400, "batch: required: the batch is empty"),
        ("/v1/batch", {"batch": [_track(), 7]}, 400, "batch: type: each message must be a JSON object"),
        ("/v1/batch", {"batch": [{**_track(), "type": "purchase"}]}, 400, "type: enum: one of track, identify"),
        ("/v1/track", {**_track(), "type": "page"}, 400, "type: enum: a /v1/track call carries type 'track'"),
        ("/v1/track", {"event": "x", "messageId": "m"}, 400, "userId: required: userId or anonymousId"),
        ("/v1/track", {"userId": "u", "messageId": "m"}, 400, "event: required: a track call needs event"),
        ("/v1/group", {"userId": "u"}, 400, "groupId: required"),
        ("/v1/alias", {"userId": "u"}, 400, "previousId: required"),
        ("/v1/track", _track(timestamp="yesterday"), 400, "timestamp: type: expected ISO 8601"),
        ("/v1/track", _track(messageId=12), 400, "messageId: type: expected a string"),
        ("/v1/track", _track(properties="{not json"), 400, "properties: type: is not valid JSON text"),
        ("/v1/track", _track(event_id="x"), 400, "event_id: reserved"),
        ("/v1/track", b"{not json", 400, "body: json: not valid JSON"),
    ],
)
async def test_malformed_calls_name_the_field_and_store_nothing(
    keyed: config.Config, redis_server: RedisServer, path: str, body: Any, status: int, error: str
) -> None:
    async with running(App(keyed)) as app:
        r = await _post(app, path, body, _auth())
    assert r.status == status
    assert r.error.startswith(error)
    assert queued_rows(redis_server, "segment") == []


async def test_methods_preflight_and_cors(keyed: config.Config) -> None:
    async with running(App(keyed)) as app:
        get = await request(app, "GET", "/v1/batch")
        pre = await request(app, "OPTIONS", "/v1/t", headers=[("origin", "https://shop.example")])
        ok = await _post(app, "/v1/t", _track(), _auth(), ("origin", "https://shop.example"))
    assert (get.status, get.headers["allow"]) == (405, "POST, OPTIONS")
    assert pre.status == 204
    assert "Authorization" in pre.headers["access-control-allow-headers"]
    assert ok.headers["access-control-allow-origin"] == "https://shop.example"
    assert ok.headers["access-control-allow-credentials"] == "true"


def test_key_lines_name_their_stream_and_errors_name_the_key(tmp_path: Any) -> None:
    from collector.protocols.routes import load_segment_keys

    cfg = config.load(config.REPO_CONFIG, env={})
    seg = config.SegmentConfig(stream="segment", keys_file=str(tmp_path / "keys"))
    cfg_file = msgspec.structs.replace(cfg, collector=msgspec.structs.replace(cfg.collector, segment=seg))
    (tmp_path / "keys").write_text("# ours\nk1\nk2 segment\n")
    keys = load_segment_keys(cfg_file)
    assert sorted(s for s, _ in keys.values()) == ["segment", "segment"]
    (tmp_path / "keys").write_text("k3 nostream\n")
    with pytest.raises(ConfigError, match=r"collector.segment.keys_file: no stream named 'nostream'"):
        load_segment_keys(cfg_file)
    (tmp_path / "keys").write_text("# nothing\n")
    with pytest.raises(ConfigError, match="hold no key"):
        load_segment_keys(cfg_file)
    with pytest.raises(ConfigError, match=r"collector.segment.stream: no stream named 'nope'"):
        config.loads('[collector.segment]\nstream = "nope"\n[streams.pv.fields]\na = {}\n', env={})
    with pytest.raises(ConfigError, match=r"collector.legacy_routes./v1/x: /v1/x is a route of the collector"):
        config.loads(
            '[collector]\nlegacy_routes = { "/v1/x" = "health" }\n[collector.segment]\nstream = "pv"\n'
            "[streams.pv.fields]\na = {}\n",
            env={},
        )


def test_openapi_lists_the_protocol_paths_while_they_are_on() -> None:
    from collector import openapi

    cfg = config.load(config.REPO_CONFIG, env={})
    paths = openapi.build(cfg)["paths"]
    assert {"/v1/batch", "/v1/track", "/v1/alias", "/i", "/com.snowplowanalytics.snowplow/tp2"} <= set(paths)
    assert set(paths["/v1/batch"]["post"]["responses"]) >= {"200", "400", "401", "413"}
    off = msgspec.structs.replace(
        cfg,
        collector=msgspec.structs.replace(
            cfg.collector, segment=config.SegmentConfig(), snowplow=config.SnowplowConfig()
        ),
    )
    assert not {p for p in openapi.build(off)["paths"] if p.startswith(("/v1/", "/i", "/com."))}

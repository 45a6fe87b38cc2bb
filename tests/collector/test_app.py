"""The collector app in-process against a real redis-server."""

from __future__ import annotations

import asyncio
import gzip
import json
import re
from collections.abc import Callable
from typing import Any

import pytest

from collector.app import GIF, App
from oceanus import config
from oceanus.buffer import Keys
from tests.collector.asgi import request, running
from tests.collector.conftest import frame_count, queued_rows
from tests.support.servers import RedisServer

pytestmark = pytest.mark.anyio

UA_IPHONE = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148"
PAGEVIEW = "sid=ABCdef01&evt=view&url=https%3A%2F%2Fexample.jp%2Fa%3Fb%3D1&tit=%E6%97%A5%E6%9C%AC&utm_source=mail"

MakeConfig = Callable[..., config.Config]


async def test_pixel_valid_is_one_frame_with_the_enriched_row(
    make_config: MakeConfig, redis_server: RedisServer
) -> None:
    async with running(App(make_config())) as app:
        r = await request(app, "GET", "/b/pageview", PAGEVIEW, headers=[("User-Agent", UA_IPHONE)])
    assert r.status == 200
    assert r.body == GIF
    assert len(GIF) == 43
    assert r.headers["content-type"] == "image/gif"
    assert r.headers["cache-control"].startswith("no-store")
    assert r.headers["access-control-allow-origin"] == "*"
    assert frame_count(redis_server, "pageview") == 1
    [row] = queued_rows(redis_server, "pageview")
    assert row["sid"] == "abcdef01"  # lowercased by the transform
    assert row["evt"] == "view"
    assert row["url"] == "https://example.jp/a?b=1"
    assert row["tit"] == "日本"
    assert row["ip"] == "203.0.113.5"
    assert row["ua"] == UA_IPHONE
    assert row["device"] == "mobile"
    assert json.loads(row["extra"]) == {"utm_source": "mail"}
    assert isinstance(row["event_id"], bytes)
    assert len(row["event_id"]) == 16
    assert row["received_at"] > 1_600_000_000_000_000
    assert row["uid"] is None


# (stream, query, field, rule)
RULES = [
    ("pageview", "evt=view", "sid", "required"),
    ("pageview", "sid=&evt=view", "sid", "required"),
    ("pageview", "sid=xyz!&evt=view", "sid", "pattern"),
    ("pageview", "sid=ab&evt=" + "e" * 17, "evt", "max_length"),
    ("pageview", "sid=ab&evt=v&jsn=%7Bnot", "jsn", "type"),
    ("pageview", "sid=ab&evt=v&jsn=%22" + "x" * 4100 + "%22", "jsn", "max_length"),
    ("ecview", "user_id=u&gender=robot", "gender", "enum"),
    ("ecview", "user_id=u&age=-1", "age", "min"),
    ("ecview", "user_id=u&age=131", "age", "max"),
    ("ecview", "user_id=u&age=old", "age", "type"),
    ("ecview", "user_id=u&viewed_at=yesterday", "viewed_at", "type"),
    ("form", "sid=ab&email=not-an-address", "email", "format"),
    ("form", "sid=ab&tel=call+me", "tel", "pattern"),
    ("pageview", "sid=ab&evt=v&" + "&".join(f"k{i}=1" for i in range(40)), "extra", "max_extra_keys"),
    ("pageview", "sid=ab&evt=v&big=" + "x" * 3000, "extra", "max_extra_bytes"),
    ("pageview", "sid=ab&evt=v&ip=1.2.3.4", "ip", "reserved"),
]


@pytest.mark.parametrize(("stream", "query", "field", "rule"), RULES, ids=[f"{r[0]}-{r[2]}-{r[3]}" for r in RULES])
async def test_each_rule_is_a_400_naming_it_and_nothing_is_queued(
    make_config: MakeConfig, redis_server: RedisServer, stream: str, query: str, field: str, rule: str
) -> None:
    async with running(App(make_config())) as app:
        pixel = await request(app, "GET", f"/b/{stream}", query)
        post = await request(
            app,
            "POST",
            f"/e/{stream}",
            body=query.encode(),
            headers=[("Content-Type", "application/x-www-form-urlencoded")],
        )
    assert pixel.status == 400
    assert pixel.body == GIF
    assert pixel.error.startswith(f"{field}: {rule}:")
    assert post.status == 400
    assert post.json()["error"]["field"] == field
    assert post.json()["error"]["rule"] == rule
    assert frame_count(redis_server, stream) == 0


async def test_json_types_are_checked(make_config: MakeConfig, redis_server: RedisServer) -> None:
    async with running(App(make_config())) as app:
        # ecview's age has `coerce` (the shop sends "42"): a string is parsed, a boolean never.
        r = await request(app, "POST", "/e/ecview", body=b'{"user_id": "u", "age": true}')
        ok = await request(
            app, "POST", "/e/ecview", body=b'{"user_id": "u", "age": 3, "viewed_at": 1700000000123, "gender": "Female"}'
        )
    assert r.status == 400
    assert r.json()["error"] == {"field": "age", "rule": "type", "message": "expected an integer, got a boolean"}
    assert ok.status == 200
    assert ok.json() == {"accepted": 1}
    [row] = queued_rows(redis_server, "ecview")
    assert row["viewed_at"] == 1_700_000_000_123_000
    assert row["gender"] == "female"


async def test_batch_is_all_or_nothing_and_names_the_index(make_config: MakeConfig, redis_server: RedisServer) -> None:
    good = [{"sid": f"{i:x}", "evt": "view"} for i in range(3)]
    async with running(App(make_config(max_batch_events=5))) as app:
        bad = await request(app, "POST", "/e/pageview", body=json.dumps([*good, {"evt": "view"}]).encode())
        not_obj = await request(app, "POST", "/e/pageview", body=json.dumps([good[0], 7]).encode())
        too_many = await request(app, "POST", "/e/pageview", body=json.dumps(good * 2).encode())
        assert frame_count(redis_server, "pageview") == 0
        ok = await request(
            app, "POST", "/e/pageview", body=json.dumps(good).encode(), headers=[("Content-Type", "application/json")]
        )
    assert bad.status == 400
    assert bad.json()["error"]["index"] == 3
    assert bad.json()["error"]["field"] == "sid"
    assert not_obj.status == 400
    assert not_obj.json()["error"]["index"] == 1
    assert too_many.status == 413
    assert too_many.json()["error"]["rule"] == "max_batch_events"
    assert ok.status == 200
    assert ok.json() == {"accepted": 3}
    assert frame_count(redis_server, "pageview") == 1
    assert [r["sid"] for r in queued_rows(redis_server, "pageview")] == ["0", "1", "2"]


async def test_gzip_body_and_bomb_cap(make_config: MakeConfig, redis_server: RedisServer) -> None:
    body = json.dumps([{"sid": "ab", "evt": "view", "tit": "t" * 500}] * 4).encode()
    bomb = gzip.compress(b"[" + b" " * 200_000 + b"]")
    async with running(App(make_config(max_decompressed_bytes=100_000))) as app:
        ok = await request(
            app,
            "POST",
            "/e/pageview",
            body=gzip.compress(body),
            headers=[("Content-Encoding", "gzip"), ("Content-Type", "application/json")],
        )
        big = await request(app, "POST", "/e/pageview", body=bomb, headers=[("Content-Encoding", "gzip")])
        broken = await request(app, "POST", "/e/pageview", body=b"\x1f\x8bnope", headers=[("Content-Encoding", "gzip")])
        brotli = await request(app, "POST", "/e/pageview", body=body, headers=[("Content-Encoding", "br")])
    assert ok.status == 200
    assert ok.json() == {"accepted": 4}
    assert len(bomb) < 1000
    assert big.status == 413
    assert big.json()["error"]["rule"] == "max_decompressed_bytes"
    assert broken.status == 400
    assert broken.json()["error"]["rule"] == "gzip"
    assert brotli.status == 415
    assert len(queued_rows(redis_server, "pageview")) == 4


async def test_404_405_413_414_and_preflight(make_config: MakeConfig, redis_server: RedisServer) -> None:
    async with running(App(make_config(max_body_bytes=1000, max_url_bytes=200))) as app:
        unknown_pixel = await request(app, "GET", "/b/nope", "a=1")
        unknown_events = await request(app, "POST", "/e/nope", body=b"{}")
        unknown_path = await request(app, "GET", "/what")
        post_pixel = await request(app, "POST", "/b/pageview")
        get_events = await request(app, "GET", "/e/pageview")
        declared = await request(app, "POST", "/e/pageview", body=b"{}", headers=[("Content-Length", "5000")])
        streamed = await request(app, "POST", "/e/pageview", chunks=[b"[" + b" " * 600, b" " * 600 + b"]"])
        long_url = await request(app, "GET", "/b/pageview", "sid=ab&evt=v&x=" + "a" * 300)
        preflight = await request(app, "OPTIONS", "/e/pageview", headers=[("Origin", "https://a.example")])
        empty = await request(app, "POST", "/e/pageview")
    assert unknown_pixel.status == 404
    assert unknown_pixel.body == GIF
    assert unknown_pixel.error.startswith("stream:")
    assert unknown_events.status == 404
    assert unknown_events.json()["error"]["field"] == "stream"
    assert unknown_path.status == 404
    assert post_pixel.status == 405
    assert "GET" in post_pixel.headers["allow"]
    assert get_events.status == 405
    assert "POST" in get_events.headers["allow"]
    assert declared.status == 413
    assert declared.json()["error"]["rule"] == "max_body_bytes"
    assert streamed.status == 413
    assert streamed.json()["error"]["rule"] == "max_body_bytes"
    assert long_url.status == 414
    assert long_url.error.startswith("url: max_url_bytes")
    assert preflight.status == 204
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert preflight.headers["access-control-allow-origin"] == "*"
    assert empty.status == 400
    assert empty.json()["error"]["field"] == "body"
    assert frame_count(redis_server, "pageview") == 0


@pytest.mark.parametrize(
    ("peer", "headers", "expected"),
    [
        ("203.0.113.5", [("X-Forwarded-For", "198.51.100.7")], "203.0.113.5"),  # untrusted peer: header ignored
        ("127.0.0.1", [("X-Forwarded-For", "198.51.100.7")], "198.51.100.7"),
        ("127.0.0.1", [("X-Forwarded-For", "6.6.6.6, 198.51.100.7")], "198.51.100.7"),  # client-sent hop ignored
        ("127.0.0.1", [("X-Forwarded-For", "198.51.100.7, 127.0.0.1")], "198.51.100.7"),  # trusted hops skipped
        ("127.0.0.1", [("X-Real-IP", "198.51.100.9")], "198.51.100.9"),
        ("127.0.0.1", [("X-Forwarded-For", "garbage")], "127.0.0.1"),
        ("127.0.0.1", [], "127.0.0.1"),
    ],
)
async def test_client_ip_trusts_only_configured_proxies(
    make_config: MakeConfig, redis_server: RedisServer, peer: str, headers: list[tuple[str, str]], expected: str
) -> None:
    async with running(App(make_config())) as app:
        r = await request(app, "GET", "/b/pageview", "sid=ab&evt=v", headers=headers, client=(peer, 1234))
    assert r.status == 200
    assert queued_rows(redis_server, "pageview")[0]["ip"] == expected


async def test_concurrent_requests_share_micro_batches(make_config: MakeConfig, redis_server: RedisServer) -> None:
    async with running(App(make_config(batch_linger_ms=20.0))) as app:
        results = await asyncio.gather(*(request(app, "GET", "/b/pageview", f"sid={i:x}&evt=view") for i in range(200)))
    assert all(r.status == 200 for r in results)
    rows = queued_rows(redis_server, "pageview")
    assert sorted(int(r["sid"], 16) for r in rows) == list(range(200))
    assert len({r["event_id"] for r in rows}) == 200
    assert frame_count(redis_server, "pageview") < 20


async def test_stats_and_recent_errors_are_written(
    make_config: MakeConfig, redis_server: RedisServer, redis_client: Any
) -> None:
    async with running(App(make_config())) as app:
        await request(app, "GET", "/b/pageview", "sid=ab&evt=v")
        await request(app, "GET", "/b/pageview", "sid=zz&evt=v&tit=secret-payload")
    keys = Keys()
    [stats_key] = redis_client.keys(keys.stats("pageview", 0).rsplit(":", 1)[0] + ":*")
    assert redis_client.hgetall(stats_key) == {b"accepted": b"1", b"rejected": b"1"}
    assert 0 < redis_client.ttl(stats_key) <= 172_800
    [err] = redis_client.lrange(keys.recent_errors(), 0, -1)
    parsed = json.loads(err)
    assert (parsed["stream"], parsed["field"], parsed["rule"]) == ("pageview", "sid", "pattern")
    assert b"secret" not in err


async def test_health_ready_and_metrics(make_config: MakeConfig, redis_server: RedisServer) -> None:
    async with running(App(make_config())) as app:
        await request(app, "GET", "/b/pageview", "sid=ab&evt=v")
        await request(app, "GET", "/b/pageview", "evt=v")
        health = await request(app, "GET", "/healthz")
        ready = await request(app, "GET", "/readyz")
        metrics = (await request(app, "GET", "/metrics")).body.decode()
        app.begin_drain()
        draining = await request(app, "GET", "/readyz")
    assert health.status == 200
    assert ready.status == 200
    assert draining.status == 503
    for name in (
        "oceanus_http_requests_total",
        "oceanus_http_request_duration_seconds_bucket",
        "oceanus_events_accepted_total",
        "oceanus_events_rejected_total",
        "oceanus_collector_batch_events_bucket",
        "oceanus_redis_push_duration_seconds_bucket",
        "oceanus_redis_up",
        "oceanus_spool_bytes",
        "oceanus_spool_frames",
        "oceanus_collector_draining",
    ):
        assert name in metrics, name
    assert 'oceanus_events_accepted_total{stream="pageview"} 1.0' in metrics
    # Rounds are summed locally and moved into the histograms before a scrape.
    assert "oceanus_collector_batch_events_count 1.0" in metrics
    assert "oceanus_collector_batch_events_sum 1.0" in metrics
    assert 'oceanus_collector_batch_events_bucket{le="1.0"} 1.0' in metrics
    assert re.search(r"^oceanus_redis_push_duration_seconds_count [1-9]", metrics, re.M)
    assert 'oceanus_events_rejected_total{reason="required",stream="pageview"} 1.0' in metrics
    assert 'oceanus_http_requests_total{status="400",stream="pageview"} 1.0' in metrics


async def test_lifespan_startup_freezes_the_heap(make_config: MakeConfig, redis_server: RedisServer) -> None:
    """Under a server, what is alive after start-up leaves the cyclic GC's reach (app._freeze_heap)."""
    import gc

    app = App(make_config())
    messages = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[str] = []
    frozen_at_startup: list[int] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: Any) -> None:
        sent.append(message["type"])
        if message["type"] == "lifespan.startup.complete":
            frozen_at_startup.append(gc.get_freeze_count())

    gc.unfreeze()
    try:
        await app({"type": "lifespan"}, receive, send)
    finally:
        gc.unfreeze()  # the test process keeps its collector as it was
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert frozen_at_startup
    assert frozen_at_startup[0] > 1000

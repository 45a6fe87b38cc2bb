"""Volume and access limits in-process: rate limits, Origin, write keys, body budgets."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from collector.app import INFLATE_STEP_BYTES, App
from collector.ratelimit import MAX_TRACKED_KEYS, TokenBuckets, per_worker, retry_after
from oceanus import config
from oceanus.config import StreamAccess
from oceanus.errors import ConfigError
from tests.collector.asgi import request, running
from tests.collector.conftest import REPO, queued_rows
from tests.support.servers import RedisServer

pytestmark = pytest.mark.anyio

MakeConfig = Callable[..., config.Config]


def _pixel(i: int) -> str:
    return f"sid={i:x}&evt=view"


def _events(*sids: int) -> bytes:
    return json.dumps([{"sid": f"{s:x}", "evt": "view"} for s in sids]).encode()


# -- the bucket itself ---------------------------------------------------------------


def test_bucket_admits_exactly_the_burst_then_refills_at_the_rate() -> None:
    b = TokenBuckets(2.0, 3.0)
    assert [b.take("a", 1, 10.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert b.take("a", 1, 10.0) == 0.5  # one token at 2/s
    assert b.take("b", 1, 10.0) == 0.0  # keys are separate
    assert b.take("a", 1, 10.5) == 0.0  # refilled exactly one
    assert b.take("a", 1, 10.5) == 0.5
    assert b.take("a", 2, 11.0) == 0.5  # holds 1 of the 2 wanted; refusing costs nothing
    assert b.take("a", 2, 11.25) == 0.25  # ... so 1.5 a quarter second later
    assert b.take("a", 2, 11.5) == 0.0
    # Never more than the burst, however long the wait.
    assert b.take("a", 3, 1000.0) == 0.0
    assert b.take("a", 1, 1000.0) == 0.5


def test_batch_larger_than_the_burst_takes_a_full_bucket_and_leaves_debt() -> None:
    b = TokenBuckets(10.0, 5.0)
    assert b.take("a", 4, 0.0) == 0.0
    assert b.take("a", 8, 0.0) == pytest.approx(0.4)  # needs the full 5, holds 1
    assert b.take("a", 8, 0.4) == 0.0  # full: admitted, 5 - 8 = -3
    assert b.take("a", 1, 0.4) == pytest.approx(0.4)  # 4 tokens to go back up to 1


def test_exempt_keys_are_asked_once_and_never_limited() -> None:
    asked: list[str] = []

    def exempt(key: str) -> bool:
        asked.append(key)
        return key.startswith("10.")

    b = TokenBuckets(0.001, 1.0, exempt=exempt)
    assert [b.take("10.0.0.1", 5, float(t)) for t in range(3)] == [0.0, 0.0, 0.0]
    assert [b.take("198.51.100.1", 1, 0.0), b.take("198.51.100.1", 1, 0.0)] == [0.0, 1000.0]
    assert asked == ["10.0.0.1", "198.51.100.1"]


def test_per_worker_share_and_retry_after() -> None:
    assert per_worker(1000.0, 10_000, 4) == (250.0, 2500.0)
    assert per_worker(10.0, 3, 8) == (1.25, 1.0)  # never a bucket that cannot hold one event
    assert [retry_after(s) for s in (0.001, 1.0, 1.01, 59.2)] == [1, 1, 2, 60]


def test_tracked_keys_are_bounded() -> None:
    b = TokenBuckets(1.0, 2.0)
    for i in range(MAX_TRACKED_KEYS):
        b.take(f"k{i}", 1, 0.0)  # every bucket still draining
    assert len(b) == MAX_TRACKED_KEYS
    b.take("new", 1, 0.5)
    assert len(b) == 1  # most still draining: dropped all, then the new one
    for i in range(MAX_TRACKED_KEYS - 1):
        b.take(f"k{i}", 1, 0.0)
    b.take("drain", 2, 0.0)
    b.take("one-more", 1, 1.0)  # the k buckets have refilled by now: only they are dropped
    assert len(b) == 2
    assert b.take("drain", 1, 1.0) == 0.0  # one token back after a second, still tracked
    assert b.take("drain", 1, 1.0) == 1.0


# -- per-IP limit ----------------------------------------------------------------------


async def test_ip_limit_429_at_the_limit_not_below_and_nothing_stored(
    make_config: MakeConfig, redis_server: RedisServer
) -> None:
    async with running(App(make_config(ip_rate_per_s=0.01, ip_burst=3))) as app:
        ok = [await request(app, "GET", "/b/pageview", _pixel(i)) for i in range(3)]
        over = await request(app, "GET", "/b/pageview", _pixel(3))
        other = await request(app, "GET", "/b/pageview", _pixel(4), client=("198.51.100.7", 1))
        post = await request(app, "POST", "/e/pageview", body=_events(5))
        metrics = (await request(app, "GET", "/metrics")).body.decode()
    assert [r.status for r in ok] == [200, 200, 200]
    assert over.status == 429
    assert over.headers["retry-after"] == "100"  # one event at 0.01/s
    assert over.error.startswith("ip: ip_rate_per_s: 203.0.113.5 sent more than collector.ip_rate_per_s = 0.01")
    assert over.headers["content-type"] == "image/gif"
    assert other.status == 200  # another client has its own bucket
    assert post.status == 429
    assert post.json()["error"]["rule"] == "ip_rate_per_s"
    assert sorted(int(r["sid"], 16) for r in queued_rows(redis_server, "pageview")) == [0, 1, 2, 4]
    assert 'oceanus_http_requests_total{status="429",stream="pageview"} 2.0' in metrics
    assert 'oceanus_events_rejected_total{reason="ip_rate_per_s",stream="pageview"} 2.0' in metrics


async def test_ip_limit_counts_events_in_a_batch(make_config: MakeConfig, redis_server: RedisServer) -> None:
    async with running(App(make_config(ip_rate_per_s=0.01, ip_burst=5))) as app:
        four = await request(app, "POST", "/e/pageview", body=_events(0, 1, 2, 3))
        two = await request(app, "POST", "/e/pageview", body=_events(4, 5))  # one token left
        one = await request(app, "POST", "/e/pageview", body=_events(6))
        none = await request(app, "GET", "/b/pageview", _pixel(7))
    assert (four.status, two.status, one.status, none.status) == (200, 429, 200, 429)
    assert two.headers["retry-after"] == "100"
    assert sorted(int(r["sid"], 16) for r in queued_rows(redis_server, "pageview")) == [0, 1, 2, 3, 6]


async def test_ip_limit_is_split_over_the_workers(make_config: MakeConfig, redis_server: RedisServer) -> None:
    async with running(App(make_config(ip_rate_per_s=0.01, ip_burst=6, workers=3))) as app:
        statuses = [(await request(app, "GET", "/b/pageview", _pixel(i))).status for i in range(3)]
    assert statuses == [200, 200, 429]


async def test_ip_limit_keys_on_the_address_through_trusted_proxies(
    make_config: MakeConfig, redis_server: RedisServer
) -> None:
    proxy = ("127.0.0.1", 1)  # trusted by default
    async with running(App(make_config(ip_rate_per_s=0.01, ip_burst=1))) as app:
        a = await request(
            app, "GET", "/b/pageview", _pixel(1), client=proxy, headers=[("X-Forwarded-For", "198.51.100.1")]
        )
        b = await request(
            app, "GET", "/b/pageview", _pixel(2), client=proxy, headers=[("X-Forwarded-For", "198.51.100.2")]
        )
        a_again = await request(
            app, "GET", "/b/pageview", _pixel(3), client=proxy, headers=[("X-Forwarded-For", "198.51.100.1")]
        )
        # An untrusted peer cannot pick a fresh bucket by naming one.
        direct = await request(app, "GET", "/b/pageview", _pixel(4), headers=[("X-Forwarded-For", "198.51.100.3")])
        spoof = await request(app, "GET", "/b/pageview", _pixel(5), headers=[("X-Forwarded-For", "198.51.100.4")])
    assert (a.status, b.status, a_again.status, direct.status, spoof.status) == (200, 200, 429, 200, 429)
    assert "198.51.100.1 sent more" in a_again.error
    assert "203.0.113.5 sent more" in spoof.error
    assert sorted(r["ip"] for r in queued_rows(redis_server, "pageview")) == [
        "198.51.100.1",
        "198.51.100.2",
        "203.0.113.5",
    ]


async def test_ip_limit_spares_a_trusted_proxy_that_names_no_client(
    make_config: MakeConfig, redis_server: RedisServer
) -> None:
    async with running(App(make_config(ip_rate_per_s=0.01, ip_burst=1))) as app:
        bare = [(await request(app, "GET", "/b/pageview", _pixel(i), client=("127.0.0.1", 1))).status for i in range(3)]
        named = [
            (
                await request(
                    app,
                    "GET",
                    "/b/pageview",
                    _pixel(i),
                    client=("127.0.0.1", 1),
                    headers=[("X-Real-IP", "198.51.100.8")],
                )
            ).status
            for i in range(3, 5)
        ]
    assert bare == [200, 200, 200]
    assert named == [200, 429]


async def test_ip_limit_off(make_config: MakeConfig, redis_server: RedisServer) -> None:
    async with running(App(make_config(ip_rate_per_s=0.0, ip_burst=1))) as app:
        statuses = [(await request(app, "GET", "/b/pageview", _pixel(i))).status for i in range(5)]
    assert statuses == [200] * 5


# -- per-stream rules ----------------------------------------------------------------------


async def test_stream_limit_429_names_the_stream_rule(make_config: MakeConfig, redis_server: RedisServer) -> None:
    access = {"pageview": StreamAccess(rate_per_s=0.01, burst=2)}
    async with running(App(make_config(access=access))) as app:
        ok = [await request(app, "GET", "/b/pageview", _pixel(i), client=(f"198.51.100.{i}", 1)) for i in range(2)]
        over = await request(app, "GET", "/b/pageview", _pixel(2), client=("198.51.100.9", 1))
        form = await request(app, "POST", "/e/form", body=b'{"sid":"1","email":"a@example.jp"}')
    assert [r.status for r in ok] == [200, 200]
    assert over.status == 429
    assert over.headers["retry-after"] == "100"
    assert over.error.startswith("stream: rate_per_s: more than collector.access.pageview.rate_per_s = 0.01")
    assert form.status != 429  # other streams are not limited by it
    assert len(queued_rows(redis_server, "pageview")) == 2


async def test_origin_allow_list(make_config: MakeConfig, redis_server: RedisServer) -> None:
    access = {"pageview": StreamAccess(origins=("https://example.jp",))}
    async with running(App(make_config(access=access))) as app:
        bad = await request(app, "POST", "/e/pageview", body=_events(1), headers=[("Origin", "https://evil.example")])
        bad_pixel = await request(app, "GET", "/b/pageview", _pixel(2), headers=[("Origin", "https://evil.example")])
        good = await request(app, "POST", "/e/pageview", body=_events(3), headers=[("Origin", "https://example.jp")])
        # <img> pixels and server-side senders send no Origin at all.
        none = await request(app, "GET", "/b/pageview", _pixel(4))
    assert bad.status == 403
    assert bad.json()["error"] == {
        "field": "origin",
        "rule": "allowed",
        "message": "origin 'https://evil.example' may not send to this stream",
    }
    assert bad_pixel.status == 403
    assert bad_pixel.error.startswith("origin: allowed:")
    assert (good.status, none.status) == (200, 200)
    assert sorted(int(r["sid"], 16) for r in queued_rows(redis_server, "pageview")) == [3, 4]


async def test_write_keys_from_env_and_file(
    make_config: MakeConfig, redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text("# rotated 2026-11\nfile-key-2\n\n")
    monkeypatch.setenv("PAGEVIEW_KEYS", "env-key-1\n")
    access = {"pageview": StreamAccess(keys_env="PAGEVIEW_KEYS", keys_file=str(keys_file))}
    basic = base64.b64encode(b"file-key-2:").decode()
    async with running(App(make_config(access=access))) as app:
        missing = await request(app, "POST", "/e/pageview", body=_events(1))
        wrong = await request(app, "POST", "/e/pageview", body=_events(2), headers=[("X-Oceanus-Key", "env-key-")])
        by_header = await request(app, "POST", "/e/pageview", body=_events(3), headers=[("X-Oceanus-Key", "env-key-1")])
        by_basic = await request(
            app, "POST", "/e/pageview", body=_events(4), headers=[("Authorization", f"Basic {basic}")]
        )
        pixel = await request(app, "GET", "/b/pageview", _pixel(5))
        other = await request(app, "POST", "/e/form", body=b'{"sid":"1","email":"a@example.jp"}')
    assert missing.status == 401
    assert missing.headers["www-authenticate"] == 'Basic realm="oceanus"'
    assert missing.json()["error"]["field"] == "key"
    assert missing.json()["error"]["rule"] == "required"
    assert wrong.status == 401
    assert wrong.json()["error"]["rule"] == "valid"
    assert (by_header.status, by_basic.status) == (200, 200)
    assert pixel.status == 401
    assert pixel.error.startswith("key: required:")
    assert other.status == 200  # only the stream with keys wants one
    assert sorted(int(r["sid"], 16) for r in queued_rows(redis_server, "pageview")) == [3, 4]


def test_write_key_sources_fail_at_start_naming_the_key(
    make_config: MakeConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NO_SUCH_KEYS", raising=False)
    with pytest.raises(ConfigError, match=r"^collector\.access\.pageview\.keys_env: .*NO_SUCH_KEYS is not set"):
        App(make_config(access={"pageview": StreamAccess(keys_env="NO_SUCH_KEYS")}))
    with pytest.raises(ConfigError, match=r"^collector\.access\.pageview\.keys_file: cannot read"):
        App(make_config(access={"pageview": StreamAccess(keys_file=str(tmp_path / "absent"))}))
    (tmp_path / "empty").write_text("# none yet\n")
    with pytest.raises(ConfigError, match=r"^collector\.access\.pageview: keys_env/keys_file hold no key"):
        App(make_config(access={"pageview": StreamAccess(keys_file=str(tmp_path / "empty"))}))


def test_access_for_an_unknown_stream_is_a_config_error() -> None:
    text = (REPO / "oceanus.toml").read_text() + "\n[collector.access.nope]\nrate_per_s = 5.0\n"
    with pytest.raises(ConfigError, match=r"^collector\.access\.nope: no stream named 'nope'"):
        config.loads(text.replace("[collector]\n", "[collector]\n", 1))


# -- body limits -------------------------------------------------------------------------------


async def test_json_values_counted_before_decoding(make_config: MakeConfig, redis_server: RedisServer) -> None:
    bomb = gzip.compress(b"[" + b",".join([b"{}"] * 1_300_000) + b"]")
    assert len(bomb) < 8_000
    async with running(App(make_config(max_json_values=100_000))) as app:
        tracemalloc.start()
        try:
            r = await request(app, "POST", "/e/pageview", body=bomb, headers=[("Content-Encoding", "gzip")])
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        at_limit = await request(app, "POST", "/e/pageview", body=b"[" + b"1," * 49_999 + b"{}]" + b" " * 60_000)
    assert r.status == 413
    assert r.json()["error"]["rule"] == "max_json_values"
    print(f"peak traced memory for the bomb: {peak / 2**20:.2f} MiB")
    assert peak < 2**20  # inflated in 64 KB steps and refused at ~300 KB, never 1.3 M dicts (~90 MiB)
    # 49,999 commas + 1 bracket + 1 brace = 50,001 <= 100,000: decoded, then refused per event.
    assert at_limit.status == 413
    assert at_limit.json()["error"]["rule"] == "max_batch_events"
    assert queued_rows(redis_server, "pageview") == []


async def test_gzip_body_inflated_in_many_steps(make_config: MakeConfig, redis_server: RedisServer) -> None:
    url = "https://example.jp/" + "a" * 600
    raw = json.dumps([{"sid": f"{i:x}", "evt": "view", "url": url} for i in range(300)]).encode()
    assert len(raw) > 3 * INFLATE_STEP_BYTES
    async with running(App(make_config())) as app:
        r = await request(app, "POST", "/e/pageview", body=gzip.compress(raw), headers=[("Content-Encoding", "gzip")])
        cut = await request(
            app, "POST", "/e/pageview", body=gzip.compress(raw)[:-9], headers=[("Content-Encoding", "gzip")]
        )
    assert r.status == 200
    assert r.json() == {"accepted": 300}
    assert cut.status == 400
    assert cut.json()["error"]["rule"] == "gzip"
    rows = queued_rows(redis_server, "pageview")
    assert sorted(int(row["sid"], 16) for row in rows) == list(range(300))
    assert {row["url"] for row in rows} == {url}


async def test_json_values_just_over_the_limit(make_config: MakeConfig, redis_server: RedisServer) -> None:
    events = [{"sid": f"{i:x}", "evt": "view"} for i in range(3)]
    body = json.dumps(events, separators=(",", ":")).encode()  # 3 objects x 1 comma + 2 + 3 + 1 = 9 values
    assert body.count(b",") + body.count(b"{") + body.count(b"[") == 9
    gz = [("Content-Encoding", "gzip")]
    async with running(App(make_config(max_json_values=9))) as app:
        ok = await request(app, "POST", "/e/pageview", body=body)
        ok_gz = await request(app, "POST", "/e/pageview", body=gzip.compress(body), headers=gz)
    async with running(App(make_config(max_json_values=8))) as app:
        over = await request(app, "POST", "/e/pageview", body=body)
        over_gz = await request(app, "POST", "/e/pageview", body=gzip.compress(body), headers=gz)
    assert (ok.status, ok_gz.status) == (200, 200)
    assert over.status == 413
    assert over.json()["error"]["rule"] == "max_json_values"
    assert over_gz.status == 413
    assert over_gz.json()["error"]["rule"] == "max_json_values"
    assert len(queued_rows(redis_server, "pageview")) == 6


async def test_pending_body_budget(make_config: MakeConfig, redis_server: RedisServer) -> None:
    body = _events(*range(40))
    async with running(App(make_config(max_pending_body_bytes=len(body) - 1))) as app:
        over = await request(app, "POST", "/e/pageview", body=body)
        ok = await request(app, "POST", "/e/pageview", body=_events(99))
        assert app._pending == 0  # released with each response
    assert over.status == 503
    assert over.headers["retry-after"] == "5"
    assert over.json()["error"]["rule"] == "max_pending_body_bytes"
    assert ok.status == 200
    assert not any(key[1] == "max_pending_body_bytes" for key in app.metrics._rejected)  # not the client's fault
    assert [r["sid"] for r in queued_rows(redis_server, "pageview")] == ["63"]


async def test_pending_body_budget_is_shared_by_requests_in_flight(
    make_config: MakeConfig, redis_server: RedisServer
) -> None:
    first_half = b'[{"sid":"1","evt":"view"},' + b" " * 500
    app = App(make_config(max_pending_body_bytes=1000, body_timeout_s=30.0))
    async with running(app):
        release = asyncio.Event()
        sent = 0

        async def slow_receive() -> dict[str, Any]:
            nonlocal sent
            sent += 1
            if sent == 1:
                return {"type": "http.request", "body": first_half, "more_body": True}
            await release.wait()
            return {"type": "http.request", "body": b'{"sid":"2","evt":"view"}]', "more_body": False}

        statuses: list[int] = []

        async def send(message: Any) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        scope = {
            "type": "http",
            "method": "POST",
            "path": "/e/pageview",
            "raw_path": b"/e/pageview",
            "query_string": b"",
            "headers": [],
            "client": ("203.0.113.5", 1),
        }
        slow = asyncio.ensure_future(app(scope, slow_receive, send))
        while app._pending < len(first_half):
            await asyncio.sleep(0)
        over = await request(app, "POST", "/e/pageview", body=_events(*range(20)))
        release.set()
        await slow
    assert over.status == 503
    assert over.json()["error"]["rule"] == "max_pending_body_bytes"
    assert statuses == [200]
    assert app._pending == 0
    assert sorted(r["sid"] for r in queued_rows(redis_server, "pageview")) == ["1", "2"]


async def test_slow_body_is_a_408_naming_the_limit(make_config: MakeConfig, redis_server: RedisServer) -> None:
    app = App(make_config(body_timeout_s=0.2))
    async with running(app):
        never = asyncio.Event()
        calls = 0

        async def trickle() -> dict[str, Any]:
            nonlocal calls
            calls += 1
            if calls == 1:
                return {"type": "http.request", "body": b'[{"sid":"1",', "more_body": True}
            await never.wait()
            raise AssertionError("unreachable")

        out: list[Any] = []

        async def send(message: Any) -> None:
            out.append(message)

        scope = {
            "type": "http",
            "method": "POST",
            "path": "/e/pageview",
            "raw_path": b"/e/pageview",
            "query_string": b"",
            "headers": [],
            "client": ("203.0.113.5", 1),
        }
        await asyncio.wait_for(app(scope, trickle, send), 5)
        assert app._pending == 0
    assert out[0]["status"] == 408
    assert json.loads(out[1]["body"])["error"] == {
        "field": "body",
        "rule": "body_timeout_s",
        "message": "body not received within 0.2s",
    }
    assert queued_rows(redis_server, "pageview") == []


async def test_header_count_cap(make_config: MakeConfig, redis_server: RedisServer) -> None:
    headers = [(f"X-H{i}", "1") for i in range(9)]
    async with running(App(make_config(max_headers=9))) as app:
        ok = await request(app, "GET", "/b/pageview", _pixel(1), headers=headers)
        over = await request(app, "GET", "/b/pageview", _pixel(2), headers=[*headers, ("X-H9", "1")])
    assert ok.status == 200
    assert over.status == 431
    assert over.error == "headers: max_headers: more than 9 headers"
    assert [r["sid"] for r in queued_rows(redis_server, "pageview")] == ["1"]


def test_readme_access_example_decodes() -> None:
    readme = (REPO / "README.md").read_text()
    snippet = readme.split("```toml\n[collector.access.ecview]\n", 1)[1].split("```", 1)[0]
    cfg = config.loads((REPO / "oceanus.toml").read_text() + "\n[collector.access.ecview]\n" + snippet)
    rule = cfg.collector.access["ecview"]
    assert (rule.rate_per_s, rule.burst, rule.origins) == (5000.0, 20000, ("https://shop.example.jp",))
    assert (rule.keys_env, rule.keys_file) == ("OCEANUS_ECVIEW_KEYS", "/run/secrets/ecview-keys")


def test_granian_gets_the_edge_limits() -> None:
    from granian.constants import HTTPModes

    from collector.server import HTTP2_MAX_STREAMS, edge_limits

    c = config.loads((REPO / "oceanus.toml").read_text()).collector
    limits = edge_limits(c)
    assert limits["http"] == HTTPModes.http1
    assert limits["backpressure"] == 1024
    assert (limits["http1_settings"].max_buffer_size, limits["http1_settings"].header_read_timeout) == (16384, 5000)
    assert limits["http2_settings"].max_headers_size == 16384
    assert limits["http2_settings"].max_concurrent_streams == HTTP2_MAX_STREAMS
    auto = edge_limits(
        config.loads(
            (REPO / "oceanus.toml").read_text(),
            env={"OCEANUS_COLLECTOR_HTTP": '"auto"', "OCEANUS_COLLECTOR_HEADER_TIMEOUT_S": "0.25"},
        ).collector
    )
    assert auto["http"] == HTTPModes.auto
    assert auto["http1_settings"].header_read_timeout == 250


async def test_bodies_in_flight_per_ip(make_config: MakeConfig, redis_server: RedisServer) -> None:
    app = App(make_config(max_bodies_per_ip=2, body_timeout_s=30.0))
    async with running(app):
        release = asyncio.Event()

        def slow_post(sid: int, ip: str) -> asyncio.Future[None]:
            calls = 0

            async def receive() -> dict[str, Any]:
                nonlocal calls
                calls += 1
                if calls == 1:
                    return {"type": "http.request", "body": b"[", "more_body": True}
                await release.wait()
                return {"type": "http.request", "body": b'{"sid":"%x","evt":"view"}]' % sid, "more_body": False}

            async def send(message: Any) -> None:
                if message["type"] == "http.response.start":
                    statuses[sid] = message["status"]

            scope = {
                "type": "http",
                "method": "POST",
                "path": "/e/pageview",
                "raw_path": b"/e/pageview",
                "query_string": b"",
                "headers": [],
                "client": (ip, 1),
            }
            return asyncio.ensure_future(app(scope, receive, send))

        statuses: dict[int, int] = {}
        held = [slow_post(i, "203.0.113.5") for i in range(2)] + [slow_post(10 + i, "127.0.0.1") for i in range(3)]
        while app._pending < 5:  # every slow body has started
            await asyncio.sleep(0)
        third = await request(app, "POST", "/e/pageview", body=_events(2))
        other_ip = await request(app, "POST", "/e/pageview", body=_events(3), client=("198.51.100.3", 1))
        pixel = await request(app, "GET", "/b/pageview", _pixel(4))
        release.set()
        await asyncio.gather(*held)
        again = await request(app, "POST", "/e/pageview", body=_events(5))
        assert app._bodies == {}
    assert third.status == 429
    assert third.headers["retry-after"] == "1"
    assert (
        third.error == "ip: max_bodies_per_ip: 203.0.113.5 already has 2 request bodies in flight "
        "(collector.max_bodies_per_ip)"
    )
    assert (other_ip.status, pixel.status, again.status) == (200, 200, 200)
    assert statuses == {0: 200, 1: 200, 10: 200, 11: 200, 12: 200}  # a trusted proxy's address is not limited
    assert sorted(int(r["sid"], 16) for r in queued_rows(redis_server, "pageview")) == [0, 1, 3, 4, 5, 10, 11, 12]

"""Rules cost the collector nothing: with or without them a round pushes each frame once, to the event
queue; the notifier's tap copies it from there (notifier/tap.py). The spool replay likewise."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from collector.app import App
from notifier.tap import Tap
from oceanus import config
from oceanus.buffer import Keys, decode_frame
from tests.collector.asgi import request, running
from tests.support.servers import RedisServer

pytestmark = pytest.mark.anyio

MakeConfig = Callable[..., config.Config]


def _rpush_calls(redis_client: Any) -> int:
    stats = redis_client.info("commandstats")
    return int(stats.get("cmdstat_rpush", {}).get("calls", 0))


async def test_a_stream_with_rules_costs_no_command_in_the_round(
    make_config: MakeConfig, redis_server: RedisServer, redis_client: Any
) -> None:
    cfg = make_config()
    assert config.rule_streams(cfg) == ("form", "pageview")
    keys = Keys()
    # A notify queue Redis would refuse: no round touches it, so nothing is spooled.
    redis_client.set(keys.notify_queue("pageview"), "not a list")
    async with running(App(cfg)) as app:
        assert app.pusher is not None
        assert app.spool is not None
        redis_client.config_resetstat()
        r = await request(app, "GET", "/b/pageview", "sid=ab01&evt=paid")
        assert r.status == 200
        r = await request(
            app, "POST", "/e/ecview", body=b'{"user_id": "u1"}', headers=[("content-type", "application/json")]
        )
        assert r.status == 200
        assert _rpush_calls(redis_client) == 2  # one frame per request, one push each
        assert not app.spool.pending
        assert app.pusher.redis_up
    assert redis_client.llen(keys.queue("pageview")) == 1
    assert redis_client.llen(keys.queue("ecview")) == 1
    assert sorted(redis_client.keys("oceanus:notify:*")) == [keys.notify_queue("pageview").encode()]
    assert redis_client.get(keys.notify_queue("pageview")) == b"not a list"


async def test_a_spooled_frame_is_replayed_once_and_tapped_once(
    make_config: MakeConfig, redis_server: RedisServer, redis_client: Any
) -> None:
    keys = Keys()
    redis_client.set(keys.queue("pageview"), "not a list")  # the round's RPUSH fails with WRONGTYPE
    async with running(App(make_config())) as app:
        assert app.pusher is not None
        assert app.spool is not None
        app.pusher._stats_due = time.monotonic() + 60
        r = await request(app, "GET", "/b/pageview", "sid=ab02&evt=paid")
        assert r.status == 200  # durable in the spool, so acknowledged
        assert app.spool.pending
        assert not app.pusher.redis_up
        redis_client.delete(keys.queue("pageview"))
        deadline = time.monotonic() + 10.0
        while app.spool.pending and time.monotonic() < deadline:
            await asyncio.sleep(0.02)  # polling the condition, bounded by the deadline
        assert not app.spool.pending
    [frame] = redis_client.lrange(keys.queue("pageview"), 0, -1)
    assert [dict(zip(c, row, strict=True))["sid"] for c, rs in [decode_frame(frame)] for row in rs] == ["ab02"]
    assert redis_client.keys("oceanus:notify:*") == []
    client = aioredis.from_url(redis_server.url)
    try:
        tap = Tap(client, "oceanus")
        assert await tap.run("pageview") == 1
        assert await tap.run("pageview") == 0
    finally:
        await client.aclose()
    assert redis_client.lrange(keys.notify_queue("pageview"), 0, -1) == [frame]  # the same bytes
    assert redis_client.get(keys.notify_tapped("pageview")) == b"1"

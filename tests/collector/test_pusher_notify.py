"""Streams with rules: the round pushes each frame to the notify queue too, and the spool covers both."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from collector.app import App
from oceanus import config
from oceanus.buffer import Keys, decode_frame
from tests.collector.asgi import request, running
from tests.support.servers import RedisServer

pytestmark = pytest.mark.anyio

MakeConfig = Callable[..., config.Config]


async def test_frames_of_streams_with_rules_are_copied_in_the_same_round(
    make_config: MakeConfig, redis_server: RedisServer, redis_client: Any
) -> None:
    cfg = make_config()
    assert config.rule_streams(cfg) == ("form", "pageview")
    keys = Keys()
    async with running(App(cfg)) as app:
        r = await request(app, "GET", "/b/pageview", "sid=ab01&evt=paid")
        assert r.status == 200
        r = await request(
            app, "POST", "/e/ecview", body=b'{"user_id": "u1"}', headers=[("content-type", "application/json")]
        )
        assert r.status == 200
    [frame] = redis_client.lrange(keys.queue("pageview"), 0, -1)
    assert redis_client.lrange(keys.notify_queue("pageview"), 0, -1) == [frame]  # the same bytes
    assert redis_client.llen(keys.queue("ecview")) == 1
    assert redis_client.exists(keys.notify_queue("ecview")) == 0  # no rules, no copy
    assert keys.notify_queue("pageview") == "oceanus:notify:q:pageview"


async def test_a_refused_notify_push_spools_the_frame_and_replays_it_to_both(
    make_config: MakeConfig, redis_server: RedisServer, redis_client: Any
) -> None:
    keys = Keys()
    redis_client.set(keys.notify_queue("pageview"), "not a list")  # the copy's RPUSH fails with WRONGTYPE
    async with running(App(make_config())) as app:
        assert app.pusher is not None
        assert app.spool is not None
        app.pusher._stats_due = time.monotonic() + 60
        r = await request(app, "GET", "/b/pageview", "sid=ab02&evt=paid")
        assert r.status == 200  # durable in the spool, so acknowledged
        assert app.spool.pending
        assert not app.pusher.redis_up
        redis_client.delete(keys.notify_queue("pageview"))
        deadline = time.monotonic() + 10.0
        while app.spool.pending and time.monotonic() < deadline:
            await asyncio.sleep(0.02)  # polling the condition, bounded by the deadline
        assert not app.spool.pending
    sids = [
        dict(zip(c, row, strict=True))["sid"]
        for item in redis_client.lrange(keys.queue("pageview"), 0, -1)
        for c, rs in [decode_frame(item)]
        for row in rs
    ]
    notify_sids = [
        dict(zip(c, row, strict=True))["sid"]
        for item in redis_client.lrange(keys.notify_queue("pageview"), 0, -1)
        for c, rs in [decode_frame(item)]
        for row in rs
    ]
    # The event queue took it the first time and again from the spool (the flusher dedupes by event id);
    # the notify queue once, from the spool.
    assert sids == ["ab02", "ab02"]
    assert notify_sids == ["ab02"]

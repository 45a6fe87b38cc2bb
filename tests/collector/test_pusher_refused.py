"""A Redis that answers but refuses the push: the event is spooled, acknowledged, and replayed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from collector.app import App
from oceanus import config
from oceanus.buffer import Keys
from tests.collector.asgi import request, running
from tests.collector.conftest import queued_rows
from tests.support.servers import RedisServer

pytestmark = pytest.mark.anyio

MakeConfig = Callable[..., config.Config]


async def test_a_refused_push_is_spooled_then_replayed(
    make_config: MakeConfig, redis_server: RedisServer, redis_client: Any
) -> None:
    queue = Keys().queue("pageview")
    redis_client.set(queue, "not a list")  # every RPUSH now fails with WRONGTYPE
    async with running(App(make_config())) as app:
        assert app.pusher is not None
        # No stats this round: the push is the lone-frame RPUSH, not the pipeline.
        app.pusher._stats_due = time.monotonic() + 60
        r = await request(app, "GET", "/b/pageview", "sid=ab01&evt=view")
        assert r.status == 200  # durable in the spool, so acknowledged
        assert app.spool is not None
        assert app.spool.pending
        assert not app.pusher.redis_up
        redis_client.delete(queue)
        deadline = time.monotonic() + 10.0
        while app.spool.pending and time.monotonic() < deadline:
            await asyncio.sleep(0.02)  # polling the condition, bounded by the deadline
        assert not app.spool.pending
        assert app.pusher.redis_up
    assert [row["sid"] for row in queued_rows(redis_server, "pageview")] == ["ab01"]

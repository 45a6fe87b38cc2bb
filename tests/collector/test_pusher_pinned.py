"""The collector's writer pinned to the value: when Redis is tried again after a failed round.

A real redis-server behind a proxy that takes it away; the app runs as in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import msgspec
import pytest

from collector.app import App
from oceanus import config
from oceanus.buffer import encode_frame
from tests.collector.asgi import request, running
from tests.collector.conftest import frame_count, queued_rows
from tests.support.outageproxy import OutageProxy
from tests.support.servers import RedisServer

pytestmark = pytest.mark.anyio

MakeConfig = Callable[..., config.Config]


async def test_redis_is_tried_again_after_0_1_s_doubling_to_2_s(
    make_config: MakeConfig, redis_server: RedisServer
) -> None:
    proxy = OutageProxy(redis_server.port).start()
    base = make_config()
    cfg = msgspec.structs.replace(base, redis=msgspec.structs.replace(base.redis, url=proxy.url))
    frame = [("pageview", encode_frame(["event_id"], [[bytes(16)]]))]
    try:
        async with running(App(cfg)) as app:
            pusher = app.pusher
            assert pusher is not None
            assert await pusher._push(frame, with_stats=False) == []
            proxy.down()
            waits = []
            for _ in range(7):
                assert await pusher._push(frame, with_stats=False) == frame
                waits.append(round(pusher._retry_at - time.monotonic(), 1))
                assert pusher.redis_up is False
            assert waits == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]
            # Once Redis answers, the next outage starts from 0.1 s again.
            proxy.up()
            assert await pusher._push(frame, with_stats=False) == []
            assert pusher.redis_up is True
            proxy.down()
            assert await pusher._push(frame, with_stats=False) == frame
            assert round(pusher._retry_at - time.monotonic(), 1) == 0.1
            proxy.up()
    finally:
        proxy.stop()


async def test_a_full_batch_is_written_at_once_not_after_the_linger(make_config: MakeConfig) -> None:
    # A 20 s linger: only the batch reaching batch_max_events can explain a write within seconds.
    async with running(App(make_config(batch_max_events=2, batch_linger_ms=20_000.0))) as app:
        pusher = app.pusher
        assert pusher is not None
        columns = ["event_id"]
        t0 = time.monotonic()
        first = pusher.submit("pageview", columns, [[bytes(16)]])
        while pusher._full is None:  # until the writer lingers for company
            assert time.monotonic() - t0 < 5.0, "the writer never lingered"
            await asyncio.sleep(0.001)
        second = pusher.submit("pageview", columns, [[bytes(16)]])
        assert first is second
        await asyncio.wait_for(first, 10)
        assert time.monotonic() - t0 < 5.0


async def test_a_stopped_writer_takes_nothing_more(make_config: MakeConfig) -> None:
    async with running(App(make_config())) as app:
        pusher = app.pusher
        assert pusher is not None
        assert pusher.stopped is False
        assert await pusher.drain(5.0) is True
        assert pusher.stopped is True
        r = await request(app, "GET", "/b/pageview", "sid=ab01&evt=view")
        assert r.status == 503


async def test_events_within_the_linger_share_one_frame(make_config: MakeConfig, redis_server: RedisServer) -> None:
    # A 600 ms linger: the second event, sent while the writer lingers, joins the first one's frame.
    async with running(App(make_config(batch_max_events=1000, batch_linger_ms=600.0))) as app:
        pusher = app.pusher
        assert pusher is not None
        columns = ["event_id"]
        t0 = time.monotonic()
        first = pusher.submit("pageview", columns, [[bytes(16)]])
        while pusher._full is None:  # the writer lingers for company
            assert time.monotonic() - t0 < 0.5, "the writer never lingered"
            await asyncio.sleep(0.001)
        second = pusher.submit("pageview", columns, [[bytes(range(16))]])
        assert first is second
        await asyncio.wait_for(first, 10)
        assert time.monotonic() - t0 >= 0.55  # the linger, counted from the first event
    assert frame_count(redis_server, "pageview") == 1
    assert len(queued_rows(redis_server, "pageview")) == 2


async def test_counts_of_a_failed_round_are_written_once_redis_is_back(
    make_config: MakeConfig, redis_server: RedisServer
) -> None:
    proxy = OutageProxy(redis_server.port).start()
    base = make_config()
    cfg = msgspec.structs.replace(base, redis=msgspec.structs.replace(base.redis, url=proxy.url))
    client = redis_server.client()

    def totals() -> dict[str, int]:
        out: dict[str, int] = {}
        for key in client.keys("oceanus:stats:*"):
            for field, value in client.hgetall(key).items():
                name = field.decode() if isinstance(field, bytes) else field
                out[name] = out.get(name, 0) + int(value)
        return out

    try:
        async with running(App(cfg)) as app:
            pusher = app.pusher
            assert pusher is not None
            proxy.down()
            # The round fails: the frame goes to the spool, its accepted count back to the next round.
            await asyncio.wait_for(pusher.submit("pageview", ["event_id"], [[bytes(16)]]), 10)
            pusher.rejected("pageview", "sid", "required")
            proxy.up()
            deadline = time.monotonic() + 10
            while totals() != {"accepted": 1, "rejected": 1}:
                assert time.monotonic() < deadline, f"stats {totals()}"
                await asyncio.sleep(0.02)
        assert frame_count(redis_server, "pageview") == 1
    finally:
        client.close()
        proxy.stop()


async def test_the_shutdown_replay_ends_once_the_spool_is_empty(
    make_config: MakeConfig, redis_server: RedisServer
) -> None:
    proxy = OutageProxy(redis_server.port).start()
    base = make_config()
    cfg = msgspec.structs.replace(base, redis=msgspec.structs.replace(base.redis, url=proxy.url))
    try:
        async with running(App(cfg)) as app:
            pusher = app.pusher
            assert pusher is not None
            assert app.spool is not None
            proxy.down()
            await asyncio.wait_for(pusher.submit("pageview", ["event_id"], [[bytes(16)]]), 10)
            assert app.spool.pending
            t0 = time.monotonic()
            drained = asyncio.create_task(pusher.drain(8.0))
            proxy.up()  # back within the budget: the replay empties the spool, and the writer stops
            assert await drained is True
            assert time.monotonic() - t0 < 4.0
        assert frame_count(redis_server, "pageview") == 1
    finally:
        proxy.stop()


async def test_a_drain_that_runs_out_of_time_says_so(make_config: MakeConfig) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(65536):
            pass  # reads every command, answers none
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    base = make_config()
    # The round waits up to 5 s for a reply; the drain has 0.2 s.
    redis_cfg = msgspec.structs.replace(base.redis, url=f"redis://127.0.0.1:{port}/0", timeout_s=5.0)
    cfg = msgspec.structs.replace(base, redis=redis_cfg)
    app = App(cfg)
    await app.startup()
    try:
        pusher = app.pusher
        assert pusher is not None
        pusher.submit("pageview", ["event_id"], [[bytes(16)]])
        assert await pusher.drain(0.2) is False
    finally:
        # The app's own shutdown drains again and meets the writer this drain cancelled.
        with contextlib.suppress(asyncio.CancelledError):
            await app.shutdown()
        server.close()
        await server.wait_closed()

"""SIGTERM right after a Redis outage: the whole spool is replayed before the
worker exits (on Kubernetes the spool's disk goes with the pod); what cannot be
replayed is logged with its byte count, counted, and turns the exit status non-zero."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from collector.app import App
from collector.pusher import REPLAY_RECORDS_PER_ROUND
from collector.server import EXIT_SPOOL_LEFT
from collector.spool import usage
from oceanus import config
from tests.collector.asgi import request, running
from tests.collector.conftest import queued_rows
from tests.collector.test_server import CollectorFactory, _get, collector_factory  # noqa: F401 - the fixture
from tests.support.servers import RedisServer, free_port

MakeConfig = Callable[..., config.Config]

#: More spooled frames than one replay round takes, so one round before exit is not enough.
SPOOLED = REPLAY_RECORDS_PER_ROUND + 476


@pytest.mark.anyio
async def test_sigterm_right_after_an_outage_replays_the_whole_spool(
    make_config: MakeConfig, redis_server: RedisServer, tmp_path: Path
) -> None:
    async with running(App(make_config())) as app:
        assert app.spool is not None
        redis_server.stop()
        # One request at a time: each is its own writer round, so its own spooled frame.
        acked = [(await request(app, "GET", "/b/pageview", f"sid={i:x}&evt=view")).status for i in range(SPOOLED)]
        assert acked == [200] * SPOOLED
        assert app.spool.pending_frames == SPOOLED
        redis_server.start()  # same port, same AOF: Redis answers again
        # ... and the signal lands at once: running() now shuts the app down as SIGTERM does.
    assert usage(tmp_path / "spool").bytes == 0
    rows = queued_rows(redis_server, "pageview")
    assert [int(r["sid"], 16) for r in rows] == list(range(SPOOLED))
    assert len({r["event_id"] for r in rows}) == SPOOLED
    assert not list((tmp_path / "spool").glob("spool-*.log"))


@pytest.mark.anyio
async def test_a_spool_left_at_exit_is_logged_and_counted(
    make_config: MakeConfig, redis_server: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = App(make_config(drain_timeout_s=0.5))
    caplog.set_level(logging.INFO, "oceanus.collector")
    t0 = time.monotonic()
    async with running(app):
        redis_server.stop()
        statuses = [(await request(app, "GET", "/b/pageview", f"sid={i:x}&evt=view")).status for i in range(7)]
    elapsed = time.monotonic() - t0
    assert statuses == [200] * 7
    left = usage(tmp_path / "spool").bytes
    assert left > 0
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any(f"exiting with {left} bytes of acknowledged events" in m and "unreachable" in m for m in errors)
    text = app.metrics.render()[0].decode()
    assert f"oceanus_spool_abandoned_bytes_total {left}.0" in text
    assert elapsed < 5  # the drain budget bounds the wait for Redis


@pytest.mark.anyio
async def test_a_redis_back_within_the_drain_budget_still_gets_the_spool(
    make_config: MakeConfig, redis_server: RedisServer, tmp_path: Path
) -> None:
    app = App(make_config(drain_timeout_s=20.0))
    await app.startup()
    redis_server.stop()
    statuses = [(await request(app, "GET", "/b/pageview", f"sid={i:x}&evt=view")).status for i in range(5)]
    shutdown = asyncio.create_task(app.shutdown())  # SIGTERM while Redis is still down ...
    await asyncio.to_thread(redis_server.start)  # ... and back a moment later
    await shutdown
    assert statuses == [200] * 5
    assert usage(tmp_path / "spool").bytes == 0
    assert [int(r["sid"], 16) for r in queued_rows(redis_server, "pageview")] == list(range(5))


def test_collector_exits_non_zero_with_its_spool_unreplayed(
    collector_factory: CollectorFactory,  # noqa: F811
    tmp_path: Path,
) -> None:
    # Redis never comes up: every acknowledged event is in the spool when SIGTERM lands.
    c = collector_factory(
        workers=1,
        OCEANUS_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
        OCEANUS_REDIS_TIMEOUT_S="0.5",
        OCEANUS_COLLECTOR_DRAIN_TIMEOUT_S="1",
    )
    assert [_get(c.port, f"/b/pageview?sid={i:x}&evt=view")[0] for i in range(5)] == [200] * 5
    c.proc.send_signal(signal.SIGTERM)
    code = c.proc.wait(timeout=20)
    left = usage(tmp_path / "spool").bytes
    assert left > 0
    assert code == EXIT_SPOOL_LEFT
    assert f"exiting with {left} bytes of acknowledged events not replayed" in c.log.read_text()


def test_collector_exits_zero_once_its_spool_is_replayed(
    collector_factory: CollectorFactory,  # noqa: F811
    tmp_path: Path,
) -> None:
    redis = RedisServer(tmp_path / "late-redis", port=free_port())
    c = collector_factory(workers=1, OCEANUS_REDIS_URL=redis.url, OCEANUS_REDIS_TIMEOUT_S="0.5")
    try:
        assert [_get(c.port, f"/b/pageview?sid={i:x}&evt=view")[0] for i in range(30)] == [200] * 30
        assert usage(tmp_path / "spool").bytes > 0
        redis.start()
        c.proc.send_signal(signal.SIGTERM)
        assert c.proc.wait(timeout=20) == 0
        assert usage(tmp_path / "spool").bytes == 0
        assert sorted(int(r["sid"], 16) for r in queued_rows(redis, "pageview")) == list(range(30))
    finally:
        redis.stop()

"""Redis outage: the disk spool takes the events and replays them, nothing lost or doubled."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from collector.app import App
from collector.spool import CORRUPT, TORN_TAIL, Spool, quarantine_path
from oceanus import config
from tests.collector.asgi import request, running
from tests.collector.conftest import queued_rows
from tests.support.servers import RedisServer

pytestmark = pytest.mark.anyio

MakeConfig = Callable[..., config.Config]


async def _until(check: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.02)


async def test_outage_spools_then_replays_in_order(make_config: MakeConfig, redis_server: RedisServer) -> None:
    async with running(App(make_config())) as app:
        before = await request(app, "GET", "/b/pageview", "sid=0&evt=view")
        redis_server.stop()
        during = [await request(app, "GET", "/b/pageview", f"sid={i:x}&evt=view") for i in range(1, 31)]
        batch = await request(app, "POST", "/e/pageview", body=b'[{"sid":"1f","evt":"a"},{"sid":"20","evt":"b"}]')
        assert app.spool is not None
        assert app.spool.pending_frames > 0
        ready_while_down = await request(app, "GET", "/readyz")
        metrics = (await request(app, "GET", "/metrics")).body.decode()
        redis_server.start()  # same port, same AOF directory
        await _until(lambda: app.spool is not None and not app.spool.pending)
    assert before.status == 200
    assert batch.status == 200
    assert [r.status for r in during] == [200] * 30
    # A Redis outage alone must not pull the collector out of the load balancer.
    assert ready_while_down.status == 200
    assert "oceanus_redis_up 0.0" in metrics
    assert "oceanus_spool_frames" in metrics
    assert "oceanus_spool_bytes 0.0" not in metrics
    rows = queued_rows(redis_server, "pageview")
    assert [int(r["sid"], 16) for r in rows] == list(range(33))
    assert len({r["event_id"] for r in rows}) == 33


async def test_spool_full_is_503_and_not_ready(make_config: MakeConfig, redis_server: RedisServer) -> None:
    async with running(App(make_config(spool_max_bytes=1))) as app:
        redis_server.stop()
        r = await request(app, "GET", "/b/pageview", "sid=ab&evt=view")
        post = await request(app, "POST", "/e/pageview", body=b'{"sid":"ab","evt":"v"}')
        ready = await request(app, "GET", "/readyz")
    assert r.status == 503
    assert r.error.startswith("spool: full")
    assert post.status == 503
    assert post.json()["error"]["field"] == "spool"
    assert ready.status == 503


async def test_spool_survives_a_collector_restart(
    make_config: MakeConfig, redis_server: RedisServer, tmp_path: Path
) -> None:
    # A short drain: with Redis down the shutdown retries it until the budget is spent.
    cfg = make_config(drain_timeout_s=0.5)
    redis_server.stop()
    async with running(App(cfg)) as app:
        results = [await request(app, "GET", "/b/pageview", f"sid={i:x}&evt=view") for i in range(10)]
    assert [r.status for r in results] == [200] * 10
    assert list((tmp_path / "spool").glob("spool-*.log"))
    redis_server.start()
    async with running(App(cfg)) as app:  # a new process would find the file the same way
        await _until(lambda: len(queued_rows(redis_server, "pageview")) == 10)
        assert app.spool is not None
        await _until(lambda: app.spool is not None and not app.spool.pending)
    rows = queued_rows(redis_server, "pageview")
    assert [int(r["sid"], 16) for r in rows] == list(range(10))
    assert not list((tmp_path / "spool").glob("spool-*.log"))


def test_torn_tail_is_dropped(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1 << 20).open()
    assert spool.append([("pageview", b"frame-1"), ("pageview", b"frame-2")])
    own = next(tmp_path.glob("spool-*.log"))
    with open(own, "ab") as f:
        f.write(b"\x40\x00\x00\x00partial")  # an append cut short by a crash
    spool.close()
    other = Spool(tmp_path, 1 << 20).open()
    pushed: list[tuple[str, bytes]] = []

    async def push(records: list[tuple[str, bytes]]) -> None:
        pushed.extend(records)

    asyncio.run(other.replay(push))
    assert pushed == [("pageview", b"frame-1"), ("pageview", b"frame-2")]
    assert not other.pending
    assert other.quarantined == {TORN_TAIL: 11, CORRUPT: 0}
    assert quarantine_path(own).read_bytes() == b"\x40\x00\x00\x00partial"
    other.close()


def test_a_live_owner_keeps_its_file(tmp_path: Path) -> None:
    first = Spool(tmp_path, 1 << 20).open()
    assert first.append([("s", b"x")])
    second = Spool(tmp_path, 1 << 20).open()
    assert second.pending_frames == 0  # first still holds the lock
    first.close()
    assert second.claim_orphans() == 1
    assert second.pending_frames == 1
    second.close()


async def test_a_failing_spool_disk_is_503_and_the_writer_lives_on(
    make_config: MakeConfig, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(App(make_config())) as app:
        assert app.spool is not None

        def disk_full(records: object) -> bool:
            raise OSError(28, "No space left on device")

        redis_server.stop()
        monkeypatch.setattr(app.spool, "append", disk_full)
        failed = await request(app, "GET", "/b/pageview", "sid=1&evt=view")
        monkeypatch.undo()
        redis_server.start()
        app.pusher._retry_at = 0.0  # type: ignore[union-attr]  # skip the backoff wait
        ok = await request(app, "GET", "/b/pageview", "sid=2&evt=view")
    assert failed.status == 503
    assert ok.status == 200
    assert [r["sid"] for r in queued_rows(redis_server, "pageview")] == ["2"]

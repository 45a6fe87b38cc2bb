"""The flusher process's own parts pinned value by value: readiness, its Redis client, its
thread pool, the re-claim scan, every gauge and the discovery file.

A real redis-server; the Flusher is built but not run unless a test needs its loop.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from flusher import runner
from flusher.claim import Claimer
from flusher.runner import Flusher, discovery_file
from flusher.sinks.duckdb import DuckDBSink
from oceanus import config
from oceanus.buffer import EventIds, Keys, encode_frame
from tests.flusher.helpers import STREAMS_TOML, make_config, push_frames
from tests.support.servers import RedisServer, free_port

TWO_STREAMS = STREAMS_TOML + "\n[streams.ev]\nbatch = { max_rows = 50, min_rows = 10 }\n[streams.ev.fields]\nk = {}\n"


def _flusher(url: str, tmp_path: Path, streams: str = STREAMS_TOML) -> Flusher:
    cfg = make_config(url, tmp_path / "w.duckdb", streams)
    return Flusher(cfg, DuckDBSink(cfg))


def test_ready_names_what_is_missing_in_order(redis_server: RedisServer, tmp_path: Path) -> None:
    async def body() -> None:
        f = _flusher(redis_server.url, tmp_path)
        try:
            assert f.ready() == "tables not ensured yet"
            f.tables_ready = True
            assert f.ready() == "Redis not reachable"
            f.redis_ok = True
            assert f.ready() is None
            f.stopping.set()
            assert f.ready() == "draining"
        finally:
            await f.close()

    asyncio.run(body())


def test_the_redis_client_never_retries_a_command_by_itself(tmp_path: Path) -> None:
    # A claim script run twice under one key would lose frames: one failed attempt is final.
    async def body() -> None:
        f = _flusher(f"redis://127.0.0.1:{free_port()}/0", tmp_path)
        try:
            with pytest.raises(RedisConnectionError):
                await asyncio.wait_for(f.aredis.llen("q"), 5.0)
        finally:
            await f.close()

    asyncio.run(body())


def test_the_pool_runs_a_write_a_decode_ahead_and_a_spare_per_stream_at_once(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    async def body(streams: str, width: int) -> None:
        f = _flusher(redis_server.url, tmp_path, streams)
        barrier = threading.Barrier(width, timeout=10.0)
        try:
            # Each call waits until `width` calls run at once: fewer threads and it times out.
            got = await asyncio.gather(*(f.in_thread(barrier.wait) for _ in range(width)))
            assert sorted(got) == list(range(width))
        finally:
            await f.close()

    asyncio.run(body(STREAMS_TOML, 3))
    asyncio.run(body(TWO_STREAMS, 5))


def test_reclaim_orphans_counts_and_queues_each_orphan(redis_server: RedisServer, tmp_path: Path) -> None:
    cfg = make_config(redis_server.url, tmp_path / "w.duckdb")
    keys = Keys(cfg.redis.key_prefix)
    push_frames(redis_server.client(), keys, cfg.streams["pv"], frames=3, rows_per_frame=2)

    async def body() -> None:
        ghost_client = aioredis.from_url(redis_server.url)
        ghost = Claimer(ghost_client, keys, "ghost", 1.0)
        first, second = await ghost.claim("pv", 1), await ghost.claim("pv", 2)
        await ghost_client.aclose()
        assert first is not None
        assert second is not None
        f = Flusher(cfg, DuckDBSink(cfg))
        try:
            # Only a shard's lease holder re-claims in it.
            assert await f.workers["pv"].leases.tick() == [0]
            assert await f.reclaim_orphans() == 2
            got = f.workers["pv"].reclaimed
            assert sorted(c.batch_id for c in got) == sorted([first.batch_id, second.batch_id])
            assert sorted(len(c.frames) for c in got) == [1, 2]
            assert await f.reclaim_orphans() == 0  # ours now, and our heartbeat is not needed for that
        finally:
            await f.close()

    asyncio.run(body())


def test_gauges_per_stream_exactly(redis_server: RedisServer, tmp_path: Path) -> None:
    cfg = make_config(redis_server.url, tmp_path / "w.duckdb", TWO_STREAMS)
    keys = Keys(cfg.redis.key_prefix)
    client = redis_server.client()
    ids = EventIds()
    now_ms = int(time.time() * 1000)
    queued_ms, inflight_ms = now_ms - 30_000, now_ms - 90_000

    def frame(at_ms: int) -> bytes:
        return encode_frame(["event_id"], [[ids.new(at_ms * 1_000_000)]])

    # `ev`: two frames queued (the head 30 s old) and one batch in flight (90 s old); `pv` empty.
    client.rpush(keys.queue("ev"), frame(inflight_ms))
    client.rpush(keys.queue("ev"), frame(queued_ms), frame(now_ms))

    async def body() -> None:
        f = Flusher(cfg, DuckDBSink(cfg))
        try:
            assert await f.claimer.claim("ev", 1) is not None
            t0 = time.time()
            await f.sample_gauges()
            elapsed = time.time() - t0

            def value(name: str, stream: str) -> float | None:
                return f.metrics.registry.get_sample_value(name, {"stream": stream})

            def backlog(stream: str) -> float | None:  # per shard; one shard here
                return f.metrics.registry.get_sample_value("oceanus_backlog_items", {"stream": stream, "shard": "0"})

            assert (backlog("ev"), backlog("pv")) == (2.0, 0.0)
            assert (value("oceanus_inflight_batches", "ev"), value("oceanus_inflight_batches", "pv")) == (1.0, 0.0)
            assert value("oceanus_batch_target_rows", "ev") == f.workers["ev"].controller.target_rows
            lag = value("oceanus_lag_seconds", "ev")
            assert lag is not None
            # The oldest of the queue head and the batch in flight, in seconds.
            assert (now_ms - inflight_ms) / 1000 <= lag <= (now_ms - inflight_ms) / 1000 + elapsed + 1.0
            assert value("oceanus_lag_seconds", "pv") == 0.0
            info = client.info("memory")
            used = f.metrics.registry.get_sample_value("oceanus_redis_used_memory_bytes")
            assert used is not None
            assert used > 0
            assert abs(used - info["used_memory"]) < 10_000_000
            assert f.metrics.registry.get_sample_value("oceanus_redis_maxmemory_bytes") == float(info["maxmemory"])
        finally:
            await f.close()

    asyncio.run(body())


def test_lag_is_the_queue_heads_age_without_a_batch_in_flight(redis_server: RedisServer, tmp_path: Path) -> None:
    cfg = make_config(redis_server.url, tmp_path / "w.duckdb")
    keys = Keys(cfg.redis.key_prefix)
    head_ms = int(time.time() * 1000) - 45_000
    redis_server.client().rpush(keys.queue("pv"), encode_frame(["event_id"], [[EventIds().new(head_ms * 1_000_000)]]))

    async def body() -> None:
        f = Flusher(cfg, DuckDBSink(cfg))
        try:
            await f.sample_gauges()
            lag = f.metrics.registry.get_sample_value("oceanus_lag_seconds", {"stream": "pv"})
            assert lag is not None
            assert 45.0 <= lag < 47.0
        finally:
            await f.close()

    asyncio.run(body())


def test_a_run_drains_and_reports_clean_with_the_draining_gauge_at_one(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    async def body() -> None:
        f = _flusher(redis_server.url, tmp_path)
        task = asyncio.create_task(f.run())
        try:
            deadline = time.monotonic() + 20
            while not (f.tables_ready and f.admin is not None and f.redis_ok):
                assert time.monotonic() < deadline, "the flusher never became ready"
                await asyncio.sleep(0.02)
            assert f.metrics.registry.get_sample_value("oceanus_flusher_draining") == 0.0
            f.stopping.set()
            assert await asyncio.wait_for(task, 30) is True
            assert f.metrics.registry.get_sample_value("oceanus_flusher_draining") == 1.0
            # The heartbeat is dropped on the way out: nobody waits a TTL to re-claim.
            assert await f.aredis.exists(f.keys.heartbeat(f.owner)) == 0
        finally:
            await f.close()

    asyncio.run(body())


def test_a_write_outliving_the_drain_makes_the_run_unclean(redis_server: RedisServer, tmp_path: Path) -> None:
    cfg = make_config(redis_server.url, tmp_path / "w.duckdb", drain_timeout_s=0.5)
    release = threading.Event()

    class Stuck(DuckDBSink):
        def write(self, batch, state):  # type: ignore[no-untyped-def]
            release.wait(30)
            return super().write(batch, state)

    push_frames(redis_server.client(), Keys(cfg.redis.key_prefix), cfg.streams["pv"], frames=1, rows_per_frame=20)

    async def body() -> None:
        f = Flusher(cfg, Stuck(cfg))
        task = asyncio.create_task(f.run())
        try:
            deadline = time.monotonic() + 20
            while not await f.aredis.scard(f.keys.inflight_index("pv")):
                assert time.monotonic() < deadline, "the batch was never claimed"
                await asyncio.sleep(0.02)
            f.stopping.set()
            assert await asyncio.wait_for(task, 30) is False
        finally:
            release.set()
            await f.close()

    asyncio.run(body())


def test_the_discovery_file_is_named_after_the_duckdb_file_and_only_ours_is_removed(tmp_path: Path) -> None:
    cfg = make_config("redis://127.0.0.1:1/0", tmp_path / "w.duckdb")
    path = discovery_file(cfg)
    assert path == (tmp_path / "w.duckdb").resolve().with_name("w.duckdb.flusher.json")
    runner._write_discovery(path, "http://127.0.0.1:9")
    assert path.read_bytes() == b'{"pid":%d,"admin_url":"http://127.0.0.1:9"}\n' % os.getpid()
    runner._remove_discovery(path)
    assert not path.exists()
    path.write_bytes(b'{"pid":%d,"admin_url":"http://127.0.0.1:9"}\n' % (os.getpid() + 1))
    runner._remove_discovery(path)  # a successor's file stays
    assert path.exists()
    path.write_bytes(b"{half")
    runner._remove_discovery(path)  # unreadable: left alone, no error
    assert path.exists()
    other = config.loads(
        '[sink]\nkind = "bigquery"\n[sink.bigquery]\nproject = "p"\ndataset = "d"\n[streams.s.fields.a]\n', env={}
    )
    assert discovery_file(other) is None

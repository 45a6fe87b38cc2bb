"""A stream with ``shards = 4`` on one Redis: the collector spreads, two flushers drain, readers sum."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import msgspec
import redis.asyncio as aioredis

from collector import status as collector_status
from collector.app import App
from flusher.runner import Flusher
from flusher.sinks.duckdb import DuckDBSink
from oceanus import config
from oceanus.buffer import Keys, decode_frame
from oceanus.commands import status as status_command
from tests.collector.asgi import request, running
from tests.flusher.helpers import RecordingSink
from tests.flusher.test_runner import until
from tests.support.servers import RedisServer, as_bytes_list

REPO = Path(__file__).resolve().parents[2]
SHARDS = 4
EVENTS = 40


def _config(server: RedisServer, tmp_path: Path) -> config.Config:
    base = config.load(
        REPO / "oceanus.toml",
        env={
            "OCEANUS_REDIS_URL": server.url,
            "OCEANUS_COLLECTOR_SPOOL_DIR": f'"{tmp_path / "spool"}"',
            "OCEANUS_SINK_DUCKDB_PATH": f'"{tmp_path / "w.duckdb"}"',
            "OCEANUS_FLUSHER_ADMIN_PORT": "0",
            "OCEANUS_FLUSHER_HEARTBEAT_TTL_S": "1.0",
        },
    )
    pageview = msgspec.structs.replace(
        base.streams["pageview"],
        shards=SHARDS,
        batch=msgspec.structs.replace(base.streams["pageview"].batch, max_wait_s=0.5),
    )
    return msgspec.structs.replace(base, streams={**base.streams, "pageview": pageview})


def _queued_ids(server: RedisServer, keys: Keys) -> tuple[list[int], list[str]]:
    client = server.client()
    lengths, ids = [], []
    for shard in range(SHARDS):
        items = as_bytes_list(client.lrange(keys.queue("pageview", shard), 0, -1))
        lengths.append(len(items))
        for item in items:
            columns, rows = decode_frame(item)
            ids += [row[columns.index("event_id")].hex() for row in rows]
    return lengths, ids


def test_four_shards_spread_by_the_collector_drained_once_by_two_flushers_summed_by_status(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    cfg = _config(redis_server, tmp_path)
    keys = Keys(cfg.redis.key_prefix)

    async def collect() -> None:
        async with running(App(cfg)) as app:
            for i in range(EVENTS):
                r = await request(app, "GET", "/b/pageview", f"sid={i:08x}&evt=view")
                assert r.status == 200

    asyncio.run(collect())
    lengths, ids = _queued_ids(redis_server, keys)
    # One request, one round, one frame: the rounds take the shards in turn.
    assert sum(lengths) == EVENTS
    assert len(set(ids)) == EVENTS
    assert max(lengths) - min(lengths) <= 1, lengths

    async def readers() -> None:
        client = aioredis.from_url(redis_server.url)
        try:
            snap = await collector_status.snapshot(cfg, client)
        finally:
            await client.aclose()
        [pv] = [s for s in snap.streams if s.name == "pageview"]
        assert (pv.backlog_frames, pv.backlog_rows, pv.inflight_batches) == (EVENTS, EVENTS, 0)
        f = Flusher(cfg, RecordingSink(DuckDBSink(cfg)))
        try:
            await f.sample_gauges()
            for shard in range(SHARDS):
                labels = {"stream": "pageview", "shard": str(shard)}
                got = f.metrics.registry.get_sample_value("oceanus_backlog_items", labels)
                assert got == lengths[shard]
        finally:
            await f.close()

    asyncio.run(readers())
    counts = status_command.redis_counts(
        redis_server.url, cfg.redis.key_prefix, ["pageview"], time.time(), {"pageview": SHARDS}
    )
    assert (counts["pageview"].backlog_frames, counts["pageview"].backlog_rows) == (EVENTS, EVENTS)

    written: Counter[str] = Counter()
    inner = DuckDBSink(cfg)

    async def drain() -> None:
        flushers = [Flusher(cfg, RecordingSink(inner, written, owns=False)) for _ in range(2)]
        tasks = [asyncio.create_task(f.run()) for f in flushers]

        async def done() -> bool:
            if sum(written.values()) < EVENTS:
                return False
            client = flushers[0].aredis
            for shard in range(SHARDS):
                if await client.exists(keys.queue("pageview", shard), keys.inflight_index("pageview", shard)):
                    return False
            return True

        try:
            await until(done, "every shard drained")
        finally:
            for f in flushers:
                f.stopping.set()
            assert all(await asyncio.wait_for(asyncio.gather(*tasks), 30))
            for f in flushers:
                await f.close()

    asyncio.run(drain())
    assert written == Counter(ids)  # every event once, across both flushers and all shards
    got = sorted(r[0] for r in inner.query("SELECT event_id FROM pageview").rows)
    inner.close()
    assert got == sorted(ids)

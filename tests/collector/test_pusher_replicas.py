"""The collector on a Redis Cluster and with ``redis.min_replicas_ack``, through the real app:
shards on several masters, a master killed under traffic, a paused replica, one Redis with
and without a replica, and stats whose command fails in its place."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from collector.app import App
from oceanus import config
from oceanus.buffer import Keys
from oceanus.commands.checkconfig import describe
from tests.collector.asgi import request, running
from tests.collector.conftest import frames_rows, queued_rows
from tests.support.cluster import RedisCluster
from tests.support.servers import RedisServer, as_bytes_list, wait_for

pytestmark = pytest.mark.anyio

MakeConfig = Callable[..., config.Config]
KEYS = Keys()


def with_redis(cfg: config.Config, shards: int = 1, **redis: Any) -> config.Config:
    pageview = msgspec.structs.replace(cfg.streams["pageview"], shards=shards)
    return msgspec.structs.replace(
        cfg,
        redis=msgspec.structs.replace(cfg.redis, **redis),
        streams={**cfg.streams, "pageview": pageview},
    )


def cluster_rows(cluster: RedisCluster, shards: int) -> dict[int, list[dict[str, Any]]]:
    """Shard -> the rows of ``pageview``'s queue in that shard, read from the master serving it."""
    out: dict[int, list[dict[str, Any]]] = {}
    for shard in range(shards):
        key = KEYS.queue("pageview", shard)
        client = cluster.node_for_key(key).client()
        try:
            items = as_bytes_list(client.lrange(key, 0, -1))
        finally:
            client.close()
        out[shard] = frames_rows(items)
    return out


async def pixel(app: App, sid: str) -> int:
    return (await request(app, "GET", "/b/pageview", f"sid={sid}&evt=view")).status


async def settled(app: App, timeout_s: float = 20.0) -> None:
    """Until the spool is replayed and the last round reached every master (polled, bounded)."""
    assert app.spool is not None
    assert app.pusher is not None
    deadline = time.monotonic() + timeout_s
    while (app.spool.pending or not app.pusher.redis_up) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)  # polling the condition, bounded by the deadline
    assert not app.spool.pending
    assert app.pusher.redis_up


async def test_three_shards_land_on_several_masters(make_config: MakeConfig, redis_cluster: RedisCluster) -> None:
    masters = {redis_cluster.node_for_key(KEYS.queue("pageview", s)).port for s in range(3)}
    assert len(masters) >= 2, "the shard tags {pageview}, {pageview~1}, {pageview~2} share a master"
    # A generous timeout: seven fsync-always redis-servers share this box with the test.
    cfg = with_redis(make_config(), shards=3, url=redis_cluster.url, timeout_s=2.0)
    async with running(App(cfg)) as app:
        for i in range(60):
            # One at a time: one round per request, so the rounds take the shards in turn.
            assert await pixel(app, f"{i:x}") == 200
        assert app.spool is not None
        assert not app.spool.pending
    rows = cluster_rows(redis_cluster, 3)
    assert [len(rows[s]) for s in range(3)] == [20, 20, 20]
    assert sorted(int(r["sid"], 16) for s in rows for r in rows[s]) == list(range(60))


async def test_a_master_killed_under_traffic_loses_no_acknowledged_event(
    make_config: MakeConfig, redis_cluster: RedisCluster
) -> None:
    victim = redis_cluster.node_for_key(KEYS.queue("pageview", 0))
    cfg = with_redis(make_config(ip_rate_per_s=0.0), shards=3, url=redis_cluster.url, timeout_s=1.0)
    acked: list[str] = []
    statuses: Counter[int] = Counter()
    spooled = False
    try:
        async with running(App(cfg)) as app:
            assert app.spool is not None
            stop = asyncio.Event()

            async def traffic(worker: int) -> None:
                n = 0
                while not stop.is_set():
                    sid = f"{worker:x}0{n:x}"
                    n += 1
                    status = await pixel(app, sid)
                    statuses[status] += 1
                    if status == 200:
                        acked.append(sid)
                    await asyncio.sleep(0.005)  # pacing: a few thousand events in all, not a flood

            senders = [asyncio.create_task(traffic(w + 1)) for w in range(8)]
            await asyncio.sleep(0.3)  # traffic before the kill; nothing waits on this
            replica = redis_cluster.kill_master(victim, wait=False)
            killed_at = len(acked)
            # Promotion takes a couple of seconds: traffic goes on, that master's share to the spool.
            await asyncio.to_thread(redis_cluster.wait_promoted, replica)
            spooled = app.spool.pending or app.spool.pending_frames > 0
            await asyncio.sleep(0.3)  # traffic after the promotion
            stop.set()
            await asyncio.gather(*senders)
            await settled(app)
            assert killed_at < len(acked)
    finally:
        if not victim.alive:
            redis_cluster.restart(victim)
    assert spooled, "the killed master's frames never went to the spool"
    assert set(statuses) == {200}, statuses
    stored = Counter(r["event_id"] for rows in cluster_rows(redis_cluster, 3).values() for r in rows)
    sids = Counter(r["sid"] for rows in cluster_rows(redis_cluster, 3).values() for r in rows)
    # Every acknowledged event is in Redis at least once, and nothing else is.
    assert set(sids) == set(acked)
    assert len(stored) == len(acked)


async def test_a_paused_replica_spools_the_round_and_loses_nothing(
    make_config: MakeConfig, redis_cluster: RedisCluster
) -> None:
    master = redis_cluster.node_for_key(KEYS.queue("pageview", 0))
    # A WAIT timeout with room for a loaded box: the unpaused replica must acknowledge within it.
    cfg = with_redis(make_config(), url=redis_cluster.url, timeout_s=3.0, min_replicas_ack=1, wait_timeout_ms=1500)
    async with running(App(cfg)) as app:
        assert app.spool is not None
        assert app.pusher is not None
        assert await pixel(app, "a0") == 200
        assert not app.spool.pending  # its replica acknowledged
        with redis_cluster.paused(redis_cluster.replica_of(master)):
            assert await pixel(app, "a1") == 200
            assert app.spool.pending_frames == 1  # acknowledged from the spool, not from Redis
            assert not app.pusher.redis_up
        await settled(app)
        assert await pixel(app, "a2") == 200
        assert not app.spool.pending
    sids = Counter(r["sid"] for r in cluster_rows(redis_cluster, 1)[0])
    # "a1" was applied by the master as well: its replay is a second copy, removed downstream by event id.
    assert sids == {"a0": 1, "a1": 2, "a2": 1}


async def test_one_redis_without_a_replica_spools_and_with_one_waits(
    make_config: MakeConfig, redis_server: RedisServer, tmp_path: Path
) -> None:
    cfg = with_redis(make_config(), timeout_s=2.0, min_replicas_ack=1, wait_timeout_ms=500)
    replica = RedisServer(tmp_path / "replica")
    try:
        async with running(App(cfg)) as app:
            assert app.spool is not None
            assert app.pusher is not None
            app.pusher._stats_due = 0.0  # the stats ride along with the round too few replicas hold
            assert await pixel(app, "b0") == 200
            assert app.spool.pending_frames == 1
            assert not app.pusher.redis_up
            # Applied all the same: Redis holds it while the spool keeps it for want of a replica.
            assert [r["sid"] for r in queued_rows(redis_server, "pageview")] == ["b0"]
            # Retries ask the replicas first rather than push the replay again: no copy per retry.
            deadline = time.monotonic() + 10.0
            while app.pusher._retry_wait < 0.8 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)  # until three retries failed (0.1, 0.2, 0.4 s), bounded
            assert app.pusher._retry_wait >= 0.8
            assert [r["sid"] for r in queued_rows(redis_server, "pageview")] == ["b0"]
            assert app.spool.pending_frames == 1
            replica.start()
            client = replica.client()
            try:
                client.replicaof("127.0.0.1", redis_server.port)
                wait_for(lambda: client.info("replication").get("master_link_status") == "up", timeout=20)
            finally:
                client.close()
            await settled(app)
            assert await pixel(app, "b1") == 200
            assert not app.spool.pending  # WAIT 1 answered 1: no spooling
            assert app.pusher.redis_up
    finally:
        replica.stop()
    sids = Counter(r["sid"] for r in queued_rows(redis_server, "pageview"))
    assert sids == {"b0": 2, "b1": 1}
    # Redis applied the stats of the unreplicated round: they are not counted a second time.
    minute = int(time.time() // 60)
    client = redis_server.client()
    try:
        accepted = [client.hget(KEYS.stats("pageview", m), "accepted") for m in range(minute - 2, minute + 1)]
    finally:
        client.close()
    assert sum(int(a or 0) for a in accepted) == 2


async def test_a_stats_command_refused_in_place_is_counted_again_and_spools_nothing(
    make_config: MakeConfig, redis_server: RedisServer, redis_client: Any
) -> None:
    minute = int(time.time() // 60)
    keys = [KEYS.stats("pageview", m) for m in (minute, minute + 1)]
    for key in keys:
        redis_client.set(key, "not a hash")  # HINCRBY now fails with WRONGTYPE, the RPUSH does not
    async with running(App(make_config())) as app:
        assert app.spool is not None
        assert app.pusher is not None
        app.pusher._stats_due = 0.0  # stats ride along with this very round
        assert await pixel(app, "c0") == 200
        assert not app.spool.pending
        assert app.pusher.redis_up
        redis_client.delete(*keys)
        # The idle round writes the counts it kept back (within IDLE_ROUND_S).
        deadline = time.monotonic() + 10.0
        accepted = 0
        while not accepted and time.monotonic() < deadline:
            await asyncio.sleep(0.02)  # polling the condition, bounded by the deadline
            accepted = sum(int(redis_client.hget(k, "accepted") or 0) for k in keys)
    assert accepted == 1
    assert [r["sid"] for r in queued_rows(redis_server, "pageview")] == ["c0"]


def test_check_config_names_the_cluster_and_the_acknowledgement(default_config: config.Config) -> None:
    one = describe(default_config)
    assert "redis: redis://127.0.0.1:6379/0 (one instance; a round counts once its master answered" in one
    cfg = with_redis(default_config, url="redis+cluster://u:p@h1:7000,h2:7001,h3:7002", min_replicas_ack=1)
    assert "(cluster, 3 seeds; a round counts once 1 replica(s) acknowledged within 500 ms)" in describe(cfg)

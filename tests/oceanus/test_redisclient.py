"""oceanus/redisclient.py: the client each role gets for one Redis or a cluster, on real servers."""

from __future__ import annotations

import asyncio

import pytest
import redis
import redis.asyncio as aioredis
import redis.asyncio.cluster as aiocluster
import redis.cluster

from oceanus import redisclient
from oceanus.config import RedisConfig
from tests.support.cluster import RedisCluster
from tests.support.servers import RedisServer


def test_one_instance_gets_redis_without_retries(redis_server: RedisServer) -> None:
    rcfg = RedisConfig(url=redis_server.url, timeout_s=1.5)

    async def check() -> None:
        client = redisclient.async_client(rcfg, max_connections=3)
        try:
            assert type(client) is aioredis.Redis
            assert not redisclient.is_cluster(client)
            kwargs = client.connection_pool.connection_kwargs
            assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (1.5, 1.5)
            assert client.connection_pool.max_connections == 3
            assert client.get_retry().get_retries() == 0  # type: ignore[union-attr]
            assert await client.ping()
            assert redisclient.node_of(client, "k") == ""
            used, _ = await redisclient.memory_info(client)
            assert used > 0
        finally:
            await client.aclose()

    asyncio.run(check())
    sync = redisclient.sync_client(rcfg)
    try:
        assert type(sync) is redis.Redis
        assert sync.get_retry().get_retries() == 0  # type: ignore[union-attr]
        assert sync.ping()
    finally:
        sync.close()


def test_a_cluster_url_gets_the_cluster_client_with_its_seeds_and_no_retries(redis_cluster: RedisCluster) -> None:
    seeds = redis_cluster.addresses[:2]
    rcfg = RedisConfig(url="redis+cluster://" + ",".join(seeds), timeout_s=1.5)

    async def check() -> None:
        client = redisclient.async_client(rcfg)
        try:
            assert isinstance(client, aiocluster.RedisCluster)
            assert redisclient.is_cluster(client)
            assert client.retry.get_retries() == 0
            assert list(client.nodes_manager.startup_nodes) == seeds
            await client.set("k", b"v")
            assert redisclient.node_of(client, "k") == redis_cluster.node_for_key("k").address
            # INFO memory over the three masters, summed.
            used, _ = await redisclient.memory_info(client)
            per_master = [float(m.info("memory")["used_memory"]) for m in redis_cluster.masters()]
            assert used == pytest.approx(sum(per_master), rel=0.05)
        finally:
            await client.aclose()

    asyncio.run(check())
    sync = redisclient.sync_client(rcfg)
    try:
        assert isinstance(sync, redis.cluster.RedisCluster)
        assert sync.retry.get_retries() == 0
        assert sync.get("k") == b"v"
        assert redisclient.node_of(sync, "k") == redis_cluster.node_for_key("k").address
    finally:
        sync.close()


def test_a_moved_command_runs_once_on_the_new_master(redis_cluster: RedisCluster) -> None:
    """The client's map still names the old master: MOVED (nothing ran there) is followed, once."""
    rcfg = RedisConfig(url=redis_cluster.url)

    async def check() -> None:
        client = redisclient.async_client(rcfg)
        try:
            await client.rpush("q", b"1")
            slot = redis_cluster.slot_of("q")
            target = next(m for m in redis_cluster.masters() if m.port != redis_cluster.node_for_slot(slot).port)
            await asyncio.to_thread(redis_cluster.migrate_slot, slot, target)
            assert await client.rpush("q", b"2") == 2
            async with client.pipeline(transaction=False) as pipe:
                pipe.rpush("q", b"3")
                assert await pipe.execute() == [3]
            assert await client.lrange("q", 0, -1) == [b"1", b"2", b"3"]
            assert redisclient.node_of(client, "q") == target.address
        finally:
            await client.aclose()

    asyncio.run(check())


def test_a_slot_nobody_serves_is_a_connection_error_to_the_caller(redis_cluster: RedisCluster) -> None:
    """CLUSTERDOWN (and redis-py's uncovered-slot errors) raise ClusterUnavailable, a ConnectionError:
    the path every loop already takes when Redis is down, instead of ending a loop."""
    rcfg = RedisConfig(url=redis_cluster.url)
    slot = redis_cluster.slot_of("k")
    master = redis_cluster.node_for_slot(slot)

    async def check() -> None:
        client = redisclient.async_client(rcfg)
        try:
            await client.set("k", b"v")
            master.command("CLUSTER", "DELSLOTS", slot)
            try:
                with pytest.raises(redisclient.ClusterUnavailable, match="not served") as one:
                    await client.get("k")
                assert isinstance(one.value, redis.ConnectionError)
                with pytest.raises(redisclient.ClusterUnavailable, match="not served"):
                    await _pipelined_get(client, "k")
            finally:
                master.command("CLUSTER", "ADDSLOTS", slot)
            redis_cluster.wait_healthy()
            assert await client.get("k") == b"v"
        finally:
            await client.aclose()

    asyncio.run(check())


async def _pipelined_get(client: aioredis.Redis, key: str) -> list[object]:
    async with client.pipeline(transaction=False) as pipe:
        pipe.get(key)
        return await pipe.execute()


def test_the_cluster_url_is_parsed_once_for_every_role() -> None:
    assert redisclient.parse_cluster_url("rediss+cluster://u%40x:p%3Aw@h1:7000,[::1]:7001/") == (
        [("h1", 7000), ("::1", 7001)],
        "u@x",
        "p:w",
        True,
    )
    with pytest.raises(ValueError, match=r"redis\.url"):
        redisclient.parse_cluster_url("redis+cluster://h1:7000/2")
    from collector import cluster

    assert cluster.parse_url is redisclient.parse_cluster_url

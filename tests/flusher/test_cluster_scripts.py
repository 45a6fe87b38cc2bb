"""Every script and MULTI the flusher and the notifier run keeps to one slot, on a real Redis Cluster.

The calls go through redis-py's cluster client, which routes a script by its keys and refuses
(before sending) keys of several slots; Redis would refuse them too (CROSSSLOT). So a claim,
tap, give-back, finish or re-claim that comes back with the right frames touched one slot.
"""

from __future__ import annotations

import asyncio
from typing import cast

import redis.asyncio as aioredis
import redis.asyncio.cluster as aiocluster

from flusher.claim import Claimer
from notifier.keys import NotifyKeys
from notifier.tap import Tap
from oceanus.buffer import Keys
from tests.support.cluster import RedisCluster

STREAM = "pageview"
SHARDS = 4


def test_each_shards_keys_share_one_slot_and_the_shards_spread(redis_cluster: RedisCluster) -> None:
    keys, nkeys = Keys(), NotifyKeys("oceanus").claim
    node = redis_cluster.masters()[0]
    slots: list[int] = []
    for shard in range(SHARDS):
        inflight = keys.inflight(STREAM, "host-1-abc", 17, shard)
        ninflight = nkeys.inflight(STREAM, "host-1-abc", 17, shard)
        touched = [
            keys.queue(STREAM, shard),
            inflight,
            keys.inflight_index(STREAM, shard),
            keys.state(inflight),
            keys.shard_heartbeat("host-1-abc", STREAM, shard),
            keys.dead(STREAM, shard),
            keys.notify_tapped(STREAM, shard),
            keys.notify_queue(STREAM, shard),
            ninflight,
            nkeys.inflight_index(STREAM, shard),
            nkeys.state(ninflight),
            nkeys.shard_heartbeat("host-1-abc", STREAM, shard),
        ]
        shard_slots = {int(node.command("CLUSTER", "KEYSLOT", k)) for k in touched}
        assert len(shard_slots) == 1, (shard, touched)
        slots += shard_slots
    assert len(set(slots)) == SHARDS
    assert len({redis_cluster.node_for_slot(s).port for s in slots}) > 1  # not all on one master


def test_claim_tap_give_back_finish_and_reclaim_run_on_the_cluster(redis_cluster: RedisCluster) -> None:
    async def scenario() -> None:
        host, port = redis_cluster.addresses[0].split(":")
        client = aiocluster.RedisCluster(host=host, port=int(port))
        # Typed for one Redis today; the cluster client has the same calls (wiring it is a later step).
        same = cast(aioredis.Redis, client)
        keys, nkeys = Keys(), NotifyKeys("oceanus")
        flusher = Claimer(same, keys, "flusher", 30.0, notify_tap=(STREAM,))
        ghost = Claimer(same, keys, "ghost", 30.0)  # never beats: as if killed after its claim
        notifier = Claimer(same, nkeys.claim, "notifier", 30.0)
        tap = Tap(same, "oceanus")
        try:
            await flusher.heartbeat()
            await notifier.heartbeat()
            for shard in range(SHARDS):
                frames = [b"s%d-f%d" % (shard, i) for i in range(6)]
                await client.rpush(keys.queue(STREAM, shard), *frames)
                assert await tap.run(STREAM, shard) == 6
                claim = await flusher.claim(STREAM, 4, shard)
                assert claim is not None
                assert (claim.frames, claim.shard) == (frames[:4], shard)
                assert await flusher.give_back(claim) == 4
                claim = await flusher.claim(STREAM, 3, shard)
                assert claim is not None
                assert await flusher.finish(claim, [b"dead-%d" % shard])
                assert await client.lrange(keys.dead(STREAM, shard), 0, -1) == [b"dead-%d" % shard]
                lost = await ghost.claim(STREAM, 3, shard)
                assert lost is not None
                assert await flusher.orphans(STREAM, shard) == [lost.key]
                again = await flusher.reclaim(STREAM, lost.key, shard)
                assert again is not None
                assert again.frames == frames[3:]
                assert await flusher.finish(again)
                evaluated = await notifier.claim(STREAM, 100, shard)
                assert evaluated is not None
                assert evaluated.frames == frames
                assert await notifier.finish(evaluated)
                assert await client.exists(keys.queue(STREAM, shard), keys.inflight_index(STREAM, shard)) == 0
            await flusher.drop_heartbeat()
            await notifier.drop_heartbeat()
        finally:
            await client.aclose()

    asyncio.run(scenario())

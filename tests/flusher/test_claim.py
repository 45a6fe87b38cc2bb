"""Claiming against a real redis-server: atomic, exclusive, re-claimable, give-back in order."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from flusher.claim import _CLAIM_LUA, _RECLAIM_LUA, STATE_BATCH_ID, Claimer, RedisWriteState
from oceanus.buffer import Keys
from tests.flusher.helpers import make_config, push_frames
from tests.support.servers import RedisServer, as_bytes
from tests.support.tcpproxy import ReplyDropProxy

KEYS = Keys("t")


def _claimer(server: RedisServer, owner: str, ttl_s: float = 30.0) -> Claimer:
    return Claimer(aioredis.from_url(server.url), KEYS, owner, ttl_s)


def _stream(tmp_path: Path):  # type: ignore[no-untyped-def]
    return make_config("redis://unused", tmp_path / "x.duckdb").streams["pv"]


def test_concurrent_claims_take_every_frame_exactly_once(redis_server: RedisServer, tmp_path: Path) -> None:
    client = redis_server.client()
    stream = _stream(tmp_path)
    push_frames(client, KEYS, stream, frames=300, rows_per_frame=2)
    frames_in_order = client.lrange(KEYS.queue("pv"), 0, -1)

    async def scenario() -> list[list[bytes]]:
        claimers = [_claimer(redis_server, f"o{i}") for i in range(3)]

        async def drain(c: Claimer) -> list[list[bytes]]:
            got = []
            while (claim := await c.claim("pv", 7)) is not None:
                got.append(claim.frames)
            return got

        results = await asyncio.gather(*(drain(c) for c in claimers))
        for c in claimers:
            await c.client.aclose()
        return [b for r in results for b in r]

    batches = asyncio.run(scenario())
    claimed = [f for b in batches for f in b]
    assert sorted(claimed) == sorted(frames_in_order)  # none lost, none twice
    assert all(len(b) <= 7 for b in batches)
    assert client.llen(KEYS.queue("pv")) == 0
    assert client.scard(KEYS.inflight_index("pv")) == len(batches)


def test_empty_queue_claims_nothing_and_creates_no_key(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        c = _claimer(redis_server, "o1")
        assert await c.claim("pv", 10) is None
        await c.client.aclose()

    asyncio.run(scenario())
    assert redis_server.client().keys("*") == []


def test_orphan_is_reclaimed_with_its_state_and_batch_id(redis_server: RedisServer, tmp_path: Path) -> None:
    client = redis_server.client()
    push_frames(client, KEYS, _stream(tmp_path), frames=5, rows_per_frame=1)

    async def scenario() -> None:
        dead, alive = _claimer(redis_server, "dead", 0.2), _claimer(redis_server, "alive")
        await dead.heartbeat()
        await alive.heartbeat()
        claim = await dead.claim("pv", 3)
        assert claim is not None
        RedisWriteState(redis_server.client(), KEYS.state(claim.key), {}).set(offset="42")
        # The owner's heartbeat still lives: nothing is an orphan yet.
        assert await alive.orphans("pv") == []
        assert await alive.reclaim("pv", claim.key) is None
        # What the TTL does after a kill -9: the shard's heartbeat (the one re-claims check) goes too.
        await dead.client.delete(KEYS.heartbeat("dead"), KEYS.shard_heartbeat("dead", "pv"))
        orphans = await alive.orphans("pv")
        assert orphans == [claim.key]
        again = await alive.reclaim("pv", claim.key)
        assert again is not None
        assert again.reclaimed
        assert again.frames == claim.frames
        assert again.batch_id == claim.batch_id
        assert KEYS.owner_of(again.key) == "alive"
        state = await alive.load_state(again.key)
        assert state["offset"] == "42"
        assert state[STATE_BATCH_ID] == claim.batch_id
        assert await dead.client.exists(claim.key, KEYS.state(claim.key)) == 0
        assert await alive.client.smembers(KEYS.inflight_index("pv")) == {again.key.encode()}
        # a second re-claimer finds nothing left
        assert await _claimer(redis_server, "third").orphans("pv") == []
        assert await alive.finish(again, [b'{"dead": 1}'])
        assert await alive.client.exists(again.key, KEYS.state(again.key)) == 0
        assert await alive.client.scard(KEYS.inflight_index("pv")) == 0
        assert await alive.client.lrange(KEYS.dead("pv"), 0, -1) == [b'{"dead": 1}']
        for c in (dead, alive):
            await c.client.aclose()

    asyncio.run(scenario())
    assert client.llen(KEYS.queue("pv")) == 2


def test_give_back_restores_the_frames_at_the_head_in_order(redis_server: RedisServer, tmp_path: Path) -> None:
    client = redis_server.client()
    push_frames(client, KEYS, _stream(tmp_path), frames=6, rows_per_frame=1)
    before = client.lrange(KEYS.queue("pv"), 0, -1)

    async def scenario() -> None:
        c = _claimer(redis_server, "o1")
        claim = await c.claim("pv", 4)
        assert claim is not None
        assert claim.frames == before[:4]
        assert await c.give_back(claim) == 4
        await c.client.aclose()

    asyncio.run(scenario())
    assert client.lrange(KEYS.queue("pv"), 0, -1) == before
    assert client.keys("t:inflight*") == []
    assert client.keys("t:state:*") == []


def _sha(script: str) -> bytes:
    return hashlib.sha1(script.encode()).hexdigest().encode()


def test_a_claim_whose_reply_was_lost_is_recovered_by_its_owner(redis_server: RedisServer, tmp_path: Path) -> None:
    """Redis ran the claim (the frames moved) but the answer never came: the key must not be stranded."""
    client = redis_server.client()
    push_frames(client, KEYS, _stream(tmp_path), frames=5, rows_per_frame=2)
    client.script_load(_CLAIM_LUA)  # so the lost reply is the script's own, not a NOSCRIPT round
    proxy = ReplyDropProxy(redis_server.port).start()

    async def scenario() -> None:
        owner = Claimer(aioredis.from_url(proxy.url), KEYS, "owner", 30.0)
        other = _claimer(redis_server, "other")
        await owner.heartbeat()
        await other.heartbeat()
        proxy.drop_reply_after(_sha(_CLAIM_LUA))
        with pytest.raises(redis.exceptions.ConnectionError):
            await owner.claim("pv", 3)
        assert proxy.dropped == 1
        stranded = [as_bytes(m).decode() for m in client.smembers(KEYS.inflight_index("pv"))]
        assert len(stranded) == 1
        assert client.llen(stranded[0]) == 3
        batch_id = client.hget(KEYS.state(stranded[0]), STATE_BATCH_ID)
        # The owner lives, so nobody else may take it; the owner knows it does not hold it.
        assert await other.orphans("pv") == []
        assert not owner.holds(stranded[0])
        assert await owner.orphans("pv") == stranded
        again = await owner.reclaim("pv", stranded[0])
        assert again is not None
        assert again.reclaimed
        assert owner.holds(again.key)
        assert again.frames == client.lrange(again.key, 0, -1)
        assert len(again.frames) == 3
        assert again.batch_id == as_bytes(batch_id or b"").decode()
        assert await owner.orphans("pv") == []
        assert await other.orphans("pv") == []
        # The next claim takes the next frames: nothing was claimed twice.
        nxt = await owner.claim("pv", 10)
        assert nxt is not None
        assert len(nxt.frames) == 2
        assert not set(nxt.frames) & set(again.frames)
        assert await owner.finish(again)
        assert await owner.finish(nxt)
        assert not owner.holds(again.key)
        assert not owner.holds(nxt.key)
        await owner.client.aclose()
        await other.client.aclose()

    try:
        asyncio.run(scenario())
    finally:
        proxy.stop()
    assert client.keys("t:inflight*") == []
    assert client.keys("t:state:*") == []


def test_a_reclaim_whose_reply_was_lost_is_recovered_too(redis_server: RedisServer, tmp_path: Path) -> None:
    client = redis_server.client()
    push_frames(client, KEYS, _stream(tmp_path), frames=4, rows_per_frame=1)
    client.script_load(_RECLAIM_LUA)
    proxy = ReplyDropProxy(redis_server.port).start()

    async def scenario() -> None:
        dead = _claimer(redis_server, "dead")
        claim = await dead.claim("pv", 4)
        assert claim is not None
        RedisWriteState(client, KEYS.state(claim.key), {}).set(offset="7")
        owner = Claimer(aioredis.from_url(proxy.url), KEYS, "owner", 30.0)
        await owner.heartbeat()
        assert await owner.orphans("pv") == [claim.key]  # "dead" never had a heartbeat
        proxy.drop_reply_after(_sha(_RECLAIM_LUA))
        with pytest.raises(redis.exceptions.ConnectionError):
            await owner.reclaim("pv", claim.key)
        renamed = [as_bytes(m).decode() for m in client.smembers(KEYS.inflight_index("pv"))]
        assert len(renamed) == 1
        assert KEYS.owner_of(renamed[0]) == "owner"
        assert await owner.orphans("pv") == renamed
        again = await owner.reclaim("pv", renamed[0])
        assert again is not None
        assert again.frames == claim.frames
        assert again.batch_id == claim.batch_id
        assert (await owner.load_state(again.key))["offset"] == "7"
        assert await owner.finish(again)
        await owner.client.aclose()
        await dead.client.aclose()

    try:
        asyncio.run(scenario())
    finally:
        proxy.stop()
    assert client.keys("t:inflight*") == []
    assert client.llen(KEYS.queue("pv")) == 0


def test_a_key_held_by_a_worker_is_never_an_orphan_of_its_owner(redis_server: RedisServer, tmp_path: Path) -> None:
    push_frames(redis_server.client(), KEYS, _stream(tmp_path), frames=3, rows_per_frame=1)

    async def scenario() -> None:
        c = _claimer(redis_server, "o1")
        await c.heartbeat()
        claim = await c.claim("pv", 2)
        assert claim is not None
        assert c.holds(claim.key)
        assert await c.orphans("pv") == []
        assert await c.reclaim("pv", claim.key) is None
        assert await c.give_back(claim) == 2
        assert not c.holds(claim.key)
        assert await c.claim("pv", 0) is not None  # at least one frame, whatever is asked
        await c.client.aclose()

    asyncio.run(scenario())

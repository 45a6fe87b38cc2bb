"""The claim contract pinned by value: sizes past every internal slice, every state field, exact TTLs.

test_claim.py shows the protocol works; these tests fail when any one of its
numbers, keys or fields changes (see ``make mutate``).
"""

from __future__ import annotations

import asyncio
import os
import socket
import time

import pytest
import redis.asyncio as aioredis

from flusher.claim import (
    STATE_BATCH_ID,
    STATE_CLAIMED_MS,
    STATE_FRAMES,
    Claimer,
    RedisWriteState,
    make_owner_id,
)
from oceanus.buffer import EventIds, Keys, encode_frame
from tests.support.servers import RedisServer

KEYS = Keys("t")


def _claimer(server: RedisServer, owner: str, ttl_s: float = 30.0, **kw: float) -> Claimer:
    return Claimer(aioredis.from_url(server.url), KEYS, owner, ttl_s, **kw)  # type: ignore[arg-type]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _seq(key: str) -> int:
    return int(key.rsplit(":", 1)[1])


def _items(n: int) -> list[bytes]:
    # The claim scripts never decode a frame: distinct items are enough, and
    # their order is checked one by one.
    return [b"frame-%05d" % i for i in range(n)]


def test_a_claim_larger_than_every_lua_slice_moves_every_frame_once_in_order(redis_server: RedisServer) -> None:
    n = 2_500  # two full Lua push slices (LUA_PUSH_SLICE) and a partial one
    items = _items(n + 3)
    client = redis_server.client()
    client.rpush(KEYS.queue("pv"), *items)

    async def scenario() -> None:
        c = _claimer(redis_server, "o1")
        claim = await c.claim("pv", n)
        assert claim is not None
        assert claim.frames == items[:n]
        assert await c.client.lrange(claim.key, 0, -1) == items[:n]
        assert await c.client.lrange(KEYS.queue("pv"), 0, -1) == items[n:]
        assert (await c.load_state(claim.key))[STATE_FRAMES] == str(n)
        rest = await c.claim("pv", 10)
        assert rest is not None
        assert rest.frames == items[n:]
        assert await c.claim("pv", 10) is None
        await c.client.aclose()

    asyncio.run(scenario())


@pytest.mark.parametrize("n", [1, 999, 1000, 1001, 2000, 2001])
def test_claims_at_the_slice_edges_lose_nothing(redis_server: RedisServer, n: int) -> None:
    items = _items(n)
    redis_server.client().rpush(KEYS.queue("pv"), *items)

    async def scenario() -> None:
        c = _claimer(redis_server, "o1")
        claim = await c.claim("pv", 5000)
        assert claim is not None
        assert claim.frames == items
        assert await c.client.lrange(claim.key, 0, -1) == items
        assert await c.client.exists(KEYS.queue("pv")) == 0
        await c.client.aclose()

    asyncio.run(scenario())


def test_a_claim_records_every_state_field_and_indexes_its_key(redis_server: RedisServer) -> None:
    redis_server.client().rpush(KEYS.queue("pv"), *_items(5))

    async def scenario() -> None:
        before = _now_ms()
        c = _claimer(redis_server, "owner-1")
        first = await c.claim("pv", 3)
        second = await c.claim("pv", 0)  # at least one frame, whatever the caller asks
        after = _now_ms()
        assert first is not None
        assert second is not None
        assert first.stream == "pv"
        assert not first.reclaimed
        # Sequence numbers start at the clock and count up by one per key.
        assert before + 1 <= _seq(first.key) <= after + 1
        assert _seq(second.key) == _seq(first.key) + 1
        assert first.key == KEYS.inflight("pv", "owner-1", _seq(first.key))
        assert first.batch_id == f"owner-1-{_seq(first.key)}"
        assert before <= first.claimed_ms <= after
        assert second.frames == [b"frame-00003"]
        assert await c.load_state(first.key) == {
            STATE_BATCH_ID: first.batch_id,
            STATE_CLAIMED_MS: str(first.claimed_ms),
            STATE_FRAMES: "3",
        }
        assert await c.client.smembers(KEYS.inflight_index("pv")) == {first.key.encode(), second.key.encode()}
        assert c.holds(first.key)
        assert c.holds(second.key)
        assert not c.holds(KEYS.inflight("pv", "owner-1", 1))
        await c.client.aclose()

    asyncio.run(scenario())


def test_a_reclaim_carries_every_state_field_over(redis_server: RedisServer) -> None:
    redis_server.client().rpush(KEYS.queue("pv"), *_items(4))

    async def scenario() -> None:
        dead, alive = _claimer(redis_server, "dead"), _claimer(redis_server, "alive")
        await alive.heartbeat()
        claim = await dead.claim("pv", 3)
        assert claim is not None
        RedisWriteState(redis_server.client(), KEYS.state(claim.key), {}).set(offset="42", job="j-1")
        state_before = await dead.load_state(claim.key)
        assert await alive.orphans("pv") == [claim.key]  # "dead" never beat
        again = await alive.reclaim("pv", claim.key)
        assert again is not None
        assert again.reclaimed
        assert again.stream == "pv"
        assert again.frames == claim.frames == _items(3)
        assert again.batch_id == claim.batch_id
        assert again.claimed_ms == claim.claimed_ms  # the lag is measured from the first claim
        assert again.key == KEYS.inflight("pv", "alive", _seq(again.key))
        assert (
            await alive.load_state(again.key)
            == state_before
            == {
                STATE_BATCH_ID: claim.batch_id,
                STATE_CLAIMED_MS: str(claim.claimed_ms),
                STATE_FRAMES: "3",
                "offset": "42",
                "job": "j-1",
            }
        )
        assert await alive.client.exists(claim.key, KEYS.state(claim.key)) == 0
        assert await alive.client.smembers(KEYS.inflight_index("pv")) == {again.key.encode()}
        assert alive.holds(again.key)
        assert await alive.client.lrange(KEYS.queue("pv"), 0, -1) == [b"frame-00003"]
        for c in (dead, alive):
            await c.client.aclose()

    asyncio.run(scenario())


def test_a_reclaim_without_a_state_hash_names_the_batch_after_the_orphan(redis_server: RedisServer) -> None:
    client = redis_server.client()
    orphan = KEYS.inflight("pv", "gone", 77)
    client.rpush(orphan, b"a", b"b")
    client.sadd(KEYS.inflight_index("pv"), orphan)

    async def scenario() -> None:
        c = _claimer(redis_server, "me")
        before = _now_ms()
        again = await c.reclaim("pv", orphan)
        after = _now_ms()
        assert again is not None
        assert again.frames == [b"a", b"b"]
        assert again.batch_id == "gone-77"
        assert before <= again.claimed_ms <= after
        assert await c.load_state(again.key) == {STATE_BATCH_ID: "gone-77"}
        await c.client.aclose()

    asyncio.run(scenario())


def test_a_vanished_orphan_is_unindexed_and_its_state_dropped(redis_server: RedisServer) -> None:
    client = redis_server.client()
    orphan = KEYS.inflight("pv", "gone", 5)
    client.sadd(KEYS.inflight_index("pv"), orphan)
    client.hset(KEYS.state(orphan), "offset", "1")

    async def scenario() -> None:
        c = _claimer(redis_server, "me")
        assert await c.reclaim("pv", orphan) is None
        assert not c.holds(orphan)
        await c.client.aclose()

    asyncio.run(scenario())
    assert client.keys("*") == []


def test_orphans_lists_own_unheld_keys_then_dead_owners_keys_sorted(redis_server: RedisServer) -> None:
    client = redis_server.client()
    keys = [KEYS.inflight("pv", o, s) for o, s in (("zed", 2), ("me", 9), ("alive", 1), ("amy", 3), ("me", 1))]
    client.sadd(KEYS.inflight_index("pv"), *keys)
    client.set(KEYS.shard_heartbeat("alive", "pv"), "1")
    client.set(KEYS.heartbeat("me"), "1")
    # Liveness is read in the shard's own slot: a process-wide heartbeat alone does not keep amy's key.
    client.set(KEYS.heartbeat("amy"), "1")

    async def scenario() -> None:
        c = _claimer(redis_server, "me")
        assert await c.orphans("pv") == [
            KEYS.inflight("pv", "me", 1),
            KEYS.inflight("pv", "me", 9),
            KEYS.inflight("pv", "amy", 3),
            KEYS.inflight("pv", "zed", 2),
        ]
        await c.client.aclose()

    asyncio.run(scenario())


def test_give_back_removes_the_key_its_state_and_its_index_entry(redis_server: RedisServer) -> None:
    items = _items(1500)  # past one Lua slice: the give-back loop has no slice
    client = redis_server.client()
    client.rpush(KEYS.queue("pv"), *items)

    async def scenario() -> None:
        c = _claimer(redis_server, "o1")
        claim = await c.claim("pv", 1200)
        assert claim is not None
        await c.client.hset(KEYS.state(claim.key), "offset", "0")
        assert await c.give_back(claim) == 1200
        assert not c.holds(claim.key)
        await c.client.aclose()

    asyncio.run(scenario())
    assert client.lrange(KEYS.queue("pv"), 0, -1) == items
    assert sorted(client.keys("*")) == [KEYS.queue("pv").encode()]


def test_finish_drops_the_claim_and_bounds_the_dead_letters(redis_server: RedisServer) -> None:
    client = redis_server.client()
    client.rpush(KEYS.queue("pv"), *_items(4))

    async def scenario() -> None:
        c = _claimer(redis_server, "o1", dead_letter_max=3, dead_letter_ttl_s=100.0)
        a, b = await c.claim("pv", 2), await c.claim("pv", 2)
        assert a is not None
        assert b is not None
        assert await c.finish(a, [b"d1", b"d2"])
        assert await c.finish(b, [b"d3", b"d4"])
        assert not c.holds(a.key)
        assert not c.holds(b.key)
        assert await c.client.lrange(KEYS.dead("pv"), 0, -1) == [b"d2", b"d3", b"d4"]
        assert 99 <= await c.client.ttl(KEYS.dead("pv")) <= 100
        # Already gone (re-claimed elsewhere): False, with or without dead letters.
        assert await c.finish(a) is False
        assert await c.finish(a, [b"d5"]) is False
        await c.client.aclose()

    asyncio.run(scenario())
    assert sorted(client.keys("*")) == [KEYS.dead("pv").encode()]


def test_finish_without_dead_letters_leaves_the_dead_list_alone(redis_server: RedisServer) -> None:
    client = redis_server.client()
    client.rpush(KEYS.queue("pv"), b"x")

    async def scenario() -> None:
        c = _claimer(redis_server, "o1")
        claim = await c.claim("pv", 1)
        assert claim is not None
        assert await c.finish(claim) is True
        await c.client.aclose()

    asyncio.run(scenario())
    assert client.keys("*") == []


def test_heartbeat_lives_exactly_its_ttl_and_names_the_process(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        c = _claimer(redis_server, "o1", ttl_s=2.5)
        assert c.heartbeat_ttl_ms == 2500
        await c.heartbeat()
        assert 2400 <= await c.client.pttl(KEYS.heartbeat("o1")) <= 2500
        assert await c.client.get(KEYS.heartbeat("o1")) == str(os.getpid()).encode()
        await c.drop_heartbeat()
        assert await c.client.exists(KEYS.heartbeat("o1")) == 0
        await c.client.aclose()

    asyncio.run(scenario())


def test_durations_round_to_at_least_one_unit() -> None:
    client = aioredis.Redis()  # never connects: the constructor only registers scripts
    c = Claimer(client, KEYS, "o", 0.0001, dead_letter_ttl_s=0.5, dead_letter_max=7)
    assert (c.heartbeat_ttl_ms, c.dead_letter_ttl_s, c.dead_letter_max) == (1, 1, 7)
    c = Claimer(client, KEYS, "o", 1.0019, dead_letter_ttl_s=86_400.9)
    assert (c.heartbeat_ttl_ms, c.dead_letter_ttl_s) == (1001, 86_400)


def _frame_at(ms: int) -> bytes:
    return encode_frame(["event_id", "n"], [[EventIds().new(ms * 1_000_000), 1]])


def test_oldest_inflight_frame_is_the_first_frame_of_the_oldest_batch(redis_server: RedisServer) -> None:
    client = redis_server.client()
    t0 = 1_780_000_000_000
    newer, older, oldest_other = _frame_at(t0 + 5000), _frame_at(t0), _frame_at(t0 + 1)
    for seq, frames in ((1, [newer, oldest_other]), (2, [older, newer]), (3, [])):
        key = KEYS.inflight("pv", "o", seq)
        if frames:
            client.rpush(key, *frames)
        client.sadd(KEYS.inflight_index("pv"), key)  # seq 3: indexed, its list already gone
    client.rpush(KEYS.inflight("pc", "o", 1), newer)
    client.sadd(KEYS.inflight_index("pc"), KEYS.inflight("pc", "o", 1))
    client.rpush(KEYS.inflight("bad", "o", 1), b"not a frame", older)
    client.rpush(KEYS.inflight("bad", "o", 2), newer)
    client.sadd(KEYS.inflight_index("bad"), KEYS.inflight("bad", "o", 1), KEYS.inflight("bad", "o", 2))

    async def scenario() -> None:
        c = _claimer(redis_server, "me")
        got = await c.oldest_inflight_frame(["pv", "pc", "none", "bad"])
        # An unreadable first frame sorts last: the lag gauge reads the readable one.
        assert got == {"pv": older, "pc": newer, "bad": newer}
        await c.client.aclose()

    asyncio.run(scenario())


def test_write_state_namespaces_children_and_writes_through(redis_server: RedisServer) -> None:
    client = redis_server.client()
    ws = RedisWriteState(client, "t:state:k", {STATE_BATCH_ID: "b", "x": "1"})
    assert ws.get("x") == "1"
    assert ws.get("y") is None
    child = ws.child("0")
    child.set(offset="5")
    grandchild = child.child("1")
    grandchild.set(offset="6")
    assert child.get("offset") == "5"
    assert grandchild.get("offset") == "6"
    assert ws.get("offset") is None
    assert client.hgetall("t:state:k") == {b"0/offset": b"5", b"0/1/offset": b"6"}
    assert ws.has_sink_state()
    assert not RedisWriteState(client, "t:state:k", {STATE_BATCH_ID: "b", STATE_FRAMES: "2"}).has_sink_state()
    assert RedisWriteState(client, "t:state:k", {STATE_BATCH_ID: "b", "0/offset": "2"}).has_sink_state()


def test_owner_ids_are_key_safe_and_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "pod:a b/" + "x" * 60)
    host, pid, rnd = make_owner_id().rsplit("-", 2)
    assert host == "pod-a-b-" + "x" * 32
    assert pid == str(os.getpid())
    assert len(rnd) == 6
    assert int(rnd, 16) >= 0
    monkeypatch.setattr(socket, "gethostname", lambda: "")
    assert make_owner_id().startswith("host-")
    monkeypatch.setattr(socket, "gethostname", lambda: "a.b_c-D9")
    assert make_owner_id().startswith("a.b_c-D9-")


def test_finish_is_one_transaction(redis_server: RedisServer) -> None:
    """The claim, its state, its index entry and its dead letters go together or not at all."""
    client = redis_server.client()
    client.rpush(KEYS.queue("pv"), b"a", b"b")

    async def scenario() -> None:
        c = _claimer(redis_server, "o1")
        claim = await c.claim("pv", 2)
        assert claim is not None
        await c.client.config_resetstat()
        assert await c.finish(claim, [b"dead"])
        stats = await c.client.info("commandstats")
        assert stats["cmdstat_multi"]["calls"] == 1
        assert stats["cmdstat_exec"]["calls"] == 1
        await c.client.aclose()

    asyncio.run(scenario())

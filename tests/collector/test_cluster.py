"""The cluster link against a real Redis Cluster (tests/support/cluster.py): slots, shares per master,
MOVED, ASK, a master killed, WAIT with a replica paused."""

from __future__ import annotations

import random
from typing import Any

import hiredis
import pytest

from collector.cluster import (
    ClusterLink,
    NotReplicated,
    command_key,
    key_slot,
    parse_url,
    split_commands,
)
from collector.resp import pack
from tests.support.cluster import ClusterNode, RedisCluster
from tests.support.servers import free_port

pytestmark = pytest.mark.anyio

#: Hash-tag edge cases: Redis hashes the part between the first "{" and the first "}" after it,
#: unless that part is empty or there is no such "}".
EDGE_KEYS = [
    b"",
    b"a",
    b"foo",
    b"123456789",
    b"{",
    b"}",
    b"{}",
    b"}{",
    b"{}{x}",
    b"x{",
    b"{x",
    b"x}y{z",
    b"}{a}",
    b"{a}",
    b"a{b}c",
    b"foo{}{bar}",
    b"foo{{bar}}zap",
    b"foo{bar}{zap}",
    b"{user1000}.following",
    b"{user1000}.followers",
    b"user1000",
    b"oceanus:q:{pageviews}:3",
    b"\x00\xff{\x80}",
    "é{ü}".encode(),
]


# -- without a server: slots, packed commands, URLs, settings ---------------------------------


def test_key_slot_pinned_values() -> None:
    # CRC16/XMODEM of "123456789" is 0x31C3 (the check value of the variant Redis uses).
    assert key_slot(b"123456789") == 0x31C3
    assert key_slot(b"foo") == 12182
    assert key_slot(b"") == 0
    assert key_slot(b"{user1000}.following") == key_slot(b"user1000") == key_slot(b"{user1000}.followers")
    # The first "{" and the first "}" after it; an empty tag means the whole key.
    assert key_slot(b"foo{}{bar}") == 8363
    assert key_slot(b"foo{{bar}}zap") == key_slot(b"{bar")
    assert key_slot(b"foo{bar}{zap}") == key_slot(b"bar")
    assert key_slot(b"a{b}c") == key_slot(b"b") == 3300
    assert key_slot(b"}{a}") == key_slot(b"a")
    assert key_slot(b"{}") == 15257  # the whole key, braces and all
    # Every slot is below 16384.
    assert max(key_slot(bytes([i, j])) for i in range(256) for j in range(0, 256, 7)) < 16384


def test_split_commands_and_their_keys() -> None:
    a, b, c = pack("RPUSH", "q:{s}", b"\r\n$5\r\n"), pack("EXPIRE", b"k", 60), pack("LTRIM", "e", 0, -1)
    assert split_commands(a + b + c, 3) == [a, b, c]
    assert [command_key(x) for x in (a, b, c)] == [b"q:{s}", b"k", b"e"]
    with pytest.raises(ValueError, match="3 bytes left after 1 commands"):
        split_commands(pack("PING") + b"xyz", 1)
    with pytest.raises(ValueError, match="not a packed command at byte 0"):
        split_commands(b"PING\r\n", 1)
    with pytest.raises(ValueError, match="needs a key in every command"):
        command_key(pack("PING"))


def test_cluster_urls() -> None:
    assert parse_url("redis+cluster://h1:7000,h2:7001") == ([("h1", 7000), ("h2", 7001)], None, None, False)
    assert parse_url("rediss+cluster://u%40x:p%3Aw@h1:7000/") == ([("h1", 7000)], "u@x", "p:w", True)
    assert parse_url("redis+cluster://:secret@[::1]:7000,10.0.0.2:7002/0") == (
        [("::1", 7000), ("10.0.0.2", 7002)],
        None,
        "secret",
        False,
    )
    with pytest.raises(ValueError, match=r"starts with redis\+cluster://"):
        parse_url("redis://h1:7000")
    with pytest.raises(ValueError, match="no database"):
        parse_url("redis+cluster://h1:7000/3")
    with pytest.raises(ValueError, match="no database, path or options"):
        parse_url("redis+cluster://h1:7000?socket_timeout=3")
    with pytest.raises(ValueError, match="expected host:port, got 'h1'"):
        parse_url("redis+cluster://h1,h2:7000")
    with pytest.raises(ValueError, match="no host:port"):
        parse_url("redis+cluster://")


def test_wait_settings_are_checked() -> None:
    with pytest.raises(
        ValueError, match=r"^wait_timeout_ms: must be above 0 and below redis\.timeout_s \(2 s\), got 0$"
    ):
        ClusterLink([("127.0.0.1", 1)], 2.0, wait_replicas=1)
    with pytest.raises(ValueError, match=r"^wait_timeout_ms: .* got 2000$"):
        ClusterLink([("127.0.0.1", 1)], 2.0, wait_replicas=1, wait_timeout_ms=2000)
    with pytest.raises(ValueError, match=r"^wait_replicas: must be 0 or more, got -1$"):
        ClusterLink([("127.0.0.1", 1)], 2.0, wait_replicas=-1)
    with pytest.raises(ValueError, match="at least one seed"):
        ClusterLink([], 2.0)
    ClusterLink([("127.0.0.1", 1)], 2.0, wait_replicas=1, wait_timeout_ms=1999).close()


async def test_no_seed_answers_and_the_round_raises() -> None:
    link = ClusterLink([("127.0.0.1", free_port()), ("127.0.0.1", free_port())], 0.5)
    try:
        assert await link.round([]) == []  # an empty round reaches no node, so it cannot fail
        with pytest.raises(ConnectionError, match="no cluster node answered CLUSTER SHARDS"):
            await link.round([pack("RPUSH", "q", b"f")])
    finally:
        link.close()


# -- a real cluster ---------------------------------------------------------------------------


def lrange(node: ClusterNode, key: str | bytes, asking: bool = False) -> list[bytes]:
    return list(node.command("LRANGE", key, 0, -1, asking=asking))


def test_key_slot_is_cluster_keyslot(redis_cluster: RedisCluster) -> None:
    rng = random.Random(7)
    keys = EDGE_KEYS + [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 24))) for _ in range(300)]
    keys += [
        b"".join(rng.choice([b"{", b"}", b"a", b"b", b"\x00"]) for _ in range(rng.randrange(1, 9))) for _ in range(300)
    ]
    node = redis_cluster.masters()[0]
    for key in keys:
        assert key_slot(key) == node.command("CLUSTER", "KEYSLOT", key), key


async def test_a_round_over_every_master_lands_every_item_in_order(redis_cluster: RedisCluster) -> None:
    masters = redis_cluster.masters()
    assert len(masters) == 3
    keys = [redis_cluster.key_on(m, prefix=f"q{i}:") for i, m in enumerate(masters)]
    # Interleaved, three frames per key, so each master's share has the round's order to keep.
    commands = [pack("RPUSH", keys[i % 3], b"f%d" % n) for n, i in enumerate(range(9))]
    commands.append(pack("HINCRBY", "stats:{" + keys[1] + "}", "accepted", 5))
    link = ClusterLink(redis_cluster.url, 2.0)
    try:
        assert await link.round(commands) == [1, 1, 1, 2, 2, 2, 3, 3, 3, 5]
        # call() is RedisLink's signature over the same round.
        assert await link.call(b"".join(commands[:3]), 3) == [4, 4, 4]
        assert {link.node_for(k.encode()) for k in keys} == {("127.0.0.1", m.port) for m in masters}
    finally:
        link.close()
    for i, (key, master) in enumerate(zip(keys, masters, strict=True)):
        assert lrange(master, key) == [b"f%d" % n for n in (i, i + 3, i + 6, i)]


async def test_an_error_reply_stays_in_its_place(redis_cluster: RedisCluster) -> None:
    a, b = redis_cluster.masters()[:2]
    ka, kb = redis_cluster.key_on(a), redis_cluster.key_on(b)
    a.command("SET", ka, "not a list")
    link = ClusterLink(redis_cluster.url, 2.0)
    try:
        results = await link.round([pack("RPUSH", ka, b"x"), pack("RPUSH", kb, b"y")])
    finally:
        link.close()
    assert isinstance(results[0], hiredis.ReplyError)
    assert str(results[0]).startswith("WRONGTYPE")
    assert results[1] == 1


async def test_moved_after_a_slot_migration_is_retried_there(redis_cluster: RedisCluster) -> None:
    masters = redis_cluster.masters()
    key = redis_cluster.key_on(masters[0])
    other = redis_cluster.key_on(masters[1])
    slot = redis_cluster.slot_of(key)
    link = ClusterLink(redis_cluster.url, 2.0)
    try:
        assert await link.round([pack("RPUSH", key, b"a"), pack("RPUSH", other, b"o")]) == [1, 1]
        target = masters[2]
        redis_cluster.migrate_slot(slot, target)
        # The link still sends the key to masters[0], which answers MOVED: the map is reloaded and
        # the command sent to the target; the other master's command is untouched.
        assert link.node_for(key.encode()) == ("127.0.0.1", masters[0].port)
        assert await link.round([pack("RPUSH", key, b"b"), pack("RPUSH", other, b"p"), pack("RPUSH", key, b"c")]) == [
            2,
            2,
            3,
        ]
        assert link.node_for(key.encode()) == ("127.0.0.1", target.port)
    finally:
        link.close()
    assert lrange(target, key) == [b"a", b"b", b"c"]
    assert lrange(masters[1], other) == [b"o", b"p"]


async def test_ask_during_a_migration_goes_to_the_target_with_asking(redis_cluster: RedisCluster) -> None:
    masters = redis_cluster.masters()
    source, target = masters[0], masters[1]
    there = redis_cluster.key_on(source, prefix="there")
    slot = redis_cluster.slot_of(there)
    # A key of the same slot that is not on the source yet: the source answers ASK for it.
    fresh = "{" + there + "}:new"
    link = ClusterLink(redis_cluster.url, 2.0)
    try:
        assert await link.round([pack("RPUSH", there, b"1")]) == [1]
        redis_cluster.begin_migration(slot, target)
        try:
            results = await link.round(
                [pack("RPUSH", there, b"2"), pack("RPUSH", fresh, b"a"), pack("RPUSH", fresh, b"b")]
            )
            assert results == [2, 1, 2]
            # ASK does not move the slot in the map: it is the source's until the migration ends.
            assert link.node_for(fresh.encode()) == ("127.0.0.1", source.port)
            assert lrange(source, there) == [b"1", b"2"]
            assert source.command("CLUSTER", "COUNTKEYSINSLOT", slot) == 1  # "there" only
            assert lrange(target, fresh, asking=True) == [b"a", b"b"]
        finally:
            redis_cluster.finish_migration(slot, source, target)
    finally:
        link.close()
    assert lrange(target, there) == [b"1", b"2"]


async def test_a_killed_master_fails_only_its_share_until_its_replica_is_promoted(redis_cluster: RedisCluster) -> None:
    masters = redis_cluster.masters()
    victim = masters[1]
    keys = [redis_cluster.key_on(m) for m in masters]
    link = ClusterLink(redis_cluster.url, 1.0)
    try:
        assert await link.round([pack("RPUSH", k, b"0") for k in keys]) == [1, 1, 1]
        replica = redis_cluster.kill_master(victim, wait=False)
        results = await link.round([pack("RPUSH", k, b"1") for k in keys])
        assert results[0] == 2
        assert results[2] == 2
        assert isinstance(results[1], ConnectionError)
        # A round that only the dead master would serve fails whole, as RedisLink's does.
        with pytest.raises(ConnectionError):
            await link.round([pack("RPUSH", keys[1], b"x")])

        redis_cluster.wait_promoted(replica)
        # The next round reloads the map (a node was lost) and reaches the promoted replica.
        assert await link.round([pack("RPUSH", k, b"2") for k in keys]) == [3, 2, 3]
        assert link.node_for(keys[1].encode()) == ("127.0.0.1", replica.port)
    finally:
        link.close()
        if not victim.alive:
            redis_cluster.restart(victim)
    assert lrange(replica, keys[1]) == [b"0", b"2"]


async def test_wait_one_replica(redis_cluster: RedisCluster) -> None:
    masters = redis_cluster.masters()
    keys = [redis_cluster.key_on(m) for m in masters]
    link = ClusterLink(redis_cluster.url, 2.0, wait_replicas=1, wait_timeout_ms=500)
    try:
        assert await link.round([pack("RPUSH", k, b"a") for k in keys]) == [1, 1, 1]
        replica = redis_cluster.replica_of(masters[0])
        with redis_cluster.paused(replica):
            results: list[Any] = await link.round([pack("RPUSH", k, b"b") for k in keys])
            assert results[1:] == [2, 2]
            assert isinstance(results[0], NotReplicated)
            assert str(results[0]) == f"127.0.0.1:{masters[0].port}: 0 of 1 replica(s) acknowledged in time"
        # Applied all the same: a frame spooled for want of a replica may also be in Redis.
        assert lrange(masters[0], keys[0]) == [b"a", b"b"]
        assert await link.round([pack("RPUSH", k, b"c") for k in keys]) == [3, 3, 3]
    finally:
        link.close()

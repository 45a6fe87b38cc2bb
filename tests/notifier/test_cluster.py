"""The notifier on a real Redis Cluster: taps, evaluates and delivers (log channels) from shards
on three masters, a threshold writing the jobs of two channels in one script."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import msgspec
import redis.cluster

from notifier.keys import NotifyKeys
from oceanus import config
from oceanus.buffer import Keys
from tests.notifier.support import make_config, pageview, push
from tests.notifier.test_notifier import run_until
from tests.support.cluster import RedisCluster

#: Enough shards that some sit on each of the three masters whatever the slot layout.
SHARDS = 8


def _channels_and_rules(a: Path, b: Path) -> str:
    return f"""
[channels.loga]
kind = "log"
path = "{a}"
[channels.logb]
kind = "log"
path = "{b}"
[rules.paid]
stream = "pageview"
conditions = [{{ field = "evt", eq = "paid" }}]
template = "paid {{uid}}"
channels = ["loga"]
rate_limit = {{ max = 1000, per_s = 60.0 }}
[rules.burst]
stream = "pageview"
conditions = [{{ field = "evt", eq = "search_not_found" }}]
threshold = {{ count = 5, window_s = 600.0, group_by = "sid" }}
template = "{{count}} in {{window_s}} s for {{group}}"
channels = ["loga", "logb"]
"""


def _lines(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def test_the_notifier_taps_every_shard_and_delivers_once_on_a_cluster(
    redis_cluster: RedisCluster, tmp_path: Path
) -> None:
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    cfg, _ = make_config(redis_cluster.url, _channels_and_rules(a, b))
    pageview_cfg = msgspec.structs.replace(cfg.streams["pageview"], shards=SHARDS)
    cfg = msgspec.structs.replace(cfg, streams={**cfg.streams, "pageview": pageview_cfg})
    assert cfg.redis.cluster
    keys = Keys(cfg.redis.key_prefix)
    masters = {redis_cluster.node_for_key(keys.queue("pageview", s)).port for s in range(SHARDS)}
    assert len(masters) == 3
    host, port = redis_cluster.addresses[0].split(":")
    client = redis.cluster.RedisCluster(host=host, port=int(port))
    expected: set[str] = set()
    try:
        for i in range(3 * SHARDS):
            events = [pageview("paid" if j % 2 == 0 else "view", uid=f"u{i}-{j}") for j in range(4)]
            ids = push(client, cfg, "pageview", events, keys.queue("pageview", i % SHARDS))  # type: ignore[arg-type]
            expected |= {f"paid:loga:{eid}" for j, eid in enumerate(ids) if j % 2 == 0}
        # Twelve misses of one group, spread over shards: the fifth fires, once, on both channels.
        for i in range(12):
            push(client, cfg, "pageview", [pageview("search_not_found", sid="aa")], keys.queue("pageview", i % SHARDS))  # type: ignore[arg-type]
        want_a, want_b = len(expected) + 1, 1
        asyncio.run(run_until(cfg, lambda: len(_lines(a)) >= want_a and len(_lines(b)) >= want_b, timeout_s=60))
        got_a, got_b = _lines(a), _lines(b)
        assert len(expected) == 48
        assert sorted(x["id"] for x in got_a if x["notify"] == "paid") == sorted(expected)  # each once
        assert [x["notify"] for x in got_a if x["notify"] != "paid"] == ["burst"]
        assert [x["notify"] for x in got_b] == ["burst"]
        assert got_b[0]["message"] == "5 in 600 s for aa"
        # The delivery keys share the one tag: the threshold's window, mark and both job lists in one slot.
        nkeys = NotifyKeys(cfg.redis.key_prefix, cluster=True)
        slots = {
            redis_cluster.slot_of(k)
            for k in (
                nkeys.jobs("loga"),
                nkeys.jobs("logb"),
                nkeys.sending("loga", "x"),
                nkeys.sending_index("loga"),
                nkeys.threshold("burst", "aa"),
                nkeys.fired("burst", "aa"),
                nkeys.sent("paid:loga:1"),
            )
        }
        assert len(slots) == 1
        assert client.exists(nkeys.fired("burst", "aa")) == 1
        assert client.exists(nkeys.sent(sorted(expected)[0])) == 1
        # Every shard's frames were tapped and evaluated: no frame left in a notify queue or in flight.
        for s in range(SHARDS):
            assert client.llen(nkeys.claim.queue("pageview", s)) == 0
            assert client.scard(nkeys.claim.inflight_index("pageview", s)) == 0
            assert int(client.get(keys.notify_tapped("pageview", s)) or 0) == client.llen(keys.queue("pageview", s))
    finally:
        client.close()


def test_one_instance_keeps_the_untagged_delivery_keys() -> None:
    single, cluster = NotifyKeys("oceanus"), NotifyKeys("oceanus", cluster=True)
    assert (single.jobs("c"), single.sent("j"), single.recent()) == (
        "oceanus:notify:jobs:c",
        "oceanus:notify:sent:j",
        "oceanus:notify:recent",
    )
    assert (cluster.jobs("c"), cluster.sent("j"), cluster.recent()) == (
        "oceanus:notify:{notify}:jobs:c",
        "oceanus:notify:{notify}:sent:j",
        "oceanus:notify:recent",
    )
    # The claim namespace is the same either way (its keys carry the shards' own tags).
    assert single.claim.queue("pv", 2) == cluster.claim.queue("pv", 2) == "oceanus:notify:q:{pv~2}"
    assert config.RedisConfig(url="redis+cluster://h:1").cluster


def test_deliveries_go_on_after_the_master_of_the_delivery_keys_is_killed(
    redis_cluster: RedisCluster, tmp_path: Path
) -> None:
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    cfg, _ = make_config(redis_cluster.url, _channels_and_rules(a, b))
    keys, nkeys = Keys(cfg.redis.key_prefix), NotifyKeys(cfg.redis.key_prefix, cluster=True)
    victim = redis_cluster.node_for_key(nkeys.jobs("loga"))
    host, port = redis_cluster.addresses[0].split(":")
    expected: set[str] = set()
    killed = []

    def push_paid(n: int, start: int) -> None:
        client = redis.cluster.RedisCluster(host=host, port=int(port))
        try:
            for i in range(start, start + n):
                ids = push(client, cfg, "pageview", [pageview("paid", uid=f"u{i}")], keys.queue("pageview"))  # type: ignore[arg-type]
                expected.add(f"paid:loga:{ids[0]}")
        finally:
            client.close()

    async def scenario() -> None:
        push_paid(10, 0)

        async def kill_then_push() -> None:
            while len(_lines(a)) < 10:
                await asyncio.sleep(0.02)
            await asyncio.to_thread(redis_cluster.kill_master, victim)
            killed.append(victim)
            push_paid(10, 10)

        pusher = asyncio.create_task(kill_then_push())
        await run_until(cfg, lambda: len({x["id"] for x in _lines(a)}) >= 20, timeout_s=60)
        await pusher

    try:
        asyncio.run(scenario())
    finally:
        for node in killed:
            redis_cluster.restart(node)
    got = [x["id"] for x in _lines(a)]
    assert killed
    assert set(got) == expected
    # At most the one job in flight at the kill is sent twice (its delivery key may be lost with the master).
    assert len(got) - len(set(got)) <= 1

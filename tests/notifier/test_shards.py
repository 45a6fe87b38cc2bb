"""The notifier over a stream of four shards, and over keys of the layout before hash tags."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from notifier.keys import NotifyKeys
from oceanus import config
from oceanus.buffer import Keys
from tests.notifier.receivers import Receiver, http_receiver
from tests.notifier.support import make_config, pageview, push
from tests.notifier.test_notifier import SECRET, hook, run_until
from tests.support.servers import RedisServer

SHARDS = 4
RULE = """
[rules.paid]
stream = "pageview"
conditions = [{ field = "evt", eq = "paid" }]
template = "paid {uid}"
channels = ["hook"]
rate_limit = { max = 1000, per_s = 60.0 }
"""


def _sharded(cfg: config.Config) -> config.Config:
    pageview = msgspec.structs.replace(cfg.streams["pageview"], shards=SHARDS)
    return msgspec.structs.replace(cfg, streams={**cfg.streams, "pageview": pageview})


def test_every_matched_event_of_every_shard_is_delivered_once(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("T_HOOK_SECRET", SECRET)
    with http_receiver(Receiver(secret=SECRET.encode())) as rx:
        cfg, _ = make_config(redis_server.url, hook(rx.url) + RULE)
        cfg = _sharded(cfg)
        keys = Keys(cfg.redis.key_prefix)
        client = redis_server.client()
        expected: set[str] = set()
        for i in range(5 * SHARDS):
            events = [pageview("paid" if j % 2 == 0 else "view", uid=f"u{i}-{j}") for j in range(4)]
            ids = push(client, cfg, "pageview", events, keys.queue("pageview", i % SHARDS))
            expected |= {f"paid:hook:{eid}" for j, eid in enumerate(ids) if j % 2 == 0}
        asyncio.run(run_until(cfg, lambda: len(rx.posts) >= len(expected)))
    assert len(expected) == 40
    assert sorted(rx.ids()) == sorted(expected)  # every one, none twice
    nkeys = NotifyKeys(cfg.redis.key_prefix)
    for shard in range(SHARDS):
        # Each shard tapped to its end (no flusher took anything), its notify queue drained.
        assert client.get(keys.notify_tapped("pageview", shard)) == b"5"
        assert client.llen(nkeys.claim.queue("pageview", shard)) == 0
        assert client.scard(nkeys.claim.inflight_index("pageview", shard)) == 0


def test_a_notifier_delivers_what_the_old_layout_held_once(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Old keys: the event queue, part of it tapped into the old notify queue, and a batch
    an old notifier was evaluating when it stopped."""
    monkeypatch.setenv("T_HOOK_SECRET", SECRET)
    with http_receiver(Receiver(secret=SECRET.encode())) as rx:
        cfg, _ = make_config(redis_server.url, hook(rx.url) + RULE)
        keys, nkeys = Keys(cfg.redis.key_prefix), NotifyKeys(cfg.redis.key_prefix)
        client = redis_server.client()
        expected: set[str] = set()

        def frame(i: int, key: str) -> None:
            ids = push(client, cfg, "pageview", [pageview("paid", uid=f"u{i}")], key)
            expected.add(f"paid:hook:{ids[0]}")

        for i in range(6):
            frame(i, keys.legacy_queue("pageview"))
        # The old tap had copied the first two.
        for item in client.lrange(keys.legacy_queue("pageview"), 0, 1):
            client.rpush(keys.legacy_notify_queue("pageview"), item)
        client.set(keys.legacy_notify_tapped("pageview"), 2)
        # An old notifier's batch, its owner gone (no heartbeat).
        orphan = nkeys.claim.legacy_inflight("pageview", "oldnotifier-1-abc", 5)
        frame(100, orphan)
        client.sadd(nkeys.claim.legacy_inflight_index("pageview"), orphan)
        asyncio.run(run_until(cfg, lambda: len(rx.posts) >= len(expected)))
    assert len(expected) == 7
    assert sorted(rx.ids()) == sorted(expected)  # every one, none twice
    assert client.exists(keys.legacy_queue("pageview"), keys.legacy_notify_queue("pageview"), orphan) == 0
    assert client.llen(keys.queue("pageview")) == 6  # the flusher's, still: the notifier only copies
    assert client.get(keys.notify_tapped("pageview")) == b"6"

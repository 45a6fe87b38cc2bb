"""Keys of the layout before hash tags are moved into shard 0, and nothing buffered is lost."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import time
from collections import Counter
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from flusher import upgrade
from flusher.batch import dead_row
from flusher.claim import STATE_BATCH_ID, STATE_CLAIMED_MS, STATE_FRAMES
from flusher.runner import Flusher
from flusher.sinks.duckdb import DuckDBSink
from flusher.upgrade import Upgrade
from oceanus import config
from oceanus.buffer import Keys, encode_frame
from oceanus.commands import dead as dead_command
from tests.flusher.helpers import RecordingSink, make_config_text, make_rows
from tests.flusher.test_runner import until
from tests.support.servers import RedisServer

PREFIX = "t"
KEYS = Keys(PREFIX)


def _run(server: RedisServer, scenario):  # type: ignore[no-untyped-def]
    async def main() -> None:
        client = aioredis.from_url(server.url)
        try:
            await scenario(client)
        finally:
            await client.aclose()

    asyncio.run(main())


def test_the_old_queue_goes_ahead_of_shard_0_with_the_tap_counters_merged(redis_server: RedisServer) -> None:
    client = redis_server.client()
    client.rpush(KEYS.legacy_queue("pv"), b"o0", b"o1", b"o2", b"o3", b"o4")
    client.set(KEYS.legacy_notify_tapped("pv"), 3)
    client.rpush(KEYS.legacy_notify_queue("pv"), b"o0", b"o1", b"o2")
    client.rpush(KEYS.queue("pv"), b"n0", b"n1")
    client.set(KEYS.notify_tapped("pv"), 2)
    client.rpush(KEYS.notify_queue("pv"), b"n0", b"n1")
    client.rpush(KEYS.legacy_dead("pv"), b"d0", b"d1")
    client.expire(KEYS.legacy_dead("pv"), 500)
    client.rpush(KEYS.dead("pv"), b"d2")
    client.expire(KEYS.dead("pv"), 100)

    async def scenario(c: aioredis.Redis) -> None:
        up = Upgrade(c, PREFIX, ["pv"], [KEYS])
        assert await up.run() == 5
        assert await up.run() == 0  # nothing left: one EXISTS, nothing moved

    _run(redis_server, scenario)
    assert client.lrange(KEYS.queue("pv"), 0, -1) == [b"o0", b"o1", b"o2", b"o3", b"o4", b"n0", b"n1"]
    # o3, o4 were never copied: only the head o0..o2 counts (n0, n1 are copied a second time).
    assert client.get(KEYS.notify_tapped("pv")) == b"3"
    assert client.lrange(KEYS.notify_queue("pv"), 0, -1) == [b"n0", b"n1", b"o0", b"o1", b"o2"]
    assert client.lrange(KEYS.dead("pv"), 0, -1) == [b"d0", b"d1", b"d2"]
    assert 499 <= client.ttl(KEYS.dead("pv")) <= 500  # the longer of the two
    assert sorted(client.keys("*")) == sorted(
        k.encode() for k in (KEYS.queue("pv"), KEYS.notify_tapped("pv"), KEYS.notify_queue("pv"), KEYS.dead("pv"))
    )


def test_a_fully_tapped_old_queue_keeps_the_new_counter_and_moves_in_slices(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(upgrade, "MOVE_MAX_FRAMES", 2)
    client = redis_server.client()
    old = [b"o%d" % i for i in range(5)]
    client.rpush(KEYS.legacy_queue("pv"), *old)
    client.set(KEYS.legacy_notify_tapped("pv"), 5)
    client.rpush(KEYS.queue("pv"), b"n0", b"n1", b"n2")
    client.set(KEYS.notify_tapped("pv"), 2)

    async def scenario(c: aioredis.Redis) -> None:
        assert await Upgrade(c, PREFIX, ["pv"], [KEYS]).run() == 5

    _run(redis_server, scenario)
    assert client.lrange(KEYS.queue("pv"), 0, -1) == [*old, b"n0", b"n1", b"n2"]
    assert client.get(KEYS.notify_tapped("pv")) == b"7"
    assert client.exists(KEYS.legacy_queue("pv"), KEYS.legacy_notify_tapped("pv")) == 0


def test_an_empty_shard_0_takes_the_old_keys_whole(redis_server: RedisServer) -> None:
    client = redis_server.client()
    client.rpush(KEYS.legacy_queue("pv"), b"o0", b"o1", b"o2")
    client.set(KEYS.legacy_notify_tapped("pv"), 1)
    client.rpush(KEYS.legacy_dead("pv"), b"d0")
    client.expire(KEYS.legacy_dead("pv"), 300)

    async def scenario(c: aioredis.Redis) -> None:
        assert await Upgrade(c, PREFIX, ["pv"], [KEYS]).run() == 3

    _run(redis_server, scenario)
    assert client.lrange(KEYS.queue("pv"), 0, -1) == [b"o0", b"o1", b"o2"]
    assert client.get(KEYS.notify_tapped("pv")) == b"1"
    assert client.lrange(KEYS.dead("pv"), 0, -1) == [b"d0"]
    assert 299 <= client.ttl(KEYS.dead("pv")) <= 300
    assert len(client.keys("*")) == 3


def test_an_old_batch_is_adopted_only_once_its_owner_is_gone(redis_server: RedisServer) -> None:
    client = redis_server.client()
    old = KEYS.legacy_inflight("pv", "ghost", 12)
    client.rpush(old, b"a", b"b")
    client.sadd(KEYS.legacy_inflight_index("pv"), old)
    client.hset(KEYS.state(old), mapping={STATE_BATCH_ID: "ghost-12", "offset": "7"})
    client.set(KEYS.heartbeat("ghost"), "1")  # an old flusher, still running

    async def scenario(c: aioredis.Redis) -> None:
        up = Upgrade(c, PREFIX, ["pv"], [KEYS])
        assert await up.run() == 0
        assert await c.exists(old) == 1
        await c.delete(KEYS.heartbeat("ghost"))
        assert await up.run() == 1

    _run(redis_server, scenario)
    new = KEYS.inflight("pv", "ghost", 12)
    assert client.lrange(new, 0, -1) == [b"a", b"b"]
    assert client.hgetall(KEYS.state(new)) == {STATE_BATCH_ID.encode(): b"ghost-12", b"offset": b"7"}
    assert client.smembers(KEYS.inflight_index("pv")) == {new.encode()}
    assert sorted(client.keys("*")) == sorted(k.encode() for k in (new, KEYS.state(new), KEYS.inflight_index("pv")))


def test_a_new_flusher_drains_every_old_frame_batch_and_late_push_once(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    text = make_config_text(redis_server.url, tmp_path / "w.duckdb").replace(
        "[redis]\n", f'[redis]\nkey_prefix = "{PREFIX}"\n'
    )
    (tmp_path / "oceanus.toml").write_text(text)
    cfg = config.loads(text)
    stream = cfg.streams["pv"]
    client = redis_server.client()
    ids: list[str] = []

    def frames(n: int, start: int) -> list[bytes]:
        out = []
        for f in range(n):
            rows = make_rows(stream, 3, start + 3 * f)
            ids.extend(r[0].hex() for r in rows)
            out.append(encode_frame(stream.columns, rows))
        return out

    # What a Redis of the old layout holds: a queue, a batch of a flusher killed mid-write, dead letters.
    client.rpush(KEYS.legacy_queue("pv"), *frames(6, 0))
    orphan = KEYS.legacy_inflight("pv", "oldhost-1-abc", 1_780_000_000_000)
    client.rpush(orphan, *frames(2, 100))
    client.sadd(KEYS.legacy_inflight_index("pv"), orphan)
    client.hset(KEYS.state(orphan), mapping={STATE_BATCH_ID: "oldhost-1-abc-1", STATE_CLAIMED_MS: 1, STATE_FRAMES: 2})
    row = make_rows(stream, 1, 900)[0]
    client.rpush(KEYS.legacy_dead("pv"), dead_row("pv", "refused: old", stream.columns, row))
    sink = RecordingSink(DuckDBSink(cfg))

    async def main() -> None:
        f = Flusher(cfg, sink)
        task = asyncio.create_task(f.run())
        try:
            await until(lambda: _drained(f, len(ids)), "old queue and orphan written")
            # An old collector, still running during the rolling update, pushes to the old queue.
            client.rpush(KEYS.legacy_queue("pv"), *frames(2, 200))
            await until(lambda: _drained(f, len(ids)), "the late old-layout push written", timeout=20)
        finally:
            f.stopping.set()
            assert await asyncio.wait_for(task, 30)
            await f.close()

    async def _drained(f: Flusher, n: int) -> bool:
        return sum(sink.written.values()) >= n and not await f.aredis.exists(
            KEYS.legacy_queue("pv"), KEYS.queue("pv"), KEYS.inflight_index("pv"), KEYS.legacy_inflight_index("pv")
        )

    t0 = time.monotonic()
    asyncio.run(main())
    assert len(ids) == 3 * (6 + 2 + 2)
    assert sink.written == Counter(ids)  # every row once, none twice
    assert time.monotonic() - t0 < 30
    assert client.exists(orphan, KEYS.state(orphan)) == 0
    # The old dead letters are read (and replayed) by the commands of this version.
    out = io.StringIO()
    args = argparse.Namespace(config=str(tmp_path / "oceanus.toml"), stream="pv", action="list", limit=10)
    with contextlib.redirect_stdout(out):
        assert dead_command.main(args) == 0
    assert out.getvalue().startswith("pv: 1 dead letter(s)\n  refused: old\n")
    assert row[0].hex() in out.getvalue()

"""Shard leases (flusher/leases.py): one flusher per shard at a time, shares rebalanced as flushers
join and die, a dead or paused flusher's batches written once by the shard's next holder.

The multi-flusher tests run real :class:`Flusher` runners, each on an event loop of its own in a
thread of its own, so that one can be frozen the way SIGSTOP or a kill would freeze it (its loop
blocked: no heartbeat, no lease renewal, no claim) while the others go on.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest
import redis
import redis.asyncio as aioredis
import redis.asyncio.cluster as aiocluster

from flusher.claim import Claimer, LeaseLost
from flusher.leases import ShardLeases, lease_holders, share
from flusher.runner import Flusher
from flusher.sinks.base import Batch, WriteResult, WriteState
from flusher.sinks.duckdb import DuckDBSink
from oceanus.buffer import Keys, encode_frame
from oceanus.config import Config, StreamConfig
from oceanus.errors import SinkError
from tests.flusher.helpers import STREAMS_TOML, RecordingSink, make_config, make_rows
from tests.support.cluster import RedisCluster
from tests.support.servers import RedisServer

TTL_S = 1.0
DEADLINE_S = 30.0


def _streams(shards: int) -> str:
    return STREAMS_TOML.replace("[streams.pv]\n", f"[streams.pv]\nshards = {shards}\n", 1)


def _push(client: redis.Redis, keys: Keys, stream: StreamConfig, shard: int, frames: int, rows: int) -> list[str]:
    ids: list[str] = []
    items = []
    for _ in range(frames):
        batch = make_rows(stream, rows)
        ids += [r[0].hex() for r in batch]
        items.append(encode_frame(stream.columns, batch))
    client.rpush(keys.queue(stream.name, shard), *items)
    return ids


def _wait(check: Callable[[], bool], what: str, timeout: float = DEADLINE_S) -> float:
    """Poll ``check`` until true; returns the seconds it took."""
    t0 = time.monotonic()
    while not check():
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)
    return time.monotonic() - t0


class Gated(RecordingSink):
    """A recording sink whose writes (``stall_write``) or preparations (``stall_prepare``) block
    until ``gate`` opens; ``entered`` tells that one is blocked. With ``fail`` set, the blocked
    write ends in a retryable error instead of writing (the process died before the warehouse
    had the rows)."""

    def __init__(self, inner: Any, stall_write: bool = False, stall_prepare: bool = False) -> None:
        super().__init__(inner, owns=False)
        self.stall_write = stall_write
        self.stall_prepare = stall_prepare
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.fail = False
        #: Event ids of every batch handed to write or prepare, written or not.
        self.seen: set[str] = set()

    def prepare(self, batch: Batch) -> Batch:
        self._see(batch)
        if self.stall_prepare and not self.gate.is_set():
            self.entered.set()
            assert self.gate.wait(DEADLINE_S), "the test never opened the gate"
        return batch

    def write(self, batch: Batch, state: WriteState) -> WriteResult:
        self._see(batch)
        if self.stall_write and not self.gate.is_set():
            self.entered.set()
            assert self.gate.wait(DEADLINE_S), "the test never opened the gate"
            if self.fail:
                raise SinkError("the process died mid-write (injected)", retryable=True)
        result: WriteResult = super().write(batch, state)
        return result

    def _see(self, batch: Batch) -> None:
        at = batch.columns.index("event_id")
        self.seen.update(row[at].hex() for row in batch.rows)


class Runner:
    """One flusher on an event loop of its own, in a thread of its own."""

    def __init__(self, cfg: Config, sink: Gated) -> None:
        self.sink = sink
        self.flusher = Flusher(cfg, sink)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thawed = threading.Event()
        self.clean: bool | None = None
        self.thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)
        self.thread.start()
        _wait(lambda: self.loop is not None and self.flusher.tables_ready, "flusher started")

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        try:
            self.clean = await self.flusher.run()
        finally:
            await self.flusher.close()

    @property
    def owner(self) -> str:
        return self.flusher.owner

    def freeze(self) -> None:
        """Block the loop, as SIGSTOP would: no heartbeat, no renewal, no claim until :meth:`thaw`."""
        assert self.loop is not None
        self.thawed.clear()
        self.loop.call_soon_threadsafe(self.thawed.wait, DEADLINE_S * 2)

    def thaw(self) -> None:
        self.thawed.set()

    def stop(self) -> None:
        assert self.loop is not None
        self.thawed.set()
        self.loop.call_soon_threadsafe(self.flusher.stopping.set)
        self.thread.join(DEADLINE_S)
        assert not self.thread.is_alive(), "the flusher did not stop"

    def leases_gauge(self) -> float | None:
        return self.flusher.metrics.registry.get_sample_value("oceanus_shard_leases", {"stream": "pv"})

    def lease_changes(self, change: str) -> float | None:
        return self.flusher.metrics.registry.get_sample_value(
            "oceanus_shard_lease_changes_total", {"stream": "pv", "change": change}
        )


def _holders(client: redis.Redis, keys: Keys, shards: int) -> list[str | None]:
    return lease_holders(client, keys, {"pv": shards})["pv"]


def _drained(client: redis.Redis, keys: Keys, shards: int) -> bool:
    return not any(client.exists(keys.queue("pv", s), keys.inflight_index("pv", s)) for s in range(shards))


def _written(runners: list[Runner]) -> Counter[str]:
    total: Counter[str] = Counter()
    for r in runners:
        total.update(r.sink.written)
    return total


@pytest.mark.parametrize(
    ("shards", "flushers", "expected"),
    [(6, 3, (2, 2, 0)), (6, 4, (1, 2, 2)), (1, 2, (0, 1, 1)), (1, 1, (1, 1, 0)), (2, 3, (0, 1, 2)), (7, 7, (1, 1, 0))],
)
def test_share_is_floor_and_ceil_with_the_remainder_at_ceil(
    shards: int, flushers: int, expected: tuple[int, int, int]
) -> None:
    assert share(shards, flushers) == expected


def test_leases_spread_as_flushers_join_and_leave(redis_server: RedisServer) -> None:
    """The share-out alone, tick by tick: 6, then 3/3, 2/2/2, 2/2/1/1, and back to 2/2/2."""
    keys = Keys("oceanus")

    async def body() -> None:
        client = aioredis.from_url(redis_server.url)
        fleet: dict[str, ShardLeases] = {}

        def join(owner: str) -> None:
            claimer = Claimer(client, keys, owner, TTL_S)
            fleet[owner] = ShardLeases(client, keys, claimer, "pv", 6, TTL_S)

        async def settle() -> list[int]:
            for _ in range(6):
                for leases in fleet.values():
                    await leases.tick()
            held = [sorted(leases.held) for leases in fleet.values()]
            every = sorted(s for h in held for s in h)
            assert every == list(range(6)), held  # each shard exactly once
            return [len(h) for h in held]

        try:
            join("a")
            assert await settle() == [6]
            join("b")
            assert await settle() == [3, 3]
            join("c")
            assert await settle() == [2, 2, 2]
            join("d")
            # 6 over 4: the remainder (2) at ceil, kept by the first two by owner id.
            assert await settle() == [2, 2, 1, 1]
            assert await settle() == [2, 2, 1, 1]  # stable: no shard moves once shared out
            await fleet.pop("d").release_all()
            assert await settle() == [2, 2, 2]
            assert await client.zrange(keys.flushers("pv"), 0, -1) == [b"a", b"b", b"c"]
        finally:
            await client.aclose()

    asyncio.run(body())


def test_lease_holders_reads_each_shards_holder_for_status(redis_server: RedisServer) -> None:
    keys = Keys("px")
    client = redis_server.client()
    client.set(keys.lease("pv", 0), "host-1-aa")
    client.set(keys.lease("pv", 2), "host-2-bb")
    client.set(keys.lease("ev"), "host-2-bb")
    client.set(Keys("oceanus").lease("pv", 1), "another-prefix")
    assert lease_holders(client, keys, {"pv": 3, "ev": 1, "none": 2}) == {
        "pv": ["host-1-aa", None, "host-2-bb"],
        "ev": ["host-2-bb"],
        "none": [None, None],
    }
    assert lease_holders(client, keys, {}) == {}


def test_a_claim_needs_the_lease_in_redis(redis_server: RedisServer) -> None:
    keys = Keys("oceanus")
    client = redis_server.client()
    stream = make_config(redis_server.url, Path("unused.duckdb")).streams["pv"]
    _push(client, keys, stream, 0, frames=3, rows=2)

    async def body() -> None:
        aclient = aioredis.from_url(redis_server.url)
        try:
            ghost = Claimer(aclient, keys, "ghost", TTL_S)
            orphan = await ghost.claim("pv", 1)  # never beats: an orphan at once
            assert orphan is not None
            me = Claimer(aclient, keys, "me", TTL_S)
            await me.heartbeat()
            await aclient.set(keys.lease("pv"), "other", px=60_000)
            with pytest.raises(LeaseLost):
                await me.claim("pv", 1, leased=True)
            assert await aclient.llen(keys.queue("pv")) == 2  # nothing taken
            assert await me.reclaim("pv", orphan.key, leased=True) is None
            assert await aclient.exists(orphan.key) == 1  # left for the lease holder
            await aclient.delete(keys.lease("pv"))
            with pytest.raises(LeaseLost):  # a lapsed lease is nobody's: no claim either
                await me.claim("pv", 1, leased=True)
            await aclient.set(keys.lease("pv"), "me", px=60_000)
            claim = await me.claim("pv", 1, leased=True)
            assert claim is not None
            assert len(claim.frames) == 1
            taken = await me.reclaim("pv", orphan.key, leased=True)
            assert taken is not None
            assert taken.batch_id == orphan.batch_id
        finally:
            await aclient.aclose()

    asyncio.run(body())


def test_three_flushers_hold_two_of_six_shards_each_then_a_fourth_rebalances(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    cfg = make_config(redis_server.url, tmp_path / "w.duckdb", _streams(6), heartbeat_ttl_s=TTL_S)
    keys = Keys(cfg.redis.key_prefix)
    client = redis_server.client()
    stream = cfg.streams["pv"]
    inner = DuckDBSink(cfg)
    runners: list[Runner] = []
    try:
        runners = [Runner(cfg, Gated(inner)) for _ in range(3)]
        owners = [r.owner for r in runners]

        def shared(counts: list[int]) -> Callable[[], bool]:
            def check() -> bool:
                holders = _holders(client, keys, 6)
                return sorted(holders.count(o) for o in owners) == counts and None not in holders

            return check

        _wait(shared([2, 2, 2]), "2/2/2")
        ids = [i for s in range(6) for i in _push(client, keys, stream, s, frames=4, rows=5)]
        _wait(lambda: sum(_written(runners).values()) >= len(ids) and _drained(client, keys, 6), "drained")
        assert _written(runners) == Counter(ids)  # every event written once, over three flushers
        holders = _holders(client, keys, 6)
        for r in runners:
            # Each wrote only in the shards it leases, and the gauge says how many.
            assert r.leases_gauge() == holders.count(r.owner) == 2
            mine = {i for s in range(6) if holders[s] == r.owner for i in ids[s * 20 : (s + 1) * 20]}
            assert set(r.sink.written) == mine

        released = sum(r.lease_changes("released") or 0 for r in runners)
        runners.append(Runner(cfg, Gated(inner)))
        owners.append(runners[-1].owner)
        _wait(shared([1, 1, 2, 2]), "2/2/1/1")
        more = [i for s in range(6) for i in _push(client, keys, stream, s, frames=2, rows=5)]
        _wait(lambda: sum(_written(runners).values()) >= len(ids + more) and _drained(client, keys, 6), "drained")
        assert _written(runners) == Counter(ids + more)  # nothing written twice across the move
        assert sorted(_holders(client, keys, 6).count(o) for o in owners) == [1, 1, 2, 2]
        # 2/2/2 to 2/2/1/1: exactly one shard moved, released by one of the three (none lost).
        assert sum(r.lease_changes("released") or 0 for r in runners) == released + 1
        assert runners[3].lease_changes("taken") == 1
        assert sum(r.lease_changes("lost") or 0 for r in runners) == 0
    finally:
        for r in runners:
            r.stop()
        inner.close()
    assert all(r.clean for r in runners)
    # A clean shutdown hands every lease back and leaves the registry.
    assert _holders(client, keys, 6) == [None] * 6
    assert client.zcard(keys.flushers("pv")) == 0


def test_a_killed_flushers_shards_and_batch_in_hand_are_taken_over_within_the_ttl(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    cfg = make_config(redis_server.url, tmp_path / "w.duckdb", _streams(6), heartbeat_ttl_s=TTL_S)
    keys = Keys(cfg.redis.key_prefix)
    client = redis_server.client()
    stream = cfg.streams["pv"]
    inner = DuckDBSink(cfg)
    victim = Runner(cfg, Gated(inner, stall_write=True))
    runners = [victim, Runner(cfg, Gated(inner)), Runner(cfg, Gated(inner))]
    try:
        owners = [r.owner for r in runners]
        _wait(lambda: sorted(_holders(client, keys, 6).count(o) for o in owners) == [2, 2, 2], "2/2/2")
        ids = [i for s in range(6) for i in _push(client, keys, stream, s, frames=4, rows=5)]
        assert victim.sink.entered.wait(DEADLINE_S)  # a batch of the victim is in its write
        victim.freeze()  # killed: from here on it does nothing at all
        killed_at = time.monotonic()
        mine = [s for s, h in enumerate(_holders(client, keys, 6)) if h == victim.owner]
        assert len(mine) == 2
        taken_s = _wait(
            lambda: victim.owner not in _holders(client, keys, 6) and None not in _holders(client, keys, 6), "takeover"
        )
        # The leases lapse at most a TTL after the freeze (the last renewal came before it); the next
        # tick of a survivor, a third of a TTL later at most, takes them (plus a second of slack).
        assert taken_s < TTL_S * 4 / 3 + 1.0, taken_s
        _wait(lambda: sum(_written(runners).values()) >= len(ids) and _drained(client, keys, 6), "drained")
        recovered_s = time.monotonic() - killed_at
        assert not victim.sink.written
        assert _written(runners) == Counter(ids)  # the victim's batch in hand too, exactly once
        assert victim.sink.seen - set(_written(runners[1:])) == set()
        print(f"takeover {taken_s:.2f}s, everything written {recovered_s:.2f}s after the kill (TTL {TTL_S}s)")
    finally:
        # The write that was in hand when it "died" never reaches the warehouse; once thawed, the
        # victim finds its batch re-claimed (Claimer.confirm) and writes nothing.
        victim.sink.fail = True
        victim.sink.gate.set()
        for r in runners:
            r.stop()
        inner.close()
    assert not victim.sink.written
    assert _written(runners) == Counter(ids)


def test_a_paused_flusher_loses_its_lease_and_does_not_write_its_stale_batch(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """One shard, two flushers: one drains, the other stands by; the drainer is paused between
    claiming a batch and writing it, for longer than the TTL."""
    cfg = make_config(redis_server.url, tmp_path / "w.duckdb", _streams(1), heartbeat_ttl_s=TTL_S)
    keys = Keys(cfg.redis.key_prefix)
    client = redis_server.client()
    stream = cfg.streams["pv"]
    inner = DuckDBSink(cfg)
    paused = Runner(cfg, Gated(inner, stall_prepare=True))
    runners = [paused]
    try:
        _wait(lambda: _holders(client, keys, 1) == [paused.owner], "the first flusher leases the shard")
        standby = Runner(cfg, Gated(inner))
        runners.append(standby)
        _wait(lambda: client.zcard(keys.flushers("pv")) == 2, "both flushers registered")
        ids = _push(client, keys, stream, 0, frames=3, rows=5)
        assert paused.sink.entered.wait(DEADLINE_S)  # claimed, not yet written
        paused.freeze()
        paused.sink.gate.set()  # the decode finishes in its thread; the loop stays frozen
        _wait(lambda: _holders(client, keys, 1) == [standby.owner], "the standby takes the shard")
        _wait(lambda: Counter(standby.sink.written) == Counter(ids) and _drained(client, keys, 1), "drained")
        stale = set(paused.sink.seen)
        assert stale  # the paused flusher had a batch in hand

        paused.thaw()
        # It finds its lease lost and its batch re-claimed: it stops claiming and writes nothing.
        _wait(lambda: paused.lease_changes("lost") == 1, "the paused flusher notices")
        later = _push(client, keys, stream, 0, frames=2, rows=5)
        _wait(lambda: Counter(standby.sink.written) == Counter(ids + later) and _drained(client, keys, 1), "drained")
        assert _holders(client, keys, 1) == [standby.owner]
        assert paused.leases_gauge() == 0
    finally:
        for r in runners:
            r.stop()
        inner.close()
    assert not paused.sink.written  # its stale batch was not written: no duplicate to dedupe
    assert _written(runners) == Counter(ids + later)


def test_leases_and_leased_claims_run_on_the_cluster(redis_cluster: RedisCluster) -> None:
    """Take, renew, release and the lease check of claim and re-claim: each script in its shard's
    slot (redis-py's cluster client refuses keys of several slots), the registry on its own."""
    keys = Keys("oceanus")
    frame = encode_frame(["event_id"], [[b"\x01" * 16]])

    async def scenario() -> None:
        host, port = redis_cluster.addresses[0].split(":")
        client = aiocluster.RedisCluster(host=host, port=int(port))
        same = cast(aioredis.Redis, client)  # the cluster client has the same calls
        try:
            for shard in range(4):
                lease = keys.lease("pv", shard)
                assert client.keyslot(lease) == client.keyslot(keys.queue("pv", shard))
                await client.rpush(keys.queue("pv", shard), frame, frame)
            ghost = Claimer(same, keys, "ghost", 60.0)
            orphan = await ghost.claim("pv", 1, 3)  # never beats: an orphan at once
            assert orphan is not None
            me = Claimer(same, keys, "me", 60.0)
            await me.heartbeat()
            leases = ShardLeases(same, keys, me, "pv", 4, 60.0)
            assert await leases.tick() == [0, 1, 2, 3]
            assert await leases.tick() == []  # renewed, nothing more to take
            for shard in range(4):
                claim = await me.claim("pv", 1, shard, leased=True)
                assert claim is not None
                assert await me.finish(claim)
            taken = await me.reclaim("pv", orphan.key, 3, leased=True)
            assert taken is not None
            assert await me.finish(taken)
            await leases.release_all()
            assert [await client.get(keys.lease("pv", s)) for s in range(4)] == [None] * 4
            with pytest.raises(LeaseLost):
                await me.claim("pv", 1, 0, leased=True)
        finally:
            await client.aclose()

    asyncio.run(scenario())

"""Shard leases: every shard of a stream is drained by one flusher at a time.

Keys (oceanus/buffer.py): ``P:lease:{T}`` names the flusher that drains shard ``{T}``
(owner id, ``PX`` = ``flusher.heartbeat_ttl_s``); ``P:flushers:{stream}`` is a ZSET of
the flushers running the stream, owner -> expiry in unix ms.

Each stream worker runs one :class:`ShardLeases`, ticking every third of the TTL:

1. **Membership.** ``ZADD`` itself with expiry now + TTL, drop members past their
   expiry, read the rest: the live flushers of the stream. One key, never in a
   script with another, so it may live on any node of a cluster.
2. **Renew** each held lease: compare-and-renew in one script, which also refreshes
   the owner's heartbeat in that shard (``P:hb:{T}:{owner}``, same slot): lease and
   heartbeat lapse together. A lease found gone or another's is *lost*.
3. **Share out** (``GET`` of every lease, pipelined). With ``N`` shards and ``L``
   live flushers each should hold ``floor(N/L)`` or ``ceil(N/L)``, and exactly
   ``N mod L`` of them the larger number (6 shards over 4 flushers: 2/2/1/1):

   - hold more than ``ceil``: release the excess;
   - hold ``ceil`` while more than ``N mod L`` flushers do, and someone is below
     ``floor`` with too few free shards to reach it: the flushers at ``ceil``
     past the first ``N mod L`` (by owner id) release one each;
   - otherwise take free shards (no lease, or a lease of a flusher no longer
     live) with ``SET NX PX`` up to ``floor``, or up to ``ceil`` while fewer than
     ``N mod L`` others hold ``ceil``. The search starts at a shard that depends
     on the flusher's rank, so flushers starting together rarely collide.

   Since the targets add up to ``N``, a shard whose holder died is free once its
   lease lapses and is taken at the next tick by a flusher below its target: no
   shard is left undrained for longer than the TTL plus one tick. With fewer
   shards than flushers the extra flushers hold nothing of that stream and stand
   by (set ``shards`` >= flushers for a busy stream); with one shard and two
   flushers one drains and the other takes over within the TTL of its death.
4. **Release** only what holds no batch of this flusher: a shard to give up stops
   taking claims at once and is released (compare-and-delete, with our heartbeat
   in it) once its in-flight batch is finished. A lost lease with a batch still in
   hand keeps its heartbeat until that batch is done (see ``Claimer.confirm``).

Why one registry per stream rather than one for the process: a flusher counts
only toward the streams it drains. During a rolling update that adds a stream,
old flushers would otherwise lower every new flusher's share of it and leave
some of its shards without a holder until the rollout ends.

The worker claims only in shards whose lease it holds and believes valid (renewed
less than a TTL ago, by the local monotonic clock), and the claim and re-claim
scripts check the lease again in Redis. Before each write of a batch whose lease
lapsed meanwhile (the process was paused, or cut off from Redis), the worker asks
:meth:`flusher.claim.Claimer.confirm`: a batch the new holder has re-claimed is
dropped unwritten. What remains is a pause *inside* ``sink.write`` longer than the
TTL: the new holder writes the batch too, and the sinks' ``event_id`` dedupe
removes the second copy (docs/ARCHITECTURE.md, "Where duplicates can arise").
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

import redis
import redis.asyncio as aioredis

# The claim module's bytes-or-str reply decoder: replies here are the same client's.
from flusher.claim import Claimer, _s
from flusher.metrics import FlusherMetrics
from oceanus.buffer import Keys

log = logging.getLogger("oceanus.flusher")

#: Ticks per lease TTL: a lease is renewed twice before it could lapse.
TICKS_PER_TTL = 3
#: The registry key outlives its last member by this many TTLs (then Redis drops it).
REGISTRY_TTLS = 10

# KEYS: lease, the owner's heartbeat in the shard.  ARGV: owner, TTL ms, pid.  1 = taken.
_TAKE_LUA = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 0 end
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[2])
return 1
"""

# KEYS: lease, the owner's heartbeat in the shard.  ARGV: owner, TTL ms, pid.  1 = still ours.
_RENEW_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[2])
return 1
"""

# KEYS: lease, the owner's heartbeat in the shard.  ARGV: owner.  Only called when no batch of
# the shard is held: a key of ours left there (a claim whose reply was lost) becomes an orphan
# for the next holder's re-claim scan.  1 = the lease was ours and is gone.
_RELEASE_LUA = """
redis.call('DEL', KEYS[2])
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""


def share(shards: int, flushers: int) -> tuple[int, int, int]:
    """``(floor, ceil, extra)``: each flusher holds ``floor`` or ``ceil`` shards, ``extra`` of them ``ceil``."""
    floor, extra = divmod(shards, flushers)
    return floor, floor + (1 if extra else 0), extra


class ShardLeases:
    """The leases one flusher holds on one stream's shards, and their upkeep (see the module docstring)."""

    def __init__(
        self,
        client: aioredis.Redis,
        keys: Keys,
        claimer: Claimer,
        stream: str,
        shards: int,
        ttl_s: float,
        metrics: FlusherMetrics | None = None,
    ) -> None:
        self.client = client
        self.keys = keys
        self.claimer = claimer
        self.owner = claimer.owner
        self.stream = stream
        self.shards = shards
        self.ttl_s = ttl_s
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.metrics = metrics
        #: Held shard -> monotonic time until which the lease is surely ours (sent + TTL).
        self.held: dict[int, float] = {}
        #: Held shards being given up: no new claims there; released once no batch is in hand.
        self.releasing: set[int] = set()
        #: Shards whose lease was lost with a batch still in hand: our heartbeat stays until it is done.
        self.lapsed: set[int] = set()
        self._take = client.register_script(_TAKE_LUA)
        self._renew = client.register_script(_RENEW_LUA)
        self._release = client.register_script(_RELEASE_LUA)

    @property
    def interval_s(self) -> float:
        return self.ttl_s / TICKS_PER_TTL

    def valid(self, shard: int) -> bool:
        """Is the lease of ``shard`` ours for sure (renewed less than a TTL ago)?"""
        return self.held.get(shard, 0.0) > time.monotonic()

    def claimable(self) -> list[int]:
        """The shards the worker may claim in now, ascending."""
        now = time.monotonic()
        return sorted(s for s, until in self.held.items() if until > now and s not in self.releasing)

    def leased(self) -> list[int]:
        """Every shard whose lease we hold (re-claim scans run in these)."""
        return sorted(self.held)

    def lost(self, shard: int) -> None:
        """A lease found gone or another's (renewal, or a claim script refused)."""
        if self.held.pop(shard, None) is None:
            return
        self.releasing.discard(shard)
        self.lapsed.add(shard)
        log.warning("stream %s: lost the lease of shard %d (not renewed within the TTL)", self.stream, shard)
        self._count("lost")

    def _count(self, change: str) -> None:
        if self.metrics is not None:
            self.metrics.lease_changes.labels(self.stream, change).inc()
            self.metrics.shard_leases.labels(self.stream).set(len(self.held))

    def _script_args(self, shard: int) -> tuple[list[str], list[Any]]:
        keys = [self.keys.lease(self.stream, shard), self.keys.shard_heartbeat(self.owner, self.stream, shard)]
        return keys, [self.owner, self.ttl_ms, str(os.getpid())]

    async def tick(self) -> list[int]:
        """One round of membership, renewal, release and taking; returns the shards newly taken."""
        live = await self._members()
        for shard in list(self.held):
            sent = time.monotonic()
            keys, args = self._script_args(shard)
            if int(await self._renew(keys=keys, args=args)):
                self.held[shard] = sent + self.ttl_s
            else:
                self.lost(shard)
        for shard in sorted(self.lapsed):
            if not self.claimer.holding(self.stream, shard):
                await self._let_go(shard)
        holders = await self._holders()
        taken = await self._rebalance(live, holders)
        if self.metrics is not None:
            self.metrics.shard_leases.labels(self.stream).set(len(self.held))
        return taken

    async def _members(self) -> list[str]:
        now_ms = int(time.time() * 1000)
        registry = self.keys.flushers(self.stream)
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.zadd(registry, {self.owner: now_ms + self.ttl_ms})
            pipe.zremrangebyscore(registry, "-inf", now_ms)
            pipe.zrange(registry, 0, -1)
            pipe.pexpire(registry, self.ttl_ms * REGISTRY_TTLS)
            results = await pipe.execute()
        return sorted({_s(m) for m in results[2]} | {self.owner})

    async def _holders(self) -> list[str | None]:
        async with self.client.pipeline(transaction=False) as pipe:
            for shard in range(self.shards):
                pipe.get(self.keys.lease(self.stream, shard))
            values = await pipe.execute()
        return [None if v is None else _s(v) for v in values]

    async def _rebalance(self, live: list[str], holders: list[str | None]) -> list[int]:
        floor, ceil, extra = share(self.shards, len(live))
        alive = set(live)
        counts = Counter(h for h in holders if h in alive)
        mine = len(self.held)
        free = [s for s, h in enumerate(holders) if h not in alive]
        give = max(0, mine - ceil)
        if not give and extra and mine == ceil:
            # Every flusher at ceil keeps its shards unless one below floor cannot reach it with
            # the free shards; then those at ceil past the first `extra` (by owner id) give one.
            deficit = sum(max(0, floor - counts[o]) for o in live)
            at_ceil = sorted(o for o in live if counts[o] >= ceil)
            if deficit > len(free) and self.owner in at_ceil[extra:]:
                give = 1
        await self._give_up(give)
        if give:
            return []
        others_at_ceil = sum(1 for o in live if o != self.owner and counts[o] >= ceil)
        target = ceil if others_at_ceil < extra else floor
        if mine >= target or not free:
            return []
        # Start where this flusher's rank points, so that flushers starting together try different shards.
        start = live.index(self.owner) * self.shards // len(live)
        order = sorted(free, key=lambda s: (s - start) % self.shards)
        taken: list[int] = []
        for shard in order:
            if mine + len(taken) >= target:
                break
            sent = time.monotonic()
            keys, args = self._script_args(shard)
            if int(await self._take(keys=keys, args=args)):
                self.held[shard] = sent + self.ttl_s
                self.lapsed.discard(shard)
                taken.append(shard)
                log.info("stream %s: took the lease of shard %d", self.stream, shard)
                self._count("taken")
        return taken

    async def _give_up(self, count: int) -> None:
        """Stop claiming in ``count`` held shards (idle ones first) and release those idle now."""
        if count <= 0:
            self.releasing.clear()
            return
        busy = {s for s in self.held if self.claimer.holding(self.stream, s)}
        self.releasing = set(sorted(self.held, key=lambda s: (s in busy, -s))[:count])
        for shard in sorted(self.releasing - busy):
            await self._let_go(shard)
            if self.held.pop(shard, None) is not None:
                log.info("stream %s: released the lease of shard %d (rebalancing)", self.stream, shard)
                self._count("released")
            self.releasing.discard(shard)

    async def _let_go(self, shard: int) -> None:
        """Stop beating in the shard and delete its lease if it is still ours (nothing of it held)."""
        self.claimer.stop_beating(self.stream, shard)
        keys, args = self._script_args(shard)
        await self._release(keys=keys, args=args[:1])
        self.lapsed.discard(shard)

    async def release_all(self) -> None:
        """Clean shutdown: hand every lease back at once and leave the registry."""
        for shard in sorted(self.held):
            await self._let_go(shard)
            self._count("released")
        self.held.clear()
        self.releasing.clear()
        await self.client.zrem(self.keys.flushers(self.stream), self.owner)
        if self.metrics is not None:
            self.metrics.shard_leases.labels(self.stream).set(0)


def lease_holders(client: redis.Redis, keys: Keys, shards: Mapping[str, int]) -> dict[str, list[str | None]]:
    """Who drains each shard of each stream (owner id, None = nobody): one pipelined GET per shard,
    read-only, for ``oceanus status``."""
    slots = [(stream, shard) for stream, n in shards.items() for shard in range(n)]
    with client.pipeline(transaction=False) as pipe:
        for stream, shard in slots:
            pipe.get(keys.lease(stream, shard))
        values = pipe.execute()
    out: dict[str, list[str | None]] = {stream: [] for stream in shards}
    for (stream, _), value in zip(slots, values, strict=True):
        out[stream].append(None if value is None else _s(value))
    return out

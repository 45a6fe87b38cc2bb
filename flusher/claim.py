"""Claiming work from Redis so that no acknowledged frame is lost or popped twice.

The life of a batch (keys from :class:`oceanus.buffer.Keys`; ``{T}`` is the hash
tag of one shard of the stream, ``{stream}`` or ``{stream~N}``)::

    P:q:{T}       --claim (Lua: LRANGE+LTRIM+RPUSH+SADD+HSET)-->  P:inflight:{T}:{owner}:{seq}
                                                                  + P:state:{that key} (batch id, sink state)
                  (+ the frames the notifier's tap has not copied yet --> P:notify:q:{T})
    written       --finish (MULTI: DEL+DEL+SREM [+RPUSH dead])-->  gone
    SIGTERM       --give back (Lua: RPOP+LPUSH loop)-->            head of P:q:{T}, in order
    owner dead    --re-claim (Lua: RENAME x2, SREM+SADD)-->        P:inflight:{T}:{me}:{seq}

Every step is one round trip and atomic on the server, so a crash between any
two steps leaves each frame in exactly one list. Every key one script or MULTI
touches carries the same tag ``{T}``, so on Redis Cluster each step runs on the
one master of that slot. An owner is alive in a shard while its
``P:hb:{T}:{owner}`` key exists (SET PX, refreshed every third of the TTL, with
the process-wide ``P:hb:{owner}``; beaten from the owner's first claim in that
shard on): the re-claim script checks it in the shard's own slot. An in-flight
key whose owner's heartbeat is gone is an orphan and any flusher re-claims it,
state hash included, so the batch keeps its ``batch_id`` and the sink's write
state (offsets, job ids) across the crash.

A live owner can strand a key too: Redis ran a claim script (and wrote it to
the AOF) but the reply was lost — Redis killed between its fsync and the reply,
a reply slower than the socket timeout, a reset connection. The worker then
claims again under a new key, and the old one is nobody's: its owner's
heartbeat is alive, so no other flusher touches it. Each :class:`Claimer`
therefore remembers the keys it really holds (a claim's key is held from before
the script is sent until the script failed or came back empty, or until the
batch is finished or given back); an in-flight key of its own that it does not
hold is an orphan like any other, and its own re-claim scan takes it back
(``_RECLAIM_LUA`` with the liveness check waived for the caller's own keys).

A flusher claims and re-claims only in the shards whose lease it holds
(flusher/leases.py): with ``leased=True`` the claim and re-claim scripts check
``P:lease:{T}`` (same slot) before touching anything, and :meth:`Claimer.confirm`
tells a flusher whose lease lapsed whether a batch in its hands is still its own.
The notifier's claims take no lease.

The flusher's claim and give-back also keep the notifier's tap counter
(``P:notify:tapped:{T}``, oceanus/buffer.py) true, in the same script as
the change of the queue's head: a :class:`Claimer` built with ``notify_tap``
does so for every stream, and copies to the notify queue the popped frames the
tap had not reached for the streams named in it (those with rules). The
notifier runs this same class over its own queues without ``notify_tap``.
"""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Awaitable, Collection, Iterable, Mapping, Sequence
from typing import Any

import redis
import redis.asyncio as aioredis

from oceanus.buffer import Keys
from oceanus.config import FlusherConfig

_FLUSHER_DEFAULTS = FlusherConfig()

#: State hash fields the flusher itself uses; sinks' keys never start with ``_``.
STATE_BATCH_ID = "_batch_id"
STATE_CLAIMED_MS = "_claimed_ms"
STATE_FRAMES = "_frames"
#: Lua's unpack() is limited by the C stack (LUAI_MAXCSTACK = 8000); push in slices.
LUA_PUSH_SLICE = 1000

# KEYS: queue, inflight, index, state [, tapped, notify queue] [, lease].  ARGV: max frames,
# batch id, now ms [, "1"/"0": copy the frames the notifier's tap has not reached, or "" when the
# two tap keys are absent [, the owner the shard's lease must name]].
# Returns the claimed frames (empty: nothing waiting, no key created), or nil when the lease
# names another flusher or none (flusher/leases.py): nothing is touched then.
# With the two tap keys (the flusher's queues, never the notifier's own): the first `tapped`
# frames of the queue are in the notify queue already; the popped frames past them are copied
# there when the stream has rules, and the counter shrinks by what was popped (clamped to the
# queue's length). `_tapped` records how many of this batch's frames the notify queue has,
# for a give-back (oceanus/buffer.py, "Who changes P:notify:tapped").
_CLAIM_LUA = """
if ARGV[5] and redis.call('GET', KEYS[#KEYS]) ~= ARGV[5] then return false end
local n = tonumber(ARGV[1])
local items = redis.call('LRANGE', KEYS[1], 0, n - 1)
local count = #items
if count == 0 then return items end
for i = 1, count, 1000 do
  redis.call('RPUSH', KEYS[2], unpack(items, i, math.min(i + 999, count)))
end
redis.call('LTRIM', KEYS[1], count, -1)
redis.call('SADD', KEYS[3], KEYS[2])
redis.call('HSET', KEYS[4], '_batch_id', ARGV[2], '_claimed_ms', ARGV[3], '_frames', count)
if ARGV[4] == '0' or ARGV[4] == '1' then
  local t = tonumber(redis.call('GET', KEYS[5]) or '0')
  local copied = math.min(t, count)
  if ARGV[4] == '1' then
    for i = copied + 1, count, 1000 do
      redis.call('RPUSH', KEYS[6], unpack(items, i, math.min(count, i + 999)))
    end
    copied = count
  end
  redis.call('HSET', KEYS[4], '_tapped', copied)
  if t > 0 then
    t = math.min(t - count, redis.call('LLEN', KEYS[1]))
    if t > 0 then redis.call('SET', KEYS[5], t) else redis.call('DEL', KEYS[5]) end
  end
end
return items
"""

# KEYS: orphan, new key, index, orphan's heartbeat, orphan state, new state [, lease].
# ARGV: "1" when the orphan is the caller's own (its heartbeat is the caller's and
# says nothing about the key), else "0" [, the owner the shard's lease must name].
# Returns the frames now owned under the new key; empty when the owner came back
# to life or the key vanished (finished by its owner meanwhile), or the lease is another's.
_RECLAIM_LUA = """
if ARGV[2] and redis.call('GET', KEYS[7]) ~= ARGV[2] then return {} end
if ARGV[1] ~= '1' and redis.call('EXISTS', KEYS[4]) == 1 then return {} end
redis.call('SREM', KEYS[3], KEYS[1])
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[5])
  return {}
end
redis.call('RENAME', KEYS[1], KEYS[2])
if redis.call('EXISTS', KEYS[5]) == 1 then redis.call('RENAME', KEYS[5], KEYS[6]) end
redis.call('SADD', KEYS[3], KEYS[2])
return redis.call('LRANGE', KEYS[2], 0, -1)
"""

# KEYS: inflight, queue, index, state [, tapped]. Moves the frames back to the head of the
# queue keeping their order (last frame first, so the first ends up at the head).
# With the tap counter: the batch's frames the notify queue has (`_tapped`, written by the
# claim; absent: none) now lead the queue. All of them: the counter grows by the batch. Only
# a prefix: that prefix is all the counter may claim (the tap copies the rest, and some frames
# after them a second time: evaluated twice, never missed).
_GIVE_BACK_LUA = """
local moved = 0
while redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT') do moved = moved + 1 end
if #KEYS == 5 and moved > 0 then
  local t = tonumber(redis.call('HGET', KEYS[4], '_tapped') or '0')
  if t >= moved then t = moved + tonumber(redis.call('GET', KEYS[5]) or '0') end
  t = math.min(t, redis.call('LLEN', KEYS[2]))
  if t > 0 then redis.call('SET', KEYS[5], t) else redis.call('DEL', KEYS[5]) end
end
redis.call('DEL', KEYS[4])
redis.call('SREM', KEYS[3], KEYS[1])
return moved
"""


# KEYS: a claimed in-flight key, its owner's heartbeat in that shard.  ARGV: pid, TTL ms.
# A flusher whose lease of the shard lapsed (a pause, a partition) asks before it writes a batch
# of it: 1 = the key is still its own and its heartbeat there is renewed in the same step, so the
# lease's new holder does not re-claim it while it is written; 0 = re-claimed meanwhile.
_CONFIRM_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return 1
"""


class LeaseLost(Exception):
    """A claim was refused: the shard's lease names another flusher, or none (it lapsed)."""

    def __init__(self, stream: str, shard: int) -> None:
        super().__init__(f"stream {stream}: the lease of shard {shard} is not ours")
        self.stream = stream
        self.shard = shard


def make_owner_id() -> str:
    """A name unique to this process: ``host-pid-random`` (no ``:``, which separates key parts)."""
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:40] or "host"
    return f"{host}-{os.getpid()}-{os.urandom(3).hex()}"


class Claim:
    """One claimed batch: its in-flight key and the frames in it, in queue order."""

    __slots__ = ("batch_id", "claimed_ms", "frames", "key", "reclaimed", "shard", "stream")

    def __init__(
        self,
        stream: str,
        key: str,
        frames: list[bytes],
        batch_id: str,
        claimed_ms: int,
        reclaimed: bool = False,
        shard: int = 0,
    ) -> None:
        self.stream = stream
        self.shard = shard
        self.key = key
        self.frames = frames
        self.batch_id = batch_id
        self.claimed_ms = claimed_ms
        self.reclaimed = reclaimed


class RedisWriteState:
    """:class:`flusher.sinks.base.WriteState` backed by the claim's state hash.

    Read once when the batch is handed to the sink; every ``set`` is written
    through to Redis before it returns (the sink relies on it surviving a
    crash right after). ``prefix`` namespaces the sub-batches of a split batch.
    Used from the sink's worker thread, hence the synchronous client.
    """

    def __init__(self, client: redis.Redis, key: str, values: Mapping[str, str], prefix: str = "") -> None:
        self._client = client
        self._key = key
        self._values = dict(values)
        self._prefix = prefix

    def get(self, key: str) -> str | None:
        return self._values.get(self._prefix + key)

    def set(self, **values: str) -> None:
        full = {self._prefix + k: v for k, v in values.items()}
        self._client.hset(self._key, mapping=full)  # type: ignore[arg-type]
        self._values.update(full)

    def child(self, part: str) -> RedisWriteState:
        return RedisWriteState(self._client, self._key, self._values, f"{self._prefix}{part}/")

    def has_sink_state(self) -> bool:
        """True once the sink recorded progress: giving the frames back would forget it."""
        return any(not k.startswith("_") for k in self._values)


class Claimer:
    """The Redis side of one flusher instance (asyncio client)."""

    def __init__(
        self,
        client: aioredis.Redis,
        keys: Keys,
        owner: str,
        heartbeat_ttl_s: float,
        *,
        dead_letter_max: int = _FLUSHER_DEFAULTS.dead_letter_max,
        dead_letter_ttl_s: float = _FLUSHER_DEFAULTS.dead_letter_ttl_s,
        notify_tap: Collection[str] | None = None,
    ) -> None:
        """``notify_tap``: None for queues no tap reads (the notifier's own); else the streams whose
        claimed frames are copied to the notify queue when the tap has not yet (streams with rules),
        the counter being kept for every stream."""
        self.client = client
        self.notify_tap = None if notify_tap is None else frozenset(notify_tap)
        self.dead_letter_max = dead_letter_max
        self.dead_letter_ttl_s = max(1, int(dead_letter_ttl_s))
        self.keys = keys
        self.owner = owner
        self.heartbeat_ttl_ms = max(1, int(heartbeat_ttl_s * 1000))
        self._seq = int(time.time() * 1000)
        #: In-flight keys this instance holds (see the module docstring): held from
        #: before a claim's script is sent, so a concurrent scan never takes a key
        #: whose reply is still on its way.
        self._held: set[str] = set()
        #: Shards (stream, shard) this owner has worked in: its heartbeat is kept in each one's slot.
        self._beating: set[tuple[str, int]] = set()
        #: Between the first heartbeat() and drop_heartbeat(): a claimer that never beat is
        #: not made alive by claiming (tests build such "dead" owners on purpose).
        self._alive = False
        self._claim = client.register_script(_CLAIM_LUA)
        self._reclaim = client.register_script(_RECLAIM_LUA)
        self._give_back = client.register_script(_GIVE_BACK_LUA)
        self._confirm = client.register_script(_CONFIRM_LUA)

    def _next_key(self, stream: str, shard: int) -> str:
        # Sequence numbers start at the clock so a restarted owner with the same
        # name (never, with make_owner_id, but cheap insurance) cannot collide.
        self._seq += 1
        return self.keys.inflight(stream, self.owner, self._seq, shard)

    async def heartbeat(self) -> None:
        """Refresh this owner's liveness: process-wide, and in every shard it has worked in."""
        self._alive = True
        pid = str(os.getpid())
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.set(self.keys.heartbeat(self.owner), pid, px=self.heartbeat_ttl_ms)
            for stream, shard in sorted(self._beating):
                pipe.set(self.keys.shard_heartbeat(self.owner, stream, shard), pid, px=self.heartbeat_ttl_ms)
            await pipe.execute()

    async def drop_heartbeat(self) -> None:
        """At exit: batches left claimed become orphans at once instead of after the TTL."""
        self._alive = False
        beats = [self.keys.shard_heartbeat(self.owner, stream, shard) for stream, shard in sorted(self._beating)]
        await self.client.delete(self.keys.heartbeat(self.owner), *beats)

    async def _beat_in(self, stream: str, shard: int) -> None:
        """Before the first claim in a shard: its heartbeat exists, else another flusher
        would take the batch as an orphan at once. One SET per shard per process."""
        if (stream, shard) in self._beating:
            return
        if self._alive:
            await self.client.set(
                self.keys.shard_heartbeat(self.owner, stream, shard), str(os.getpid()), px=self.heartbeat_ttl_ms
            )
        self._beating.add((stream, shard))

    def stop_beating(self, stream: str, shard: int) -> None:
        """No longer keep a heartbeat in this shard's slot (its lease was released or lost, and no
        batch of it is held): whatever key of ours is left there becomes the lease holder's orphan.
        The caller deletes the key itself (flusher/leases.py, in its release script)."""
        self._beating.discard((stream, shard))

    def holding(self, stream: str, shard: int) -> bool:
        """True while a batch of this shard is held (claimed, being claimed, or re-claimed)."""
        head = f"{self.keys.prefix}:inflight:{Keys.tag(stream, shard)}:"
        return any(k.startswith(head) for k in self._held)

    async def confirm(self, claim: Claim) -> bool:
        """Is the batch still ours? Asked before a write once the shard's lease may have lapsed;
        True renews our heartbeat in the shard with the answer (see ``_CONFIRM_LUA``). False: another
        flusher re-claimed it, and the claim is dropped here without touching Redis."""
        hb = self.keys.shard_heartbeat(self.owner, claim.stream, claim.shard)
        if int(await self._confirm(keys=[claim.key, hb], args=[str(os.getpid()), self.heartbeat_ttl_ms])):
            return True
        self._held.discard(claim.key)
        return False

    def holds(self, key: str) -> bool:
        """True while ``key`` is a batch this instance works on (claimed, not yet finished or given back)."""
        return key in self._held

    async def _run_holding(self, key: str, call: Awaitable[Any]) -> Any:
        """Run a script that may create ``key``; the key stays held only if it came back with frames.

        On any error the outcome is unknown (the script may have run with its
        reply lost): the key is released, so if it exists it is an orphan of ours
        and the next scan re-claims it.
        """
        self._held.add(key)
        try:
            frames = await call
        except BaseException:
            self._held.discard(key)
            raise
        if not frames:
            self._held.discard(key)
        return frames

    async def claim(self, stream: str, max_frames: int, shard: int = 0, *, leased: bool = False) -> Claim | None:
        """Claim up to ``max_frames`` frames of one shard; None when none wait. ``leased``: only while
        the shard's lease names this owner, checked in the script (else :class:`LeaseLost`)."""
        await self._beat_in(stream, shard)
        key = self._next_key(stream, shard)
        now_ms = int(time.time() * 1000)
        batch_id = key.rsplit(":", 2)[-2] + "-" + key.rsplit(":", 1)[-1]
        keys = [self.keys.queue(stream, shard), key, self.keys.inflight_index(stream, shard), self.keys.state(key)]
        args: list[Any] = [max(1, max_frames), batch_id, now_ms]
        if self.notify_tap is not None:
            keys += [self.keys.notify_tapped(stream, shard), self.keys.notify_queue(stream, shard)]
            args.append("1" if stream in self.notify_tap else "0")
        if leased:
            if self.notify_tap is None:
                args.append("")
            keys.append(self.keys.lease(stream, shard))
            args.append(self.owner)
        frames = await self._run_holding(key, self._claim(keys=keys, args=args))
        if frames is None:
            raise LeaseLost(stream, shard)
        if not frames:
            return None
        return Claim(stream, key, list(frames), batch_id, now_ms, shard=shard)

    async def orphans(self, stream: str, shard: int = 0) -> list[str]:
        """In-flight keys of one shard of ``stream`` that no live worker holds.

        Another owner's key is an orphan once that owner's heartbeat in the shard
        is gone (one round trip for all of them); a key of our own is one as soon
        as we do not hold it (a claim or re-claim whose reply was lost).
        """
        members = await self.client.smembers(self.keys.inflight_index(stream, shard))
        keys = sorted(_s(m) for m in members)
        mine = [k for k in keys if Keys.owner_of(k) == self.owner and k not in self._held]
        others = [k for k in keys if Keys.owner_of(k) != self.owner]
        if not others:
            return mine
        async with self.client.pipeline(transaction=False) as pipe:
            for k in others:
                pipe.exists(self.keys.shard_heartbeat(Keys.owner_of(k), stream, shard))
            alive = await pipe.execute()
        return mine + [k for k, a in zip(others, alive, strict=True) if not a]

    async def reclaim(self, stream: str, orphan: str, shard: int = 0, *, leased: bool = False) -> Claim | None:
        """Take over an orphaned batch of one shard atomically; None if its owner is back or it is gone
        (or, ``leased``, if the shard's lease does not name this owner)."""
        own = Keys.owner_of(orphan) == self.owner
        if own and orphan in self._held:
            return None  # taken back meanwhile by a worker of ours: not an orphan
        await self._beat_in(stream, shard)
        key = self._next_key(stream, shard)
        keys = [
            orphan,
            key,
            self.keys.inflight_index(stream, shard),
            self.keys.shard_heartbeat(Keys.owner_of(orphan), stream, shard),
            self.keys.state(orphan),
            self.keys.state(key),
        ]
        args = ["1" if own else "0"]
        if leased:
            keys.append(self.keys.lease(stream, shard))
            args.append(self.owner)
        frames = await self._run_holding(key, self._reclaim(keys=keys, args=args))
        if not frames:
            return None
        state = await self.load_state(key)
        batch_id = state.get(STATE_BATCH_ID) or orphan.rsplit(":", 2)[-2] + "-" + orphan.rsplit(":", 1)[-1]
        if STATE_BATCH_ID not in state:
            await self.client.hset(self.keys.state(key), STATE_BATCH_ID, batch_id)
        claimed_ms = int(state.get(STATE_CLAIMED_MS) or time.time() * 1000)
        return Claim(stream, key, list(frames), batch_id, claimed_ms, reclaimed=True, shard=shard)

    async def load_state(self, key: str) -> dict[str, str]:
        raw: dict[Any, Any] = await self.client.hgetall(self.keys.state(key))
        return {_s(k): _s(v) for k, v in raw.items()}

    async def finish(self, claim: Claim, dead_items: Sequence[bytes] = ()) -> bool:
        """The sink has the rows: drop the claim, dead letters in the same transaction.

        False when the key was already gone (another flusher re-claimed it while
        this one could not refresh its heartbeat; the sink's dedupe absorbs the
        double write).
        """
        # The shard's own dead list: one slot for the whole transaction.
        dead = self.keys.dead(claim.stream, claim.shard)
        async with self.client.pipeline(transaction=True) as pipe:
            if dead_items:
                pipe.rpush(dead, *dead_items)
            pipe.delete(claim.key)
            pipe.delete(self.keys.state(claim.key))
            pipe.srem(self.keys.inflight_index(claim.stream, claim.shard), claim.key)
            if dead_items:
                # Dead letters hold whole rows (personal data): bounded in count and age.
                pipe.ltrim(dead, -self.dead_letter_max, -1)
                pipe.expire(dead, self.dead_letter_ttl_s)
            results = await pipe.execute()
        self._held.discard(claim.key)
        return bool(results[1 if dead_items else 0])

    async def give_back(self, claim: Claim) -> int:
        """Return the frames to the head of the queue, in order (shutdown before the write)."""
        keys = [
            claim.key,
            self.keys.queue(claim.stream, claim.shard),
            self.keys.inflight_index(claim.stream, claim.shard),
            self.keys.state(claim.key),
        ]
        if self.notify_tap is not None:
            keys.append(self.keys.notify_tapped(claim.stream, claim.shard))
        moved = await self._give_back(keys=keys)
        self._held.discard(claim.key)
        return int(moved)

    async def oldest_inflight_frame(
        self, streams: Iterable[str], shards: Mapping[str, int] | None = None
    ) -> dict[str, bytes]:
        """First frame of each stream's oldest in-flight batch (by claim time), for the lag gauge;
        ``shards``: a stream's shard count when above 1 (every shard is looked at)."""
        out: dict[str, bytes] = {}
        for stream in streams:
            members: set[Any] = set()
            for shard in range((shards or {}).get(stream, 1)):
                members |= await self.client.smembers(self.keys.inflight_index(stream, shard))
            if not members:
                continue
            keys = [_s(m) for m in members]
            async with self.client.pipeline(transaction=False) as pipe:
                for k in keys:
                    pipe.lindex(k, 0)
                firsts = await pipe.execute()
            frames = [f for f in firsts if f]
            if frames:
                out[stream] = frames[0] if len(frames) == 1 else min(frames, key=_frame_sort_key)
        return out


def _frame_sort_key(frame: bytes) -> int:
    from flusher.batch import frame_oldest_ms

    return frame_oldest_ms(frame) or 2**62


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)

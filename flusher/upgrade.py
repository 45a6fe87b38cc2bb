"""Moving what Redis still holds in the layout before hash tags into shard 0 of each stream.

Before the sharding a stream's keys had no hash tag (``P:q:{stream}`` was
``oceanus:q:pageview``, now ``oceanus:q:{pageview}``; oceanus/buffer.py names
both). A flusher or notifier of this version started on such a Redis moves, per
stream, in one script each (so a crash between two leaves every frame in
exactly one list):

- the queue, ahead of shard 0's queue (its frames are older), order kept, with
  the notifier's tap counter merged so that "the first N frames were copied"
  stays true (frames may be evaluated twice, never missed), and the notify
  queue behind shard 0's notify queue;
- the dead letters, ahead of shard 0's dead list, the longer TTL kept;
- each old in-flight batch whose owner's ``P:hb:{owner}`` is gone (an owner of
  the old version still alive finishes or gives back its batch itself): renamed
  to shard 0 under the same owner and sequence number, its state hash with it,
  so the re-claim scan takes it over with its ``batch_id`` and sink state.

During a rolling update old collectors keep pushing to the old queue, and old
flushers keep giving batches back to it: :meth:`Upgrade.run` is called every
:data:`UPGRADE_EVERY_S`, and costs one pipelined ``EXISTS`` per stream when
there is nothing to move.

Single instance only: the scripts name keys of several slots. The old layout
never ran on Redis Cluster, so a cluster has nothing to move: the flusher and the
notifier do not create an :class:`Upgrade` for a ``redis+cluster://`` URL
(flusher/runner.py, notifier/runner.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio as aioredis

from oceanus.buffer import Keys

#: Seconds between two looks for old-layout keys (a rolling update's old collectors keep pushing).
UPGRADE_EVERY_S = 5.0
#: Most frames one run of the queue script moves when shard 0's queue already holds frames
#: (moved one by one, and Redis does nothing else meanwhile); an empty shard 0 takes the whole
#: old queue at once (RENAME). The caller runs it again while it moves this many.
MOVE_MAX_FRAMES = 10_000

# KEYS: old queue, new queue, old tapped, new tapped, old notify queue, new notify queue,
# old dead, new dead.  ARGV: most frames to move.  Returns how many queue frames were moved.
# The last k frames of the old queue go to the head of the new one, so runs that each move a
# tail keep the old order ahead of the new frames. Tap counters (oceanus/buffer.py): the old
# queue's first `to` frames are copied; of the k moved, those before position `to` are. When
# all k are copied, the new head's copied prefix is k plus the new counter, else only them.
_MOVE_LUA = """
local lo = redis.call('LLEN', KEYS[1])
local ln = redis.call('LLEN', KEYS[2])
local to = math.min(tonumber(redis.call('GET', KEYS[3]) or '0'), lo)
local tn = math.min(tonumber(redis.call('GET', KEYS[4]) or '0'), ln)
local k = 0
if lo > 0 then
  local t
  if ln == 0 then
    redis.call('RENAME', KEYS[1], KEYS[2])
    k = lo
    t = to
  else
    k = math.min(lo, tonumber(ARGV[1]))
    for i = 1, k do redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT') end
    local copied = math.max(0, to - (lo - k))
    if copied == k then t = k + tn else t = copied end
  end
  if t > 0 then redis.call('SET', KEYS[4], t) else redis.call('DEL', KEYS[4]) end
  to = math.min(to, lo - k)
end
if to > 0 then redis.call('SET', KEYS[3], to) else redis.call('DEL', KEYS[3]) end
if redis.call('EXISTS', KEYS[5]) == 1 then
  if redis.call('EXISTS', KEYS[6]) == 0 then
    redis.call('RENAME', KEYS[5], KEYS[6])
  else
    while redis.call('LMOVE', KEYS[5], KEYS[6], 'LEFT', 'RIGHT') do end
  end
end
if redis.call('EXISTS', KEYS[7]) == 1 then
  if redis.call('EXISTS', KEYS[8]) == 0 then
    redis.call('RENAME', KEYS[7], KEYS[8])
  else
    local ttl = redis.call('PTTL', KEYS[7])
    while redis.call('LMOVE', KEYS[7], KEYS[8], 'RIGHT', 'LEFT') do end
    if ttl > redis.call('PTTL', KEYS[8]) and redis.call('PTTL', KEYS[8]) > 0 then
      redis.call('PEXPIRE', KEYS[8], ttl)
    end
  end
end
return k
"""

# KEYS: old in-flight key, new in-flight key, old index, new index, the owner's heartbeat,
# old state, new state. Returns 1 when the batch was moved, 0 when its owner lives or it is gone.
_ADOPT_LUA = """
if redis.call('EXISTS', KEYS[5]) == 1 then return 0 end
redis.call('SREM', KEYS[3], KEYS[1])
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[6])
  return 0
end
redis.call('RENAME', KEYS[1], KEYS[2])
if redis.call('EXISTS', KEYS[6]) == 1 then redis.call('RENAME', KEYS[6], KEYS[7]) end
redis.call('SADD', KEYS[4], KEYS[2])
return 1
"""


class Upgrade:
    """Moves old-layout keys of ``streams`` into shard 0 (see the module docstring).

    ``claim_keys``: the namespaces whose old in-flight batches are adopted
    (the flusher's ``Keys(P)``, the notifier's ``Keys(P:notify)``); the queues,
    tap counters and dead letters are always those of ``Keys(prefix)``.
    """

    def __init__(self, client: aioredis.Redis, prefix: str, streams: Sequence[str], claim_keys: Sequence[Keys]) -> None:
        self.client = client
        self.keys = Keys(prefix)
        self.streams = tuple(streams)
        self.claim_keys = tuple(claim_keys)
        self._move = client.register_script(_MOVE_LUA)
        self._adopt = client.register_script(_ADOPT_LUA)

    def _old_keys(self, stream: str) -> list[str]:
        k = self.keys
        return [
            k.legacy_queue(stream),
            k.legacy_notify_tapped(stream),
            k.legacy_notify_queue(stream),
            k.legacy_dead(stream),
            *(ck.legacy_inflight_index(stream) for ck in self.claim_keys),
        ]

    async def run(self) -> int:
        """One look, moving whatever is found; returns the frames and batches moved."""
        async with self.client.pipeline(transaction=False) as pipe:
            for stream in self.streams:
                pipe.exists(*self._old_keys(stream))
            found = await pipe.execute()
        moved = 0
        for stream, n in zip(self.streams, found, strict=True):
            if n:
                moved += await self._upgrade_stream(stream)
        return moved

    async def _upgrade_stream(self, stream: str) -> int:
        k = self.keys
        keys = [
            k.legacy_queue(stream),
            k.queue(stream),
            k.legacy_notify_tapped(stream),
            k.notify_tapped(stream),
            k.legacy_notify_queue(stream),
            k.notify_queue(stream),
            k.legacy_dead(stream),
            k.dead(stream),
        ]
        moved = 0
        while True:
            n = int(await self._move(keys=keys, args=[MOVE_MAX_FRAMES]))
            moved += n
            if n < MOVE_MAX_FRAMES:
                break
        for ck in self.claim_keys:
            members = await self.client.smembers(ck.legacy_inflight_index(stream))
            for member in sorted(m.decode() if isinstance(m, bytes) else str(m) for m in members):
                owner = Keys.owner_of(member)
                new = ck.inflight(stream, owner, Keys.seq_of(member))
                moved += int(
                    await self._adopt(
                        keys=[
                            member,
                            new,
                            ck.legacy_inflight_index(stream),
                            ck.inflight_index(stream),
                            ck.heartbeat(owner),
                            ck.state(member),
                            ck.state(new),
                        ]
                    )
                )
        return moved

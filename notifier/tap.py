"""The tap: the notifier copies a stream's new frames from the event queue to its own.

The collector pushes each frame once, to ``P:q:{stream}``, whatever the rules
(a second push per round cost the pixel benchmark 7 %). The notifier reads the
same queue instead, without taking anything from it: ``P:notify:tapped:{T}``
counts the frames at the head of the queue that are in the notify queue already,
and each run of :data:`_TAP_LUA` copies the frames after them and moves the
counter on, in one script (``{T}``: the hash tag of one shard of the stream, the
same in all three keys)::

    P:q:{T}  [ copied (tapped) | not yet ]  --tap: LRANGE + RPUSH + SET-->  P:notify:q:{T}

The flusher pops frames from the head meanwhile; its claim copies the ones the
tap had not reached and shrinks the counter (flusher/claim.py), so each frame
reaches the notify queue exactly once whether the notifier runs or not; who else
changes the counter: oceanus/buffer.py. The tap never waits for the flusher, so
a warehouse outage (the flusher not claiming) does not delay a notification.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from oceanus.buffer import Keys

#: Frames one tap run copies at most, and the length the tap fills the notify queue
#: up to: past it the frames wait in the event queue (where they are anyway) rather
#: than twice in Redis.
TAP_MAX_FRAMES = 1000

# KEYS: queue, tapped, notify queue.  ARGV: most frames to copy.
# Returns how many frames were copied. Indexes from the tail: LRANGE walks to its start.
_TAP_LUA = """
local len = redis.call('LLEN', KEYS[1])
local stored = tonumber(redis.call('GET', KEYS[2]) or '0')
local t = math.min(stored, len)
local room = tonumber(ARGV[1]) - redis.call('LLEN', KEYS[3])
local k = math.min(len - t, room)
if k > 0 then
  local items = redis.call('LRANGE', KEYS[1], t - len, t - len + k - 1)
  for i = 1, #items, 1000 do
    redis.call('RPUSH', KEYS[3], unpack(items, i, math.min(i + 999, #items)))
  end
  t = t + #items
end
if t ~= stored then
  if t > 0 then redis.call('SET', KEYS[2], t) else redis.call('DEL', KEYS[2]) end
end
return math.max(k, 0)
"""


class Tap:
    """Copies frames of the streams with rules from their event queues to the notify queues."""

    def __init__(self, client: aioredis.Redis, prefix: str, max_frames: int = TAP_MAX_FRAMES) -> None:
        self.keys = Keys(prefix)
        self.max_frames = max_frames
        self._tap = client.register_script(_TAP_LUA)

    async def run(self, stream: str, shard: int = 0) -> int:
        """One run for one shard of ``stream``: the frames copied (0: none new, or its notify queue is full)."""
        copied = await self._tap(
            keys=[
                self.keys.queue(stream, shard),
                self.keys.notify_tapped(stream, shard),
                self.keys.notify_queue(stream, shard),
            ],
            args=[self.max_frames],
        )
        return int(copied)

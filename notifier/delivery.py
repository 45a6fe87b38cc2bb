"""One delivery worker per channel: take a job, send it once, retry, dead-letter.

::

    P:notify:jobs:{C} --LMOVE--> P:notify:sending:{C}:{owner} --send--> SET P:notify:sent:{id} --> LREM

- **Once.** Before sending, the delivery key ``P:notify:sent:{job id}`` is
  checked; it is set (with ``notify.delivered_ttl_s``) right after the channel
  accepted. A job delivered again (a notifier killed mid-send, a frame
  evaluated twice) finds the key and is dropped as ``duplicate``. The one
  window left: killed after the channel accepted and before the key was set;
  that job is sent again. Webhook receivers close it with ``Idempotency-Key``.
- **Retries.** A retryable failure is retried after ``min(retry_max_s,
  retry_base_s * 2^n)`` seconds (full jitter) until ``give_up_after_s`` after
  the job was written, then dead-lettered with the last reason. A failure
  retrying cannot fix (a 4xx other than 408/425/429, a refused recipient) is
  dead-lettered at once and logged at ERROR. Jobs of a channel wait behind its
  head job; other channels have workers of their own.
- **Rate limit.** At most ``rate_limit.max`` messages per rule and channel per
  ``rate_limit.per_s`` window, by job id (a redelivered job is not counted twice); the rest are held and, once the
  window is over, one summary message says how many ("and 37 more in the last
  5 min").
- **Crash.** A sending list whose owner's heartbeat is gone is moved back to
  the head of the jobs list by any notifier.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable

import msgspec
import redis.asyncio as aioredis

from notifier import jobs
from notifier.channels.base import Channel, DeliveryError
from notifier.keys import RECENT_MAX, NotifyKeys
from notifier.metrics import NotifyMetrics
from oceanus.buffer import Keys
from oceanus.config import ChannelConfig, Config, RuleConfig

log = logging.getLogger("oceanus.notify")
_json = msgspec.json.Encoder()

# KEYS: sending list, jobs list, index. Moves a dead owner's job(s) back to the head, in order.
_RETURN_LUA = """
local moved = 0
while redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT') do moved = moved + 1 end
redis.call('SREM', KEYS[3], KEYS[1])
return moved
"""

# KEYS: the window's ids let through, its ids held. ARGV: job id, rate_limit.max, TTL (s).
# By job id, not a counter: a job handed back mid-retry, or evaluated twice, takes one place in its window
# (counted twice, it would hold back a message within the limit and add one to the summary).
_RATE_LUA = """
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return 1 end
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then return -1 end
if redis.call('SCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('SADD', KEYS[1], ARGV[1])
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  return 1
end
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return 0
"""
_LET_THROUGH, _HELD = 1, 0


def period_text(seconds: float) -> str:
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


class Worker:
    """Delivers one channel's jobs, one at a time, in order."""

    def __init__(
        self,
        cfg: Config,
        name: str,
        channel: Channel,
        client: aioredis.Redis,
        owner: str,
        metrics: NotifyMetrics,
        stopping: asyncio.Event,
        sleep: Callable[[float], float] = lambda s: random.uniform(0, s),
        on_pass: Callable[[], None] = lambda: None,
    ) -> None:
        """``on_pass``: called after each complete pass of :meth:`run` (a job finished, or none waiting),
        to tell the runner the worker is working (notifier/loops.py)."""
        self.cfg = cfg
        self.name = name
        self.ccfg: ChannelConfig = cfg.channels[name]
        self.channel = channel
        self.client = client
        self.owner = owner
        self.metrics = metrics
        self.stopping = stopping
        self.keys = NotifyKeys(cfg.redis.key_prefix, cfg.redis.cluster)
        self.sending = self.keys.sending(name, owner)
        self.rules = [r for r in cfg.rules.values() if name in r.channels and r.enabled]
        self._jitter = sleep
        self._on_pass = on_pass
        self._return = client.register_script(_RETURN_LUA)
        self._rate = client.register_script(_RATE_LUA)

    async def run(self) -> None:
        await self.client.sadd(self.keys.sending_index(self.name), self.sending)
        # A job of ours left from before (this owner only ever lives once, but a stop mid-send leaves one).
        while not self.stopping.is_set():
            raw: bytes | None = await self.client.lindex(self.sending, 0)  # type: ignore[assignment]
            if raw is None:
                raw = await self.client.lmove(  # type: ignore[assignment]
                    self.keys.jobs(self.name), self.sending, "LEFT", "RIGHT"
                )
            if raw is None:
                await self._summaries()
                self._on_pass()
                await self._wait(self.cfg.notify.poll_s)
                continue
            done = await self.deliver(raw)
            if done:
                await self.client.lrem(self.sending, 1, raw)  # type: ignore[arg-type]
            self._on_pass()
        # Stopping with a job unfinished: back to the head of the queue for the next notifier.
        await self._return(keys=[self.sending, self.keys.jobs(self.name), self.keys.sending_index(self.name)])

    async def _wait(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)

    async def deliver(self, raw: bytes) -> bool:
        """True when the job is finished (sent, duplicate, held, dead); False when stopping mid-retry."""
        try:
            job = jobs.decode(raw)
        except msgspec.DecodeError as exc:
            await self._dead(None, raw, f"not a delivery job: {exc}")
            return True
        if await self.client.exists(self.keys.sent(job.id)):
            self._count(job, "duplicate")
            return True
        if job.kind != "summary" and not await self._within_rate(job):
            return True
        attempt = 0
        while True:
            try:
                await self.channel.send(job)
            except DeliveryError as exc:
                age_s = time.time() - job.created_ms / 1000
                if not exc.retryable:
                    log.error("channels.%s: %s refused for good, dead-lettered: %s", self.name, job.id, exc.reason)
                    await self._dead(job, raw, exc.reason)
                    return True
                if age_s >= self.ccfg.give_up_after_s:
                    log.error(
                        "channels.%s: %s failing for %.0f s (give_up_after_s), dead-lettered: %s",
                        self.name,
                        job.id,
                        age_s,
                        exc.reason,
                    )
                    await self._dead(job, raw, f"gave up after {age_s:.0f} s: {exc.reason}")
                    return True
                self.metrics.retries.labels(self.name).inc()
                wait = self._jitter(min(self.ccfg.retry_max_s, self.ccfg.retry_base_s * 2**attempt))
                wait = min(wait, max(0.0, self.ccfg.give_up_after_s - age_s))
                if attempt == 0:
                    log.warning("channels.%s: %s failed, retrying: %s", self.name, job.id, exc.reason)
                attempt += 1
                await self._wait(wait)
                if self.stopping.is_set():
                    return False
                continue
            await self._sent(job)
            return True

    async def _sent(self, job: jobs.Job) -> None:
        now = time.time()
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.set(self.keys.sent(job.id), b"1", ex=max(1, int(self.cfg.notify.delivered_ttl_s)))
            self._recent(pipe, job.rule, "sent", job.id)
            await pipe.execute()
        self._count(job, "sent")
        self.metrics.latency.labels(self.name).observe(max(0.0, now - job.event_ms / 1000))

    def _recent(self, pipe: aioredis.client.Pipeline, rule: str, outcome: str, detail: str) -> None:
        item = _json.encode(
            {"rule": rule, "channel": self.name, "outcome": outcome, "at": int(time.time()), "detail": detail[:300]}
        )
        pipe.lpush(self.keys.recent(), item)
        pipe.ltrim(self.keys.recent(), 0, RECENT_MAX - 1)

    def _count(self, job: jobs.Job, outcome: str) -> None:
        self.metrics.notifications.labels(job.rule, self.name, outcome).inc()

    async def _dead(self, job: jobs.Job | None, raw: bytes, reason: str) -> None:
        item = _json.encode({"job": raw.decode("utf-8", "replace"), "reason": reason, "at": int(time.time())})
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.rpush(self.keys.dead(self.name), item)
            pipe.ltrim(self.keys.dead(self.name), -self.cfg.notify.dead_letter_max, -1)
            await pipe.execute()
        # Apart from the dead list's MULTI: on a cluster the status page's list is in another slot,
        # and it only informs (a crash between the two leaves the dead letter without its line).
        async with self.client.pipeline(transaction=False) as pipe:
            self._recent(pipe, job.rule if job else "", "dead", reason)
            await pipe.execute()
        if job is not None:
            self._count(job, "dead")

    def _rule(self, name: str) -> RuleConfig | None:
        return next((r for r in self.rules if r.name == name), None)

    async def _within_rate(self, job: jobs.Job) -> bool:
        rule = self._rule(job.rule)
        if rule is None:
            return True
        per = rule.rate_limit.per_s
        window = int(time.time() // per)
        ttl = max(1, int(per * 3))
        keys = [self.keys.rate(rule.name, self.name, window), self.keys.held(rule.name, self.name, window)]
        verdict = int(await self._rate(keys=keys, args=[job.id, rule.rate_limit.max, ttl]))
        if verdict == _LET_THROUGH:
            return True
        self._count(job, "held" if verdict == _HELD else "duplicate")
        return False

    async def _summaries(self) -> None:
        """After a rate-limit window with held messages: one message saying how many."""
        now = time.time()
        for rule in self.rules:
            per = rule.rate_limit.per_s
            current = int(now // per)
            for window in (current - 2, current - 1):
                key = self.keys.held(rule.name, self.name, window)
                n = int(await self.client.scard(key))
                if not n:
                    continue
                text = f"{{rule}}: and {n} more in the last {period_text(per)} (rate limit)"
                job = jobs.Job(
                    id=f"{rule.name}:{self.name}:summary:{window}",
                    kind="summary",
                    rule=rule.name,
                    channel=self.name,
                    stream=rule.stream,
                    event_ms=int(window * per * 1000),
                    created_ms=int(now * 1000),
                    template=text,
                    subject="oceanus: {rule} (summary)",
                    values={"rule": rule.name, "stream": rule.stream, "count": n},
                )
                # Push, then forget the count: a crash between them pushes the same job id again,
                # which its delivery key drops.
                await self.client.rpush(self.keys.jobs(self.name), jobs.encode(job))
                await self.client.delete(key)


async def return_orphans(client: aioredis.Redis, cfg: Config, owner: str) -> int:
    """Move the sending lists of notifiers whose heartbeat is gone back to their jobs lists."""
    keys = NotifyKeys(cfg.redis.key_prefix, cfg.redis.cluster)
    script = client.register_script(_RETURN_LUA)
    moved = 0
    for name in cfg.channels:
        for member in await client.smembers(keys.sending_index(name)):
            key = member.decode() if isinstance(member, bytes) else str(member)
            other = key.rsplit(":", 1)[-1]
            if other == owner or await client.exists(keys.claim.heartbeat(other)):
                continue
            moved += int(await script(keys=[key, keys.jobs(name), keys.sending_index(name)]))
    return moved


def heartbeat_key(cfg: Config, owner: str) -> str:
    return Keys(NotifyKeys(cfg.redis.key_prefix, cfg.redis.cluster).base).heartbeat(owner)

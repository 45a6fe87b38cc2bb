"""Evaluation: claim frames from a stream's notify queue, match rules, write delivery jobs.

Per stream and round (one round trip each)::

    P:q:{stream} --tap (notifier.tap)--> P:notify:q:{stream}
    P:notify:q:{stream} --claim (flusher.claim.Claimer)--> in flight
        --decode, match--> RPUSH jobs / threshold script (one pipeline) --> finish (release the claim)

The jobs are in Redis before the claim is released, so a crash at any point
leaves every frame either still claimable or turned into jobs; a frame
evaluated twice (crash between the two) writes the same job ids again, and the
delivery key stops the second send.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis

from flusher.claim import Claim, Claimer
from notifier import jobs
from notifier.keys import NotifyKeys
from notifier.metrics import NotifyMetrics
from notifier.rules import Predicate, compile_rule, cut, needed_fields
from notifier.tap import Tap
from oceanus.buffer import FrameError, decode_frame, event_id_time_ms
from oceanus.config import Config, RuleConfig

log = logging.getLogger("oceanus.notify")

# KEYS: window zset, fired key, then one job list per channel.
# ARGV: member (event id), event ms, window ms, count, then one job JSON per channel.
# One event joins the window; when it holds `count` events within `window` of this one and the rule has
# not fired in the last window for this group, fire: mark it and write the jobs, atomically. Re-run for
# the same event (redelivery), ZADD changes nothing and the mark stops a second fire.
_THRESHOLD_LUA = """
local t = tonumber(ARGV[2])
local w = tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], t, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', t - 2 * w)
redis.call('PEXPIRE', KEYS[1], 2 * w)
if redis.call('ZCOUNT', KEYS[1], t - w, t) < tonumber(ARGV[4]) then return 0 end
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', w) then return 0 end
for i = 3, #KEYS do redis.call('RPUSH', KEYS[i], ARGV[i + 2]) end
return 1
"""


class Compiled:
    __slots__ = ("match", "rule")

    def __init__(self, rule: RuleConfig) -> None:
        self.rule = rule
        self.match: Predicate = compile_rule(rule)


def event_values(columns: Sequence[str], row: Sequence[Any]) -> dict[str, Any]:
    ev = dict(zip(columns, row, strict=False))
    raw = ev.get("event_id")
    if isinstance(raw, bytes):
        ev["event_id"] = raw.hex()
    return ev


class Evaluator:
    def __init__(self, cfg: Config, client: aioredis.Redis, claimer: Claimer, metrics: NotifyMetrics) -> None:
        self.cfg = cfg
        self.client = client
        self.claimer = claimer
        self.metrics = metrics
        self.keys = NotifyKeys(cfg.redis.key_prefix, cfg.redis.cluster)
        self.cluster = cfg.redis.cluster
        self.by_stream: dict[str, list[Compiled]] = {}
        for rule in cfg.rules.values():
            if rule.enabled:
                self.by_stream.setdefault(rule.stream, []).append(Compiled(rule))
        self._threshold = client.register_script(_THRESHOLD_LUA)
        self.tap = Tap(client, cfg.redis.key_prefix)
        #: Batches claimed whose jobs are not written and released yet: held by this notifier (no
        #: orphan scan takes them back while it lives), so written again here after an error.
        self._unfinished: list[Claim] = []

    @property
    def streams(self) -> list[str]:
        return sorted(self.by_stream)

    def _job(
        self,
        rule: RuleConfig,
        channel: str,
        stream: str,
        ev: dict[str, Any],
        columns: Sequence[str],
        extra: dict[str, Any],
        job_id: str,
        kind: jobs.Kind,
    ) -> bytes:
        limit = self.cfg.notify.max_value_chars
        fields = needed_fields(rule, [c for c in columns if c != "event_id"] + ["event_id"])
        values = {f: cut(ev.get(f), limit) for f in fields}
        values.update({"rule": rule.name, "stream": stream, **extra})
        raw_id = ev.get("event_id", "")
        event_ms = (
            event_id_time_ms(bytes.fromhex(raw_id))
            if isinstance(raw_id, str) and len(raw_id) == 32
            else int(time.time() * 1000)
        )
        return jobs.encode(
            jobs.Job(
                id=job_id,
                kind=kind,
                rule=rule.name,
                channel=channel,
                stream=stream,
                event_id=str(raw_id),
                event_ms=event_ms,
                created_ms=int(time.time() * 1000),
                template=rule.template,
                subject=rule.subject,
                values=values,
                fields=tuple(rule.fields or fields),
            )
        )

    async def evaluate(self, claim: Claim) -> int:
        """Write the jobs of one claimed batch; returns how many events matched."""
        rules = self.by_stream.get(claim.stream, [])
        matched: dict[str, int] = {}
        async with self.client.pipeline(transaction=False) as pipe:
            for frame in claim.frames:
                try:
                    columns, rows = decode_frame(frame)
                except FrameError as exc:
                    # Not ours to keep: the flusher dead-letters its own copy of this frame.
                    log.error("notify queue of %s: skipping a frame that does not decode: %s", claim.stream, exc)
                    self.metrics.corrupt_frames.inc()
                    continue
                for row in rows:
                    ev = event_values(columns, row)
                    for c in rules:
                        if not c.match(ev):
                            continue
                        matched[c.rule.name] = matched.get(c.rule.name, 0) + 1
                        await self._queue(pipe, c.rule, claim.stream, ev, columns)
            if len(pipe):
                await pipe.execute()
        # Counted once the jobs are written: a batch whose writes failed is evaluated again.
        for name, n in matched.items():
            self.metrics.matched.labels(name).inc(n)
        return sum(matched.values())

    async def _queue(
        self, pipe: Any, rule: RuleConfig, stream: str, ev: dict[str, Any], columns: Sequence[str]
    ) -> None:
        eid = str(ev.get("event_id", ""))
        th = rule.threshold
        if th is None:
            for ch in rule.channels:
                pipe.rpush(
                    self.keys.jobs(ch), self._job(rule, ch, stream, ev, columns, {}, f"{rule.name}:{ch}:{eid}", "event")
                )
            return
        group = str(cut(ev.get(th.group_by), 100)) if th.group_by else ""
        extra = {"count": th.count, "window_s": f"{th.window_s:g}", "group": group}
        job_list = [
            self._job(rule, ch, stream, ev, columns, extra, f"{rule.name}:{ch}:thr:{group}:{eid}", "threshold")
            for ch in rule.channels
        ]
        window_ms = max(1, int(th.window_s * 1000))
        event_ms = jobs.decode(job_list[0]).event_ms
        keys = [
            self.keys.threshold(rule.name, group),
            self.keys.fired(rule.name, group),
            *(self.keys.jobs(ch) for ch in rule.channels),
        ]
        args: list[str | int | bytes] = [eid, event_ms, window_ms, th.count, *job_list]
        if not self.cluster:
            await self._threshold(keys=keys, args=args, client=pipe)
            return
        # redis-py's cluster pipeline sends EVALSHA without loading the script on the node (and a
        # promoted replica has none: scripts are not replicated), so on a cluster the script runs on
        # its own, where a NOSCRIPT reply (nothing ran) is answered by loading it and sending it once
        # more. The jobs queued before it are sent first, so a channel's jobs keep the events' order.
        if len(pipe):
            await pipe.execute()
        await self._threshold(keys=keys, args=args)

    async def round(self) -> int:
        """Tap, then claim and evaluate, once per shard of each stream; returns the frames handled.

        The tap runs every round, so at least every ``notify.poll_s`` (the loop's idle wait):
        that interval is what it adds to a notification's latency.

        An error in one shard (a reply such as OOM or WRONGTYPE, a master down on a cluster) does not
        keep the others from their round: it is raised once every shard had its turn. A batch whose
        jobs were not written stays claimed by this notifier and is evaluated again first in the
        next rounds; its shard claims nothing more meanwhile, so a channel's jobs keep their order
        and a lasting fault holds one batch per shard, not a growing pile.
        """
        handled = 0
        errors: list[Exception] = []
        for stream in self.streams:
            # Every shard each round: tap and claim touch one shard's slot each.
            for shard in range(self.cfg.streams[stream].shards):
                try:
                    handled += await self._shard_round(stream, shard)
                except Exception as exc:  # noqa: BLE001 - the other shards' turn first; raised below
                    errors.append(exc)
        if errors:
            raise errors[0]
        return handled

    async def _shard_round(self, stream: str, shard: int) -> int:
        left = [c for c in self._unfinished if c.stream == stream and c.shard == shard]
        for claim in left:
            await self._write(claim)
            self._unfinished.remove(claim)
        if left:
            return sum(len(c.frames) for c in left)
        await self.tap.run(stream, shard)
        new = await self.claimer.claim(stream, self.cfg.notify.claim_frames, shard)
        if new is None:
            return 0
        await self._write_or_keep(new)
        return len(new.frames)

    async def _write(self, claim: Claim) -> None:
        """Evaluate a claimed batch, then release it. Sent again after an error (a release whose reply
        was lost included): the jobs written twice keep their ids, and the delivery keys drop the
        second copy; a threshold's script counts an event once."""
        await self.evaluate(claim)
        await self.claimer.finish(claim)

    async def _write_or_keep(self, claim: Claim) -> None:
        """:meth:`_write`; on an error the batch joins ``_unfinished``, for the rounds to write (only
        they take batches out of it, so a batch is never written by two tasks at once)."""
        try:
            await self._write(claim)
        except BaseException:
            self._unfinished.append(claim)
            raise

    async def reclaim_orphans(self) -> int:
        n = 0
        for stream in self.streams:
            shards = range(self.cfg.streams[stream].shards)
            for shard, orphan in [(s, o) for s in shards for o in await self.claimer.orphans(stream, s)]:
                claim = await self.claimer.reclaim(stream, orphan, shard)
                if claim is None:
                    continue
                log.info("re-evaluating %d frames of %s left by a notifier that stopped", len(claim.frames), stream)
                # Ours now, and held: if its jobs are not written here, the evaluator's rounds write them.
                await self._write_or_keep(claim)
                n += 1
        return n

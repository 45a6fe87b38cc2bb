"""Micro-batching writer: one pipelined RPUSH per stream per batch, durable ack.

Requests hand their rows to :meth:`Pusher.submit` and await the future it
returns; one future is shared by every request of the current batch. A single
writer task per worker takes the whole batch when it is ``batch_max_events``
big or ``batch_linger_ms`` old (or at once when the previous round took longer
than the linger), encodes one frame per stream
(:func:`oceanus.buffer.encode_frame`), and sends one pipelined round on its own
connection (:class:`~collector.resp.RedisLink`): the RPUSHes plus, at most every
``STATS_EVERY_S``, the per-minute stats and recent validation errors. The future
resolves only after Redis acknowledged every RPUSH of the round, so a 2xx means
"in Redis". The link is :class:`~collector.resp.RedisLink` for one Redis or
:class:`~collector.cluster.ClusterLink` for a cluster (a share per master); with
``redis.min_replicas_ack`` either ends the round with ``WAIT`` and puts
:class:`~collector.resp.NotReplicated` in the place of what too few replicas hold.
Results are per command: a frame whose RPUSH failed in its place goes to the
spool, the others are acknowledged from Redis.

While Redis is unreachable (or refuses a push) the frames go to the fsync'd disk
:class:`~collector.spool.Spool` instead, and the future resolves after the
fsync. The spool is replayed, in order, before any new frame is pushed once
Redis answers again. Only when the spool is full does the future fail
(:class:`Unavailable` -> 503).

On shutdown (:meth:`Pusher.drain`) the queued batch is written, then the whole
spool is replayed while Redis answers, within the drain budget: a spool on a
pod's ephemeral disk is deleted with the pod, so every acknowledged frame left
in it at exit is lost. Whatever is left is logged with its byte count and
counted (``oceanus_spool_abandoned_bytes_total``), and ``oceanus collector``
exits non-zero (collector/server.py).

Delivery is at least once: a connection lost after Redis applied a pipeline
but before its reply arrived leads to the same frame being spooled and
replayed; the flusher dedupes rows by ``event_id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from collector.metrics import Metrics
from collector.resp import Link, NotReplicated, pack
from collector.spool import Record, Spool
from oceanus import redisclient
from oceanus.buffer import RECENT_ERRORS_MAX, STATS_TTL_S, Keys, encode_frame
from oceanus.config import Config

#: First wait before Redis is tried again after a failure, and the cap (seconds).
RETRY_BASE_S = 0.1
RETRY_MAX_S = 2.0
#: Stats and metrics are written at most this often (seconds); leftovers by the idle round.
STATS_EVERY_S = 0.25
#: Idle wake-up for stats and spool replay when no event arrives (seconds).
IDLE_ROUND_S = 0.25
#: Spool records replayed before a new batch; the rest waits, so a long backlog
#: never holds the current requests for long (new frames queue behind it).
REPLAY_RECORDS_PER_ROUND = 1024

_json = msgspec.json.Encoder()
log = logging.getLogger("oceanus.collector")


class Unavailable(Exception):
    """Neither Redis nor the spool could take the batch."""


class _Batch:
    __slots__ = ("columns", "count", "future", "rows", "started")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.rows: dict[str, list[list[Any]]] = {}
        self.columns: dict[str, Sequence[str]] = {}
        self.count = 0
        self.future: asyncio.Future[None] = loop.create_future()
        self.started = 0.0


def make_redis(cfg: Config) -> aioredis.Redis:
    """A redis-py client for the routes other than the writer (the status page),
    which has its own :class:`~collector.resp.RedisLink` (or ``ClusterLink``).

    A bounded, blocking pool and no hidden retries: redis-py raises
    ``MaxConnectionsError`` when its default pool is exhausted; the blocking
    pool waits (up to ``redis.timeout_s``) instead, and a failed call fails at
    once rather than through several reconnect attempts.
    """
    if cfg.redis.cluster:
        # redis-py's cluster client has no blocking pool; oceanus's one factory sets it up as every
        # other role does (no hidden retries, redirects followed), one pool per node.
        return redisclient.async_client(cfg.redis, max_connections=cfg.redis.pool_size)
    pool = aioredis.BlockingConnectionPool.from_url(
        cfg.redis.url,
        max_connections=cfg.redis.pool_size,
        timeout=cfg.redis.timeout_s,
        socket_timeout=cfg.redis.timeout_s,
        socket_connect_timeout=cfg.redis.timeout_s,
        retry=Retry(NoBackoff(), 0),
    )
    return aioredis.Redis(connection_pool=pool)


class Pusher:
    def __init__(self, cfg: Config, link: Link, spool: Spool, metrics: Metrics) -> None:
        self._link = link
        self._spool = spool
        self._metrics = metrics
        self._keys = Keys(cfg.redis.key_prefix)
        # Rules cost nothing here: the notifier copies a stream's frames from this queue itself
        # (notifier/tap.py), so a round is the same with or without them.
        # A stream's shards take turns round by round (one key per stream per round); each worker
        # starts at a random turn, so workers that start together do not fill one shard first.
        self._queue_keys = {
            n: [self._keys.queue(n, i).encode() for i in range(s.shards)] for n, s in cfg.streams.items()
        }
        self._turn = int.from_bytes(os.urandom(2), "big")
        self._max_events = cfg.collector.batch_max_events
        self._linger_s = cfg.collector.batch_linger_ms / 1000.0
        self._loop = asyncio.get_running_loop()
        self._batch = _Batch(self._loop)
        # Set while the writer sleeps; resolved (True) by the next submit/rejection.
        self._waker: asyncio.Future[bool] | None = None
        self._full: asyncio.Future[None] | None = None
        self._stopping = False
        # Monotonic time the shutdown replay of the spool must stop by (set by drain).
        self._drain_deadline = 0.0
        self._task: asyncio.Task[None] | None = None
        # Stats written with the next round: (stream, minute) -> [accepted, rejected].
        self._stats: dict[tuple[str, int], list[int]] = {}
        self._errors: list[bytes] = []
        self.redis_up = True
        # The last failed round was short of replicas (NotReplicated): replays ask before pushing.
        self._unreplicated = False
        self._retry_at = 0.0
        self._retry_wait = RETRY_BASE_S
        self._stats_due = 0.0
        self._metrics_due = 0.0
        # Quarantined spool bytes already added to the metric, by reason.
        self._quarantined_counted: dict[str, int] = {}

    # -- request side -----------------------------------------------------------

    def submit(self, stream: str, columns: Sequence[str], rows: list[list[Any]]) -> asyncio.Future[None]:
        """Queue ``rows``; the returned future resolves when they are durable."""
        batch = self._batch
        bucket = batch.rows.get(stream)
        if bucket is None:
            batch.rows[stream] = rows
            batch.columns[stream] = columns
        else:
            bucket.extend(rows)
        if not batch.count:
            batch.started = time.monotonic()
            self._wake()
        batch.count += len(rows)
        if batch.count >= self._max_events and self._full is not None and not self._full.done():
            self._full.set_result(None)
        return batch.future

    def rejected(self, stream: str, field: str, rule: str, n: int = 1) -> None:
        """Count a refused event for the status page (written with the next round,
        or by the idle round within ``IDLE_ROUND_S``)."""
        now = time.time()
        key = (stream, int(now // 60))
        counts = self._stats.get(key)
        if counts is None:
            counts = self._stats[key] = [0, 0]
        counts[1] += n
        if len(self._errors) < RECENT_ERRORS_MAX:
            self._errors.append(_json.encode({"stream": stream, "field": field, "rule": rule, "at": int(now)}))
        # An idle writer sleeps until woken: without this, a rejection with no
        # accepted traffic after it would reach Redis only with the next event.
        self._wake()

    @property
    def stopped(self) -> bool:
        """The writer has finished draining; nothing more can be made durable."""
        return self._task is not None and self._task.done()

    @property
    def ready(self) -> bool:
        """Able to accept: Redis answered last time, or the spool has room."""
        return self.redis_up or not self._spool.full

    # -- writer side ------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="oceanus-pusher")

    async def _run(self) -> None:
        while True:
            if not self._batch.count:
                if self._stopping:
                    if self._spool.pending and time.monotonic() < self._drain_deadline:
                        await self._replay_before_exit()
                        continue  # a batch may have come in meanwhile
                    if (self._stats or self._errors) and self.redis_up:
                        await self._push([], with_stats=True)  # last counts, once; best effort
                    return
                if self._spool.pending or self._stats or self._errors or self._metrics.dirty:
                    # Housekeeping while idle: replay the spool, write stats.
                    wait = IDLE_ROUND_S
                    if self._spool.pending and self.redis_up:
                        wait = 0.0
                    if not await self._sleep(wait):
                        await self._idle_round()
                        continue
                else:
                    await self._sleep(None)
                if not self._batch.count:
                    continue
            await self._linger()
            batch = self._batch
            self._batch = _Batch(self._loop)
            try:
                await self._write(batch)
            except Exception as exc:
                # e.g. the spool's disk failing: these requests get a 503, the next batch a new try.
                log.exception("writing a batch failed")
                _fail(batch.future, Unavailable(f"the batch could not be stored: {exc}"))

    async def _sleep(self, timeout: float | None) -> bool:
        """Until woken (True) or ``timeout`` seconds (False).

        Not ``asyncio.wait_for`` on an Event: under load the writer sleeps between
        most rounds, and wait_for makes a task per call; a bare future and a timer
        handle cost a fraction of that.
        """
        waker: asyncio.Future[bool] = self._loop.create_future()
        self._waker = waker
        timer = self._loop.call_later(timeout, _settle, waker, False) if timeout is not None else None
        try:
            return await waker
        finally:
            self._waker = None
            if timer is not None:
                timer.cancel()

    def _wake(self) -> None:
        waker = self._waker
        if waker is not None and not waker.done():
            waker.set_result(True)

    async def _idle_round(self) -> None:
        if self._spool.pending:
            await self._replay()
        if (
            (self._stats or self._errors)
            and not self._spool.pending
            and (self.redis_up or time.monotonic() >= self._retry_at)
        ):
            await self._push([], with_stats=True)
        self._metrics.flush()

    async def _linger(self) -> None:
        """Wait until the batch is full or ``batch_linger_ms`` after its first event."""
        if self._stopping or not self._batch.count:
            return
        remaining = self._batch.started + self._linger_s - time.monotonic()
        if remaining <= 0 or self._batch.count >= self._max_events:
            return
        self._full = self._loop.create_future()
        handle = self._loop.call_later(remaining, _resolve, self._full)
        try:
            await self._full
        finally:
            handle.cancel()
            self._full = None

    async def _write(self, batch: _Batch) -> None:
        frames: list[Record] = [
            (stream, encode_frame(batch.columns[stream], rows)) for stream, rows in batch.rows.items()
        ]
        minute = int(time.time() // 60)
        for stream, rows in batch.rows.items():
            key = (stream, minute)
            counts = self._stats.get(key)
            if counts is None:
                counts = self._stats[key] = [0, 0]
            counts[0] += len(rows)
        failed = frames
        if self._spool.pending:
            await self._replay()
        if not self._spool.pending and (self.redis_up or time.monotonic() >= self._retry_at):
            # Stats ride along at most every STATS_EVERY_S: they are for people, not per batch.
            with_stats = time.monotonic() >= self._stats_due
            failed = await self._push(frames, with_stats=with_stats)
        if failed:
            ok = await asyncio.to_thread(self._spool.append, failed)
            self._update_spool_metrics()
            if not ok:
                _fail(batch.future, Unavailable("Redis is unreachable and the spool is full"))
                return
        if batch.count:
            self._metrics.round(batch.rows, batch.count)
        _resolve(batch.future)
        now = time.monotonic()
        if now >= self._metrics_due:
            self._metrics.flush()
            self._metrics_due = now + STATS_EVERY_S

    async def _push(self, frames: list[Record], with_stats: bool) -> list[Record]:
        """One round (one write, one reply per command); returns the frames Redis did not take."""
        if frames:
            self._turn += 1
        commands = [pack(b"RPUSH", self._queue_key(stream), frame) for stream, frame in frames]
        stats: dict[tuple[str, int], list[int]] = {}
        errors: list[bytes] = []
        # Per stats command, in order: what to count back if it fails ((stream, minute), 0 accepted /
        # 1 rejected, n); None for the EXPIRE and LTRIM that only follow.
        owed: list[tuple[tuple[str, int], int, int] | None] = []
        if with_stats:
            self._stats_due = time.monotonic() + STATS_EVERY_S
            stats, self._stats = self._stats, {}
            errors, self._errors = self._errors, []
            for skey, (accepted, rejected) in stats.items():
                key = self._keys.stats(*skey)
                if accepted:
                    commands.append(pack(b"HINCRBY", key, b"accepted", accepted))
                    owed.append((skey, 0, accepted))
                if rejected:
                    commands.append(pack(b"HINCRBY", key, b"rejected", rejected))
                    owed.append((skey, 1, rejected))
                commands.append(pack(b"EXPIRE", key, STATS_TTL_S))
                owed.append(None)
            if errors:
                commands.append(pack(b"LPUSH", self._keys.recent_errors(), *errors))
                commands.append(pack(b"LTRIM", self._keys.recent_errors(), 0, RECENT_ERRORS_MAX - 1))
        if not commands:
            return []
        t0 = time.perf_counter()
        try:
            results = await self._link.call(commands[0] if len(commands) == 1 else b"".join(commands), len(commands))
        except OSError:
            self._mark_down()
            # Stats are best effort: keep them for the next round (bounded by minutes x streams).
            for skey, (a, r) in stats.items():
                self._owe(skey, 0, a)
                self._owe(skey, 1, r)
            self._errors = (errors + self._errors)[:RECENT_ERRORS_MAX]
            return frames
        self._metrics.push(time.perf_counter() - t0)
        # Each command's result is in its place: a refused RPUSH (WRONGTYPE, OOM, CLUSTERDOWN, a second
        # MOVED), a cluster node that did not answer (OSError) or a round too few replicas hold
        # (NotReplicated) fails that frame alone, and it goes to the spool; the others are in Redis.
        failed = [f for f, r in zip(frames, results, strict=False) if isinstance(r, Exception)]
        if with_stats:
            self._stats_failed(results[len(frames) :], owed, errors)
        if failed:
            self._unreplicated = any(isinstance(r, NotReplicated) for r in results[: len(frames)])
            self._mark_down()
        else:
            self._unreplicated = False
            self._mark_up()
        return failed

    def _stats_failed(
        self, results: list[Any], owed: list[tuple[tuple[str, int], int, int] | None], errors: list[bytes]
    ) -> None:
        """Count back the stats whose command failed, for the next round, as a failed round does.

        NotReplicated is no failure here: Redis applied the command, and counts are for people, so
        adding them again would count twice what a failover might lose once.
        """
        for result, what in zip(results, owed, strict=False):
            if what is not None and isinstance(result, Exception) and not isinstance(result, NotReplicated):
                self._owe(*what)
        if errors:
            lpush = results[len(owed)]
            if isinstance(lpush, Exception) and not isinstance(lpush, NotReplicated):
                self._errors = (errors + self._errors)[:RECENT_ERRORS_MAX]

    def _owe(self, skey: tuple[str, int], column: int, n: int) -> None:
        if n:
            counts = self._stats.get(skey)
            if counts is None:
                counts = self._stats[skey] = [0, 0]
            counts[column] += n

    def _queue_key(self, stream: str) -> bytes:
        keys = self._queue_keys.get(stream)
        return keys[self._turn % len(keys)] if keys is not None else self._keys.queue(stream).encode()

    async def _replay_before_exit(self) -> None:
        """Replay the spool until it is empty, a batch arrives, or the drain deadline.

        Redis is retried on the usual backoff until the deadline: a spool left at
        exit is lost with the pod's disk, so a Redis that comes back within the
        budget is worth waiting for.
        """
        while self._spool.pending and not self._batch.count:
            now = time.monotonic()
            if now >= self._drain_deadline:
                return
            if not self.redis_up and now < self._retry_at:
                await self._sleep(min(self._retry_at, self._drain_deadline) - now)
                continue
            # In rounds, so the deadline is checked between them.
            await self._replay()

    async def _replay(self) -> None:
        if time.monotonic() < self._retry_at and not self.redis_up:
            return

        async def push(records: list[Record]) -> None:
            if self._unreplicated and not await self._replicas_back(records):
                raise Unavailable("too few replicas acknowledge writes yet")
            failed = await self._push(records, with_stats=False)
            if failed:
                raise Unavailable("Redis refused a replayed frame")

        try:
            await self._spool.replay(push, REPLAY_RECORDS_PER_ROUND)
        except (Unavailable, OSError):
            self._mark_down()
        self._update_spool_metrics()

    async def _replicas_back(self, records: list[Record]) -> bool:
        """Whether the masters of these records' queues have ``min_replicas_ack`` replicas in step again.

        Asked with an ``LLEN`` per queue key, which the link ends with ``WAIT`` like any round:
        pushing the replay to find out would put another copy of the chunk in Redis at every
        retry (Redis applies what too few replicas acknowledged) for as long as a replica is away.
        """
        keys = {k for stream, _ in records for k in self._queue_keys.get(stream, [self._keys.queue(stream).encode()])}
        try:
            results = await self._link.call(b"".join(pack(b"LLEN", k) for k in keys), len(keys))
        except OSError:
            return False
        return not any(isinstance(r, Exception) for r in results)

    def _mark_down(self) -> None:
        if self.redis_up:
            self._retry_wait = RETRY_BASE_S
        else:
            self._retry_wait = min(self._retry_wait * 2, RETRY_MAX_S)
        self.redis_up = False
        self._retry_at = time.monotonic() + self._retry_wait
        self._metrics.redis_up.set(0)

    def _mark_up(self) -> None:
        if not self.redis_up:
            self.redis_up = True
            self._metrics.redis_up.set(1)

    def _update_spool_metrics(self) -> None:
        self._metrics.spool_bytes.set(self._spool.pending_bytes)
        self._metrics.spool_frames.set(self._spool.pending_frames)
        for reason, total in self._spool.quarantined.items():
            new = total - self._quarantined_counted.get(reason, 0)
            if new:
                self._metrics.spool_quarantined.labels(reason).inc(new)
                self._quarantined_counted[reason] = total

    # -- shutdown -------------------------------------------------------------------------

    def hurry(self) -> None:
        """Stop lingering: write every batch as soon as it has an event (shutdown)."""
        self._linger_s = 0.0
        if self._full is not None and not self._full.done():
            self._full.set_result(None)

    async def drain(self, timeout_s: float) -> bool:
        """Write what is queued (Redis, else spool), replay the spool, and stop.

        True if everything acknowledged reached Redis; False (logged and counted)
        if the budget ran out first or Redis stayed unreachable.
        """
        # The writer stops replaying a little early so it ends by itself, between
        # two replay rounds, rather than being cancelled in the middle of one.
        self._drain_deadline = time.monotonic() + max(timeout_s - IDLE_ROUND_S, 0.0)
        if self._spool.pending:
            log.info(
                "draining: replaying %d bytes of spool to Redis within %.1f s", self._spool.pending_bytes, timeout_s
            )
        self._stopping = True
        if self._full is not None and not self._full.done():
            self._full.set_result(None)
        self._wake()
        task = self._task
        if task is None:
            return self._left_in_spool() == 0
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout_s)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            _fail(self._batch.future, Unavailable("shutting down"))
            self._left_in_spool()
            return False
        return self._left_in_spool() == 0

    def _left_in_spool(self) -> int:
        """Report acknowledged bytes still in the spool as the writer stops."""
        self._update_spool_metrics()
        left = self._spool.pending_bytes
        if left:
            self._metrics.spool_abandoned.inc(left)
            log.error(
                "exiting with %d bytes of acknowledged events still in the spool %s (Redis %s); "
                "they are lost if this disk goes away with the pod",
                left,
                self._spool.directory,
                "answering" if self.redis_up else "unreachable",
            )
        return left


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _settle(fut: asyncio.Future[bool], value: bool) -> None:
    if not fut.done():
        fut.set_result(value)


def _fail(fut: asyncio.Future[None], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
        # Nobody may be waiting (all requests gone); do not log "never retrieved".
        fut.exception()

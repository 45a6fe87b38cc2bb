"""``oceanus flusher``: drain every stream's Redis list into the warehouse.

One asyncio loop per process; per stream one worker task::

    claim (or re-claim an orphan) -> decode + normalise (thread) -> sink.write (thread)
        -> finish (delete the claim, dead letters in the same MULTI)

Delivery guarantees (see docs/ARCHITECTURE.md):

- a frame leaves its queue only into an in-flight key, atomically, and the
  in-flight key is deleted only after ``sink.write`` returned: a crash at any
  point leaves the rows in Redis, and they are written again by whoever
  re-claims them — the sinks dedupe by ``event_id`` (DuckDB exactly; BigQuery
  by insertId / committed-stream offsets / job ids, with the dedup view);
- retryable sink errors back off with full jitter (``retry_base_s`` doubling,
  capped at ``retry_max_s``) for ever, the batch staying claimed. An error the
  sink calls non-retryable is a configuration problem (permissions, a missing
  dataset): it is logged and retried at the same pace rather than dropping data.
  A ``pacing`` refusal (a quota slot not open yet) is not a failure: the worker
  waits exactly its ``retry_after_s``, without a retry count or a smaller batch;
- rows the sink refuses go to ``P:dead:{stream}`` with its reason; a batch that
  keeps failing is halved until the rows at fault are found (the rule is in
  :meth:`StreamWorker._verdict`): a value the sink's row encoding cannot convert
  is dead-lettered at once, any other error only when the other half of the
  pair was written; an error every row shares is retried for ever;
- an unexpected exception in a worker is logged and counted, and the worker
  loop restarts; the batch in hand goes to the dead letters whole after
  ``flusher.poison_after_failures`` such failures;
- SIGTERM/SIGINT: stop claiming; a batch not yet handed to the sink is given
  back to the head of its queue; one being written is finished within
  ``drain_timeout_s``; past that the claim is left for re-claim and the
  process exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import functools
import logging
import os
import random
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from flusher.admin import AdminServer, query_endpoint
from flusher.batch import BatchBuilder, Built, dead_frame, dead_row, frame_oldest_ms
from flusher.claim import Claim, Claimer, RedisWriteState, make_owner_id
from flusher.controller import BatchController, Outcome
from flusher.metrics import FlusherMetrics
from flusher.sinks import make_sink
from flusher.sinks.base import Batch, Preparable, Sink, WriteResult
from oceanus import config as config_mod
from oceanus.buffer import Keys
from oceanus.config import Config, StreamConfig
from oceanus.errors import PayloadTooLarge, SinkError

log = logging.getLogger("oceanus.flusher")

#: Longest pause between two looks at an empty queue (seconds); a lone event
#: waits at most this plus the linger (``max_wait_s`` / 2) before being claimed.
IDLE_POLL_S = 0.1
#: How often queue lengths, lag and Redis memory are sampled for /metrics (seconds).
GAUGE_INTERVAL_S = 1.0
#: Pause after a Redis error before the worker tries again (seconds, doubled up to the cap).
REDIS_RETRY_BASE_S = 0.2
REDIS_RETRY_MAX_S = 5.0
#: ``SinkError.reason`` of a write refused only until a quota slot opens (``retry_after_s`` says when).
PACING_REASON = "pacing"
#: Suffix of the discovery file written beside the DuckDB file.
FLUSHER_FILE_SUFFIX = ".flusher.json"

T = TypeVar("T")


class _GiveBack(Exception):
    """Shutdown arrived before the sink recorded any progress on this batch."""


#: Exceptions a sink's row encoding raises on a value it cannot convert (an
#: OverflowError formatting a timestamp, a ValueError/TypeError from Arrow or
#: protobuf, msgspec's EncodeError). Sinks wrap every warehouse or client failure
#: in SinkError, so one of these escaping ``write`` is about the rows it was given.
ROW_ERRORS: tuple[type[BaseException], ...] = (ArithmeticError, ValueError, TypeError, LookupError,
                                                msgspec.EncodeError)


def row_specific(exc: BaseException) -> bool:
    """True for a failure of the rows themselves: the flusher halves the batch to find them."""
    return not isinstance(exc, SinkError) and isinstance(exc, ROW_ERRORS)


# What one failed write of a part leads to (StreamWorker._verdict).
_RETRY, _SPLIT, _DEAD, _DEFER = "retry", "split", "dead", "defer"


class _Isolate(Exception):
    """A failed write calls for a split, a dead letter or a deferral instead of another retry."""

    def __init__(self, verdict: str, exc: BaseException) -> None:
        super().__init__(verdict)
        self.verdict = verdict
        self.exc = exc


class _Part:
    """A claimed batch on its way to the sink, or a half of it (of a half ...)."""

    __slots__ = ("batch", "state", "inherited", "sibling", "written", "failures", "strikes")

    def __init__(self, batch: Batch, state: RedisWriteState, inherited: int = 0) -> None:
        self.batch = batch
        self.state = state
        #: Failures of the parts it was split from: the backoff goes on growing, not from scratch.
        self.inherited = inherited
        #: The other half of the split that made it (None for a whole batch).
        self.sibling: _Part | None = None
        self.written = False
        #: Failed writes of this part.
        self.failures = 0
        #: Failed writes since its sibling was written (the sink works, but not for these rows).
        self.strikes = 0


def _split_key(batch: Batch) -> str:
    """State-hash field marking a split part ("_": not sink state, see RedisWriteState.has_sink_state)."""
    return f"_split:{batch.batch_id}"


def backoff_s(attempt: int, base_s: float, max_s: float, rng: random.Random) -> float:
    """Full jitter (AWS): uniform in [0, min(cap, base * 2**attempt)]."""
    return rng.uniform(0.0, min(max_s, base_s * (2 ** min(attempt, 30))))


class _FlusherInfo(msgspec.Struct):
    pid: int
    admin_url: str


class StreamWorker:
    def __init__(self, flusher: Flusher, stream: StreamConfig) -> None:
        self.f = flusher
        self.stream = stream
        self.name = stream.name
        self.builder = BatchBuilder(stream)
        self.controller = BatchController(stream.batch)
        self.reclaimed: collections.deque[Claim] = collections.deque()
        #: More frames were waiting than the last claim took: the controller may grow.
        self.backlog = False
        self.rng = random.Random()
        #: The next batch, claimed and decoded while the current one is written (at most one ahead).
        self.ahead: asyncio.Task[tuple[Claim, Built] | None] | None = None
        #: Unexpected failures per claimed batch (in-flight key), while it is retried.
        self.crashes: dict[str, int] = {}

    async def run(self) -> None:
        f = self.f
        f.metrics.batch_target_rows.labels(self.name).set(self.controller.target_rows)
        redis_failures = 0
        crashes = 0
        try:
            while not f.stopping.is_set():
                try:
                    if self.reclaimed:
                        await self._process(self.reclaimed.popleft())
                    elif self.ahead is not None:
                        task, self.ahead = self.ahead, None
                        prepared = await task
                        if prepared is not None:
                            await self._process(*prepared)
                    else:
                        claim = await self._next_claim()
                        if claim is not None:
                            await self._process(claim)
                    redis_failures = 0
                except RedisError as exc:
                    delay = min(REDIS_RETRY_MAX_S, REDIS_RETRY_BASE_S * 2**redis_failures)
                    redis_failures += 1
                    f.redis_ok = False
                    log.warning("stream %s: Redis error, retrying in %.1fs: %s", self.name, delay, exc)
                    await f.sleep(delay)
                except Exception:  # noqa: BLE001 - a bug must not end the stream's task in silence
                    # The claim in hand (if any) went back to `reclaimed` in _process.
                    delay = min(REDIS_RETRY_MAX_S, REDIS_RETRY_BASE_S * 2**crashes)
                    crashes += 1
                    f.metrics.worker_restarts.labels(self.name).inc()
                    log.exception("stream %s: worker failed unexpectedly, restarting it in %.1fs", self.name, delay)
                    await f.sleep(delay)
                else:
                    crashes = 0
        finally:
            await self._give_back_ahead()

    async def _give_back_ahead(self) -> None:
        """Shutdown: the batch claimed ahead never reached the sink, so it goes back to the queue head."""
        task, self.ahead = self.ahead, None
        if task is None:
            return
        try:
            prepared = await asyncio.shield(task)
        except RedisError as exc:
            log.warning("stream %s: claiming ahead failed at shutdown: %s", self.name, exc)
            return
        if prepared is None:
            return
        claim = prepared[0]
        try:
            moved = await self.f.claimer.give_back(claim)
        except RedisError as exc:
            # Left claimed: once our heartbeat is gone any flusher re-claims it.
            log.warning("stream %s: could not give back batch %s: %s", self.name, claim.batch_id, exc)
            return
        log.info("stream %s: gave back %d frames of batch %s to the queue", self.name, moved, claim.batch_id)

    def _claim_ahead(self) -> None:
        """Start claiming and decoding the next batch, if a full one is already waiting."""
        if self.ahead is None and self.backlog and not self.reclaimed and not self.f.stopping.is_set():
            self.ahead = asyncio.create_task(self._prepare_ahead(), name=f"ahead-{self.name}")

    async def _prepare_ahead(self) -> tuple[Claim, Built] | None:
        f = self.f
        want = self.controller.frames_to_claim()
        waiting = int(await f.aredis.llen(f.keys.queue(self.name)))
        if waiting < want:
            return None  # a partial batch: the main loop lets it linger for company
        claim = await f.claimer.claim(self.name, want)
        if claim is None:
            return None
        self.backlog = waiting > len(claim.frames)
        built: Built = await f.in_thread(self._build, claim)
        return claim, built

    def _build(self, claim: Claim) -> Built:
        """Decode the frames and let the sink do its connection-free work (worker thread)."""
        built = self.builder.build(claim.batch_id, claim.frames)
        sink = self.f.sink
        if isinstance(sink, Preparable):
            try:
                built.batch = sink.prepare(built.batch)
            except Exception:  # noqa: BLE001 - write() takes unprepared batches and isolates the cause
                log.warning("stream %s: preparing batch %s failed; it is written unprepared",
                            self.name, claim.batch_id, exc_info=True)
        return built

    async def _next_claim(self) -> Claim | None:
        f = self.f
        queue = f.keys.queue(self.name)
        waiting = int(await f.aredis.llen(queue))
        f.redis_ok = True
        if waiting == 0:
            await f.sleep(IDLE_POLL_S)
            return None
        want = self.controller.frames_to_claim()
        if waiting < want:
            # A partial batch waits for company, but never past the linger, so a
            # lone event reaches the warehouse within the stream's max_wait_s.
            head = await f.aredis.lindex(queue, 0)
            oldest = frame_oldest_ms(head) if isinstance(head, bytes) else None
            if oldest is not None:
                age_s = time.time() - oldest / 1000
                if age_s < self.controller.linger_s:
                    await f.sleep(min(IDLE_POLL_S, self.controller.linger_s - age_s))
                    return None
        claim = await f.claimer.claim(self.name, want)
        if claim is not None:
            self.backlog = waiting > len(claim.frames)
        return claim

    async def _process(self, claim: Claim, built: Built | None = None) -> None:
        try:
            await self._process_claimed(claim, built)
        except RedisError:
            # Still ours (our heartbeat lives, so nobody re-claims it): try again
            # once Redis answers, re-reading its state like a re-claimed batch.
            claim.reclaimed = True
            self.reclaimed.appendleft(claim)
            raise
        except Exception as exc:
            # A bug on this batch: still ours, so nobody else would ever write it.
            # Retried like a re-claim; past flusher.poison_after_failures its
            # frames go to the dead letters whole, so the stream moves on.
            crashes = self.crashes[claim.key] = self.crashes.get(claim.key, 0) + 1
            if crashes < self.f.cfg.flusher.poison_after_failures:
                claim.reclaimed = True
                self.reclaimed.appendleft(claim)
                raise
            self.crashes.pop(claim.key, None)
            reason = f"poison: the flusher failed on this batch {crashes} times: {type(exc).__name__}: {exc}"
            log.exception("stream %s: batch %s goes to the dead letters whole", self.name, claim.batch_id)
            dead = [dead_frame(self.name, reason, frame) for frame in claim.frames]
            await self._finish(claim, dead)
            self.f.metrics.rows_dead_lettered.labels(self.name).inc(len(dead))
        else:
            self.crashes.pop(claim.key, None)

    async def _process_claimed(self, claim: Claim, built: Built | None = None) -> None:
        f = self.f
        values = await f.claimer.load_state(claim.key) if claim.reclaimed else {}
        state = RedisWriteState(f.sync_redis, f.keys.state(claim.key), values)
        if built is None:
            built = await f.in_thread(self._build, claim)
        batch = built.batch
        self.controller.observe_frames(len(claim.frames), len(batch.rows), batch.nbytes)
        dead = list(built.dead)
        written = 0
        # Pipelining: the next batch is claimed and decoded (Python, holding the GIL)
        # while this one is written (the sink's thread, mostly outside the GIL).
        self._claim_ahead()
        try:
            written = await self._write_part(batch, state, dead)
        except _GiveBack:
            # The batch claimed ahead holds later frames: it goes back first, so that
            # this one lands in front of it and the queue keeps its order.
            await self._give_back_ahead()
            moved = await f.claimer.give_back(claim)
            log.info("stream %s: gave back %d frames of batch %s to the queue", self.name, moved, claim.batch_id)
            return
        await self._finish(claim, dead)
        f.metrics.rows_written.labels(self.name).inc(written)
        if written and batch.rows:
            # nbytes is the whole batch's estimate; rows the sink refused are not written bytes.
            f.metrics.written_bytes.labels(self.name).inc(batch.nbytes * written / len(batch.rows))
        if dead:
            f.metrics.rows_dead_lettered.labels(self.name).inc(len(dead))
        f.metrics.batch_target_rows.labels(self.name).set(self.controller.target_rows)

    async def _finish(self, claim: Claim, dead: list[bytes]) -> None:
        attempt = 0
        while True:
            try:
                if not await self.f.claimer.finish(claim, dead):
                    log.warning("stream %s: batch %s was re-claimed by another flusher while being written; "
                                "the sink's dedupe absorbs the second write", self.name, claim.batch_id)
                return
            except RedisError as exc:
                # The rows are in the warehouse: retrying is harmless, giving up
                # would only mean writing them again after a re-claim.
                delay = min(REDIS_RETRY_MAX_S, REDIS_RETRY_BASE_S * 2**attempt)
                attempt += 1
                log.warning("stream %s: cannot release batch %s, retrying in %.1fs: %s",
                            self.name, claim.batch_id, delay, exc)
                await asyncio.sleep(delay)

    async def _write_part(self, batch: Batch, state: RedisWriteState, dead: list[bytes]) -> int:
        """Write ``batch`` in slices of ``max_rows``, isolating what fails; returns rows written."""
        max_rows = self.stream.batch.max_rows
        if len(batch.rows) > max_rows:
            total = 0
            for i, lo in enumerate(range(0, len(batch.rows), max_rows)):
                part = _sub(batch, batch.rows[lo : lo + max_rows], f"p{i}")
                total += await self._isolate(_Part(part, state.child(f"p{i}")), state, dead)
            return total
        return await self._isolate(_Part(batch, state), state, dead)

    async def _isolate(self, whole: _Part, root: RedisWriteState, dead: list[bytes]) -> int:
        """Write ``whole``, splitting it in halves around whatever fails (docs/ARCHITECTURE.md, delivery).

        Parts are written depth first, left to right. A split is recorded in the
        claim's state hash (``_split:<part id>``) before its halves are written, so a
        re-claim splits the same way and each half finds its own sink state again.
        """
        todo: collections.deque[_Part] = collections.deque([whole])
        total = 0
        while todo:
            part = todo.popleft()
            batch = part.batch
            if len(batch.rows) > 1 and root.get(_split_key(batch)) is not None:
                todo.extendleft(reversed(self._halves(part)))
                continue
            try:
                result = await self._write_with_retries(part, todo)
            except PayloadTooLarge as exc:
                if len(batch.rows) == 1:
                    dead.append(dead_row(self.name, f"too large for the sink: {exc}", batch.columns, batch.rows[0]))
                    continue
                log.info("stream %s: batch %s too large for the sink, splitting %d rows in halves",
                         self.name, batch.batch_id, len(batch.rows))
                todo.extendleft(reversed(await self._split(part, root)))
                continue
            except _Isolate as iso:
                if iso.verdict == _DEFER:
                    # Its sibling, next in line, is written first: if the sink takes those
                    # rows, this one's failure is about its own row.
                    sibling = todo.popleft()
                    todo.extendleft((part, sibling))
                elif iso.verdict == _DEAD:
                    reason = f"poison: {type(iso.exc).__name__}: {iso.exc}"
                    log.error("stream %s: the row of batch %s goes to the dead letters, the sink cannot write it: %s",
                              self.name, batch.batch_id, reason)
                    dead.append(dead_row(self.name, reason, batch.columns, batch.rows[0]))
                else:
                    log.warning("stream %s: batch %s (%d rows) keeps failing, splitting it in halves to isolate "
                                "the rows: %s", self.name, batch.batch_id, len(batch.rows), iso.exc)
                    todo.extendleft(reversed(await self._split(part, root)))
                continue
            part.written = True
            for err in result.rejected:
                if 0 <= err.index < len(batch.rows):
                    dead.append(dead_row(self.name, err.reason, batch.columns, batch.rows[err.index]))
            total += result.written
        return total

    @staticmethod
    def _halves(part: _Part) -> tuple[_Part, _Part]:
        batch = part.batch
        mid = len(batch.rows) // 2
        inherited = part.inherited + part.failures
        a = _Part(_sub(batch, batch.rows[:mid], "a"), part.state.child("a"), inherited)
        b = _Part(_sub(batch, batch.rows[mid:], "b"), part.state.child("b"), inherited)
        a.sibling, b.sibling = b, a
        return a, b

    async def _split(self, part: _Part, root: RedisWriteState) -> tuple[_Part, _Part]:
        await self.f.in_thread(functools.partial(root.set, **{_split_key(part.batch): "1"}))
        return self._halves(part)

    def _verdict(self, part: _Part, exc: BaseException, next_part: _Part | None) -> str:
        """What one failed write of ``part`` leads to: retry it, split it, dead-letter its row, or defer it."""
        rows = len(part.batch.rows)
        if row_specific(exc):
            # Deterministic and about the values: retrying cannot help, halving finds the row.
            return _SPLIT if rows > 1 else _DEAD
        transient = isinstance(exc, SinkError) and exc.retryable
        need = self.f.cfg.flusher.poison_after_failures if transient else 1
        if rows > 1:
            return _SPLIT if part.failures >= need else _RETRY
        sibling = part.sibling
        if sibling is not None and sibling.written:
            # The sink wrote the other half of the pair, so it works: not for this row.
            return _DEAD if part.strikes >= need else _RETRY
        if next_part is sibling is not None and sibling.failures == 0 and part.failures >= need:
            return _DEFER
        # A lone row, or both halves of a pair failing alike: a whole-batch error
        # (an outage, permissions, a missing dataset), never a reason to drop the row.
        return _RETRY

    async def _write_with_retries(self, part: _Part, todo: collections.deque[_Part]) -> WriteResult:
        f = self.f
        batch, state = part.batch, part.state
        hist = f.metrics.sink_write_duration.labels(self.name)
        while True:
            # The first attempt always runs: finishing a batch is quicker than
            # giving it back and writing it again later.
            if f.stopping.is_set() and not state.has_sink_state() and part.inherited + part.failures > 0:
                raise _GiveBack()
            t0 = time.perf_counter()
            try:
                result: WriteResult = await f.in_thread(f.sink.write, batch, state)
            except PayloadTooLarge:
                self.controller.observe_write(len(batch.rows), time.perf_counter() - t0, Outcome.TOO_LARGE, True)
                raise
            except Exception as exc:  # noqa: BLE001 - any sink failure keeps the batch claimed
                elapsed = time.perf_counter() - t0
                if isinstance(exc, SinkError) and exc.reason == PACING_REASON and exc.retry_after_s is not None:
                    # A quota's schedule (load jobs: one per table per interval), not a
                    # failure: wait exactly as long as the sink says, leave the batch size
                    # and the retry count alone, and do not alert (no sink_retries_total).
                    log.debug("stream %s: batch %s waits %.1fs for the sink's next slot: %s",
                              self.name, batch.batch_id, exc.retry_after_s, exc)
                    if f.stopping.is_set():
                        if not state.has_sink_state():
                            raise _GiveBack() from None
                        await asyncio.sleep(exc.retry_after_s)
                    else:
                        await f.sleep(exc.retry_after_s)
                    continue
                hist.observe(elapsed)
                err = exc if isinstance(exc, SinkError) else SinkError(
                    f"{type(exc).__name__}: {exc}", retryable=False,
                    reason="row" if row_specific(exc) else "bug")
                self.controller.observe_write(len(batch.rows), elapsed, Outcome.from_reason(err.reason), True)
                f.metrics.sink_retries.labels(self.name, err.reason).inc()
                f.metrics.batch_target_rows.labels(self.name).set(self.controller.target_rows)
                part.failures += 1
                if part.sibling is not None and part.sibling.written:
                    part.strikes += 1
                verdict = self._verdict(part, exc, todo[0] if todo else None)
                if verdict != _RETRY:
                    raise _Isolate(verdict, exc) from None
                delay = err.retry_after_s if err.retry_after_s is not None else backoff_s(
                    part.inherited + part.failures - 1, f.cfg.flusher.retry_base_s, f.cfg.flusher.retry_max_s, self.rng)
                level = logging.WARNING if err.retryable else logging.ERROR
                log.log(level, "stream %s: write of batch %s (%d rows) failed%s, attempt %d, retrying in %.2fs: %s",
                        self.name, batch.batch_id, len(batch.rows), "" if err.retryable else " (not retryable: "
                        "fix the cause; the batch stays claimed)", part.failures, delay, err,
                        exc_info=not isinstance(exc, SinkError))
                if f.stopping.is_set():
                    if not state.has_sink_state():
                        raise _GiveBack() from None
                    await asyncio.sleep(delay)  # draining a batch the sink has begun: keep the pace
                else:
                    await f.sleep(delay)
                continue
            elapsed = time.perf_counter() - t0
            hist.observe(elapsed)
            self.controller.observe_write(len(batch.rows), elapsed, Outcome.OK, self.backlog)
            return result


def _sub(batch: Batch, rows: Sequence[Sequence[Any]], part: str) -> Batch:
    ratio = len(rows) / max(1, len(batch.rows))
    return Batch(stream=batch.stream, batch_id=f"{batch.batch_id}.{part}", columns=batch.columns, rows=rows,
                 nbytes=int(batch.nbytes * ratio))


class Flusher:
    """One flusher instance: its Redis clients, sink, workers and admin server."""

    def __init__(self, cfg: Config, sink: Sink, owner: str | None = None) -> None:
        self.cfg = cfg
        self.sink = sink
        self.keys = Keys(cfg.redis.key_prefix)
        self.owner = owner or make_owner_id()
        timeout = cfg.redis.timeout_s
        # No retries inside the client: a claim script is not idempotent (run twice
        # under one key, its first frames would be appended and never returned), and
        # the worker's own loop already retries with the outcome of every call known.
        self.aredis: aioredis.Redis = aioredis.from_url(cfg.redis.url, socket_timeout=timeout,
                                                        socket_connect_timeout=timeout,
                                                        retry=AsyncRetry(NoBackoff(), 0))
        self.sync_redis: redis.Redis = redis.from_url(cfg.redis.url, socket_timeout=timeout,
                                                      socket_connect_timeout=timeout)
        self.claimer = Claimer(self.aredis, self.keys, self.owner, cfg.flusher.heartbeat_ttl_s,
                               dead_letter_max=cfg.flusher.dead_letter_max,
                               dead_letter_ttl_s=cfg.flusher.dead_letter_ttl_s)
        self.metrics = FlusherMetrics()
        self.stopping = asyncio.Event()
        self.redis_ok = False
        self.tables_ready = False
        self.workers = {name: StreamWorker(self, s) for name, s in cfg.streams.items()}
        # Sink writes and frame decoding leave the event loop free for the admin
        # server; a pool of our own so a stuck write cannot starve anything else.
        # Per stream one write and one decode of the batch claimed ahead, plus one spare.
        self._pool = ThreadPoolExecutor(max_workers=2 * len(self.workers) + 1,
                                        thread_name_prefix="oceanus-sink")
        self.admin: AdminServer | None = None
        for name in cfg.streams:
            self.metrics.init_stream(name)

    # ------------------------------------------------------------------ helpers

    async def in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def sleep(self, seconds: float) -> None:
        """Wait, but wake at once on shutdown (a pause between polls, never a synchronisation)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), timeout=max(0.0, seconds))

    def ready(self) -> str | None:
        if self.stopping.is_set():
            return "draining"
        if not self.tables_ready:
            return "tables not ensured yet"
        if not self.redis_ok:
            return "Redis not reachable"
        return None

    # ------------------------------------------------------------------ background tasks

    async def _heartbeat_loop(self) -> None:
        interval = self.cfg.flusher.heartbeat_ttl_s / 3
        while not self.stopping.is_set():
            try:
                await self.claimer.heartbeat()
                self.redis_ok = True
            except RedisError as exc:
                self.redis_ok = False
                log.warning("heartbeat failed: %s", exc)
            await self.sleep(interval)

    async def reclaim_orphans(self) -> int:
        """Hand every orphaned in-flight batch to its stream's worker; returns how many."""
        found = 0
        for name, worker in self.workers.items():
            for key in await self.claimer.orphans(name):
                claim = await self.claimer.reclaim(name, key)
                if claim is not None:
                    found += 1
                    log.info("stream %s: re-claimed orphaned batch %s (%d frames) from %s",
                             name, claim.batch_id, len(claim.frames), key)
                    worker.reclaimed.append(claim)
        return found

    async def _reclaim_loop(self) -> None:
        interval = self.cfg.flusher.heartbeat_ttl_s / 2
        while not self.stopping.is_set():
            try:
                await self.reclaim_orphans()
            except RedisError as exc:
                log.warning("re-claim scan failed: %s", exc)
            await self.sleep(interval)

    async def sample_gauges(self) -> None:
        m = self.metrics
        names = list(self.workers)
        async with self.aredis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.llen(self.keys.queue(name))
                pipe.scard(self.keys.inflight_index(name))
                pipe.lindex(self.keys.queue(name), 0)
            results = await pipe.execute()
        inflight_heads = await self.claimer.oldest_inflight_frame(
            [n for i, n in enumerate(names) if results[3 * i + 1]])
        now_ms = time.time() * 1000
        for i, name in enumerate(names):
            backlog, inflight, head = results[3 * i : 3 * i + 3]
            m.backlog_items.labels(name).set(backlog)
            m.inflight_batches.labels(name).set(inflight)
            m.batch_target_rows.labels(name).set(self.workers[name].controller.target_rows)
            ages = [frame_oldest_ms(fr) for fr in (head, inflight_heads.get(name)) if fr]
            known = [a for a in ages if a is not None]
            m.lag_seconds.labels(name).set(max(0.0, (now_ms - min(known)) / 1000) if known else 0.0)
        info = await self.aredis.info("memory")
        m.redis_used_memory.set(float(info.get("used_memory", 0)))
        m.redis_maxmemory.set(float(info.get("maxmemory", 0)))

    async def _gauge_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                await self.sample_gauges()
                self.redis_ok = True
            except RedisError as exc:
                self.redis_ok = False
                log.warning("sampling Redis gauges failed: %s", exc)
            await self.sleep(GAUGE_INTERVAL_S)

    # ------------------------------------------------------------------ life cycle

    async def start_admin(self) -> AdminServer:
        fcfg = self.cfg.flusher
        # /query runs on a thread of its own (never the write pool), off unless enabled.
        query = query_endpoint(fcfg, self.sink)
        admin = AdminServer(fcfg.admin_host, fcfg.admin_port, self.metrics.render, self.ready, query)
        await admin.start()
        # Published once it listens: before, its port is still 0 when admin_port is.
        self.admin = admin
        return admin

    async def run(self, on_started: Callable[[], Awaitable[None]] | None = None) -> bool:
        """Until :attr:`stopping` is set and the drain is over; False if a write outlived the drain."""
        await self.in_thread(self.sink.ensure_tables, list(self.cfg.streams.values()))
        self.tables_ready = True
        if self.admin is None:
            await self.start_admin()
        if on_started is not None:
            await on_started()
        background = [
            asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
            asyncio.create_task(self._reclaim_loop(), name="reclaim"),
            asyncio.create_task(self._gauge_loop(), name="gauges"),
        ]
        workers = [asyncio.create_task(w.run(), name=f"stream-{w.name}") for w in self.workers.values()]
        await self.stopping.wait()
        self.metrics.draining.set(1)
        log.info("draining: no new claims; finishing the batches in hand (at most %.0fs)",
                 self.cfg.flusher.drain_timeout_s)
        _, pending = await asyncio.wait(workers, timeout=self.cfg.flusher.drain_timeout_s)
        clean = not pending
        for task in pending:
            task.cancel()
        for task in background:
            task.cancel()
        await asyncio.gather(*workers, *background, return_exceptions=True)
        if not clean:
            log.warning("drain timeout: %d batch(es) left claimed; another flusher re-claims them", len(pending))
        with contextlib.suppress(RedisError):
            await self.claimer.drop_heartbeat()
        return clean

    async def close(self, wait_for_writes: bool = True) -> None:
        if self.admin is not None:
            await self.admin.stop()
        await self.aredis.aclose()
        self.sync_redis.close()
        self._pool.shutdown(wait=wait_for_writes, cancel_futures=True)
        if wait_for_writes:
            self.sink.close()


# --------------------------------------------------------------------------- entry point


def discovery_file(cfg: Config) -> Path | None:
    if cfg.sink.kind != "duckdb":
        return None
    path = Path(cfg.sink.duckdb.path).resolve()
    return path.with_name(path.name + FLUSHER_FILE_SUFFIX)


def _write_discovery(path: Path, url: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(msgspec.json.encode(_FlusherInfo(pid=os.getpid(), admin_url=url)) + b"\n")
    os.replace(tmp, path)  # readers never see half a file


def _remove_discovery(path: Path) -> None:
    try:
        info = msgspec.json.decode(path.read_bytes(), type=_FlusherInfo)
    except (OSError, msgspec.DecodeError):
        return
    if info.pid == os.getpid():
        path.unlink(missing_ok=True)


async def serve(cfg: Config) -> int:
    sink = make_sink(cfg)
    flusher = Flusher(cfg, sink)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, flusher.stopping.set)
    disco = discovery_file(cfg)

    async def started() -> None:
        if flusher.admin is None:  # never: run() starts it before calling us
            return
        if disco is not None:
            _write_discovery(disco, flusher.admin.url)
        log.info("flusher %s: %d stream(s) -> %s; admin %s", flusher.owner, len(cfg.streams), sink.name,
                 flusher.admin.url)

    clean = True
    try:
        clean = await flusher.run(started)
    finally:
        if disco is not None:
            _remove_discovery(disco)
        await flusher.close(wait_for_writes=clean)
    if not clean:
        # A sink call still runs in a worker thread and cannot be interrupted;
        # its claim stays in Redis for re-claim, so leaving now loses nothing.
        log.info("exiting with a write still running (its batch is re-claimed later)")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


def setup_logging() -> None:
    level = os.environ.get("OCEANUS_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main(args: argparse.Namespace) -> int:
    setup_logging()
    cfg = config_mod.load(getattr(args, "config", None))
    try:
        import uvloop

        runner: Callable[..., Any] = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency
        runner = asyncio.run
    return int(runner(serve(cfg)))


"""One stream's worker: claim, decode, write, and the flusher's only retry loop.

Per stream one :class:`StreamWorker` task::

    claim (or re-claim an orphan) -> decode + normalise (thread) -> sink.write (thread)
        -> finish (delete the claim, dead letters in the same MULTI)

It claims only in the shards of the stream whose lease this flusher holds, and
keeps its share of them with a task of its own (flusher/leases.py).

Sinks only classify a failure (:mod:`oceanus.errors`); what happens next is
decided here, and nowhere else:

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
  ``flusher.poison_after_failures`` such failures.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import random
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec
from redis.exceptions import RedisError

from flusher.batch import BatchBuilder, Built, dead_frame, dead_row, frame_oldest_ms
from flusher.claim import Claim, LeaseLost, RedisWriteState
from flusher.controller import BatchController, Outcome
from flusher.leases import ShardLeases
from flusher.sinks.base import Batch, Preparable, RowRetry, TakesArrow, WriteResult
from oceanus.config import StreamConfig
from oceanus.errors import Pacing, PayloadTooLarge, PermanentError, Reason, SinkError

if TYPE_CHECKING:
    from flusher.runner import Flusher

log = logging.getLogger("oceanus.flusher")

#: Longest pause between two looks at an empty queue (seconds); a lone event
#: waits at most this plus the linger (``max_wait_s`` / 2) before being claimed.
IDLE_POLL_S = 0.1
#: Pause after a Redis error before the worker tries again (seconds, doubled up to the cap).
REDIS_RETRY_BASE_S = 0.2
REDIS_RETRY_MAX_S = 5.0


class _GiveBack(Exception):
    """Shutdown arrived before the sink recorded any progress on this batch."""


class _Taken(Exception):
    """The shard's lease lapsed and its new holder re-claimed the batch: it is no longer ours to write."""


#: Exceptions a sink's row encoding raises on a value it cannot convert (an
#: OverflowError formatting a timestamp, a ValueError/TypeError from Arrow or
#: protobuf, msgspec's EncodeError). Sinks wrap every warehouse or client failure
#: in SinkError, so one of these escaping ``write`` is about the rows it was given.
ROW_ERRORS: tuple[type[BaseException], ...] = (ArithmeticError, ValueError, TypeError, LookupError, msgspec.EncodeError)


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

    __slots__ = (
        "batch",
        "begun",
        "failures",
        "inherited",
        "sibling",
        "state",
        "strikes",
        "wait_s",
        "written",
    )

    def __init__(
        self, batch: Batch, state: RedisWriteState, inherited: int = 0, wait_s: float = 0.0, begun: bool = False
    ) -> None:
        self.batch = batch
        self.state = state
        #: Backoff before its first write: rows the sink asked to re-send (``WriteResult.retry``)
        #: come back after the same pause as a failed write.
        self.wait_s = wait_s
        #: Rows of a batch the sink has partly written (and their halves): never given back at
        #: shutdown, since the frames would bring the written rows back too.
        self.begun = begun
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


class StreamWorker:
    def __init__(self, flusher: Flusher, stream: StreamConfig) -> None:
        self.f = flusher
        self.stream = stream
        self.name = stream.name
        self.builder = BatchBuilder(stream)
        #: Frames -> Arrow natively for a sink that takes Arrow tables (None: the Python path only).
        self.layout = flusher.sink.arrow_layout(stream) if isinstance(flusher.sink, TakesArrow) else None
        self.controller = BatchController(stream.batch)
        self.reclaimed: collections.deque[Claim] = collections.deque()
        #: More frames were waiting than the last claim took: the controller may grow.
        self.backlog = False
        self.rng = random.Random()
        #: The next batch, claimed and decoded while the current one is written (at most one ahead).
        self.ahead: asyncio.Task[tuple[Claim, Built] | None] | None = None
        #: Unexpected failures per claimed batch (in-flight key), while it is retried.
        self.crashes: dict[str, int] = {}
        #: The shard looked at first by the next claim: shards take turns, so none waits behind another.
        self.next_shard = 0
        #: The shards of this stream this flusher drains (flusher/leases.py).
        self.leases = ShardLeases(
            flusher.aredis,
            flusher.keys,
            flusher.claimer,
            self.name,
            stream.shards,
            flusher.cfg.flusher.heartbeat_ttl_s,
            flusher.metrics,
        )
        #: The batch being written, whose lease is checked before each write (see _write_with_retries).
        self.writing: Claim | None = None

    async def run(self) -> None:
        f = self.f
        f.metrics.batch_target_rows.labels(self.name).set(self.controller.target_rows)
        redis_failures = 0
        crashes = 0
        leases = asyncio.create_task(self._lease_loop(), name=f"leases-{self.name}")
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
                except Exception:
                    # The claim in hand (if any) went back to `reclaimed` in _process.
                    delay = min(REDIS_RETRY_MAX_S, REDIS_RETRY_BASE_S * 2**crashes)
                    crashes += 1
                    f.metrics.worker_restarts.labels(self.name).inc()
                    log.exception("stream %s: worker failed unexpectedly, restarting it in %.1fs", self.name, delay)
                    await f.sleep(delay)
                else:
                    crashes = 0
        finally:
            leases.cancel()
            await asyncio.gather(leases, return_exceptions=True)
            await self._give_back_ahead()
            try:
                await self.leases.release_all()
            except RedisError as exc:
                log.warning("stream %s: could not release the shard leases (they lapse): %s", self.name, exc)

    async def _lease_loop(self) -> None:
        """Keep this flusher's share of the stream's shards; re-claim orphans in shards newly taken."""
        f = self.f
        while not f.stopping.is_set():
            try:
                taken = await self.leases.tick()
                if taken:
                    await self.reclaim_orphans(taken)
            except RedisError as exc:
                log.warning("stream %s: shard lease upkeep failed: %s", self.name, exc)
            except Exception:
                # Never let the upkeep end: without it the leases lapse and the stream stops.
                log.exception("stream %s: shard lease upkeep failed unexpectedly", self.name)
            await f.sleep(self.leases.interval_s)

    async def reclaim_orphans(self, shards: Sequence[int] | None = None) -> int:
        """Queue every orphaned batch of the shards we lease (or of ``shards``); returns how many.
        Only a shard's lease holder re-claims in it."""
        f = self.f
        found = 0
        for shard in self.leases.leased() if shards is None else shards:
            for key in await f.claimer.orphans(self.name, shard):
                claim = await f.claimer.reclaim(self.name, key, shard, leased=True)
                if claim is not None:
                    found += 1
                    log.info(
                        "stream %s: re-claimed orphaned batch %s (%d frames) from %s",
                        self.name,
                        claim.batch_id,
                        len(claim.frames),
                        key,
                    )
                    self.reclaimed.append(claim)
        return found

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
        shard, waiting = await self._waiting()
        if waiting < want:
            return None  # a partial batch: the main loop lets it linger for company
        claim = await self._claim(shard, want)
        if claim is None:
            return None
        self.backlog = waiting > len(claim.frames)
        built: Built = await f.in_thread(self._build, claim)
        return claim, built

    def _build(self, claim: Claim) -> Built:
        """Decode the frames and let the sink do its connection-free work (worker thread)."""
        sink = self.f.sink
        built = self.builder.build(claim.batch_id, claim.frames, self.layout)
        if isinstance(sink, Preparable):
            try:
                built.batch = sink.prepare(built.batch)
            except Exception:
                log.warning(
                    "stream %s: preparing batch %s failed; it is written unprepared",
                    self.name,
                    claim.batch_id,
                    exc_info=True,
                )
        return built

    async def _claim(self, shard: int, want: int) -> Claim | None:
        try:
            return await self.f.claimer.claim(self.name, want, shard, leased=True)
        except LeaseLost:
            self.leases.lost(shard)
            return None

    async def _waiting(self) -> tuple[int, int]:
        """The shard to claim from and its frames waiting: among the shards we lease, the first
        non-empty one from :attr:`next_shard` on (a batch comes from one shard: one script, one
        slot). ``(0, 0)`` while we lease none."""
        f = self.f
        shards = self.leases.claimable()
        if not shards:
            return 0, 0
        if len(shards) == 1:
            length = int(await f.aredis.llen(f.keys.queue(self.name, shards[0])))
            f.redis_ok = True  # Redis answered just now
            return shards[0], length
        async with f.aredis.pipeline(transaction=False) as pipe:
            for shard in shards:
                pipe.llen(f.keys.queue(self.name, shard))
            lengths = await pipe.execute()
        f.redis_ok = True
        # Take turns from next_shard on (wrapping): the first leased shard at or after it leads.
        start = next((i for i, s in enumerate(shards) if s >= self.next_shard), 0)
        for i in (*range(start, len(shards)), *range(start)):
            if lengths[i]:
                self.next_shard = shards[i] + 1
                return shards[i], int(lengths[i])
        return shards[start], 0

    async def _next_claim(self) -> Claim | None:
        f = self.f
        shard, waiting = await self._waiting()
        queue = f.keys.queue(self.name, shard)
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
        claim = await self._claim(shard, want)
        if claim is not None:
            self.backlog = waiting > len(claim.frames)
        return claim

    async def _process(self, claim: Claim, built: Built | None = None) -> None:
        try:
            await self._process_claimed(claim, built)
        except _Taken:
            # Dropped by Claimer.confirm: the new holder of the shard writes it.
            self.crashes.pop(claim.key, None)
            log.warning(
                "stream %s: batch %s was re-claimed after our lease of shard %d lapsed; not writing it",
                self.name,
                claim.batch_id,
                claim.shard,
            )
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
        self.writing = claim
        try:
            written = await self._write_part(batch, state, dead)
        except _GiveBack:
            # The batch claimed ahead holds later frames: it goes back first, so that
            # this one lands in front of it and the queue keeps its order.
            await self._give_back_ahead()
            moved = await f.claimer.give_back(claim)
            log.info("stream %s: gave back %d frames of batch %s to the queue", self.name, moved, claim.batch_id)
            return
        finally:
            self.writing = None
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
                    log.warning(
                        "stream %s: batch %s was re-claimed by another flusher while being written; "
                        "the sink's dedupe absorbs the second write",
                        self.name,
                        claim.batch_id,
                    )
                return
            except RedisError as exc:
                # The rows are in the warehouse: retrying is harmless, giving up
                # would only mean writing them again after a re-claim.
                delay = min(REDIS_RETRY_MAX_S, REDIS_RETRY_BASE_S * 2**attempt)
                attempt += 1
                log.warning(
                    "stream %s: cannot release batch %s, retrying in %.1fs: %s", self.name, claim.batch_id, delay, exc
                )
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
                log.info(
                    "stream %s: batch %s too large for the sink, splitting %d rows in halves",
                    self.name,
                    batch.batch_id,
                    len(batch.rows),
                )
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
                    log.error(
                        "stream %s: the row of batch %s goes to the dead letters, the sink cannot write it: %s",
                        self.name,
                        batch.batch_id,
                        reason,
                    )
                    dead.append(dead_row(self.name, reason, batch.columns, batch.rows[0]))
                else:
                    log.warning(
                        "stream %s: batch %s (%d rows) keeps failing, splitting it in halves to isolate the rows: %s",
                        self.name,
                        batch.batch_id,
                        len(batch.rows),
                        iso.exc,
                    )
                    todo.extendleft(reversed(await self._split(part, root)))
                continue
            part.written = True
            for err in result.rejected:
                if 0 <= err.index < len(batch.rows):
                    dead.append(dead_row(self.name, err.reason, batch.columns, batch.rows[err.index]))
            total += result.written
            if result.retry:
                resend = self._resend(part, result.retry)
                if resend is not None:
                    todo.appendleft(resend)
        return total

    @staticmethod
    def _halves(part: _Part) -> tuple[_Part, _Part]:
        batch = part.batch
        mid = len(batch.rows) // 2
        inherited = part.inherited + part.failures
        a = _Part(_sub(batch, batch.rows[:mid], "a"), part.state.child("a"), inherited, begun=part.begun)
        b = _Part(_sub(batch, batch.rows[mid:], "b"), part.state.child("b"), inherited, begun=part.begun)
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
        if part.wait_s > 0:
            await self._pause(part.wait_s, give_back=False)
        while True:
            # The first attempt always runs: finishing a batch is quicker than
            # giving it back and writing it again later.
            if (
                f.stopping.is_set()
                and not state.has_sink_state()
                and part.inherited + part.failures > 0
                and not part.begun
            ):
                raise _GiveBack()
            await self._check_lease()
            t0 = time.perf_counter()
            try:
                result: WriteResult = await f.in_thread(f.sink.write, batch, state)
            except PayloadTooLarge:
                self.controller.observe_write(len(batch.rows), time.perf_counter() - t0, Outcome.TOO_LARGE, True)
                raise
            except Exception as exc:
                elapsed = time.perf_counter() - t0
                if isinstance(exc, Pacing) and exc.retry_after_s is not None:
                    # A quota's schedule (load jobs: one per table per interval), not a
                    # failure: wait exactly as long as the sink says, leave the batch size
                    # and the retry count alone, and do not alert (no sink_retries_total).
                    log.debug(
                        "stream %s: batch %s waits %.1fs for the sink's next slot: %s",
                        self.name,
                        batch.batch_id,
                        exc.retry_after_s,
                        exc,
                    )
                    await self._pause(exc.retry_after_s, give_back=not state.has_sink_state() and not part.begun)
                    continue
                hist.observe(elapsed)
                err = (
                    exc
                    if isinstance(exc, SinkError)
                    else PermanentError(f"{type(exc).__name__}: {exc}", Reason.ROW if row_specific(exc) else Reason.BUG)
                )
                self.controller.observe_write(len(batch.rows), elapsed, Outcome.of(err.reason), True)
                f.metrics.sink_retries.labels(self.name, err.reason).inc()
                f.metrics.batch_target_rows.labels(self.name).set(self.controller.target_rows)
                part.failures += 1
                if part.sibling is not None and part.sibling.written:
                    part.strikes += 1
                verdict = self._verdict(part, exc, todo[0] if todo else None)
                if verdict != _RETRY:
                    raise _Isolate(verdict, exc) from None
                delay = (
                    err.retry_after_s
                    if err.retry_after_s is not None
                    else backoff_s(
                        part.inherited + part.failures - 1,
                        f.cfg.flusher.retry_base_s,
                        f.cfg.flusher.retry_max_s,
                        self.rng,
                    )
                )
                level = logging.WARNING if err.retryable else logging.ERROR
                log.log(
                    level,
                    "stream %s: write of batch %s (%d rows) failed%s, attempt %d, retrying in %.2fs: %s",
                    self.name,
                    batch.batch_id,
                    len(batch.rows),
                    "" if err.retryable else " (not retryable: fix the cause; the batch stays claimed)",
                    part.failures,
                    delay,
                    err,
                    exc_info=not isinstance(exc, SinkError),
                )
                await self._pause(delay, give_back=not state.has_sink_state() and not part.begun)
                continue
            elapsed = time.perf_counter() - t0
            hist.observe(elapsed)
            self.controller.observe_write(len(batch.rows), elapsed, Outcome.OK, self.backlog)
            return result

    async def _check_lease(self) -> None:
        """Before a write: while the shard's lease is surely ours nothing is asked (no round trip);
        once it may have lapsed, write only if the batch is still ours (else :class:`_Taken`)."""
        claim = self.writing
        if claim is None or self.leases.valid(claim.shard):
            return
        if not await self.f.claimer.confirm(claim):
            raise _Taken()

    async def _pause(self, seconds: float, *, give_back: bool) -> None:
        """Wait before the next write; at shutdown, give the batch back if ``give_back`` allows."""
        if not self.f.stopping.is_set():
            await self.f.sleep(seconds)
        elif give_back:
            raise _GiveBack()
        else:
            await asyncio.sleep(seconds)  # draining a batch the sink has begun: keep the pace

    def _resend(self, part: _Part, retry: Sequence[RowRetry]) -> _Part | None:
        """The rows the sink asked to re-send, as a part of their own that waits one backoff first."""
        batch = part.batch
        rows = [batch.rows[r.index] for r in retry if 0 <= r.index < len(batch.rows)]
        if not rows:
            return None
        reason = retry[0].reason
        self.f.metrics.sink_retries.labels(self.name, reason).inc()
        attempt = part.inherited + part.failures
        delay = backoff_s(attempt, self.f.cfg.flusher.retry_base_s, self.f.cfg.flusher.retry_max_s, self.rng)
        tag = f"r{attempt}"
        log.warning(
            "stream %s: %d rows of batch %s refused as transient (%s), re-sent in %.2fs",
            self.name,
            len(rows),
            batch.batch_id,
            reason,
            delay,
        )
        return _Part(_sub(batch, rows, tag), part.state.child(tag), attempt + 1, wait_s=delay, begun=True)


def _sub(batch: Batch, rows: Sequence[Sequence[Any]], part: str) -> Batch:
    ratio = len(rows) / max(1, len(batch.rows))
    return Batch(
        stream=batch.stream,
        batch_id=f"{batch.batch_id}.{part}",
        columns=batch.columns,
        rows=rows,
        nbytes=int(batch.nbytes * ratio),
    )

"""The stream worker's own pauses and counts, pinned to the value: the backoff after a Redis
error and after an unexpected failure, read from what the worker logs (one line per pause).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec
import pytest
import redis.asyncio as aioredis

from flusher.claim import Claimer
from flusher.runner import Flusher
from flusher.sinks.base import Batch, RowRetry, WriteResult, WriteState
from flusher.sinks.duckdb import DuckDBSink
from oceanus.buffer import EventIds, Keys, encode_frame
from oceanus.config import Config
from oceanus.errors import PayloadTooLarge, Reason, SinkError
from tests.flusher.helpers import STREAMS_TOML, make_config, make_rows, push_frames
from tests.support.outageproxy import OutageProxy
from tests.support.servers import RedisServer


async def _pauses(
    f: Flusher, caplog: pytest.LogCaptureFixture, pattern: str, count: int, heal: Callable[[], None] = lambda: None
) -> list[str]:
    """Run the `pv` worker until it logged ``count`` pauses matching ``pattern``; their durations.

    ``heal`` ends the fault before the worker is stopped, for a loop that stops only on success.
    """
    task = asyncio.create_task(f.workers["pv"].run())
    deadline = time.monotonic() + 20
    try:
        while True:
            got = [m.group(1) for r in caplog.records if (m := re.search(pattern, r.getMessage()))]
            if len(got) >= count:
                return got[:count]
            assert time.monotonic() < deadline, f"only {got} after 20 s"
            await asyncio.sleep(0.01)
    finally:
        heal()
        f.stopping.set()
        await asyncio.wait_for(task, 10)


def test_a_redis_error_pauses_the_worker_doubling_from_0_2_s(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    # The worker claims only in shards it leases: it takes the lease, then Redis goes away
    # (a TTL far longer than the test, so the lease stays ours by the clock meanwhile).
    proxy = OutageProxy(redis_server.port).start()
    cfg = make_config(proxy.url, tmp_path / "w.duckdb", heartbeat_ttl_s=60.0)

    async def body() -> list[str]:
        f = Flusher(cfg, DuckDBSink(cfg))
        try:
            assert await f.workers["pv"].leases.tick() == [0]
            proxy.down()
            return await _pauses(f, caplog, r"^stream pv: Redis error, retrying in ([0-9.]+)s: ", 3)
        finally:
            await f.close()
            proxy.stop()

    with caplog.at_level(logging.WARNING, logger="oceanus.flusher"):
        assert asyncio.run(body()) == ["0.2", "0.4", "0.8"]


class _AnswersNothing(DuckDBSink):
    """Stores nothing and answers None: a sink bug, an unexpected exception in the worker."""

    def write(self, batch: Batch, state: WriteState) -> WriteResult:
        return None  # type: ignore[return-value]


def test_an_unexpected_failure_restarts_the_worker_doubling_from_0_2_s(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    cfg = make_config(redis_server.url, tmp_path / "w.duckdb", poison_after_failures=10)
    push_frames(redis_server.client(), Keys(cfg.redis.key_prefix), cfg.streams["pv"], frames=1, rows_per_frame=20)

    async def body() -> list[str]:
        f = Flusher(cfg, _AnswersNothing(cfg))
        try:
            return await _pauses(f, caplog, r"^stream pv: worker failed unexpectedly, restarting it in ([0-9.]+)s$", 3)
        finally:
            await f.close()

    with caplog.at_level(logging.WARNING, logger="oceanus.flusher"):
        assert asyncio.run(body()) == ["0.2", "0.4", "0.8"]


def test_a_reclaimed_batch_written_with_nothing_queued_leaves_the_batch_size(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # Growth needs evidence of a backlog; a fresh worker has seen none, and an orphan is no backlog.
    cfg = make_config(redis_server.url, tmp_path / "w.duckdb")
    keys = Keys(cfg.redis.key_prefix)
    push_frames(redis_server.client(), keys, cfg.streams["pv"], frames=1, rows_per_frame=20)

    async def body() -> None:
        ghost_client = aioredis.from_url(redis_server.url)
        assert await Claimer(ghost_client, keys, "ghost", 1.0).claim("pv", 1) is not None
        await ghost_client.aclose()
        f = Flusher(cfg, DuckDBSink(cfg))
        worker = f.workers["pv"]
        assert worker.controller.target_rows == 10  # min_rows
        try:
            assert await worker.leases.tick() == [0]  # only a shard's lease holder re-claims in it
            assert await f.reclaim_orphans() == 1
            task = asyncio.create_task(worker.run())
            deadline = time.monotonic() + 20
            while await f.aredis.scard(keys.inflight_index("pv")):
                assert time.monotonic() < deadline, "the orphan was never written"
                await asyncio.sleep(0.02)
            f.stopping.set()
            await asyncio.wait_for(task, 10)
            assert worker.controller.target_rows == 10
        finally:
            await f.close()

    asyncio.run(body())


async def _until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + 20
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


class _Gated(DuckDBSink):
    """Holds every write until the test opens the gate."""

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        self.gate = threading.Event()

    def write(self, batch: Batch, state: WriteState) -> WriteResult:
        if not self.gate.wait(20):
            raise AssertionError("the test never opened the gate")
        return super().write(batch, state)


def test_exactly_one_full_batch_waiting_is_claimed_ahead(redis_server: RedisServer, tmp_path: Path) -> None:
    cfg = make_config(redis_server.url, tmp_path / "w.duckdb")
    # Two frames of 10 rows, min_rows 10: the first claim takes one frame, and then exactly
    # one full batch (one frame) waits.
    push_frames(redis_server.client(), Keys(cfg.redis.key_prefix), cfg.streams["pv"], frames=2, rows_per_frame=10)
    sink = _Gated(cfg)

    async def body() -> None:
        f = Flusher(cfg, sink)
        worker = f.workers["pv"]
        task = asyncio.create_task(worker.run())
        try:

            async def ahead_done() -> bool:
                return worker.ahead is not None and worker.ahead.done()

            await _until(ahead_done, "the claim ahead")
            assert worker.ahead is not None
            assert worker.ahead.result() is not None
        finally:
            f.stopping.set()
            sink.gate.set()
            await asyncio.wait_for(task, 10)
            await f.close()

    asyncio.run(body())


class _PrepareFails(DuckDBSink):
    def prepare(self, batch: Batch) -> Batch:
        raise RuntimeError("prepare broke")


def test_a_failed_prepare_is_logged_with_its_traceback_and_the_batch_written(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    cfg = make_config(redis_server.url, tmp_path / "w.duckdb")
    push_frames(redis_server.client(), Keys(cfg.redis.key_prefix), cfg.streams["pv"], frames=1, rows_per_frame=5)

    async def body() -> None:
        f = Flusher(cfg, _PrepareFails(cfg))
        task = asyncio.create_task(f.workers["pv"].run())
        try:

            async def written() -> bool:
                return f.metrics.registry.get_sample_value("oceanus_rows_written_total", {"stream": "pv"}) == 5

            await _until(written, "the unprepared batch written")
        finally:
            f.stopping.set()
            await asyncio.wait_for(task, 10)
            await f.close()

    with caplog.at_level(logging.WARNING, logger="oceanus.flusher"):
        asyncio.run(body())
    (record,) = [r for r in caplog.records if "it is written unprepared" in r.getMessage()]
    assert record.exc_info is not None
    assert str(record.exc_info[1]) == "prepare broke"


def test_a_partial_batch_lingers_on_the_age_of_its_oldest_frame(redis_server: RedisServer, tmp_path: Path) -> None:
    cfg = make_config(redis_server.url, tmp_path / "w.duckdb")
    stream = cfg.streams["pv"]
    keys = Keys(cfg.redis.key_prefix)
    client = redis_server.client()
    # First a batch of one one-row frame, so the worker knows frames hold one row and wants 10.
    push_frames(client, keys, stream, frames=1, rows_per_frame=1)
    ids = EventIds()
    now_ns = time.time_ns()
    head, tail = make_rows(stream, 2, start=1)
    head[0] = ids.new(now_ns - 10 * 10**9)  # arrived 10 s ago: past the 0.5 s linger
    tail[0] = ids.new(now_ns + 60 * 10**9)  # the newest frame's time is no reason to wait

    async def body() -> None:
        f = Flusher(cfg, DuckDBSink(cfg))
        task = asyncio.create_task(f.workers["pv"].run())

        def rows_written() -> float | None:
            return f.metrics.registry.get_sample_value("oceanus_rows_written_total", {"stream": "pv"})

        try:

            async def first() -> bool:
                return rows_written() == 1

            await _until(first, "the first batch")
            assert f.workers["pv"].controller.frames_to_claim() == 10
            client.rpush(keys.queue("pv"), encode_frame(stream.columns, [head]), encode_frame(stream.columns, [tail]))
            t0 = time.monotonic()

            async def both() -> bool:
                return rows_written() == 3

            await _until(both, "the partial batch claimed")
            assert time.monotonic() - t0 < 5.0
        finally:
            f.stopping.set()
            await asyncio.wait_for(task, 10)
            await f.close()

    asyncio.run(body())


def test_a_batch_written_and_released_logs_no_warning(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    cfg = make_config(redis_server.url, tmp_path / "w.duckdb")
    push_frames(redis_server.client(), Keys(cfg.redis.key_prefix), cfg.streams["pv"], frames=1, rows_per_frame=5)

    async def body() -> None:
        f = Flusher(cfg, DuckDBSink(cfg))
        task = asyncio.create_task(f.workers["pv"].run())
        try:

            async def released() -> bool:
                written = f.metrics.registry.get_sample_value("oceanus_rows_written_total", {"stream": "pv"})
                return written == 5 and not await f.aredis.scard(f.keys.inflight_index("pv"))

            await _until(released, "the batch written and released")
        finally:
            f.stopping.set()
            await asyncio.wait_for(task, 10)
            await f.close()

    with caplog.at_level(logging.WARNING, logger="oceanus.flusher"):
        asyncio.run(body())
    assert [r.getMessage() for r in caplog.records if r.name == "oceanus.flusher"] == []


def test_a_release_redis_refuses_is_retried_doubling_from_0_2_s(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    proxy = OutageProxy(redis_server.port).start()
    cfg = make_config(proxy.url, tmp_path / "w.duckdb")
    push_frames(redis_server.client(), Keys(cfg.redis.key_prefix), cfg.streams["pv"], frames=1, rows_per_frame=5)

    class GoesDownAfterWriting(DuckDBSink):
        def write(self, batch: Batch, state: WriteState) -> WriteResult:
            result = super().write(batch, state)
            proxy.down()  # the rows are stored; Redis goes away before the release
            return result

    async def body() -> list[str]:
        f = Flusher(cfg, GoesDownAfterWriting(cfg))
        try:
            pattern = r"^stream pv: cannot release batch \S+, retrying in ([0-9.]+)s: "
            got = await _pauses(f, caplog, pattern, 3, heal=proxy.up)
            # Released once Redis is back: the rows are not written a second time.
            assert not await f.aredis.scard(f.keys.inflight_index("pv"))
            return got
        finally:
            await f.close()

    try:
        with caplog.at_level(logging.WARNING, logger="oceanus.flusher"):
            assert asyncio.run(body()) == ["0.2", "0.4", "0.8"]
    finally:
        proxy.stop()


SMALL_BATCHES = STREAMS_TOML.replace(
    "batch = { max_rows = 5000, min_rows = 10, max_wait_s = 1.0 }",
    "batch = { max_rows = 10, min_rows = 5, max_wait_s = 1.0 }",
)


class _Recording(DuckDBSink):
    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        self.calls: list[tuple[str, list[int]]] = []

    def write(self, batch: Batch, state: WriteState) -> WriteResult:
        n = batch.columns.index("n")
        self.calls.append((batch.batch_id, [r[n] for r in batch.rows]))
        return super().write(batch, state)


@pytest.mark.parametrize("rows", [25, 10])
def test_a_claim_over_max_rows_is_written_in_slices_of_max_rows(
    redis_server: RedisServer, tmp_path: Path, rows: int
) -> None:
    assert "max_rows = 10," in SMALL_BATCHES
    cfg = make_config(redis_server.url, tmp_path / "w.duckdb", SMALL_BATCHES)
    push_frames(redis_server.client(), Keys(cfg.redis.key_prefix), cfg.streams["pv"], frames=1, rows_per_frame=rows)
    sink = _Recording(cfg)

    async def body() -> None:
        f = Flusher(cfg, sink)
        task = asyncio.create_task(f.workers["pv"].run())
        try:

            async def written() -> bool:
                return f.metrics.registry.get_sample_value("oceanus_rows_written_total", {"stream": "pv"}) == rows

            await _until(written, "every row written")
        finally:
            f.stopping.set()
            await asyncio.wait_for(task, 10)
            await f.close()

    asyncio.run(body())
    (batch_id,) = {c[0].split(".")[0] for c in sink.calls}
    if rows == 10:  # exactly max_rows: one write of the batch itself
        assert sink.calls == [(batch_id, list(range(10)))]
    else:
        assert sink.calls == [
            (f"{batch_id}.p0", list(range(10))),
            (f"{batch_id}.p1", list(range(10, 20))),
            (f"{batch_id}.p2", list(range(20, 25))),
        ]


def test_a_single_row_too_large_for_the_sink_is_a_dead_letter_naming_the_limit(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    cfg = make_config(redis_server.url, tmp_path / "w.duckdb")
    keys = Keys(cfg.redis.key_prefix)
    push_frames(redis_server.client(), keys, cfg.streams["pv"], frames=1, rows_per_frame=4)

    class RowThreeTooLarge(_Recording):
        def write(self, batch: Batch, state: WriteState) -> WriteResult:
            n = batch.columns.index("n")
            if any(r[n] == 3 for r in batch.rows):
                self.calls.append((batch.batch_id, [r[n] for r in batch.rows]))
                raise PayloadTooLarge("HTTP 413 request too large (injected)")
            return super().write(batch, state)

    sink = RowThreeTooLarge(cfg)

    async def body() -> None:
        f = Flusher(cfg, sink)
        task = asyncio.create_task(f.workers["pv"].run())
        try:

            async def released() -> bool:
                written = f.metrics.registry.get_sample_value("oceanus_rows_written_total", {"stream": "pv"})
                return written == 3 and not await f.aredis.scard(f.keys.inflight_index("pv"))

            await _until(released, "the batch released")
        finally:
            f.stopping.set()
            await asyncio.wait_for(task, 10)
            await f.close()

    asyncio.run(body())
    (batch_id,) = {c[0].split(".")[0] for c in sink.calls}
    assert [(c[0].removeprefix(batch_id), c[1]) for c in sink.calls] == [
        ("", [0, 1, 2, 3]),
        (".a", [0, 1]),
        (".b", [2, 3]),
        (".b.a", [2]),
        (".b.b", [3]),
    ]
    (dead,) = redis_server.client().lrange(keys.dead("pv"), 0, -1)
    letter = json.loads(dead)
    assert letter["reason"] == "too large for the sink: HTTP 413 request too large (injected)"
    assert letter["row"]["n"] == 3


def test_shutdown_during_a_backoff_gives_the_batch_back_without_another_write(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    # A long backoff (30 s, doubling to 60 s), so the worker sits in it when the shutdown comes.
    cfg = make_config(redis_server.url, tmp_path / "w.duckdb", retry_base_s=30.0, retry_max_s=60.0)
    keys = Keys(cfg.redis.key_prefix)
    client = redis_server.client()
    push_frames(client, keys, cfg.streams["pv"], frames=1, rows_per_frame=5)
    before = client.lrange(keys.queue("pv"), 0, -1)

    class Down(_Recording):
        def write(self, batch: Batch, state: WriteState) -> WriteResult:
            self.calls.append((batch.batch_id, []))
            raise SinkError("HTTP 503 backendError (injected)", retryable=True, reason="server")

    sink = Down(cfg)

    async def body() -> None:
        f = Flusher(cfg, sink)
        # Seen from this loop, the worker logs the pause and enters it with no await between.
        f.workers["pv"].rng = random.Random(7)
        try:
            pattern = r"^stream pv: write of batch \S+ \(5 rows\) failed, attempt 1, retrying in ([0-9.]+)s: "
            # Full jitter over [0, base * 2**0] for the first retry.
            assert await _pauses(f, caplog, pattern, 1) == [f"{random.Random(7).uniform(0.0, 30.0):.2f}"]
        finally:
            await f.close()

    with caplog.at_level(logging.WARNING, logger="oceanus.flusher"):
        asyncio.run(body())
    assert len(sink.calls) == 1
    assert client.lrange(keys.queue("pv"), 0, -1) == before
    assert client.keys(f"{cfg.redis.key_prefix}:inflight*") == []


def test_a_write_failing_once_shutdown_has_begun_gives_the_batch_back_at_once(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    cfg = make_config(redis_server.url, tmp_path / "w.duckdb", retry_base_s=30.0, retry_max_s=30.0)
    keys = Keys(cfg.redis.key_prefix)
    client = redis_server.client()
    push_frames(client, keys, cfg.streams["pv"], frames=1, rows_per_frame=5)
    before = client.lrange(keys.queue("pv"), 0, -1)
    entered, gate = threading.Event(), threading.Event()

    class FailsWhenLetGo(DuckDBSink):
        def write(self, batch: Batch, state: WriteState) -> WriteResult:
            entered.set()
            gate.wait(20)
            raise SinkError("HTTP 503 backendError (injected)", retryable=True, reason="server")

    async def body() -> float:
        f = Flusher(cfg, FailsWhenLetGo(cfg))
        f.workers["pv"].rng = random.Random(7)  # a first backoff of 9.7 s: a wait there would show
        task = asyncio.create_task(f.workers["pv"].run())
        try:
            await asyncio.to_thread(entered.wait, 20)
            f.stopping.set()
            gate.set()
            t0 = time.monotonic()
            await asyncio.wait_for(task, 30)
            return time.monotonic() - t0
        finally:
            gate.set()
            await f.close()

    assert random.Random(7).uniform(0.0, 30.0) > 9.0
    assert asyncio.run(body()) < 5.0
    assert client.lrange(keys.queue("pv"), 0, -1) == before


def test_the_first_row_handed_back_is_resent(redis_server: RedisServer, tmp_path: Path) -> None:
    cfg = make_config(redis_server.url, tmp_path / "w.duckdb")
    push_frames(redis_server.client(), Keys(cfg.redis.key_prefix), cfg.streams["pv"], frames=1, rows_per_frame=3)

    class HandsBackRowZeroOnce(_Recording):
        def write(self, batch: Batch, state: WriteState) -> WriteResult:
            first = not self.calls
            result = super().write(batch if not first else msgspec.structs.replace(batch, rows=batch.rows[1:]), state)
            if first:
                self.calls[-1] = (batch.batch_id, [r[batch.columns.index("n")] for r in batch.rows])
                return WriteResult(written=result.written, retry=(RowRetry(0, Reason.SERVER),))
            return result

    sink = HandsBackRowZeroOnce(cfg)

    async def body() -> None:
        f = Flusher(cfg, sink)
        task = asyncio.create_task(f.workers["pv"].run())
        try:

            async def written() -> bool:
                return f.metrics.registry.get_sample_value("oceanus_rows_written_total", {"stream": "pv"}) == 3

            await _until(written, "every row written")
        finally:
            f.stopping.set()
            await asyncio.wait_for(task, 10)
            await f.close()

    asyncio.run(body())
    (batch_id,) = {c[0].split(".")[0] for c in sink.calls}
    assert sink.calls == [(batch_id, [0, 1, 2]), (f"{batch_id}.r0", [0])]

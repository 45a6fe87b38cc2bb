"""The stream worker's own pauses and counts, pinned to the value: the backoff after a Redis
error and after an unexpected failure, read from what the worker logs (one line per pause).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from flusher.claim import Claimer
from flusher.runner import Flusher
from flusher.sinks.base import Batch, WriteResult, WriteState
from flusher.sinks.duckdb import DuckDBSink
from oceanus.buffer import Keys
from tests.flusher.helpers import make_config, push_frames
from tests.support.servers import RedisServer, free_port


async def _pauses(f: Flusher, caplog: pytest.LogCaptureFixture, pattern: str, count: int) -> list[str]:
    """Run the `pv` worker until it logged ``count`` pauses matching ``pattern``; their durations."""
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
        f.stopping.set()
        await asyncio.wait_for(task, 10)


def test_a_redis_error_pauses_the_worker_doubling_from_0_2_s(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    cfg = make_config(f"redis://127.0.0.1:{free_port()}/0", tmp_path / "w.duckdb")

    async def body() -> list[str]:
        f = Flusher(cfg, DuckDBSink(cfg))
        try:
            return await _pauses(f, caplog, r"^stream pv: Redis error, retrying in ([0-9.]+)s: ", 3)
        finally:
            await f.close()

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

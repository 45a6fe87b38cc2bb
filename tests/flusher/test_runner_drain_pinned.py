"""The flusher process at its edges, pinned: readiness through a Redis outage, the lag of a
queue's head, hosted work inside the drain budget, and the exit status of an unclean drain.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from flusher.runner import Flusher, HostedTask
from flusher.sinks.duckdb import DuckDBSink
from oceanus.buffer import EventIds, Keys, encode_frame
from tests.flusher.helpers import make_config, make_config_text
from tests.support.outageproxy import OutageProxy
from tests.support.servers import RedisServer


async def _ready(f: Flusher) -> None:
    deadline = time.monotonic() + 20
    while f.ready() is not None:
        assert time.monotonic() < deadline, f"never ready: {f.ready()}"
        await asyncio.sleep(0.02)


def test_an_outage_keeps_the_flusher_not_ready_until_redis_answers(redis_server: RedisServer, tmp_path: Path) -> None:
    proxy = OutageProxy(redis_server.port).start()
    cfg = make_config(proxy.url, tmp_path / "w.duckdb")

    async def body() -> list[str | None]:
        f = Flusher(cfg, DuckDBSink(cfg))
        task = asyncio.create_task(f.run())
        try:
            await _ready(f)
            proxy.down()
            deadline = time.monotonic() + 20
            while f.ready() is None:
                assert time.monotonic() < deadline, "the outage never showed"
                await asyncio.sleep(0.01)
            # Every loop that meets the outage says so; none may report Redis back meanwhile.
            seen = []
            until = time.monotonic() + 1.5
            while time.monotonic() < until:
                seen.append(f.ready())
                await asyncio.sleep(0.01)
            proxy.up()
            return seen
        finally:
            f.stopping.set()
            await asyncio.wait_for(task, 30)
            await f.close()

    try:
        assert set(asyncio.run(body())) == {"Redis not reachable"}
    finally:
        proxy.stop()


def test_lag_is_the_age_of_the_queues_head_not_its_tail(redis_server: RedisServer, tmp_path: Path) -> None:
    cfg = make_config(redis_server.url, tmp_path / "w.duckdb")
    keys = Keys(cfg.redis.key_prefix)
    ids = EventIds()
    now_ms = int(time.time() * 1000)

    def frame(at_ms: int) -> bytes:
        return encode_frame(["event_id"], [[ids.new(at_ms * 1_000_000)]])

    redis_server.client().rpush(keys.queue("pv"), frame(now_ms - 45_000), frame(now_ms))

    async def body() -> float | None:
        f = Flusher(cfg, DuckDBSink(cfg))
        try:
            await f.sample_gauges()
            return f.metrics.registry.get_sample_value("oceanus_lag_seconds", {"stream": "pv"})
        finally:
            await f.close()

    lag = asyncio.run(body())
    assert lag is not None
    assert 45.0 <= lag < 47.0


def _run_with(
    redis_server: RedisServer, tmp_path: Path, hosted: HostedTask, caplog: pytest.LogCaptureFixture
) -> tuple[bool, list[str]]:
    cfg = make_config(redis_server.url, tmp_path / "w.duckdb", drain_timeout_s=2.0)

    async def body() -> bool:
        f = Flusher(cfg, DuckDBSink(cfg), hosted=[hosted])
        task = asyncio.create_task(f.run())
        try:
            await _ready(f)
            f.stopping.set()
            return await asyncio.wait_for(task, 30)
        finally:
            await f.close(wait_for_writes=False)

    with caplog.at_level(logging.INFO, logger="oceanus.flusher"):
        clean = asyncio.run(body())
    return clean, [r.getMessage() for r in caplog.records if r.name == "oceanus.flusher"]


def test_hosted_work_finishing_inside_the_drain_budget_is_a_clean_drain(
    redis_server: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    finished = threading.Event()

    def commits_after_the_stop(sink: object, registry: object, stop: threading.Event) -> None:
        stop.wait(30)
        time.sleep(0.3)  # committing the batch in hand: work, inside the 2 s budget
        finished.set()

    clean, messages = _run_with(redis_server, tmp_path, commits_after_the_stop, caplog)
    assert clean is True
    assert finished.is_set()
    assert [m for m in messages if m.startswith("drain timeout")] == []


def test_hosted_work_outliving_the_drain_makes_it_unclean(
    redis_server: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    release = threading.Event()

    def never_stops_in_time(sink: object, registry: object, stop: threading.Event) -> None:
        release.wait(30)

    try:
        clean, messages = _run_with(redis_server, tmp_path, never_stops_in_time, caplog)
    finally:
        release.set()
    assert clean is False
    assert [m for m in messages if m.startswith("drain timeout")] == [
        "drain timeout: oceanus-hosted-0 still writing; its transaction is not committed"
    ]


STUBBORN = """
import asyncio, sys, threading
from flusher import runner
from oceanus import config

def stubborn(sink, registry, stop):
    threading.Event().wait(60)  # ignores the stop: still writing when the drain ends

runner.setup_logging()
sys.exit(asyncio.run(runner.serve(config.load(sys.argv[1]), hosted=[stubborn])))
"""


def test_an_unclean_drain_still_exits_zero(redis_server: RedisServer, tmp_path: Path) -> None:
    # Whatever is left claimed is re-claimed by another flusher: leaving is not a failure.
    config_file = tmp_path / "oceanus.toml"
    db = tmp_path / "w.duckdb"
    config_file.write_text(make_config_text(redis_server.url, db, drain_timeout_s=0.5))
    log = tmp_path / "flusher.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", STUBBORN, str(config_file)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        try:
            deadline = time.monotonic() + 30
            disco = db.with_name(db.name + ".flusher.json")
            while not disco.exists():
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "the flusher never started"
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0, log.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert "exiting with a write still running" in log.read_text()

"""The flusher loop in-process against a real redis-server and a real DuckDB file.

Faults are injected by wrapping the real DuckDB sink (the BigQuery-shaped
errors: 503-like retryable failures, payload too large); rows DuckDB itself
refuses come from genuinely invalid values.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import msgspec
import pytest

from flusher.claim import Claimer
from flusher.runner import Flusher
from flusher.sinks.base import Batch, RowRetry, WriteResult, WriteState
from flusher.sinks.duckdb import DuckDBSink
from flusher.worker import backoff_s
from oceanus.buffer import Keys, encode_frame
from oceanus.config import Config, StreamConfig
from oceanus.errors import Pacing, PayloadTooLarge, Reason, SinkError
from tests.flusher.helpers import STREAMS_TOML, make_config, make_rows, push_frames
from tests.support.servers import RedisServer

DEADLINE_S = 20.0


class FaultySink:
    """The real DuckDB sink behind injected whole-batch failures."""

    name = "duckdb"

    def __init__(
        self,
        inner: DuckDBSink,
        fail_first: int = 0,
        reason: str = "server",
        max_rows: int | None = None,
        always_fail: bool = False,
    ) -> None:
        self.inner = inner
        self.fail_left = fail_first
        self.reason = reason
        self.max_rows = max_rows
        self.always_fail = always_fail
        self.calls: list[int] = []

    def ensure_tables(self, streams: Sequence[StreamConfig]) -> list[str]:
        return self.inner.ensure_tables(streams)

    def write(self, batch: Batch, state: WriteState) -> WriteResult:
        self.calls.append(len(batch.rows))
        if self.always_fail or self.fail_left > 0:
            self.fail_left -= 1
            raise SinkError("HTTP 503 backendError (injected)", retryable=True, reason=self.reason)
        if self.max_rows is not None and len(batch.rows) > self.max_rows:
            raise PayloadTooLarge("HTTP 413 Request payload size exceeds the limit (injected)")
        return self.inner.write(batch, state)

    def query(self, sql: str):  # type: ignore[no-untyped-def]
        return self.inner.query(sql)

    def close(self) -> None:
        self.inner.close()


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def run_flusher(cfg: Config, sink: object, body: Callable[[Flusher], Awaitable[None]]) -> Flusher:
    async def main() -> Flusher:
        flusher = Flusher(cfg, sink)  # type: ignore[arg-type]
        task = asyncio.create_task(flusher.run())
        try:
            await until(lambda: _ready(flusher), "flusher ready")
            await body(flusher)
        finally:
            flusher.stopping.set()
            assert await asyncio.wait_for(task, 30)
            await flusher.close()
        return flusher

    return asyncio.run(main())


async def _ready(f: Flusher) -> bool:
    return f.admin is not None and f.tables_ready


def _cfg(server: RedisServer, tmp_path: Path) -> Config:
    return make_config(server.url, tmp_path / "w.duckdb")


def _sink(cfg: Config) -> DuckDBSink:
    return DuckDBSink(cfg)


async def _queue_drained(f: Flusher, stream: str = "pv") -> bool:
    q = await f.aredis.llen(f.keys.queue(stream))
    inflight = await f.aredis.scard(f.keys.inflight_index(stream))
    return q == 0 and inflight == 0


async def _drained_and_counted(f: Flusher, rows: float, stream: str = "pv") -> bool:
    """Drained, and the worker has counted its last batch (it does so after releasing the claim)."""
    written = f.metrics.registry.get_sample_value("oceanus_rows_written_total", {"stream": stream})
    return written == rows and await _queue_drained(f, stream)


def _http(url: str, data: bytes | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_drains_every_row_exactly_once_and_serves_admin(redis_server: RedisServer, tmp_path: Path) -> None:
    cfg = _cfg(redis_server, tmp_path)
    keys = Keys(cfg.redis.key_prefix)
    ids = push_frames(redis_server.client(), keys, cfg.streams["pv"], frames=200, rows_per_frame=25)

    async def body(f: Flusher) -> None:
        await until(lambda: _drained_and_counted(f, 5000), "queue drained")
        assert f.admin is not None
        url = f.admin.url
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, _http, url + "/readyz") == (200, b"ready\n")
        # /query is off unless enabled (tests/flusher/test_admin.py has it on, with its token).
        status, body = await loop.run_in_executor(None, _http, url + "/query", b"SELECT event_id FROM pv")
        assert status == 404
        assert "flusher.query_enabled" in json.loads(body)["error"]
        await f.sample_gauges()
        status, metrics = await loop.run_in_executor(None, _http, url + "/metrics")
        assert status == 200
        text = metrics.decode()
        assert 'oceanus_rows_written_total{stream="pv"} 5000.0' in text
        assert 'oceanus_backlog_items{shard="0",stream="pv"} 0.0' in text
        assert 'oceanus_lag_seconds{stream="pv"} 0.0' in text
        for name in (
            "oceanus_inflight_batches",
            "oceanus_batch_target_rows",
            "oceanus_sink_write_duration_seconds",
            "oceanus_redis_used_memory_bytes",
            "oceanus_redis_maxmemory_bytes",
            "oceanus_flusher_draining",
            "oceanus_rows_dead_lettered_total",
        ):
            assert name in text
        assert (await loop.run_in_executor(None, _http, url + "/nope"))[0] == 404

    run_flusher(cfg, _sink(cfg), body)
    assert redis_server.client().keys("oceanus:inflight*") == []
    assert sorted(r[0] for r in DuckDBSink(cfg).query("SELECT event_id FROM pv").rows) == sorted(ids)


def test_retry_split_and_dead_letters_leave_the_exact_row_set(redis_server: RedisServer, tmp_path: Path) -> None:
    cfg = _cfg(redis_server, tmp_path)
    stream = cfg.streams["pv"]
    client = redis_server.client()
    keys = Keys(cfg.redis.key_prefix)
    rows = make_rows(stream, 200)
    jsn = stream.columns.index("jsn")
    bad = {17, 101, 150}
    for i in bad:
        rows[i][jsn] = "{broken"
    frames = [encode_frame(stream.columns, rows[i : i + 10]) for i in range(0, 200, 10)]
    frames.insert(5, b"O1 this is not zlib")
    client.rpush(keys.queue("pv"), *frames)
    sink = FaultySink(_sink(cfg), fail_first=3, max_rows=30)

    async def body(f: Flusher) -> None:
        await until(lambda: _drained_and_counted(f, 197), "queue drained")
        text = f.metrics.render().decode()
        assert 'oceanus_sink_retries_total{reason="server",stream="pv"} 3.0' in text
        assert 'oceanus_rows_dead_lettered_total{stream="pv"} 4.0' in text
        assert 'oceanus_rows_written_total{stream="pv"} 197.0' in text

    run_flusher(cfg, sink, body)
    good = sorted(r[0].hex() for i, r in enumerate(rows) if i not in bad)
    con_rows = DuckDBSink(cfg).query("SELECT event_id FROM pv ORDER BY event_id").rows
    assert [r[0] for r in con_rows] == good
    dead = [json.loads(x) for x in client.lrange(keys.dead("pv"), 0, -1)]
    row_items = sorted((d["row"]["n"], d["reason"][:19]) for d in dead if d["row"] is not None)
    assert row_items == [(i, "jsn: not valid JSON") for i in sorted(bad)]
    frame_items = [d for d in dead if d["row"] is None]
    assert len(frame_items) == 1
    assert frame_items[0]["reason"].startswith("corrupt frame")
    assert all(d["stream"] == "pv" for d in dead)
    # the batch grew past the sink's limit and was split in halves until it fitted
    assert any(c > 30 for c in sink.calls)
    assert any(c <= 30 and 2 * c > 30 for c in sink.calls)


def test_frames_from_an_older_config_are_normalised(redis_server: RedisServer, tmp_path: Path) -> None:
    cfg = _cfg(redis_server, tmp_path)
    stream = cfg.streams["pv"]
    client = redis_server.client()
    keys = Keys(cfg.redis.key_prefix)
    rows = make_rows(stream, 2)
    # Encoded before `score` existed and while `legacy` still did.
    old_cols = [c for c in stream.columns if c != "score"] + ["legacy"]
    old_rows = [[v for c, v in zip(stream.columns, r, strict=True) if c != "score"] + ["kept"] for r in rows]
    old_rows[1][old_cols.index("extra")] = '{"utm": "x", "legacy": "own"}'
    client.rpush(keys.queue("pv"), encode_frame(old_cols, old_rows))

    async def body(f: Flusher) -> None:
        await until(lambda: _queue_drained(f), "queue drained")

    run_flusher(cfg, _sink(cfg), body)
    got = DuckDBSink(cfg).query("SELECT n, score, extra FROM pv ORDER BY n").rows
    assert got == [[0, None, '{"legacy":"kept"}'], [1, None, '{"legacy":"own","utm":"x"}']]


def test_lone_event_is_flushed_within_max_wait(redis_server: RedisServer, tmp_path: Path) -> None:
    cfg = _cfg(redis_server, tmp_path)
    max_wait_s = cfg.streams["pv"].batch.max_wait_s
    keys = Keys(cfg.redis.key_prefix)

    async def body(f: Flusher) -> None:
        # Teach the controller a big target first, so a lone event really is a partial batch.
        f.workers["pv"].controller._target = 5000
        f.workers["pv"].controller.rows_per_frame = 1
        t0 = time.monotonic()
        push_frames(redis_server.client(), keys, cfg.streams["pv"], frames=1, rows_per_frame=1)

        async def stored() -> bool:
            return bool((await f.in_thread(f.sink.query, "SELECT count(*) FROM pv")).rows[0][0])  # type: ignore[attr-defined]

        await until(stored, "the lone event", timeout=max_wait_s * 3)
        # A lower bound only: a loaded box makes the write later, never earlier. The upper
        # bound (claimed once older than the linger) is pinned without a clock below.
        assert time.monotonic() - t0 >= f.workers["pv"].controller.linger_s * 0.5  # it did wait for company

    run_flusher(cfg, _sink(cfg), body)


def _lone_frame(stream: StreamConfig, age_s: float) -> bytes:
    """One row whose event id says it was received ``age_s`` ago."""
    row = make_rows(stream, 1)[0]
    ms = int(time.time() * 1000 - age_s * 1000)
    row[stream.columns.index("event_id")] = ms.to_bytes(6, "big") + row[0][6:]
    return encode_frame(stream.columns, [row])


@pytest.mark.parametrize(("age_s", "claimed"), [(0.0, False), (31.0, True)])
def test_partial_batch_is_claimed_once_older_than_the_linger(
    redis_server: RedisServer, tmp_path: Path, age_s: float, claimed: bool
) -> None:
    # max_wait_s = 60: the linger is 30 s, far from both ages, so no clock can flake this.
    toml = STREAMS_TOML.replace("max_wait_s = 1.0", "max_wait_s = 60.0")
    cfg = make_config(redis_server.url, tmp_path / "w.duckdb", toml)
    stream = cfg.streams["pv"]
    keys = Keys(cfg.redis.key_prefix)
    redis_server.client().rpush(keys.queue("pv"), _lone_frame(stream, age_s))

    async def main() -> None:
        flusher = Flusher(cfg, _sink(cfg))
        try:
            worker = flusher.workers["pv"]
            worker.controller._target = 5000
            worker.controller.rows_per_frame = 1
            assert await worker.leases.tick() == [0]  # the worker claims only in shards it leases
            claim = await worker._next_claim()
            assert (claim is not None) is claimed
            assert await flusher.aredis.llen(keys.queue("pv")) == (0 if claimed else 1)
        finally:
            await flusher.close()

    asyncio.run(main())


class TransientRows:
    """The real DuckDB sink, but the rows with an odd ``n`` are refused as transient on their first write."""

    name = "duckdb"

    def __init__(self, inner: DuckDBSink) -> None:
        self.inner = inner
        self.refused: set[int] = set()
        self.calls: list[list[int]] = []  # the ``n`` of each write's rows
        #: Called (in the sink's thread) once the first write has handed rows back.
        self.after_first: Callable[[], object] | None = None

    def ensure_tables(self, streams: Sequence[StreamConfig]) -> list[str]:
        return self.inner.ensure_tables(streams)

    def write(self, batch: Batch, state: WriteState) -> WriteResult:
        n = batch.columns.index("n")
        self.calls.append([r[n] for r in batch.rows])
        again = [i for i, r in enumerate(batch.rows) if r[n] % 2 and r[n] not in self.refused]
        self.refused.update(batch.rows[i][n] for i in again)
        keep = [r for i, r in enumerate(batch.rows) if i not in again]
        written = self.inner.write(msgspec.structs.replace(batch, rows=keep, prepared=None), state).written
        if again and self.after_first is not None:
            self.after_first()
        return WriteResult(written=written, retry=tuple(RowRetry(i, Reason.SERVER) for i in again))

    def close(self) -> None:
        self.inner.close()


def test_rows_the_sink_hands_back_are_resent_once_by_the_worker(redis_server: RedisServer, tmp_path: Path) -> None:
    cfg = _cfg(redis_server, tmp_path)
    keys = Keys(cfg.redis.key_prefix)
    ids = push_frames(redis_server.client(), keys, cfg.streams["pv"], frames=1, rows_per_frame=6)
    sink = TransientRows(_sink(cfg))

    async def body(f: Flusher) -> None:
        await until(lambda: _drained_and_counted(f, 6), "queue drained")
        text = f.metrics.render().decode()
        assert 'oceanus_sink_retries_total{reason="server",stream="pv"} 1.0' in text

    run_flusher(cfg, sink, body)
    # The batch, then its three odd rows alone: no row written twice, none left out.
    assert sink.calls == [[0, 1, 2, 3, 4, 5], [1, 3, 5]]
    assert sorted(r[0] for r in DuckDBSink(cfg).query("SELECT event_id FROM pv").rows) == sorted(ids)


def test_rows_handed_back_are_still_written_when_shutdown_comes_first(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # A backoff of up to 1 s before the re-send, and SIGTERM arriving before it: the batch
    # is partly written, so giving its frames back would bring rows 0, 2, 4 back too.
    cfg = make_config(redis_server.url, tmp_path / "w.duckdb", retry_base_s=1.0, retry_max_s=1.0)
    keys = Keys(cfg.redis.key_prefix)
    sink = TransientRows(_sink(cfg))
    ids: list[str] = []

    async def body(f: Flusher) -> None:
        loop = asyncio.get_running_loop()
        # Set from the sink's thread before its result reaches the worker: the stop is seen first.
        sink.after_first = lambda: loop.call_soon_threadsafe(f.stopping.set)
        ids.extend(push_frames(redis_server.client(), keys, cfg.streams["pv"], frames=1, rows_per_frame=6))
        await f.stopping.wait()

    run_flusher(cfg, sink, body)
    assert sink.calls == [[0, 1, 2, 3, 4, 5], [1, 3, 5]]
    client = redis_server.client()
    assert client.llen(keys.queue("pv")) == 0
    assert client.keys("oceanus:inflight*") == []
    assert sorted(r[0] for r in DuckDBSink(cfg).query("SELECT event_id FROM pv").rows) == sorted(ids)


def test_orphaned_batch_of_a_dead_flusher_is_written(redis_server: RedisServer, tmp_path: Path) -> None:
    cfg = _cfg(redis_server, tmp_path)
    keys = Keys(cfg.redis.key_prefix)
    ids = push_frames(redis_server.client(), keys, cfg.streams["pv"], frames=10, rows_per_frame=3)

    async def claim_as_ghost() -> str:
        import redis.asyncio as aioredis

        ghost = Claimer(aioredis.from_url(redis_server.url), keys, "ghost", 1.0)
        claim = await ghost.claim("pv", 4)  # never heartbeats: as if killed right after claiming
        await ghost.client.aclose()
        assert claim is not None
        return claim.key

    orphan = asyncio.run(claim_as_ghost())

    async def body(f: Flusher) -> None:
        await until(lambda: _queue_drained(f), "queue and orphan drained")

    run_flusher(cfg, _sink(cfg), body)
    assert redis_server.client().exists(orphan) == 0
    got = [r[0] for r in DuckDBSink(cfg).query("SELECT event_id FROM pv").rows]
    assert sorted(got) == sorted(ids)


def test_shutdown_gives_a_failing_batch_back_in_order(redis_server: RedisServer, tmp_path: Path) -> None:
    cfg = _cfg(redis_server, tmp_path)
    client = redis_server.client()
    keys = Keys(cfg.redis.key_prefix)
    push_frames(client, keys, cfg.streams["pv"], frames=8, rows_per_frame=5)
    before = client.lrange(keys.queue("pv"), 0, -1)
    sink = FaultySink(_sink(cfg), always_fail=True, reason="throttled")

    async def body(f: Flusher) -> None:
        async def failing() -> bool:
            return len(sink.calls) >= 2

        await until(failing, "a failed write")

    flusher = run_flusher(cfg, sink, body)
    assert client.lrange(keys.queue("pv"), 0, -1) == before
    assert client.keys("oceanus:inflight*") == []
    assert client.keys("oceanus:state:*") == []
    assert flusher.workers["pv"].controller.decreases >= 2


@pytest.mark.parametrize("attempt", [0, 1, 5, 40])
def test_backoff_is_full_jitter_and_capped(attempt: int) -> None:
    import random

    rng = random.Random(1)
    samples = [backoff_s(attempt, 0.5, 60.0, rng) for _ in range(500)]
    cap = min(60.0, 0.5 * 2**attempt)
    assert all(0 <= s <= cap for s in samples)
    assert max(samples) > cap * 0.9
    assert min(samples) < cap * 0.1


class PacedSink:
    """The real DuckDB sink behind a load-mode style slot: one write per ``interval_s``.

    Like load mode's pacing, a write before the slot opens is refused with
    :class:`Pacing` and the exact wait in ``retry_after_s``.
    """

    name = "duckdb"

    def __init__(self, inner: DuckDBSink, interval_s: float) -> None:
        self.inner = inner
        self.interval_s = interval_s
        self.last_start: float | None = None
        self.calls: list[tuple[float, bool]] = []  # (monotonic time, accepted)

    def ensure_tables(self, streams: Sequence[StreamConfig]) -> list[str]:
        return self.inner.ensure_tables(streams)

    def write(self, batch: Batch, state: WriteState) -> WriteResult:
        now = time.monotonic()
        if self.last_start is not None and now < self.last_start + self.interval_s:
            self.calls.append((now, False))
            raise Pacing(
                "next load slot not open yet (injected)", retry_after_s=self.last_start + self.interval_s - now
            )
        self.calls.append((now, True))
        self.last_start = now
        return self.inner.write(batch, state)

    def close(self) -> None:
        self.inner.close()


def test_pacing_waits_exactly_retry_after_without_retry_count_or_shrinking(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    interval_s = 0.6
    cfg = _cfg(redis_server, tmp_path)
    keys = Keys(cfg.redis.key_prefix)
    client = redis_server.client()
    stream = cfg.streams["pv"]
    # retry_base_s is 0.01 in these configs: a backoff would call the sink again within milliseconds.
    sink = PacedSink(_sink(cfg), interval_s)

    async def body(f: Flusher) -> None:
        worker = f.workers["pv"]
        push_frames(client, keys, stream, frames=1, rows_per_frame=20)
        await until(lambda: _drained_and_counted(f, 20), "first batch")
        target = worker.controller.target_rows
        # A whole frame is a full batch (min_rows 10), so claims do not wait for the linger.
        # The next batch arrives inside the interval: refused once, then written at the slot.
        push_frames(client, keys, stream, frames=1, rows_per_frame=20, start=20)
        await until(lambda: _drained_and_counted(f, 40), "paced batch")
        push_frames(client, keys, stream, frames=1, rows_per_frame=20, start=40)
        await until(lambda: _drained_and_counted(f, 60), "third batch")
        assert worker.controller.target_rows >= target
        assert worker.controller.decreases == 0
        text = f.metrics.render().decode()
        assert "oceanus_sink_retries_total{" not in text
        assert 'oceanus_rows_written_total{stream="pv"} 60.0' in text

    run_flusher(cfg, sink, body)
    accepted = [t for t, ok in sink.calls if ok]
    refused = [t for t, ok in sink.calls if not ok]
    assert len(accepted) == 3
    # One refusal per paced batch, not a burst of jittered retries.
    assert 1 <= len(refused) <= 2
    for prev, nxt in itertools.pairwise(accepted):
        assert nxt - prev >= interval_s
    # The refused write was retried when the slot opened, not later (one event-loop hop of slack).
    for t in refused:
        opened = max(a for a in accepted if a < t) + interval_s
        after = min(a for a in accepted if a > t)
        assert opened <= after <= opened + 0.25, after - opened
    assert DuckDBSink(cfg).query("SELECT count(*) FROM pv").rows == [[60]]


def test_written_bytes_metric_appears_and_grows(redis_server: RedisServer, tmp_path: Path) -> None:
    cfg = _cfg(redis_server, tmp_path)
    keys = Keys(cfg.redis.key_prefix)
    client = redis_server.client()
    stream = cfg.streams["pv"]

    def written_bytes(f: Flusher) -> float:
        value = f.metrics.registry.get_sample_value("oceanus_written_bytes_total", {"stream": "pv"})
        assert value is not None
        return value

    async def body(f: Flusher) -> None:
        assert 'oceanus_written_bytes_total{stream="pv"} 0.0' in f.metrics.render().decode()
        push_frames(client, keys, stream, frames=4, rows_per_frame=50)
        await until(lambda: _drained_and_counted(f, 200), "first rows")
        first = written_bytes(f)
        # A realistic size per row: the msgpack size of these rows is tens of bytes, not 0 or kilobytes.
        assert 20 * 200 <= first <= 1000 * 200
        push_frames(client, keys, stream, frames=4, rows_per_frame=50, start=200)
        await until(lambda: _drained_and_counted(f, 400), "more rows")
        second = written_bytes(f)
        assert second > first * 1.5
        assert f.admin is not None
        status, text = await asyncio.get_running_loop().run_in_executor(None, _http, f.admin.url + "/metrics")
        assert status == 200
        assert f'oceanus_written_bytes_total{{stream="pv"}} {second}' in text.decode()

    run_flusher(cfg, _sink(cfg), body)


class GatedSink:
    """The real DuckDB sink, each write held until the test opens the gate."""

    name = "duckdb"

    def __init__(self, inner: DuckDBSink) -> None:
        import threading

        self.inner = inner
        self.entered = threading.Event()
        self.gate = threading.Event()

    def ensure_tables(self, streams: Sequence[StreamConfig]) -> list[str]:
        return self.inner.ensure_tables(streams)

    def write(self, batch: Batch, state: WriteState) -> WriteResult:
        self.entered.set()
        if not self.gate.wait(DEADLINE_S):
            raise AssertionError("the test never opened the gate")
        return self.inner.write(batch, state)

    def close(self) -> None:
        self.inner.close()


def test_next_batch_is_claimed_during_a_write_and_given_back_in_order_on_shutdown(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    cfg = _cfg(redis_server, tmp_path)
    client = redis_server.client()
    keys = Keys(cfg.redis.key_prefix)
    ids = push_frames(client, keys, cfg.streams["pv"], frames=6, rows_per_frame=10)
    before = client.lrange(keys.queue("pv"), 0, -1)
    sink = GatedSink(_sink(cfg))

    async def body(f: Flusher) -> None:
        worker = f.workers["pv"]

        async def claimed_ahead() -> bool:
            task = worker.ahead
            return sink.entered.is_set() and task is not None and task.done() and task.result() is not None

        # While the first batch is in the sink, the next one is claimed and decoded.
        await until(claimed_ahead, "a batch claimed ahead")
        assert await f.aredis.scard(f.keys.inflight_index("pv")) == 2
        f.stopping.set()
        sink.gate.set()

    run_flusher(cfg, sink, body)
    # The batch in the sink was finished; the one claimed ahead went back to the head, in order.
    written = [r[0] for r in DuckDBSink(cfg).query("SELECT event_id FROM pv ORDER BY event_id").rows]
    assert written
    assert written == sorted(ids[: len(written)])
    assert client.lrange(keys.queue("pv"), 0, -1) == before[len(written) // 10 :]
    assert client.keys("oceanus:inflight*") == []
    assert client.keys("oceanus:state:*") == []

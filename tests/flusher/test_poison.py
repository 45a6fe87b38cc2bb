"""No input stops a stream: the flusher isolates rows a sink cannot write, and survives its own bugs.

Real redis-server, real DuckDB file (and bqemulator for the BigQuery case). The
sinks below wrap the real DuckDB sink the way tests/flusher/test_runner.py does:
they add one behaviour of a real warehouse each (BigQuery's insertAll row
encoding, a request refused for one row, an outage, a result-handling bug).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest

from flusher.runner import Flusher
from flusher.sinks.base import Batch, WriteResult, WriteState
from flusher.sinks.bigquery import BigQuerySink, json_row_converter
from flusher.sinks.duckdb import DuckDBSink
from flusher.worker import row_specific
from oceanus.buffer import Keys, encode_frame
from oceanus.config import Config, StreamConfig
from oceanus.errors import SinkError
from tests.flusher.helpers import make_config, make_rows, push_frames
from tests.flusher.test_runner import _drained_and_counted, _queue_drained, run_flusher, until
from tests.support.servers import BigQueryEmulator, RedisServer

#: 10000-01-01T00:00:00Z plus a day, in µs: stored by a collector from before the edge refused it.
YEAR_10000_US = 253_402_300_800_000_000 + 86_400_000_000
POISON_SID = "poison"


def _cfg(server: RedisServer, tmp_path: Path, **flusher: Any) -> Config:
    return make_config(server.url, tmp_path / "w.duckdb", poison_after_failures=2, **flusher)


class _Wrapped:
    """The real DuckDB sink; subclasses add one warehouse behaviour in ``write``."""

    name = "duckdb"

    def __init__(self, inner: DuckDBSink) -> None:
        self.inner = inner
        self.calls: list[int] = []

    def ensure_tables(self, streams: Sequence[StreamConfig]) -> list[str]:
        return self.inner.ensure_tables(streams)

    def query(self, sql: str, timeout_s: float = 10.0) -> Any:
        return self.inner.query(sql, timeout_s)

    def close(self) -> None:
        self.inner.close()

    def write(self, batch: Batch, state: WriteState) -> WriteResult:
        self.calls.append(len(batch.rows))
        return self.inner.write(batch, state)


class InsertAllEncodingSink(_Wrapped):
    """Rows go through BigQuery's insertAll encoding before they are stored."""

    def write(self, batch: Batch, state: WriteState) -> WriteResult:
        self.calls.append(len(batch.rows))
        convert = json_row_converter(batch.stream, batch.columns)
        for row in batch.rows:
            convert(row)  # OverflowError past the year 9999, as in BigQuerySink._insert_all
        return self.inner.write(batch, state)


class RefusesRequestsWith(_Wrapped):
    """A whole request fails when it holds one particular row (``sid == "poison"``)."""

    def __init__(self, inner: DuckDBSink, retryable: bool) -> None:
        super().__init__(inner)
        self.retryable = retryable

    def write(self, batch: Batch, state: WriteState) -> WriteResult:
        self.calls.append(len(batch.rows))
        sid = batch.columns.index("sid")
        if any(r[sid] == POISON_SID for r in batch.rows):
            raise SinkError(
                "HTTP 400 invalid request (injected)" if not self.retryable else "HTTP 503 backendError (injected)",
                retryable=self.retryable,
                reason="server" if self.retryable else "invalid",
            )
        return self.inner.write(batch, state)


class DownFor(_Wrapped):
    """Every write fails with the same error for the first ``calls_down`` calls (an outage, a revoked role)."""

    def __init__(self, inner: DuckDBSink, calls_down: int, retryable: bool) -> None:
        super().__init__(inner)
        self.calls_down = calls_down
        self.retryable = retryable

    def write(self, batch: Batch, state: WriteState) -> WriteResult:
        self.calls.append(len(batch.rows))
        if len(self.calls) <= self.calls_down:
            raise SinkError(
                "HTTP 403 Access Denied (injected)",
                retryable=self.retryable,
                reason="server" if self.retryable else "auth",
            )
        return self.inner.write(batch, state)


def _push(client: Any, cfg: Config, rows: list[list[Any]], per_frame: int = 10) -> None:
    stream = cfg.streams["pv"]
    frames = [encode_frame(stream.columns, rows[i : i + per_frame]) for i in range(0, len(rows), per_frame)]
    client.rpush(Keys(cfg.redis.key_prefix).queue("pv"), *frames)


def _dead(client: Any, cfg: Config) -> list[dict[str, Any]]:
    return [json.loads(x) for x in client.lrange(Keys(cfg.redis.key_prefix).dead("pv"), 0, -1)]


def _stored_sids(cfg: Config) -> list[str]:
    sink = DuckDBSink(cfg)
    try:
        return sorted(r[0] for r in sink.query("SELECT sid FROM pv", 10.0).rows)
    finally:
        sink.close()


def test_a_row_the_sink_cannot_encode_is_dead_lettered_and_the_rest_written(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    cfg = _cfg(redis_server, tmp_path)
    stream = cfg.streams["pv"]
    client = redis_server.client()
    rows = make_rows(stream, 100)
    at = stream.columns.index("at")
    bad = {13, 77}
    for i in bad:
        rows[i][at] = YEAR_10000_US
    _push(client, cfg, rows, per_frame=100)  # one frame, one claim: the halving is exact
    sink = InsertAllEncodingSink(DuckDBSink(cfg))

    async def body(f: Flusher) -> None:
        await until(lambda: _drained_and_counted(f, 98), "queue drained around the poison rows")
        assert f.metrics.registry.get_sample_value("oceanus_rows_dead_lettered_total", {"stream": "pv"}) == 2

    run_flusher(cfg, sink, body)
    assert _stored_sids(cfg) == sorted(f"{i:x}" for i in range(100) if i not in bad)
    dead = _dead(client, cfg)
    assert sorted(d["row"]["n"] for d in dead) == sorted(bad)
    assert {d["reason"].split(":")[0:2] == ["poison", " OverflowError"] for d in dead} == {True}
    assert all(d["row"]["at"] == YEAR_10000_US for d in dead)
    # Halving depth first, no retry of a conversion error: 27 calls, not one per row.
    assert sink.calls == [100, 50, 25, 12, 13, 6, 3, 1, 2, 1, 1, 3, 7, 25, 50, 25, 25, 12, 6, 3, 1, 2, 1, 1, 3, 6, 13]


@pytest.mark.parametrize("retryable", [False, True])
def test_a_request_refused_for_one_row_isolates_that_row(
    redis_server: RedisServer, tmp_path: Path, retryable: bool
) -> None:
    cfg = _cfg(redis_server, tmp_path)
    stream = cfg.streams["pv"]
    client = redis_server.client()
    rows = make_rows(stream, 40)
    sid = stream.columns.index("sid")
    rows[0][sid] = POISON_SID  # first: its sibling half is only tried after it failed
    rows[29][sid] = POISON_SID
    _push(client, cfg, rows, per_frame=40)
    sink = RefusesRequestsWith(DuckDBSink(cfg), retryable)

    async def body(f: Flusher) -> None:
        await until(lambda: _drained_and_counted(f, 38), "queue drained around the refused rows")

    run_flusher(cfg, sink, body)
    assert _stored_sids(cfg) == sorted(f"{i:x}" for i in range(40) if i not in (0, 29))
    dead = _dead(client, cfg)
    assert sorted(d["row"]["n"] for d in dead) == [0, 29]
    assert all(d["reason"].startswith("poison: SinkError: HTTP ") for d in dead), dead


@pytest.mark.parametrize("retryable", [False, True])
def test_a_whole_batch_error_is_retried_and_never_dead_letters(
    redis_server: RedisServer, tmp_path: Path, retryable: bool
) -> None:
    # A revoked role or an outage fails every row alike: 25 failed calls, far more
    # than it takes to halve 64 rows down to one, and still nothing is dropped.
    cfg = _cfg(redis_server, tmp_path)
    client = redis_server.client()
    ids = push_frames(client, Keys(cfg.redis.key_prefix), cfg.streams["pv"], frames=1, rows_per_frame=64)
    sink = DownFor(DuckDBSink(cfg), calls_down=25, retryable=retryable)

    async def body(f: Flusher) -> None:
        await until(lambda: _drained_and_counted(f, 64), "queue drained after the outage")

    run_flusher(cfg, sink, body)
    assert _dead(client, cfg) == []
    assert len(_stored_sids(cfg)) == len(ids) == 64
    # Halved depth first along one path only (after one failure per level when not retryable,
    # poison_after_failures = 2 when retryable), then one write per level once the sink is back.
    path = [64, 32, 16, 8, 4, 2, 1, 1] if not retryable else [64, 64, 32, 32, 16, 16, 8, 8, 4, 4, 2, 2, 1, 1, 1]
    assert sink.calls == path + [1] * (26 - len(path)) + [1, 2, 4, 8, 16, 32], sink.calls


def test_a_reclaimed_batch_splits_where_it_split_before(redis_server: RedisServer, tmp_path: Path) -> None:
    import asyncio

    import redis.asyncio as aioredis

    from flusher.claim import Claimer

    cfg = _cfg(redis_server, tmp_path)
    keys = Keys(cfg.redis.key_prefix)
    client = redis_server.client()
    push_frames(client, keys, cfg.streams["pv"], frames=4, rows_per_frame=5)

    async def claim_as_ghost() -> tuple[str, str]:
        ghost = Claimer(aioredis.from_url(redis_server.url), keys, "ghost", 1.0)
        claim = await ghost.claim("pv", 4)
        await ghost.client.aclose()
        assert claim is not None
        return claim.key, claim.batch_id

    key, batch_id = asyncio.run(claim_as_ghost())
    # As a flusher that died while isolating rows leaves it: the whole batch and its first half split.
    client.hset(keys.state(key), mapping={f"_split:{batch_id}": "1", f"_split:{batch_id}.a": "1"})
    sink = _Wrapped(DuckDBSink(cfg))

    async def body(f: Flusher) -> None:
        await until(lambda: _queue_drained(f), "orphan written")

    run_flusher(cfg, sink, body)
    assert sink.calls == [5, 5, 10]
    assert len(_stored_sids(cfg)) == 20


class ResultBug(_Wrapped):
    """Stores the rows, then answers with something that is not a WriteResult (a sink bug)."""

    def __init__(self, inner: DuckDBSink, bad_answers: int) -> None:
        super().__init__(inner)
        self.bad_answers = bad_answers

    def write(self, batch: Batch, state: WriteState) -> WriteResult:
        result = super().write(batch, state)
        if len(self.calls) <= self.bad_answers:
            return None  # type: ignore[return-value]
        return result


def test_an_unexpected_exception_restarts_the_worker_and_the_stream_goes_on(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    cfg = _cfg(redis_server, tmp_path)
    client = redis_server.client()
    push_frames(client, Keys(cfg.redis.key_prefix), cfg.streams["pv"], frames=3, rows_per_frame=4)
    sink = ResultBug(DuckDBSink(cfg), bad_answers=1)

    async def body(f: Flusher) -> None:
        await until(lambda: _queue_drained(f), "queue drained after the restart")
        assert f.metrics.registry.get_sample_value("oceanus_worker_restarts_total", {"stream": "pv"}) == 1

    run_flusher(cfg, sink, body)
    assert len(_stored_sids(cfg)) == 12  # the first write, repeated, is deduped
    assert _dead(client, cfg) == []


def test_a_batch_the_worker_keeps_failing_on_goes_to_the_dead_letters_whole(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    cfg = _cfg(redis_server, tmp_path)
    client = redis_server.client()
    keys = Keys(cfg.redis.key_prefix)
    push_frames(client, keys, cfg.streams["pv"], frames=2, rows_per_frame=3)
    sink = ResultBug(DuckDBSink(cfg), bad_answers=10**9)

    async def body(f: Flusher) -> None:
        await until(lambda: _queue_drained(f), "the failing batch released")

    run_flusher(cfg, sink, body)
    dead = _dead(client, cfg)
    assert len(dead) == 2
    assert all(d["frame_b64"] and d["row"] is None for d in dead)
    assert all(
        d["reason"].startswith("poison: the flusher failed on this batch 2 times: AttributeError") for d in dead
    ), dead


def test_a_frame_that_cannot_be_normalised_is_dead_lettered_alone(redis_server: RedisServer, tmp_path: Path) -> None:
    cfg = _cfg(redis_server, tmp_path)
    stream = cfg.streams["pv"]
    client = redis_server.client()
    # A column the config no longer has, holding a msgpack extension value: moving
    # it into `extra` cannot encode it as JSON.
    rows = make_rows(stream, 3)
    odd = [[*r, msgspec.msgpack.Ext(5, b"x")] for r in rows]
    good = make_rows(stream, 4, start=3)
    client.rpush(
        Keys(cfg.redis.key_prefix).queue("pv"),
        encode_frame([*stream.columns, "gone"], odd),
        encode_frame(stream.columns, good),
    )

    async def body(f: Flusher) -> None:
        await until(lambda: _drained_and_counted(f, 4), "the good frame written")

    run_flusher(cfg, _Wrapped(DuckDBSink(cfg)), body)
    dead = _dead(client, cfg)
    assert len(dead) == 1
    assert dead[0]["reason"].startswith("cannot normalise the frame: ")
    assert _stored_sids(cfg) == sorted(f"{i:x}" for i in range(3, 7))


def test_row_specific_is_the_data_shaped_exceptions() -> None:
    assert row_specific(OverflowError("date value out of range"))
    assert row_specific(ValueError("x"))
    assert row_specific(TypeError("x"))
    assert row_specific(KeyError("x"))
    assert row_specific(msgspec.EncodeError("x"))
    assert not row_specific(SinkError("x", retryable=False))
    assert not row_specific(RuntimeError("x"))
    assert not row_specific(AttributeError("x"))


# ----------------------------------------------------------------------------- BigQuery, through bqemulator


@pytest.mark.timeout(120)
def test_bigquery_insert_all_far_future_timestamp_is_dead_lettered(
    redis_server: RedisServer, bq_emulator: BigQueryEmulator
) -> None:
    from tests.support.bq_helpers import bq_config, emulator_client
    from tests.support.bq_helpers import make_rows as bq_rows

    base = bq_config(bq_emulator.rest_url, bq_emulator.project, retry_deadline_s=2.0)
    cfg = msgspec.structs.replace(
        base,
        redis=msgspec.structs.replace(base.redis, url=redis_server.url),
        flusher=msgspec.structs.replace(
            base.flusher,
            admin_port=0,
            heartbeat_ttl_s=1.0,
            retry_base_s=0.01,
            retry_max_s=0.05,
            poison_after_failures=2,
        ),
    )
    stream = cfg.streams["ev"]
    rows = bq_rows(stream, 10)
    t = stream.columns.index("t")
    rows[6][t] = YEAR_10000_US
    client = redis_server.client()
    client.rpush(Keys(cfg.redis.key_prefix).queue("ev"), encode_frame(stream.columns, rows))
    sink = BigQuerySink(cfg)

    async def body(f: Flusher) -> None:
        await until(lambda: _drained_and_counted(f, 9, "ev"), "the BigQuery stream drained", timeout=60)

    t0 = time.monotonic()
    run_flusher(cfg, sink, body)
    assert time.monotonic() - t0 < 60
    bq = emulator_client(bq_emulator)
    try:
        got = [r["s"] for r in bq.query(f"SELECT s FROM `{sink.table_id(stream)}`").result()]
    finally:
        bq.close()
    assert sorted(got) == sorted(f"x{i}" for i in range(10) if i != 6)
    [dead] = [json.loads(x) for x in client.lrange(Keys(cfg.redis.key_prefix).dead("ev"), 0, -1)]
    assert dead["row"]["s"] == "x6"
    assert dead["reason"].startswith("poison: OverflowError")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("fmt", ["parquet", "ndjson"])
def test_load_job_refuses_a_row_it_cannot_encode_and_loads_the_rest(bq_emulator: BigQueryEmulator, fmt: str) -> None:
    # One load job per table per interval: isolating a row by halving would cost
    # paced jobs, so the load writer refuses that row itself and loads the others.
    from flusher.sinks.bigquery.load import STATE_JOB
    from tests.support.bq_modes import MemState, batch, mode_sink

    sink = mode_sink(bq_emulator, "load", load_format=fmt)
    try:
        ev = sink.config.streams["ev"]
        b = batch(ev, 1, 5)
        t = ev.columns.index("t")
        rows = [list(r) for r in b.rows]
        rows[2][t] = YEAR_10000_US
        state = MemState()
        result = sink.write(msgspec.structs.replace(b, rows=rows), state)
        assert result.written == 4
        assert [(e.index, e.reason.split(":")[0]) for e in result.rejected] == [(2, "cannot be encoded for a load job")]
        assert state.get(STATE_JOB) is not None
        from google.cloud import bigquery

        job = sink.client.query(
            f"SELECT event_id FROM `{sink.table_id('ev')}`", retry=bigquery.DEFAULT_RETRY.with_deadline(5)
        )
        got = sorted(r["event_id"] for r in job.result())
        assert got == sorted(r[0].hex() for i, r in enumerate(rows) if i != 2)
    finally:
        sink.close()

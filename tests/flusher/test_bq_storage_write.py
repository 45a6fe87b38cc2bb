"""Storage Write API mode against bqemulator's gRPC service (its best-emulated part).

The emulator enforces COMMITTED-stream offsets like BigQuery (ALREADY_EXISTS on
a repeated offset, OUT_OF_RANGE past the end, refusal after finalize), so the
exactly-once paths are tested end to end here. Where it is more lenient (it
ignores unknown fields, so a schema mismatch never surfaces as an error), the
tests check what the writer does on its own: a new stream per column layout.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flusher.sinks.base import Batch
from flusher.sinks.bigquery import BigQuerySink
from flusher.sinks.bigquery.errors import (
    ALREADY_EXISTS,
    FAILED_PRECONDITION,
    NOT_FOUND,
    OUT_OF_RANGE,
    RESOURCE_EXHAUSTED,
    UNAVAILABLE,
)
from flusher.sinks.bigquery.storage_write import STATE_OFFSET, STATE_STREAM, StorageWriter, _StreamGone
from oceanus.config import Config
from oceanus.errors import Reason, SinkError, TransientError
from tests.support.bq_modes import MemState, batch, mode_config, mode_sink
from tests.support.servers import BigQueryEmulator, RedisServer, as_bytes, wait_for

pytestmark = pytest.mark.timeout(120)
REPO = Path(__file__).resolve().parents[2]


def _sink(emu: BigQueryEmulator, **kw: Any) -> BigQuerySink:
    return mode_sink(emu, "storage_write", **kw)


@pytest.fixture
def sink(bq_emulator: BigQueryEmulator) -> Iterator[BigQuerySink]:
    s = _sink(bq_emulator)
    try:
        yield s
    finally:
        s.close()


def _writer(sink: BigQuerySink) -> StorageWriter:
    writer = sink._mode_writer("storage_write")
    assert isinstance(writer, StorageWriter)
    return writer


def _ids(sink: BigQuerySink, extra: str = "") -> list[str]:
    from google.cloud import bigquery

    sql = f"SELECT event_id {extra} FROM `{sink.table_id('ev')}`"
    job = sink.client.query(sql, retry=bigquery.DEFAULT_RETRY.with_deadline(5))
    return [r["event_id"] for r in job.result()]


def _expected(stream_cfg: Config, *batches: tuple[int, int]) -> list[str]:
    ev = stream_cfg.streams["ev"]
    return sorted(r[0].hex() for no, n in batches for r in batch(ev, no, n).rows)


@pytest.mark.parametrize("fmt", ["proto", "arrow"])
def test_committed_rows_land_typed(bq_emulator: BigQueryEmulator, fmt: str) -> None:
    sink = _sink(bq_emulator, write_format=fmt)
    try:
        ev = sink.config.streams["ev"]
        state = MemState()
        result = sink.write(batch(ev, 1, 50), state)
        assert result.written == 50
        assert result.rejected == ()
        assert state.get(STATE_STREAM)
        assert state.get(STATE_OFFSET) == "0"
        from google.cloud import bigquery

        job = sink.client.query(
            f"SELECT * FROM `{sink.table_id(ev)}` WHERE n = 4", retry=bigquery.DEFAULT_RETRY.with_deadline(5)
        )
        (row,) = list(job.result())
        sent = batch(ev, 1, 50).rows[4]
        assert row["event_id"] == sent[0].hex()
        assert row["s"] == "s1-4"
        assert row["n"] == 4
        assert row["f"] == 1.0
        assert row["b"] is True
        assert int(row["received_at"].timestamp() * 1_000_000) == sent[ev.columns.index("received_at")]
        assert int(row["t"].timestamp() * 1_000_000) == sent[ev.columns.index("t")]
        assert sorted(_ids(sink)) == _expected(sink.config, (1, 50))
        # The next batch continues the same stream after the first one's rows.
        state2 = MemState()
        sink.write(batch(ev, 2, 10), state2)
        assert state2.get(STATE_STREAM) == state.get(STATE_STREAM)
        assert state2.get(STATE_OFFSET) == "50"
        assert sorted(_ids(sink)) == _expected(sink.config, (1, 50), (2, 10))
    finally:
        sink.close()


def test_repeated_offset_is_already_exists_and_counts_as_written(sink: BigQuerySink) -> None:
    ev = sink.config.streams["ev"]
    b = batch(ev, 3, 40)
    state = MemState()
    sink.write(b, state)
    # The service itself refuses the repeated offset ...
    writer = _writer(sink)
    enc = writer._encoder(b)
    chunk = writer._plan(enc, b, list(range(40)), 0, writer.cap)[0]
    assert writer._append(enc, state.values[STATE_STREAM], chunk) is False
    # ... and a retry of the whole batch with its state is a success that adds nothing.
    again = sink.write(b, MemState(state.values))
    assert again.written == 40
    assert sorted(_ids(sink)) == _expected(sink.config, (3, 40))


def test_requests_split_under_the_cap_and_resume_at_their_offsets(bq_emulator: BigQueryEmulator) -> None:
    # A cap of ~3 KB for rows: 60 rows of ~300 bytes need several appends.
    sink = _sink(bq_emulator, max_request_bytes=64 * 1024 + 3000)
    try:
        ev = sink.config.streams["ev"]
        b = batch(ev, 4, 60, pad=250)
        writer = _writer(sink)
        chunks = writer._plan(writer._encoder(b), b, list(range(60)), 0, writer.cap)
        assert len(chunks) >= 5
        assert sum(len(c.rows) for c in chunks) == 60
        state = MemState()
        # Crash after two appends: the third raises, as a dead connection would.
        calls = {"n": 0}
        real = writer._append

        def flaky(enc: Any, name: str, chunk: Any) -> bool:
            calls["n"] += 1
            if calls["n"] == 3:
                raise SinkError("connection reset", retryable=True, reason="connection")
            return real(enc, name, chunk)

        writer._append = flaky  # type: ignore[method-assign]
        with pytest.raises(SinkError):
            sink.write(b, state)
        writer._append = real  # type: ignore[method-assign]
        assert len(_ids(sink)) == sum(len(c.rows) for c in chunks[:2])
        # Another batch is written before the failed one is retried. The failed
        # batch keeps its stream and offsets, so this one is given a new stream:
        # sharing it would make the retry's offsets look already written (loss).
        state2 = MemState()
        sink.write(batch(ev, 5, 5), state2)
        assert state2.get(STATE_STREAM) != state.get(STATE_STREAM)
        assert sink.write(b, state).written == 60
        assert sorted(_ids(sink)) == _expected(sink.config, (4, 60), (5, 5))
    finally:
        sink.close()


def _moved_then_written(sink: BigQuerySink, b: Batch, state: MemState) -> int:
    """A stream-level error: the first attempt moves the batch and raises, the worker's next one writes it."""
    with pytest.raises(TransientError, match="on the next attempt") as info:
        sink.write(b, state)
    assert info.value.reason == Reason.SERVER
    return sink.write(b, state).written


def test_finalized_stream_moves_the_rest_to_a_new_stream(bq_emulator: BigQueryEmulator) -> None:
    sink = _sink(bq_emulator, max_request_bytes=64 * 1024 + 3000)
    try:
        ev = sink.config.streams["ev"]
        writer = _writer(sink)
        # An own stream finalized behind the writer's back: the next batch opens another.
        s1 = MemState()
        sink.write(batch(ev, 6, 5), s1)
        writer.client.finalize_write_stream(name=s1.values[STATE_STREAM])
        s2 = MemState()
        assert _moved_then_written(sink, batch(ev, 7, 5), s2) == 5
        assert s2.get(STATE_STREAM) != s1.get(STATE_STREAM)
        # The stream it moved to is that batch's alone: the next batch opens its own.
        s3 = MemState()
        assert sink.write(batch(ev, 13, 5), s3).written == 5
        assert s3.get(STATE_STREAM) not in (s1.get(STATE_STREAM), s2.get(STATE_STREAM))

        # A half-written batch whose stream was finalized (an operator, an
        # expiry): a fresh writer seals it, keeps what it holds, moves the rest.
        b = batch(ev, 8, 60, pad=250)
        state = MemState()
        real = writer._append
        calls = {"n": 0}

        def crash(enc: Any, name: str, chunk: Any) -> bool:
            calls["n"] += 1
            if calls["n"] == 3:
                raise KeyboardInterrupt  # the process dies here
            return real(enc, name, chunk)

        writer._append = crash  # type: ignore[method-assign]
        with pytest.raises(KeyboardInterrupt):
            sink.write(b, state)
        writer._append = real  # type: ignore[method-assign]
        old = state.values[STATE_STREAM]
        writer.client.finalize_write_stream(name=old)
        fresh = _sink(bq_emulator, dataset=sink.config.sink.bigquery.dataset, max_request_bytes=64 * 1024 + 3000)
        try:
            assert _moved_then_written(fresh, b, state) == 60
        finally:
            fresh.close()
        assert state.values[STATE_STREAM] != old
        assert sorted(_ids(sink)) == _expected(sink.config, (6, 5), (7, 5), (13, 5), (8, 60))
    finally:
        sink.close()


def test_offset_past_the_end_moves_the_batch(sink: BigQuerySink) -> None:
    ev = sink.config.streams["ev"]
    s1 = MemState()
    sink.write(batch(ev, 9, 10), s1)
    b = batch(ev, 10, 10)
    # A reservation at offset 1000 of a 10-row stream: nothing of it is there.
    forged = MemState({**s1.values, STATE_OFFSET: "1000", "sw_plan": f"{b.batch_id}:10:0:100000", "sw_rejected": "[]"})
    assert _moved_then_written(sink, b, forged) == 10
    assert forged.values[STATE_STREAM] != s1.values[STATE_STREAM]
    assert sorted(_ids(sink)) == _expected(sink.config, (9, 10), (10, 10))


def test_new_field_in_config_reopens_with_the_new_schema(bq_emulator: BigQueryEmulator) -> None:
    from google.cloud import bigquery

    sink = _sink(bq_emulator)
    dataset = sink.config.sink.bigquery.dataset
    try:
        ev = sink.config.streams["ev"]
        s1 = MemState()
        sink.write(batch(ev, 11, 5), s1)
        grown = mode_config(
            bq_emulator.rest_url,
            bq_emulator.grpc_target,
            bq_emulator.project,
            "storage_write",
            dataset=dataset,
            extra_fields='z = { type = "string" }\n',
        )
        ev2 = grown.streams["ev"]
        sink.ensure_tables([ev2])
        # bqemulator only: update_table does not change the stored table (BigQuery needs no ALTER).
        sink.client.query(
            f"ALTER TABLE `{sink.table_id(ev2)}` ADD COLUMN z STRING", retry=bigquery.DEFAULT_RETRY.with_deadline(5)
        ).result()
        s2 = MemState()
        assert sink.write(batch(ev2, 12, 5), s2).written == 5
        assert s2.get(STATE_STREAM) != s1.get(STATE_STREAM)
        job = sink.client.query(f"SELECT z FROM `{sink.table_id(ev2)}` WHERE z IS NOT NULL ORDER BY z")
        assert [r["z"] for r in job.result()] == [f"z{i}" for i in range(5)]
    finally:
        sink.close()


def test_default_stream_is_at_least_once_and_skips_stored_requests(bq_emulator: BigQueryEmulator) -> None:
    sink = _sink(bq_emulator, write_stream="default", write_format="arrow")
    try:
        ev = sink.config.streams["ev"]
        b = batch(ev, 13, 30)
        state = MemState()
        assert sink.write(b, state).written == 30
        assert state.get(STATE_STREAM) is None
        assert sink.write(b, state).written == 30  # a retry after success re-sends nothing
        assert sorted(_ids(sink)) == _expected(sink.config, (13, 30))
    finally:
        sink.close()


@pytest.mark.parametrize(
    ("code", "message", "outcome"),
    [
        (0, "", True),
        (ALREADY_EXISTS, "Offset 0 already committed; next expected 100", False),
        (OUT_OF_RANGE, "Offset 120 beyond the end", _StreamGone),
        (FAILED_PRECONDITION, "Stream is FINALIZED", _StreamGone),
        (NOT_FOUND, "Stream not found: projects/p/datasets/d/tables/t/streams/x", _StreamGone),
        (3, "Input schema has more fields than BigQuery schema, extra fields: 'z'", _StreamGone),
        (UNAVAILABLE, "connection reset", "connection"),
        (RESOURCE_EXHAUSTED, "quota", "throttled"),
        (NOT_FOUND, "Table not found for default stream: projects/p/datasets/d/tables/t", "not_found"),
        (3, "Cannot parse value", "invalid"),
    ],
)
def test_append_outcomes(code: int, message: str, outcome: object) -> None:
    if isinstance(outcome, bool):
        assert StorageWriter._outcome(code, message, [], "s") is outcome
    elif outcome is _StreamGone:
        with pytest.raises(_StreamGone):
            StorageWriter._outcome(code, message, [], "s")
    else:
        with pytest.raises(SinkError) as info:
            StorageWriter._outcome(code, message, [], "s")
        assert info.value.reason == outcome
        assert info.value.retryable == (outcome in ("connection", "throttled"))


# --------------------------------------------------------------------------- kill -9

CHILD = textwrap.dedent(
    """
    import sys, threading
    import redis
    from flusher.sinks.bigquery import BigQuerySink
    from flusher.sinks.bigquery.storage_write import StorageWriter
    from tests.support.bq_modes import batch, mode_config

    rest, grpc_target, project, dataset, redis_port = sys.argv[1:6]
    r = redis.Redis(port=int(redis_port))

    class RedisState:
        def __init__(self, key):
            self.key = key
        def get(self, k):
            v = r.hget(self.key, k)
            return None if v is None else v.decode()
        def set(self, **values):
            r.hset(self.key, mapping=values)

    real = StorageWriter._append
    def append(self, enc, name, chunk):
        stored = real(self, enc, name, chunk)
        if r.incr("appends") == 7:
            r.set("appended", 1)
            threading.Event().wait()  # stay here, mid-batch, until killed
        return stored
    StorageWriter._append = append

    cfg = mode_config(rest, grpc_target, project, "storage_write", dataset=dataset,
                      max_request_bytes=64 * 1024 + 3000)
    sink = BigQuerySink(cfg)
    ev = cfg.streams["ev"]
    for no in range(100, 110):
        r.sadd("started", no)
        sink.write(batch(ev, no, 30, pad=250), RedisState(f"state:b{no}"))
        r.sadd("done", no)  # the flusher deletes the claim here
    """
)


def test_kill9_mid_append_then_resume_zero_duplicates_zero_loss(
    bq_emulator: BigQueryEmulator, redis_server: RedisServer
) -> None:
    sink = _sink(bq_emulator, max_request_bytes=64 * 1024 + 3000)
    r = redis_server.client()
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            CHILD,
            bq_emulator.rest_url,
            bq_emulator.grpc_target,
            bq_emulator.project,
            sink.config.sink.bigquery.dataset,
            str(redis_server.port),
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        wait_for(lambda: r.get("appended") or child.poll() is not None, timeout=60, what="seven appends")
        assert child.poll() is None, "the child exited before being killed"
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=20)
        started = sorted(int(x) for x in r.smembers("started"))
        done = {int(x) for x in r.smembers("done")}
        assert started, "the kill must land inside a batch"
        assert max(started) not in done, "the kill must land inside a batch"
        ev = sink.config.streams["ev"]
        # A new flusher re-claims every batch not deleted, with its state (a Redis hash).
        for no in started:
            if no in done:
                continue
            values = {as_bytes(k).decode(): as_bytes(v).decode() for k, v in r.hgetall(f"state:b{no}").items()}
            assert values[STATE_STREAM], "the reservation is persisted before the first append"
            st = MemState(values)
            assert sink.write(batch(ev, no, 30, pad=250), st).written == 30
        stored = _ids(sink)
        assert len(stored) == len(set(stored)), "no duplicates"
        assert sorted(stored) == _expected(sink.config, *((no, 30) for no in started)), "no loss"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        r.close()
        sink.close()

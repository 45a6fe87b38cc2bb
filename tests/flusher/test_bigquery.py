"""BigQuery sink against the emulator, with the fault proxy in between.

Where bqemulator differs from BigQuery (see docs in the emulator notes), the
tests do not build on the emulator's behaviour:

- it ignores ``insertId``: dedupe is checked through the ``_dedup`` view after
  inserting a batch twice, and insertIds are checked on the wire at the proxy;
- it answers client mistakes with HTTP 500 and reports wrong per-row
  locations: error mapping and per-row errors are tested with responses shaped
  like the real service's, injected by the proxy;
- ``update_table`` changes its reported schema but not its stored table: the
  schema-evolution test adds the column by ``ALTER TABLE`` as well, which real
  BigQuery does not need;
- it does not return a view's SQL: the view is checked by querying it.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from typing import Any, ClassVar

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flusher.sinks import bigquery as bq
from flusher.sinks.base import Batch, RowRetry, WriteResult, WriteState
from flusher.sinks.bigquery import (
    STATE_DONE,
    BigQuerySink,
    classify,
    dedup_view_sql,
    timestamp_us_to_rfc3339,
)
from oceanus.config import FieldConfig
from oceanus.errors import ConfigError, PayloadTooLarge, Reason, SinkError, TransientError
from tests.support.bq_helpers import MemState, bq_config, emulator_client, make_batch, make_rows
from tests.support.faultproxy import FaultProxy
from tests.support.servers import BigQueryEmulator, free_port

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def proxy(bq_emulator: BigQueryEmulator) -> Iterator[FaultProxy]:
    p = FaultProxy(bq_emulator.rest_url).start()
    try:
        yield p
    finally:
        p.stop()


def _sink(bq_emulator: BigQueryEmulator, proxy: FaultProxy, **kw: Any) -> BigQuerySink:
    cfg = bq_config(proxy.url, bq_emulator.project, **kw)
    sink = BigQuerySink(cfg)
    sink.ensure_tables(list(cfg.streams.values()))
    return sink


@pytest.fixture
def sink(bq_emulator: BigQueryEmulator, proxy: FaultProxy) -> Iterator[BigQuerySink]:
    s = _sink(bq_emulator, proxy)
    try:
        yield s
    finally:
        s.close()


def _query(bq_emulator: BigQueryEmulator, sql: str) -> list[dict[str, Any]]:
    """Read back directly from the emulator (not through the proxy)."""
    from google.cloud import bigquery

    client = emulator_client(bq_emulator)
    try:
        job = client.query(sql, retry=bigquery.DEFAULT_RETRY.with_deadline(5))
        return [dict(r.items()) for r in job.result()]
    finally:
        client.close()


def _stored_ids(bq_emulator: BigQueryEmulator, table_id: str) -> list[str]:
    return [r["event_id"] for r in _query(bq_emulator, f"SELECT event_id FROM `{table_id}`")]


# ----------------------------------------------------------------------------- happy path


def test_rows_land_typed_with_insert_ids(bq_emulator: BigQueryEmulator, proxy: FaultProxy, sink: BigQuerySink) -> None:
    stream = sink.config.streams["ev"]
    rows = make_rows(stream, 4)
    rows[1][stream.columns.index("n")] = None  # a null leaves the key out
    result = sink.write(make_batch(stream, rows), MemState())
    assert result.written == 4
    assert result.rejected == ()

    stored = {r["event_id"]: r for r in _query(bq_emulator, f"SELECT * FROM `{sink.table_id(stream)}`")}
    assert len(stored) == 4
    col = stream.columns.index
    for row in rows:
        got = stored[row[0].hex()]
        assert got["received_at"] == dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=row[1])
        assert got["s"] == row[col("s")]
        assert got["f"] == row[col("f")]
        assert got["b"] is row[col("b")]
        assert got["n"] == row[col("n")]
        assert got["t"] == dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=row[col("t")])
        assert got["j"] == {"i": int(row[col("s")][1:]), "tags": ["a", "b"]}
        assert got["ip"] == "192.0.2.1"
        assert got["device"] == "pc"
    assert stored[rows[0][0].hex()]["extra"] == {"utm": "mail"}
    assert stored[rows[1][0].hex()]["extra"] is None

    # On the wire: every row carries insertId = its event_id, and skipInvalidRows.
    (request,) = proxy.seen("insertAll")
    body = request.json()
    assert body["skipInvalidRows"] is True
    assert [r["insertId"] for r in body["rows"]] == [r[0].hex() for r in rows]
    assert all(r["insertId"] == r["json"]["event_id"] for r in body["rows"])
    assert "n" not in body["rows"][1]["json"]


def test_table_partitioned_clustered_and_sync_idempotent(bq_emulator: BigQueryEmulator, sink: BigQuerySink) -> None:
    stream = sink.config.streams["ev"]
    client = emulator_client(bq_emulator)
    try:
        table = client.get_table(sink.table_id(stream))
        view = client.get_table(sink.dedup_view_id(stream))
    finally:
        client.close()
    assert table.time_partitioning is not None
    assert (table.time_partitioning.type_, table.time_partitioning.field) == ("DAY", "received_at")
    assert table.clustering_fields == ["s", "n"]
    schema = {f.name: (f.field_type, f.mode) for f in table.schema}
    assert schema == {
        "event_id": ("STRING", "REQUIRED"),
        "received_at": ("TIMESTAMP", "REQUIRED"),
        "ip": ("STRING", "NULLABLE"),
        "ua": ("STRING", "NULLABLE"),
        "device": ("STRING", "NULLABLE"),
        "s": ("STRING", "NULLABLE"),
        "n": ("INT64", "NULLABLE"),
        "f": ("FLOAT64", "NULLABLE"),
        "b": ("BOOL", "NULLABLE"),
        "t": ("TIMESTAMP", "NULLABLE"),
        "j": ("JSON", "NULLABLE"),
        "extra": ("JSON", "NULLABLE"),
    }
    assert [f.name for f in table.schema] == list(stream.columns)
    assert view.table_type == "VIEW"
    assert sink.ensure_tables([stream]) == []


def test_dedup_view_removes_a_replayed_batch(bq_emulator: BigQueryEmulator, sink: BigQuerySink) -> None:
    # The emulator ignores insertId (BigQuery would drop most of these replays
    # itself): the view must remove every one of them.
    stream = sink.config.streams["ev"]
    rows = make_rows(stream, 5)
    sink.write(make_batch(stream, rows), MemState())
    sink.write(make_batch(stream, rows[:3]), MemState())
    assert len(_stored_ids(bq_emulator, sink.table_id(stream))) == 8
    view_rows = _query(bq_emulator, f"SELECT * FROM `{sink.dedup_view_id(stream)}`")
    assert sorted(r["event_id"] for r in view_rows) == sorted(r[0].hex() for r in rows)
    assert set(view_rows[0]) == set(stream.columns)  # the helper column is not exposed


def test_requests_split_by_rows_and_bytes(bq_emulator: BigQueryEmulator, proxy: FaultProxy) -> None:
    sink = _sink(bq_emulator, proxy, max_rows_per_request=3, max_request_bytes=4000)
    try:
        stream = sink.config.streams["ev"]
        small = make_rows(stream, 7)
        assert sink.write(make_batch(stream, small), MemState()).written == 7
        assert [len(s.json()["rows"]) for s in proxy.seen("insertAll")] == [3, 3, 1]

        big = make_rows(stream, 6, text="y" * 1500)
        before = len(proxy.seen("insertAll"))
        assert sink.write(make_batch(stream, big), MemState()).written == 6
        sent = proxy.seen("insertAll")[before:]
        assert len(sent) >= 3
        assert all(len(s.body) <= 4000 for s in sent)
        assert sum(len(s.json()["rows"]) for s in sent) == 6

        # A row that alone exceeds the request limit cannot ever be sent: dead-lettered, the rest written.
        huge = make_rows(stream, 3)
        huge[1][stream.columns.index("s")] = "z" * 5000
        result = sink.write(make_batch(stream, huge), MemState())
        assert result.written == 2
        assert [e.index for e in result.rejected] == [1]
        assert "max_request_bytes" in result.rejected[0].reason
        ids = _stored_ids(bq_emulator, sink.table_id(stream))
        assert sorted(ids) == sorted(r[0].hex() for r in small + big + [huge[0], huge[2]])
    finally:
        sink.close()


# ----------------------------------------------------------------------------- faults


def test_503_is_retryable_and_retry_writes_the_rows_once(
    bq_emulator: BigQueryEmulator, proxy: FaultProxy, sink: BigQuerySink
) -> None:
    stream = sink.config.streams["ev"]
    batch = make_batch(stream, make_rows(stream, 3))
    proxy.inject("unavailable", times=2)
    for _ in range(2):
        with pytest.raises(SinkError) as info:
            sink.write(batch, MemState())
        assert info.value.retryable
        assert info.value.reason == "server"
        assert "503" in str(info.value)
    assert sink.write(batch, MemState()).written == 3
    assert proxy.count("insertAll", fault="unavailable") == 2
    assert sorted(_stored_ids(bq_emulator, sink.table_id(stream))) == sorted(r[0].hex() for r in batch.rows)


def test_a_write_makes_one_attempt_even_with_a_retry_deadline(bq_emulator: BigQueryEmulator, proxy: FaultProxy) -> None:
    # retry_deadline_s bounds table sync only: a write's 503 is the worker's to retry, with its backoff.
    sink = _sink(bq_emulator, proxy, retry_deadline_s=30.0)
    try:
        stream = sink.config.streams["ev"]
        proxy.inject("unavailable", times=1)
        started = time.monotonic()
        with pytest.raises(TransientError) as info:
            sink.write(make_batch(stream, make_rows(stream, 2)), MemState())
        assert info.value.retryable
        assert info.value.reason == Reason.SERVER
        assert proxy.count("insertAll") == 1
        assert time.monotonic() - started < 10
        assert sink.write(make_batch(stream, make_rows(stream, 2)), MemState()).written == 2
        assert proxy.count("insertAll") == 2
    finally:
        sink.close()


def test_429_rate_limit_is_throttled(proxy: FaultProxy, sink: BigQuerySink) -> None:
    stream = sink.config.streams["ev"]
    proxy.inject("throttled", times=1)
    with pytest.raises(SinkError) as info:
        sink.write(make_batch(stream, make_rows(stream, 2)), MemState())
    assert info.value.retryable
    assert info.value.reason == "throttled"


def test_hang_is_a_retryable_timeout(bq_emulator: BigQueryEmulator, proxy: FaultProxy) -> None:
    sink = _sink(bq_emulator, proxy, timeout_s=0.5)
    try:
        stream = sink.config.streams["ev"]
        proxy.inject("hang", times=1)
        started = time.monotonic()
        with pytest.raises(SinkError) as info:
            sink.write(make_batch(stream, make_rows(stream, 2)), MemState())
        assert info.value.retryable
        assert info.value.reason == "timeout"
        assert time.monotonic() - started < 10
    finally:
        proxy.clear()
        sink.close()


@pytest.mark.parametrize("kind", ["too_large", "payload_limit"])
def test_request_too_large_asks_for_a_split(proxy: FaultProxy, sink: BigQuerySink, kind: Any) -> None:
    stream = sink.config.streams["ev"]
    proxy.inject(kind, times=1)
    with pytest.raises(PayloadTooLarge):
        sink.write(make_batch(stream, make_rows(stream, 2)), MemState())


def test_other_4xx_is_not_retryable(proxy: FaultProxy, sink: BigQuerySink) -> None:
    stream = sink.config.streams["ev"]
    proxy.inject("status", status=404, times=1)
    with pytest.raises(SinkError) as info:
        sink.write(make_batch(stream, make_rows(stream, 2)), MemState())
    assert not info.value.retryable
    assert not isinstance(info.value, PayloadTooLarge)
    assert "404" in str(info.value)


def test_connection_refused_is_retryable(bq_emulator: BigQueryEmulator) -> None:
    cfg = bq_config(f"http://127.0.0.1:{free_port()}", bq_emulator.project, timeout_s=1.0)
    sink = BigQuerySink(cfg)
    try:
        stream = cfg.streams["ev"]
        with pytest.raises(SinkError) as info:
            sink.write(make_batch(stream, make_rows(stream, 1)), MemState())
        assert info.value.retryable
        assert info.value.reason == "connection"
    finally:
        sink.close()


def test_invalid_rows_are_rejected_and_the_rest_stored(
    bq_emulator: BigQueryEmulator, proxy: FaultProxy, sink: BigQuerySink
) -> None:
    stream = sink.config.streams["ev"]
    rows = make_rows(stream, 5)
    proxy.inject("row_errors", rows={1: "invalid", 3: "invalid"})
    result = sink.write(make_batch(stream, rows), MemState())
    assert result.written == 3
    assert [e.index for e in result.rejected] == [1, 3]
    assert all(e.reason.startswith("invalid: Cannot convert value") and "(at age)" in e.reason for e in result.rejected)
    assert sorted(_stored_ids(bq_emulator, sink.table_id(stream))) == sorted(rows[i][0].hex() for i in (0, 2, 4))


def test_stopped_rows_come_back_to_be_resent_not_dead_lettered(
    bq_emulator: BigQueryEmulator, proxy: FaultProxy, sink: BigQuerySink
) -> None:
    stream = sink.config.streams["ev"]
    rows = make_rows(stream, 5)
    proxy.inject("row_errors", rows={0: "invalid", 2: "stopped", 4: "backendError"})
    result = sink.write(make_batch(stream, rows), MemState())
    assert [e.index for e in result.rejected] == [0]
    assert result.written == 2
    # Not re-sent inside the call: the worker sends them again after its backoff.
    assert result.retry == (RowRetry(2, Reason.SERVER), RowRetry(4, Reason.SERVER))
    (first,) = proxy.seen("insertAll")
    assert len(first.json()["rows"]) == 5
    assert sorted(_stored_ids(bq_emulator, sink.table_id(stream))) == sorted(rows[i][0].hex() for i in (1, 3))


def test_rows_to_resend_survive_a_failed_request_after_them(bq_emulator: BigQueryEmulator, proxy: FaultProxy) -> None:
    sink = _sink(bq_emulator, proxy, max_rows_per_request=2)
    try:
        stream = sink.config.streams["ev"]
        batch = make_batch(stream, make_rows(stream, 4))
        state = MemState()
        proxy.inject("row_errors", rows={1: "backendError"}, times=1)
        proxy.inject("unavailable", times=1)  # the 2nd request: rows 2-3
        with pytest.raises(SinkError):
            sink.write(batch, state)
        result = sink.write(batch, state)
        # Row 1 was refused as transient by the first request: still to be re-sent, never forgotten.
        assert result.retry == (RowRetry(1, Reason.SERVER),)
        assert result.written == 3
        assert [len(s.json()["rows"]) for s in proxy.seen("insertAll")] == [2, 2, 2]
    finally:
        sink.close()


def test_failed_request_midway_resumes_without_resending(bq_emulator: BigQueryEmulator, proxy: FaultProxy) -> None:
    sink = _sink(bq_emulator, proxy, max_rows_per_request=2)
    try:
        stream = sink.config.streams["ev"]
        batch = make_batch(stream, make_rows(stream, 6))
        state = MemState()
        proxy.inject("row_errors", rows={0: "invalid"}, times=1)
        proxy.inject("unavailable", after=1, times=1)  # the 3rd request: rows 4-5
        with pytest.raises(SinkError):
            sink.write(batch, state)
        assert state.get(STATE_DONE) == f"{batch.batch_id}:6:4"
        result = sink.write(batch, state)
        # The rejection from the first attempt is still reported; rows 0-3 were not sent again.
        assert [e.index for e in result.rejected] == [0]
        assert result.written == 5
        assert [len(s.json()["rows"]) for s in proxy.seen("insertAll")] == [2, 2, 2, 2]
        assert sorted(_stored_ids(bq_emulator, sink.table_id(stream))) == sorted(r[0].hex() for r in batch.rows[1:])
        # A different batch ignores the mark.
        other = make_batch(stream, make_rows(stream, 6))
        assert sink.write(other, state).written == 6
    finally:
        sink.close()


# ----------------------------------------------------------------------------- schema evolution


def test_added_field_becomes_a_nullable_column(bq_emulator: BigQueryEmulator, proxy: FaultProxy) -> None:
    sink = _sink(bq_emulator, proxy)
    dataset = sink.settings.dataset
    old_rows = make_rows(sink.config.streams["ev"], 2)
    sink.write(make_batch(sink.config.streams["ev"], old_rows), MemState())
    sink.close()

    cfg2 = bq_config(proxy.url, bq_emulator.project, dataset, extra_fields='score = { type = "float" }')
    sink2 = BigQuerySink(cfg2)
    try:
        stream = cfg2.streams["ev"]
        changes = sink2.ensure_tables([stream])
        assert changes == [f"added column {sink2.table_id(stream)}.score FLOAT64"]
        client = emulator_client(bq_emulator)
        try:
            table = client.get_table(sink2.table_id(stream))
            # Emulator only: update_table changes its metadata but not its storage.
            client.query(f"ALTER TABLE `{sink2.table_id(stream)}` ADD COLUMN score FLOAT64").result()
        finally:
            client.close()
        assert (table.schema[-1].name, table.schema[-1].field_type, table.schema[-1].mode) == (
            "score",
            "FLOAT64",
            "NULLABLE",
        )
        assert sink2.ensure_tables([stream]) == []
        rows = make_rows(stream, 1)
        rows[0][stream.columns.index("score")] = 9.5
        assert sink2.write(make_batch(stream, rows), MemState()).written == 1
        got = {r["event_id"]: r["score"] for r in _query(bq_emulator, f"SELECT * FROM `{sink2.table_id(stream)}`")}
        assert got == {old_rows[0][0].hex(): None, old_rows[1][0].hex(): None, rows[0][0].hex(): 9.5}
    finally:
        sink2.close()


def test_type_change_is_refused(bq_emulator: BigQueryEmulator, proxy: FaultProxy) -> None:
    sink = _sink(bq_emulator, proxy)
    dataset = sink.settings.dataset
    sink.close()
    cfg2 = bq_config(proxy.url, bq_emulator.project, dataset)
    # Same stream, field `n` now a string.
    old = cfg2.streams["ev"]
    stream = msgspec.structs.replace(old, fields={**old.fields, "n": FieldConfig(type="string")})
    sink2 = BigQuerySink(cfg2)
    try:
        with pytest.raises(ConfigError) as info:
            sink2.ensure_tables([stream])
        message = str(info.value)
        assert "streams.ev.fields.n" in message
        assert "STRING" in message
        assert "INT64" in message
    finally:
        sink2.close()


# ----------------------------------------------------------------------------- units


def test_error_mapping_from_service_exceptions() -> None:
    import requests
    from google.api_core import exceptions as gexc

    def err(cls: type[gexc.GoogleAPICallError], reason: str, message: str = "m") -> gexc.GoogleAPICallError:
        return cls(message, errors=[{"reason": reason, "message": message}])

    assert classify(err(gexc.Forbidden, "rateLimitExceeded"), "w").reason == "throttled"
    assert classify(err(gexc.Forbidden, "quotaExceeded"), "w").retryable
    assert classify(err(gexc.InternalServerError, "internalError"), "w").reason == "server"
    too_big = err(gexc.BadRequest, "invalid", "Request payload size exceeds the limit: 10485760 bytes.")
    assert isinstance(classify(too_big, "w"), PayloadTooLarge)
    assert not classify(err(gexc.Forbidden, "accessDenied"), "w").retryable
    assert not classify(err(gexc.NotFound, "notFound"), "w").retryable
    wrapped = gexc.RetryError("deadline", cause=requests.exceptions.ReadTimeout("read timed out"))
    assert classify(wrapped, "w").reason == "timeout"
    assert classify(requests.exceptions.ConnectionError("refused"), "w").reason == "connection"


def test_value_conversion_and_view_sql() -> None:
    assert timestamp_us_to_rfc3339(0) == "1970-01-01T00:00:00.000000Z"
    assert timestamp_us_to_rfc3339(1_700_000_000_123_456) == "2023-11-14T22:13:20.123456Z"
    assert timestamp_us_to_rfc3339(-1) == "1969-12-31T23:59:59.999999Z"
    sql = dedup_view_sql("p.d.t")
    assert "ROW_NUMBER() OVER (PARTITION BY received_at, event_id" in sql
    assert "`p.d.t`" in sql


def test_emulator_host_from_environment_needs_a_project(
    bq_emulator: BigQueryEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BIGQUERY_EMULATOR_HOST", bq_emulator.rest_url.removeprefix("http://"))
    cfg = bq_config("", "")
    with pytest.raises(ConfigError, match=r"sink\.bigquery\.project"):
        BigQuerySink(cfg)
    sink = BigQuerySink(bq_config("", bq_emulator.project))
    try:
        assert sink.ensure_tables(list(sink.config.streams.values()))[0].startswith("created dataset")
    finally:
        sink.close()


class RecordingWriter:
    """A ModeWriter that records its calls: checks the sink's dispatch, not BigQuery."""

    instances: ClassVar[list[RecordingWriter]] = []

    def __init__(self, sink: BigQuerySink) -> None:
        self.sink = sink
        self.batches: list[str] = []
        self.closed = False
        RecordingWriter.instances.append(self)

    def write(self, batch: Batch, state: WriteState) -> WriteResult:
        self.batches.append(batch.batch_id)
        return WriteResult(written=len(batch.rows))

    def close(self) -> None:
        self.closed = True


def test_other_modes_dispatch_to_a_lazily_built_writer(
    bq_emulator: BigQueryEmulator, proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bq, "MODE_WRITERS", {"load": f"{__name__}:RecordingWriter"})
    RecordingWriter.instances.clear()
    sink = _sink(bq_emulator, proxy)
    stream = msgspec.structs.replace(sink.config.streams["ev"], mode="load")
    assert RecordingWriter.instances == []
    for _ in range(2):
        assert sink.write(make_batch(stream, make_rows(stream, 3)), MemState()).written == 3
    (writer,) = RecordingWriter.instances
    assert writer.sink is sink
    assert len(writer.batches) == 2
    assert proxy.count("insertAll") == 0
    with pytest.raises(ConfigError, match="storage_write"):
        sink.write(make_batch(msgspec.structs.replace(stream, mode="storage_write"), []), MemState())
    sink.close()
    assert writer.closed


def test_lost_reply_duplicates_are_removed_by_the_view(bq_emulator: BigQueryEmulator, proxy: FaultProxy) -> None:
    # The rows are stored but the answer is lost: the retry sends them again.
    # BigQuery would drop the replay by insertId; the emulator keeps both, which
    # is the worst case the view exists for.
    sink = _sink(bq_emulator, proxy, timeout_s=0.5)
    try:
        stream = sink.config.streams["ev"]
        batch = make_batch(stream, make_rows(stream, 4))
        proxy.inject("lost_reply", times=1)
        with pytest.raises(SinkError) as info:
            sink.write(batch, MemState())
        assert info.value.retryable
        assert info.value.reason == "timeout"
        assert sink.write(batch, MemState()).written == 4
        first, second = proxy.seen("insertAll")
        assert [r["insertId"] for r in first.json()["rows"]] == [r["insertId"] for r in second.json()["rows"]]
        ids = _stored_ids(bq_emulator, sink.table_id(stream))
        assert sorted(ids) == sorted(2 * [r[0].hex() for r in batch.rows])
        view = _query(bq_emulator, f"SELECT event_id FROM `{sink.dedup_view_id(stream)}`")
        assert sorted(r["event_id"] for r in view) == sorted(r[0].hex() for r in batch.rows)
    finally:
        proxy.clear()
        sink.close()


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=-(10**16), max_value=10**17))
def test_timestamp_text_is_exact(us: int) -> None:
    expected = dt.datetime(1970, 1, 1) + dt.timedelta(microseconds=us)
    assert timestamp_us_to_rfc3339(us) == expected.isoformat(timespec="microseconds") + "Z"

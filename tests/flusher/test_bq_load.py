"""Load-job mode: rows land through bqemulator; job-id dedupe and pacing as unit tests.

bqemulator ignores an explicit job id and never answers 409 Conflict, so the
re-submission path wraps the client: the first submission goes to the
emulator for real, the second is refused with the client library's own
``Conflict`` exactly as BigQuery refuses a reused job id.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from google.api_core import exceptions as gexc

from flusher.sinks.bigquery import BigQuerySink
from flusher.sinks.bigquery.load import STATE_JOB, LoadWriter, job_id_for, ndjson
from oceanus import config
from oceanus.errors import ConfigError, SinkError
from tests.support.bq_modes import MemState, batch, mode_config, mode_sink
from tests.support.servers import BigQueryEmulator

pytestmark = pytest.mark.timeout(120)


def _sink(emu: BigQueryEmulator, **kw: Any) -> BigQuerySink:
    return mode_sink(emu, "load", **kw)


@pytest.fixture
def sink(bq_emulator: BigQueryEmulator) -> Iterator[BigQuerySink]:
    s = _sink(bq_emulator)
    try:
        yield s
    finally:
        s.close()


def _rows(sink: BigQuerySink) -> list[dict[str, Any]]:
    from google.cloud import bigquery

    job = sink.client.query(
        f"SELECT * FROM `{sink.table_id('ev')}` ORDER BY n", retry=bigquery.DEFAULT_RETRY.with_deadline(5)
    )
    return [dict(r.items()) for r in job.result()]


@pytest.mark.parametrize("fmt", ["parquet", "ndjson"])
def test_rows_land_typed(bq_emulator: BigQueryEmulator, fmt: str) -> None:
    sink = _sink(bq_emulator, load_format=fmt)
    try:
        ev = sink.config.streams["ev"]
        b = batch(ev, 1, 25)
        state = MemState()
        assert sink.write(b, state).written == 25
        assert state.get(STATE_JOB) == job_id_for(b, sink.table_id(ev))
        rows = _rows(sink)
        assert [r["event_id"] for r in rows] == [r[0].hex() for r in b.rows]
        r4 = rows[4]
        assert r4["s"] == "s1-4"
        assert r4["n"] == 4
        assert r4["f"] == 1.0
        assert r4["b"] is True
        assert int(r4["received_at"].timestamp() * 1_000_000) == b.rows[4][ev.columns.index("received_at")]
        assert int(r4["t"].timestamp() * 1_000_000) == b.rows[4][ev.columns.index("t")]
    finally:
        sink.close()


def test_job_id_is_deterministic_per_batch_and_table() -> None:
    cfg = mode_config("http://127.0.0.1:1", "127.0.0.1:2", "p", "load")
    ev = cfg.streams["ev"]
    a, b = batch(ev, 1, 3), batch(ev, 2, 3)
    assert job_id_for(a, "p.d.ev") == job_id_for(batch(ev, 1, 3), "p.d.ev")
    assert job_id_for(a, "p.d.ev") != job_id_for(b, "p.d.ev") != job_id_for(b, "p.d2.ev")
    assert job_id_for(a, "p.d.ev").startswith("oceanus_ev_")
    assert job_id_for(a, "p.d.ev", 1) == job_id_for(a, "p.d.ev") + "_r1"


def test_ndjson_embeds_json_columns_as_json() -> None:
    cfg = mode_config("http://127.0.0.1:1", "127.0.0.1:2", "p", "load")
    line = ndjson(batch(cfg.streams["ev"], 1, 1)).splitlines()[0]
    assert b'"j":{"i": 0}' in line
    assert b'"extra":{"utm": "mail"}' in line


class ConflictingClient:
    """Delegates to the real client, but refuses a job id it has seen with 409, as BigQuery does."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.jobs: dict[str, Any] = {}
        self.submitted = 0

    def load_table_from_file(self, *args: Any, job_id: str, **kw: Any) -> Any:
        self.submitted += 1
        if job_id in self.jobs:
            raise gexc.Conflict(f"Already Exists: Job {job_id}")
        job = self.real.load_table_from_file(*args, job_id=job_id, **kw)
        self.jobs[job_id] = job
        return job

    def get_job(self, job_id: str, **kw: Any) -> Any:
        return self.jobs[job_id]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def test_resubmitted_batch_gets_409_and_loads_nothing_twice(sink: BigQuerySink) -> None:
    ev = sink.config.streams["ev"]
    client = ConflictingClient(sink.client)
    sink.client = client  # type: ignore[assignment]
    writer = LoadWriter(sink)
    b = batch(ev, 2, 30)
    state = MemState()
    assert writer.write(b, state).written == 30
    # The flusher crashed before deleting the claim: a new one re-submits the same batch.
    again = LoadWriter(sink)
    assert again.write(b, MemState(state.values)).written == 30
    assert client.submitted == 2
    assert len(_rows(sink)) == 30


class FakeJob:
    def __init__(self, job_id: str, error: dict[str, str] | None = None) -> None:
        self.job_id = job_id
        self.state = "DONE"
        self.error_result = error
        self.errors = [error] if error else None

    def result(self, **kw: Any) -> None:
        if self.error_result:
            raise gexc.BadRequest(self.error_result["message"])


class FakeClient:
    """Unit-level: a 409 on the first submission (the job exists from a previous life)."""

    project = "p"

    def __init__(self, existing: FakeJob) -> None:
        self.existing = existing
        self.looked_up: list[str] = []

    def load_table_from_file(self, *args: Any, job_id: str, **kw: Any) -> Any:
        raise gexc.Conflict(f"Already Exists: Job p:US.{job_id}")

    def get_job(self, job_id: str, **kw: Any) -> FakeJob:
        self.looked_up.append(job_id)
        return self.existing


def _unit_sink(client: Any, **kw: Any) -> BigQuerySink:
    cfg = mode_config("http://127.0.0.1:1", "127.0.0.1:2", "p", "load", **kw)
    return BigQuerySink(cfg, client=client)


def test_conflict_with_a_finished_job_is_done() -> None:
    client = FakeClient(FakeJob("x"))
    sink = _unit_sink(client)
    b = batch(sink.config.streams["ev"], 3, 5)
    assert LoadWriter(sink).write(b, MemState()).written == 5
    assert client.looked_up == [job_id_for(b, sink.table_id("ev"))]


def test_conflict_with_a_failed_job_retries_under_a_new_id() -> None:
    client = FakeClient(FakeJob("x", {"reason": "backendError", "message": "try again"}))
    sink = _unit_sink(client)
    b = batch(sink.config.streams["ev"], 4, 5)
    state = MemState()
    with pytest.raises(SinkError) as info:
        LoadWriter(sink).write(b, state)
    assert info.value.retryable
    assert "backendError" in str(info.value)
    assert state.get("load_attempt") == "1"
    client.existing = FakeJob("y")
    assert LoadWriter(sink).write(b, state).written == 5
    assert client.looked_up[-1] == job_id_for(b, sink.table_id("ev"), 1)


def test_invalid_data_is_not_retryable() -> None:
    client = FakeClient(FakeJob("x", {"reason": "invalid", "message": "Could not parse 'abc' as INT64"}))
    sink = _unit_sink(client)
    with pytest.raises(SinkError) as info:
        LoadWriter(sink).write(batch(sink.config.streams["ev"], 5, 5), MemState())
    assert not info.value.retryable
    assert "INT64" in str(info.value)


def test_pacing_keeps_one_job_per_interval_per_table() -> None:
    now = [1000.0]
    client = FakeClient(FakeJob("x"))
    sink = _unit_sink(client, load_interval_s=60.0)
    writer = LoadWriter(sink, clock=lambda: now[0])
    ev = sink.config.streams["ev"]
    writer.write(batch(ev, 6, 2), MemState())
    now[0] += 59.0
    with pytest.raises(SinkError) as info:
        writer.write(batch(ev, 7, 2), MemState())
    assert info.value.reason == "pacing"
    assert info.value.retryable
    assert info.value.retry_after_s == pytest.approx(1.0)
    now[0] += 1.0
    assert writer.write(batch(ev, 7, 2), MemState()).written == 2


def test_config_refuses_a_load_interval_over_the_daily_quota() -> None:
    text = '[sink.bigquery]\nload_interval_s = 30\n[streams.ev]\nmode = "load"\n[streams.ev.fields]\ns = {}\n'
    with pytest.raises(ConfigError) as info:
        config.loads(text)
    message = str(info.value)
    assert message.startswith("sink.bigquery.load_interval_s:")
    assert "86400 / 30 = 2,880" in message
    assert "1,500" in message
    assert "57.6" in message
    assert config.loads(text.replace("30", "57.6")).sink.bigquery.load_interval_s == 57.6
    # No load stream: the interval does not matter.
    assert config.loads(text.replace('mode = "load"', 'mode = "storage_write"'))

"""``oceanus forget`` on the BigQuery sink: a DML DELETE, against the emulator."""

from __future__ import annotations

from typing import Any

from flusher.sinks.bigquery import BigQuerySink
from oceanus.commands.forget import _bigquery_delete
from tests.support.bq_helpers import MemState, bq_config, emulator_client, make_batch, make_rows
from tests.support.servers import BigQueryEmulator


def _values(emulator: BigQueryEmulator, table: str) -> list[Any]:
    client = emulator_client(emulator)
    try:
        return sorted(r["s"] for r in client.query(f"SELECT s FROM `{table}`").result())
    finally:
        client.close()


def test_bigquery_delete_removes_only_the_matching_rows(bq_emulator: BigQueryEmulator) -> None:
    cfg = bq_config(bq_emulator.rest_url, bq_emulator.project, dataset="forget_ds")
    stream = cfg.streams["ev"]
    sink = BigQuerySink(cfg)
    try:
        sink.ensure_tables([stream])
        rows = make_rows(stream, 3, text="x")  # s = x0, x1, x2
        rows += make_rows(stream, 1, text="x", start=1)  # a second x1
        assert sink.write(make_batch(stream, rows), MemState()).written == 4
        table = sink.table_id(stream)
    finally:
        sink.close()
    assert _bigquery_delete(cfg, [stream], "s", "x1") == {"ev": 2}
    assert _values(bq_emulator, table) == ["x0", "x2"]
    assert _bigquery_delete(cfg, [stream], "s", "x1") == {"ev": 0}

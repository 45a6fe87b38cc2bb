"""The fixtures start real servers: prove it once, cheaply."""

from __future__ import annotations

from pathlib import Path

from google.cloud import bigquery

from tests.support.servers import BigQueryEmulator, RedisServer


def test_redis_server_has_its_own_aof(redis_server: RedisServer) -> None:
    client = redis_server.client()
    assert client.config_get("appendonly")["appendonly"] == "yes"
    assert Path(client.config_get("dir")["dir"]) == redis_server.data_dir.resolve()
    client.close()


def test_bq_emulator_answers(bq_emulator: BigQueryEmulator) -> None:
    client = bq_emulator.client()
    retry = bigquery.DEFAULT_RETRY.with_deadline(5)
    client.create_dataset("fixture_check", exists_ok=True, retry=retry)
    assert "fixture_check" in [d.dataset_id for d in client.list_datasets(retry=retry)]

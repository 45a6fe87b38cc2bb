"""The fixtures start real servers: prove it once, cheaply."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.cloud import bigquery

from tests.support.servers import BigQueryEmulator, RedisServer, as_bytes, as_bytes_list


def test_redis_server_has_its_own_aof(redis_server: RedisServer) -> None:
    client = redis_server.client()
    assert client.config_get("appendonly")["appendonly"] == "yes"
    data_dir = client.config_get("dir")["dir"]
    assert data_dir is not None
    assert Path(data_dir) == redis_server.data_dir.resolve()
    client.close()


def test_redis_replies_are_bytes_and_a_str_is_refused(redis_server: RedisServer) -> None:
    client = redis_server.client()
    client.rpush("q", b"\x00\xff", "é")
    assert as_bytes_list(client.lrange("q", 0, -1)) == [b"\x00\xff", "é".encode()]
    assert as_bytes(client.lindex("q", 0) or b"") == b"\x00\xff"
    client.close()
    with pytest.raises(TypeError, match=r"got str 'é'$"):
        as_bytes_list([b"a", "é"])


def test_bq_emulator_answers(bq_emulator: BigQueryEmulator) -> None:
    client = bq_emulator.client()
    retry = bigquery.DEFAULT_RETRY.with_deadline(5)
    client.create_dataset("fixture_check", exists_ok=True, retry=retry)
    assert "fixture_check" in [d.dataset_id for d in client.list_datasets(retry=retry)]

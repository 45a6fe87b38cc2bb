"""Shared pieces of the BigQuery sink tests: a typed test stream, configs, batches."""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any

from flusher.sinks.base import Batch
from oceanus import config
from oceanus.buffer import EventIds
from tests.support.bq_modes import MemState
from tests.support.servers import BigQueryEmulator

__all__ = ["MemState"]

if TYPE_CHECKING:
    from google.cloud import bigquery

#: One field of every type the sink maps.
STREAM_TOML = """
[streams.ev]
clustering = ["s", "n"]
[streams.ev.fields]
s = { type = "string" }
n = { type = "int" }
f = { type = "float" }
b = { type = "bool" }
t = { type = "timestamp" }
j = { type = "json" }
{extra_fields}
"""


def bq_config(
    endpoint: str,
    project: str,
    dataset: str | None = None,
    *,
    extra_fields: str = "",
    retry_deadline_s: float = 0.0,
    timeout_s: float = 5.0,
    max_rows_per_request: int = 500,
    max_request_bytes: int = 9_000_000,
) -> config.Config:
    """A config for the test stream ``ev`` writing through ``endpoint``.

    ``retry_deadline_s`` defaults to 0 (no client-library retries) so that a
    fault surfaces at once: the flusher, not the library, owns retrying.
    """
    dataset = dataset or f"t_{uuid.uuid4().hex[:10]}"
    text = f"""
[sink]
kind = "bigquery"
[sink.bigquery]
project = "{project}"
dataset = "{dataset}"
api_endpoint = "{endpoint}"
retry_deadline_s = {retry_deadline_s}
timeout_s = {timeout_s}
max_rows_per_request = {max_rows_per_request}
max_request_bytes = {max_request_bytes}
""" + STREAM_TOML.replace("{extra_fields}", extra_fields)
    return config.loads(text)


_ids = EventIds()


def make_rows(stream: config.StreamConfig, n: int, *, text: str = "x", start: int = 0) -> list[list[Any]]:
    """``n`` rows in frame form (event_id bytes, µs timestamps, JSON text), in ``stream.columns`` order."""
    now_us = time.time_ns() // 1000
    rows: list[list[Any]] = []
    for i in range(start, start + n):
        values: dict[str, Any] = {
            "event_id": _ids.new(),
            "received_at": now_us + i,
            "ip": "192.0.2.1",
            "ua": "Mozilla/5.0 (test)",
            "device": "pc",
            "s": f"{text}{i}",
            "n": i,
            "f": i + 0.5,
            "b": i % 2 == 0,
            "t": 1_700_000_000_000_000 + i,
            "j": f'{{"i": {i}, "tags": ["a", "b"]}}',
            "extra": '{"utm": "mail"}' if i % 3 == 0 else None,
        }
        rows.append([values.get(c) for c in stream.columns])
    return rows


def make_batch(stream: config.StreamConfig, rows: list[list[Any]], batch_id: str | None = None) -> Batch:
    return Batch(stream=stream, batch_id=batch_id or uuid.uuid4().hex, columns=stream.columns, rows=rows)


def emulator_client(emulator: BigQueryEmulator) -> bigquery.Client:
    """A client straight to the emulator (not through the fault proxy), for reading back."""
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import bigquery

    return bigquery.Client(
        project=emulator.project,
        credentials=AnonymousCredentials(),
        client_options=ClientOptions(api_endpoint=emulator.rest_url),
    )

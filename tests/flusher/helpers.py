"""Configs and frames for the flusher tests: frames are built with the real codec."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis

from oceanus import config
from oceanus.buffer import EventIds, Keys, encode_frame
from oceanus.config import Config, StreamConfig

STREAMS_TOML = """
[streams.pv]
clustering = ["sid"]
batch = { max_rows = 5000, min_rows = 10, max_wait_s = 1.0 }

[streams.pv.fields]
sid = { type = "string", required = true }
n = { type = "int" }
score = { type = "float" }
ok = { type = "bool" }
at = { type = "timestamp" }
jsn = { type = "json" }
"""


def make_config_text(redis_url: str, duckdb_path: Path, streams_toml: str = STREAMS_TOML, **flusher: Any) -> str:
    fl = {
        "admin_port": 0,
        "heartbeat_ttl_s": 1.0,
        "drain_timeout_s": 5.0,
        "retry_base_s": 0.01,
        "retry_max_s": 0.05,
        **flusher,
    }
    lines = "\n".join(f"{k} = {v!r}".replace("'", '"') for k, v in fl.items())
    return (
        f'[redis]\nurl = "{redis_url}"\n\n[flusher]\n{lines}\n\n[sink]\nkind = "duckdb"\n\n'
        f'[sink.duckdb]\npath = "{duckdb_path}"\n{streams_toml}'
    )


def make_config(redis_url: str, duckdb_path: Path, streams_toml: str = STREAMS_TOML, **flusher: Any) -> Config:
    return config.loads(make_config_text(redis_url, duckdb_path, streams_toml, **flusher))


_ids = EventIds()


def make_rows(stream: StreamConfig, n: int, start: int = 0) -> list[list[Any]]:
    """``n`` rows in the stream's column order, as the collector encodes them."""
    now_us = time.time_ns() // 1000
    rows = []
    for i in range(start, start + n):
        values: dict[str, Any] = {
            "event_id": _ids.new(),
            "received_at": now_us,
            "ip": "192.0.2.1",
            "ua": "Mozilla/5.0",
            "device": "pc",
            "sid": f"{i:x}",
            "n": i,
            "score": i / 2,
            "ok": i % 2 == 0,
            "at": now_us - i,
            "jsn": f'{{"i": {i}}}',
            "extra": None,
        }
        rows.append([values.get(c) for c in stream.columns])
    return rows


def push_frames(
    client: redis.Redis, keys: Keys, stream: StreamConfig, frames: int, rows_per_frame: int, start: int = 0
) -> list[str]:
    """RPUSH ``frames`` frames; returns the event ids (hex) in order."""
    ids: list[str] = []
    items = []
    for f in range(frames):
        rows = make_rows(stream, rows_per_frame, start + f * rows_per_frame)
        ids += [r[0].hex() for r in rows]
        items.append(encode_frame(stream.columns, rows))
    if items:
        client.rpush(keys.queue(stream.name), *items)
    return ids


class NoState:
    """The write state the DuckDB sink is handed: it must never need one."""

    def get(self, key: str) -> str | None:
        return None

    def set(self, **values: str) -> None:
        raise AssertionError("the DuckDB sink needs no write state")


class RecordingSink:
    """A real sink behind a count of every event id handed to a write (DuckDB itself dedupes,
    so its table alone cannot show a row written twice). Several flushers may share one
    ``inner`` and one ``written``; only the sink built with ``owns=True`` closes ``inner``."""

    name = "duckdb"

    def __init__(self, inner: Any, written: Counter[str] | None = None, owns: bool = True) -> None:
        self.inner = inner
        self.written: Counter[str] = Counter() if written is None else written
        self.owns = owns

    def ensure_tables(self, streams: Sequence[StreamConfig]) -> list[str]:
        tables: list[str] = self.inner.ensure_tables(streams)
        return tables

    def write(self, batch: Any, state: Any) -> Any:
        at = batch.columns.index("event_id")
        result = self.inner.write(batch, state)
        self.written.update(row[at].hex() for row in batch.rows)
        return result

    def close(self) -> None:
        if self.owns:
            self.inner.close()

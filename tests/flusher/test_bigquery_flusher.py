"""End to end: real redis-server -> ``oceanus flusher`` subprocess -> fault proxy -> bqemulator.

The emulator ignores insertId, so every re-sent row shows up as a duplicate
here; real BigQuery would drop most of them. The assertions hold for both: the
set of event ids is exact, and the ``_dedup`` view returns each event once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flusher.sinks.bigquery import BigQuerySink
from oceanus import config
from oceanus.buffer import Keys, encode_frame
from tests.support.bq_helpers import bq_config, emulator_client, make_rows
from tests.support.faultproxy import FaultProxy
from tests.support.servers import BigQueryEmulator, RedisServer, free_port, wait_for

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(180)

ROWS_PER_FRAME = 50


@pytest.fixture
def proxy(bq_emulator: BigQueryEmulator) -> Iterator[FaultProxy]:
    p = FaultProxy(bq_emulator.rest_url).start()
    try:
        yield p
    finally:
        p.stop()


def _config_file(tmp_path: Path, redis: RedisServer, proxy: FaultProxy, project: str, **bq: Any) -> Path:
    """The TOML the flusher subprocess reads; the sink settings come from the unit tests' helper."""
    base = bq_config(proxy.url, project, **bq)
    b = base.sink.bigquery
    text = f"""
[redis]
url = "{redis.url}"
[flusher]
admin_port = {free_port()}
heartbeat_ttl_s = 1.0
drain_timeout_s = 10.0
retry_base_s = 0.05
retry_max_s = 0.3
[sink]
kind = "bigquery"
[sink.bigquery]
project = "{b.project}"
dataset = "{b.dataset}"
api_endpoint = "{b.api_endpoint}"
retry_deadline_s = {b.retry_deadline_s}
timeout_s = {b.timeout_s}
max_rows_per_request = {b.max_rows_per_request}
[streams.ev]
clustering = ["s", "n"]
batch = {{ max_rows = 1000, min_rows = 100, max_wait_s = 0.2 }}
[streams.ev.fields]
""" + "\n".join(f'{name} = {{ type = "{field.type}" }}' for name, field in base.streams["ev"].fields.items())
    path = tmp_path / "oceanus.toml"
    path.write_text(text, encoding="utf-8")
    return path


class Flusher:
    def __init__(self, cfg_path: Path, log: Path) -> None:
        self.log = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "oceanus.cli", "flusher", "--config", str(cfg_path)],
                cwd=cfg_path.parent,
                env={**os.environ, "PYTHONPATH": str(REPO)},
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)


def _push(redis: RedisServer, stream: config.StreamConfig, rows: list[list[Any]]) -> None:
    client = redis.client()
    try:
        step = ROWS_PER_FRAME
        frames = [encode_frame(stream.columns, rows[i : i + step]) for i in range(0, len(rows), step)]
        client.rpush(Keys().queue(stream.name), *frames)
    finally:
        client.close()


def _drained(redis: RedisServer, stream: str) -> bool:
    client = redis.client()
    try:
        keys = Keys()
        return bool(client.llen(keys.queue(stream)) == 0 and client.scard(keys.inflight_index(stream)) == 0)
    finally:
        client.close()


def _rows(bq_emulator: BigQueryEmulator, table: str) -> list[dict[str, Any]]:
    client = emulator_client(bq_emulator)
    try:
        return [dict(r.items()) for r in client.query(f"SELECT * FROM `{table}`").result()]
    finally:
        client.close()


def _setup(
    tmp_path: Path, redis: RedisServer, proxy: FaultProxy, bq_emulator: BigQueryEmulator, n: int, **bq: Any
) -> tuple[Path, config.Config, BigQuerySink, list[list[Any]]]:
    path = _config_file(tmp_path, redis, proxy, bq_emulator.project, **bq)
    cfg = config.load(path, env={})
    # The tables exist before the flusher starts (it would create them too), so
    # the test reads them without racing the start-up.
    sink = BigQuerySink(cfg)
    sink.ensure_tables(list(cfg.streams.values()))
    rows = make_rows(cfg.streams["ev"], n)
    return path, cfg, sink, rows


def test_outage_of_503s_then_recovery_writes_every_row_once(
    tmp_path: Path, redis_server: RedisServer, proxy: FaultProxy, bq_emulator: BigQueryEmulator
) -> None:
    path, cfg, sink, rows = _setup(tmp_path, redis_server, proxy, bq_emulator, 600)
    table = sink.table_id("ev")
    proxy.inject("unavailable", times=8)
    _push(redis_server, cfg.streams["ev"], rows)
    flusher = Flusher(path, tmp_path / "flusher.log")
    try:
        wait_for(
            lambda: proxy.pending() == 0 and _drained(redis_server, "ev"),
            timeout=90,
            what="the flusher to ride out the outage and drain",
        )
        assert flusher.alive()
    finally:
        code = flusher.stop()
        sink.close()
    assert code == 0, (tmp_path / "flusher.log").read_text()
    assert proxy.count("insertAll", fault="unavailable") == 8
    ids = [r["event_id"] for r in _rows(bq_emulator, table)]
    # A 503 stores nothing, so even without insertId dedupe the set is exact.
    assert sorted(ids) == sorted(r[0].hex() for r in rows)


def test_kill9_mid_batch_then_restart_duplicates_only_by_event_id(
    tmp_path: Path, redis_server: RedisServer, proxy: FaultProxy, bq_emulator: BigQueryEmulator
) -> None:
    path, cfg, sink, rows = _setup(
        tmp_path, redis_server, proxy, bq_emulator, 600, max_rows_per_request=50, timeout_s=60.0
    )
    table, view = sink.table_id("ev"), sink.dedup_view_id("ev")
    # The third insertAll request is stored but its answer never comes: the
    # flusher is killed while waiting for it, mid-batch.
    proxy.inject("lost_reply", after=2, times=1, hang_s=120)
    _push(redis_server, cfg.streams["ev"], rows)
    first = Flusher(path, tmp_path / "flusher-1.log")
    try:
        wait_for(lambda: proxy.count("insertAll", fault="lost_reply") == 1, timeout=60, what="the lost reply")
        wait_for(lambda: proxy.seen("insertAll")[-1].status == 200, timeout=30, what="the rows stored upstream")
        first.kill9()
    finally:
        if first.alive():
            first.kill9()
        proxy.clear()
    assert not _drained(redis_server, "ev")  # the claimed batch is still in Redis

    second = Flusher(path, tmp_path / "flusher-2.log")
    try:
        wait_for(lambda: _drained(redis_server, "ev"), timeout=90, what="the restarted flusher to re-claim and drain")
    finally:
        code = second.stop()
        sink.close()
    assert code == 0, (tmp_path / "flusher-2.log").read_text()

    stored = _rows(bq_emulator, table)
    counts = Counter(r["event_id"] for r in stored)
    duplicates = sum(c - 1 for c in counts.values())
    print(f"rows stored {len(stored)}, events {len(counts)}, duplicates {duplicates}")
    assert set(counts) == {r[0].hex() for r in rows}
    # Exactly the request whose answer was lost was sent twice (the emulator
    # ignores insertId): the progress mark kept beside the claim spared the
    # requests of the batch that had been answered before the kill.
    assert duplicates == 50
    # Every duplicate is the same event: same event_id and the same values.
    by_id: dict[str, list[dict[str, Any]]] = {}
    for r in stored:
        by_id.setdefault(r["event_id"], []).append(r)
    for copies in by_id.values():
        assert all(c == copies[0] for c in copies)
    deduped = [r["event_id"] for r in _rows(bq_emulator, view)]
    assert sorted(deduped) == sorted(r[0].hex() for r in rows)


def test_too_large_splits_and_invalid_rows_go_to_dead_letters(
    tmp_path: Path, redis_server: RedisServer, proxy: FaultProxy, bq_emulator: BigQueryEmulator
) -> None:
    path, cfg, sink, rows = _setup(tmp_path, redis_server, proxy, bq_emulator, 200)
    table = sink.table_id("ev")
    # First answer: 413 (the flusher halves the batch); then one invalid row in the next request.
    proxy.inject("too_large", times=1)
    proxy.inject("row_errors", rows={3: "invalid"}, times=1)
    _push(redis_server, cfg.streams["ev"], rows)
    flusher = Flusher(path, tmp_path / "flusher.log")
    try:
        wait_for(lambda: proxy.pending() == 0 and _drained(redis_server, "ev"), timeout=60, what="the drain")
    finally:
        code = flusher.stop()
        sink.close()
    assert code == 0, (tmp_path / "flusher.log").read_text()

    first, second = proxy.seen("insertAll")[:2]
    assert len(second.json()["rows"]) < len(first.json()["rows"])  # split after the 413
    bad_id = second.json()["rows"][3]["insertId"]
    client = redis_server.client()
    try:
        dead = [json.loads(item) for item in client.lrange(Keys().dead("ev"), 0, -1)]
    finally:
        client.close()
    assert [d["row"]["event_id"] for d in dead] == [bad_id]
    assert dead[0]["reason"].startswith("invalid: Cannot convert value")
    ids = [r["event_id"] for r in _rows(bq_emulator, table)]
    assert sorted(ids) == sorted(r[0].hex() for r in rows if r[0].hex() != bad_id)

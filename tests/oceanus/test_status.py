"""``oceanus status`` against a hand-filled Redis (real redis-server) and DuckDB file."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import duckdb
import pytest

from collector.status import ShardStatus
from oceanus import cli
from oceanus.buffer import EventIds, Keys, encode_frame
from oceanus.commands import devstate, status
from tests.support.servers import RedisServer

REPO = Path(__file__).resolve().parents[2]
COLUMNS = ["event_id", "received_at", "ip", "ua", "device", "sid", "evt"]


def frame(n: int, received_us: int) -> bytes:
    # As the collector makes rows: the event id carries the receive time too.
    ids = EventIds()
    return encode_frame(
        COLUMNS,
        [[ids.new((received_us + i) * 1000), received_us + i, "127.0.0.1", "ua", "pc", "ab", "view"] for i in range(n)],
    )


@pytest.fixture
def stack(tmp_path: Path, redis_server: RedisServer) -> Path:
    data = tmp_path / "data"
    (data / "spool").mkdir(parents=True)
    # A dead worker's spool file, nothing replayed yet (collector/spool.py names them so).
    (data / "spool" / "spool-1-00000000.log").write_bytes(b"x" * 123)
    now_us = time.time_ns() // 1000
    keys = Keys("oceanus")
    r = redis_server.client()
    r.rpush(keys.queue("pageview"), frame(3, now_us - 30_000_000), frame(2, now_us))
    inflight = keys.inflight("pageview", "deadowner", 1)
    r.rpush(inflight, frame(4, now_us - 90_000_000))  # the oldest: claimed, not yet written
    r.sadd(keys.inflight_index("pageview"), inflight)
    r.rpush(keys.dead("form"), b'{"reason": "invalid"}')
    r.rpush(keys.queue("ecview"), b"garbage that is not a frame")
    r.close()
    con = duckdb.connect(str(data / devstate.WAREHOUSE_FILE))
    con.execute("CREATE TABLE pageview AS SELECT range AS n FROM range(7)")
    con.execute("CREATE TABLE form (n INTEGER)")
    con.close()
    devstate.write_dev_info(
        data,
        devstate.DevInfo(
            pid=os.getpid(),
            config=str(REPO / "oceanus.toml"),
            data_dir=str(data),
            # Nothing listens there: the spool depth comes from the directory.
            collector_url="http://127.0.0.1:9",
            collector_pid=0,
            flusher_pid=0,
            redis_url=redis_server.url,
            redis_pid=redis_server.proc.pid if redis_server.proc else 0,
            key_prefix="oceanus",
            duckdb_path=str(devstate.warehouse_path(data)),
            spool_dir=str(data / "spool"),
            started_at=0.0,
        ),
    )
    return data


def test_counts_rows_in_frames_and_claims(stack: Path) -> None:
    st = status.collect(stack)
    assert st.running
    assert st.redis_up
    pv = st.streams["pageview"]
    assert (pv.rows_stored, pv.backlog_frames, pv.backlog_rows, pv.inflight_rows) == (7, 2, 5, 4)
    assert pv.oldest_unflushed_age_s is not None
    assert 89 <= pv.oldest_unflushed_age_s < 150
    assert st.streams["form"].rows_stored == 0
    assert st.streams["form"].dead_letters == 1
    ec = st.streams["ecview"]
    # No table yet; an undecodable item counts as a frame, not as rows.
    assert (ec.rows_stored, ec.backlog_frames, ec.backlog_rows, ec.oldest_unflushed_age_s) == (0, 1, 0, None)
    assert (st.spool.bytes, st.spool.source) == (123, "disk")


def test_json_and_table_output(stack: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["status", "--data-dir", str(stack), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["streams"]["pageview"]["backlog_rows"] == 5
    assert doc["streams"]["pageview"]["inflight_rows"] == 4
    assert doc["spool"]["bytes"] == 123
    assert cli.main(["status", "--data-dir", str(stack)]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("pageview"))
    assert line.split()[:4] == ["pageview", "7", "5", "4"]
    assert "running" in out
    assert "123 bytes" in out


def test_stopped_stack_reports_the_warehouse(stack: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (stack / devstate.DEV_FILE).unlink()
    st = status.collect(stack)
    assert not st.running
    assert not st.redis_up
    assert st.streams["pageview"].rows_stored == 7
    assert st.streams["pageview"].backlog_rows is None
    assert cli.main(["status", "--data-dir", str(stack)]) == 0
    assert "not running" in capsys.readouterr().out


def test_metric_values_reads_unlabelled_samples() -> None:
    text = '# HELP x\noceanus_spool_bytes 42.0\noceanus_spool_frames{a="b"} 3\noceanus_spool_frames 2\n'
    assert status.metric_values(text, {"oceanus_spool_bytes", "oceanus_spool_frames"}) == {
        "oceanus_spool_bytes": 42.0,
        "oceanus_spool_frames": 2.0,
    }


def test_each_stream_names_the_flusher_holding_its_lease(
    stack: Path, redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    # The lease as a flusher holds it (flusher/leases.py): its owner id, with a TTL.
    r = redis_server.client()
    r.set(Keys("oceanus").lease("pageview", 0), "box-4242-a1b2c3", px=30_000)
    r.close()
    st = status.collect(stack)
    assert [sh.flusher for sh in st.streams["pageview"].shards] == ["box-4242-a1b2c3"]
    assert [sh.flusher for sh in st.streams["form"].shards] == [None]
    assert cli.main(["status", "--data-dir", str(stack), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["streams"]["pageview"]["shards"][0]["flusher"] == "box-4242-a1b2c3"
    assert cli.main(["status", "--data-dir", str(stack)]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(ln for ln in lines if ln.startswith("stream"))
    assert header.split()[-1] == "flusher"
    assert next(ln for ln in lines if ln.startswith("pageview")).split()[-1] == "box-4242-a1b2c3"
    # No flusher holds form's shard: its backlog would wait.
    assert next(ln for ln in lines if ln.startswith("form")).split()[-1] == status.NO_FLUSHER


def test_a_sharded_stream_counts_its_held_shards_and_names_each_holder() -> None:
    shards = [
        ShardStatus(shard=0, node="", backlog_frames=1, backlog_rows=4, flusher="f-1-aa"),
        ShardStatus(shard=1, node="", backlog_frames=2, backlog_rows=9, flusher=None),
        ShardStatus(shard=2, node="", backlog_frames=0, backlog_rows=0, flusher="f-2-bb"),
    ]
    st = status.Status(
        running=True,
        data_dir="/d",
        redis_up=True,
        streams={"pageview": status.StreamStatus(rows_stored=1, backlog_rows=13, shards=shards)},
    )
    lines = status.format_table(st).splitlines()
    assert next(ln for ln in lines if ln.startswith("pageview")).endswith("2 of 3 shards held")
    per_shard = [ln.split() for ln in lines if ln.strip().startswith("shard ")]
    assert [(s[1], s[2], s[-1]) for s in per_shard] == [("0", "4", "f-1-aa"), ("1", "9", "none"), ("2", "0", "f-2-bb")]

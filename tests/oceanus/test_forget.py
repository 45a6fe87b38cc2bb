"""``oceanus forget``: one person's rows out of the DuckDB warehouse and out of
everything still buffered in a real Redis (queued frames, dead letters), with
claimed batches reported, not touched."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from pathlib import Path

import duckdb
import pytest
import redis.asyncio as aioredis

from flusher.batch import BatchBuilder, dead_row
from flusher.claim import Claim, Claimer
from flusher.sinks.duckdb import DuckDBSink
from oceanus import cli, config
from oceanus.buffer import EventIds, Keys, decode_frame, encode_frame
from tests.flusher.helpers import NoState
from tests.support.servers import RedisServer, as_bytes_list

KEYS = Keys("oceanus")
IDS = EventIds()


@pytest.fixture
def cfg(redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> config.Config:
    env = {"OCEANUS_REDIS_URL": redis_server.url, "OCEANUS_SINK_DUCKDB_PATH": str(tmp_path / "w.duckdb")}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return config.load(config.REPO_CONFIG, env=env)


def _row(cfg: config.Config, uid: str | None, sid: str) -> list[object]:
    cols = cfg.streams["pageview"].columns
    row: list[object] = [None] * len(cols)
    for col, value in {
        "event_id": IDS.new(),
        "received_at": 1_780_000_000_000_000,
        "ip": "203.0.113.7",
        "ua": "Mozilla/5.0",
        "device": "pc",
        "sid": sid,
        "evt": "view",
        "uid": uid,
    }.items():
        row[cols.index(col)] = value
    return row


def _frame(cfg: config.Config, *rows: list[object]) -> bytes:
    return encode_frame(cfg.streams["pageview"].columns, list(rows))


def _forget(cfg: config.Config, *extra: str) -> int:
    return cli.main(["forget", "--field", "uid", "--value", "u-1", "--config", str(config.REPO_CONFIG), *extra])


def _warehouse_uids(cfg: config.Config) -> list[str | None]:
    con = duckdb.connect(cfg.sink.duckdb.path)
    try:
        return [r[0] for r in con.execute('SELECT uid FROM "pageview" ORDER BY sid').fetchall()]
    finally:
        con.close()


def test_forget_everywhere_and_report_claimed_batches(
    cfg: config.Config, redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    stream = cfg.streams["pageview"]
    sink = DuckDBSink(cfg)
    try:
        sink.ensure_tables(list(cfg.streams.values()))
        written = [_row(cfg, "u-1", "w1"), _row(cfg, "u-2", "w2"), _row(cfg, None, "w3")]
        sink.write(BatchBuilder(stream).build("b1", [_frame(cfg, *written)]).batch, NoState())
    finally:
        sink.close()

    client = redis_server.client()
    in_flight = _frame(cfg, _row(cfg, "u-1", "f1"), _row(cfg, "u-2", "f2"))
    client.rpush(KEYS.queue("pageview"), in_flight)

    async def claim() -> Claim:
        claimer = Claimer(aioredis.from_url(redis_server.url), KEYS, "me", 300.0)
        try:
            await claimer.heartbeat()
            claimed = await claimer.claim("pageview", 1)
            assert claimed is not None
            return claimed
        finally:
            await claimer.client.aclose()

    claimed = asyncio.run(claim())
    mixed = [_row(cfg, "u-1", "q1"), _row(cfg, "u-2", "q2"), _row(cfg, "u-10", "q3")]
    only_u1 = _frame(cfg, _row(cfg, "u-1", "q4"), _row(cfg, "u-1", "q5"))
    clean = _frame(cfg, _row(cfg, "u-2", "q6"))
    client.rpush(KEYS.queue("pageview"), _frame(cfg, *mixed), only_u1, clean)
    keep_dead = dead_row("pageview", "r", stream.columns, _row(cfg, "u-2", "d2"))
    client.rpush(KEYS.dead("pageview"), dead_row("pageview", "r", stream.columns, _row(cfg, "u-1", "d1")), keep_dead)

    assert _forget(cfg) == 1
    out = capsys.readouterr()
    # Every stream with a `uid` field is searched; the Snowplow stream has one too.
    assert out.out == (
        "pageview: 1 row(s) deleted from the warehouse, 3 from queued frames, 1 dead letter(s); "
        "1 in batches being written\n"
        "snowplow: 0 row(s) deleted from the warehouse, 0 from queued frames, 0 dead letter(s); "
        "0 in batches being written\n"
    )
    assert "1 matching row(s) are in batches a flusher is writing now" in out.err
    frames = as_bytes_list(client.lrange(KEYS.queue("pageview"), 0, -1))
    assert frames[1] == clean
    assert decode_frame(frames[0]) == (list(stream.columns), [mixed[1], mixed[2]])
    assert len(frames) == 2
    assert client.lrange(KEYS.dead("pageview"), 0, -1) == [keep_dead]
    assert _warehouse_uids(cfg) == ["u-2", None]
    # The claimed batch was not touched.
    (key,) = client.smembers(KEYS.inflight_index("pageview"))
    assert client.lrange(key, 0, -1) == [in_flight]

    # The flusher writes the claimed batch; the same command then finishes the job.
    sink = DuckDBSink(cfg)
    try:
        sink.write(BatchBuilder(stream).build("b2", [in_flight]).batch, NoState())
    finally:
        sink.close()

    async def finish() -> None:
        claimer = Claimer(aioredis.from_url(redis_server.url), KEYS, "me", 300.0)
        try:
            assert await claimer.finish(claimed) is True
        finally:
            await claimer.client.aclose()

    asyncio.run(finish())
    assert _forget(cfg) == 0
    assert capsys.readouterr().out == (
        "pageview: 1 row(s) deleted from the warehouse, 0 from queued frames, "
        "0 dead letter(s); 0 in batches being written\n"
        "snowplow: 0 row(s) deleted from the warehouse, 0 from queued frames, "
        "0 dead letter(s); 0 in batches being written\n"
    )
    assert _warehouse_uids(cfg) == ["u-2", "u-2", None]
    client.close()


def test_concurrent_appends_are_kept(
    cfg: config.Config, redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """Frames collectors append while forget rewrites the queue all stay, in order."""
    DuckDBSink(cfg).close()
    client = redis_server.client()
    matching = [_frame(cfg, _row(cfg, "u-1", f"m{i}"), _row(cfg, "u-2", f"k{i}")) for i in range(300)]
    client.rpush(KEYS.queue("pageview"), *matching)
    appended = [_frame(cfg, _row(cfg, "u-3", f"a{i}")) for i in range(300)]
    started = threading.Event()

    def append() -> None:
        pusher = redis_server.client()
        started.set()
        for frame in appended:
            pusher.rpush(KEYS.queue("pageview"), frame)
        pusher.close()

    thread = threading.Thread(target=append)
    thread.start()
    started.wait(5)
    assert _forget(cfg, "--stream", "pageview") == 0
    thread.join(10)
    frames = as_bytes_list(client.lrange(KEYS.queue("pageview"), 0, -1))
    rows = [r for f in frames for r in decode_frame(f)[1]]
    uid = cfg.streams["pageview"].columns.index("uid")
    assert "u-1" not in {r[uid] for r in rows}
    assert [f for f in frames if f in appended] == appended
    assert sorted(r[uid] for r in rows) == ["u-2"] * 300 + ["u-3"] * 300
    assert "300 from queued frames" in capsys.readouterr().out
    client.close()


def test_a_running_flusher_holds_the_duckdb_file(cfg: config.Config, capsys: pytest.CaptureFixture[str]) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys; c = duckdb.connect(sys.argv[1]); print('held', flush=True); sys.stdin.read()",
            cfg.sink.duckdb.path,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        assert _forget(cfg) == 1
        err = capsys.readouterr().err
        assert "a flusher holds the file; stop it" in err
        assert len(err.strip().splitlines()) == 1
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=20)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--field", "nope", "--value", "x"], "--field nope: not a string, int or bool field (or ip) of any stream"),
        (["--field", "jsn", "--value", "x"], "--field jsn: not a string, int or bool field"),
        (["--field", "uid", "--value", "x", "--stream", "zzz"], "--stream zzz: no such stream"),
    ],
)
def test_bad_arguments_are_one_line(
    cfg: config.Config, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert cli.main(["forget", *argv, "--config", str(config.REPO_CONFIG)]) == 2
    assert message in capsys.readouterr().err

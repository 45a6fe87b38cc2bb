"""The DuckDB sink on a real file: tables from the config, exact dedupe, per-row refusals, read-only SQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from flusher.sinks import make_sink
from flusher.sinks.base import Batch, QueryError
from flusher.sinks.duckdb import MAX_QUERY_ROWS, DuckDBSink
from oceanus.errors import ConfigError, SinkError
from tests.flusher.helpers import STREAMS_TOML, NoState, make_config, make_rows


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[DuckDBSink]:
    cfg = make_config("redis://unused", tmp_path / "w.duckdb")
    s = make_sink(cfg)
    assert isinstance(s, DuckDBSink)
    s.ensure_tables(list(cfg.streams.values()))
    yield s
    s.close()


def _batch(sink: DuckDBSink, rows: list[list[object]], batch_id: str = "b1") -> Batch:
    cfg = make_config("redis://unused", sink.path)
    stream = cfg.streams["pv"]
    return Batch(stream=stream, batch_id=batch_id, columns=stream.columns, rows=rows)


def test_table_and_view_are_derived_from_the_config(sink: DuckDBSink) -> None:
    types = dict(
        sink._con.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'pv'"
        ).fetchall()
    )
    assert types == {
        "event_id": "VARCHAR",
        "received_at": "TIMESTAMP",
        "ip": "VARCHAR",
        "ua": "VARCHAR",
        "device": "VARCHAR",
        "sid": "VARCHAR",
        "n": "BIGINT",
        "score": "DOUBLE",
        "ok": "BOOLEAN",
        "at": "TIMESTAMP",
        "jsn": "JSON",
        "extra": "JSON",
    }
    kinds = dict(
        sink._con.execute(
            "SELECT table_name, table_type FROM information_schema.tables WHERE table_name LIKE 'pv%'"
        ).fetchall()
    )
    assert kinds == {"pv": "BASE TABLE", "pv_dedup": "VIEW"}
    assert sink.ensure_tables([_batch(sink, []).stream]) == []  # idempotent


def test_replayed_batch_inserts_nothing_twice(sink: DuckDBSink) -> None:
    rows = make_rows(_batch(sink, []).stream, 50)
    assert sink.write(_batch(sink, rows), NoState()).written == 50
    # a replay after a crash, plus a duplicate inside one batch
    sink.write(_batch(sink, rows + rows[:5]), NoState())
    n, distinct = sink._con.execute("SELECT count(*), count(DISTINCT event_id) FROM pv").fetchone() or (0, 0)
    assert (n, distinct) == (50, 50)
    got = sink._con.execute(
        "SELECT event_id, n, score, ok, jsn->>'i', epoch_us(received_at) FROM pv WHERE n = 7"
    ).fetchone()
    assert got == (rows[7][0].hex(), 7, 3.5, False, "7", rows[7][1])


def test_bad_values_are_rejected_per_row_and_the_rest_written(sink: DuckDBSink) -> None:
    stream = _batch(sink, []).stream
    rows = make_rows(stream, 10)
    jsn, n = stream.columns.index("jsn"), stream.columns.index("n")
    rows[2][jsn] = "{not json"
    rows[5][n] = "five"
    result = sink.write(_batch(sink, rows), NoState())
    assert result.written == 8
    reasons = {e.index: e.reason for e in result.rejected}
    assert set(reasons) == {2, 5}
    assert reasons[2].startswith("jsn: not valid JSON")
    assert reasons[5] == "n: expected int, got str"
    assert sink._con.execute("SELECT count(*) FROM pv").fetchone() == (8,)


def test_new_field_becomes_a_nullable_column(sink: DuckDBSink, tmp_path: Path) -> None:
    rows = make_rows(_batch(sink, []).stream, 3)
    sink.write(_batch(sink, rows), NoState())
    toml = STREAMS_TOML + 'lang = { type = "string" }\n'
    stream = make_config("redis://unused", sink.path, streams_toml=toml).streams["pv"]
    changes = sink.ensure_tables([stream])
    assert "duckdb: added column pv.lang VARCHAR (NULL in existing rows)" in changes
    assert sink._con.execute("SELECT count(*) FROM pv_dedup WHERE lang IS NULL").fetchone() == (3,)


def test_type_change_is_refused_naming_stream_and_column(sink: DuckDBSink) -> None:
    toml = STREAMS_TOML.replace('n = { type = "int" }', 'n = { type = "string" }')
    stream = make_config("redis://unused", sink.path, streams_toml=toml).streams["pv"]
    with pytest.raises(ConfigError, match=r"streams\.pv\.fields\.n: .*BIGINT.*string"):
        sink.ensure_tables([stream])


def test_query_is_read_only(sink: DuckDBSink) -> None:
    sink.write(_batch(sink, make_rows(_batch(sink, []).stream, 3)), NoState())
    result = sink.query("SELECT n, received_at IS NOT NULL AS has_ts FROM pv ORDER BY n")
    assert result.columns == ["n", "has_ts"]
    assert result.rows == [[0, True], [1, True], [2, True]]
    for sql, msg in [
        ("DELETE FROM pv", "only read-only statements"),
        ("SELECT 1; DROP TABLE pv", "exactly one SQL statement"),
        ("COPY pv TO '/tmp/x.csv'", "only read-only statements"),
        ("SELEC 1", "syntax error"),
        ("SELECT * FROM nope", "nope"),
        (f"SELECT * FROM range({MAX_QUERY_ROWS + 1})", "add a LIMIT"),
    ]:
        with pytest.raises(QueryError, match=msg):
            sink.query(sql)
    assert sink.query("SELECT count(*) FROM pv").rows == [[3]]


def test_second_writer_process_gets_a_config_error(sink: DuckDBSink, tmp_path: Path) -> None:
    import subprocess
    import sys

    code = (
        "import sys\nfrom flusher.sinks.duckdb import DuckDBSink\nfrom tests.flusher.helpers import make_config\n"
        "from oceanus.errors import ConfigError\n"
        f"try:\n    DuckDBSink(make_config('redis://x', {str(sink.path)!r}))\n"
        "except ConfigError as e:\n    print(e)\n    sys.exit(3)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout.startswith("sink.duckdb.path: cannot open")


def test_partial_replay_across_a_time_range_inserts_only_the_new_rows(sink: DuckDBSink) -> None:
    stream = _batch(sink, []).stream
    rows = make_rows(stream, 40)
    received = stream.columns.index("received_at")
    for i, r in enumerate(rows):  # an hour of events, two without a receive time
        r[received] = None if i in (3, 30) else 1_700_000_000_000_000 + i * 90_000_000
    assert sink.write(_batch(sink, rows[:25]), NoState()).written == 25
    # the re-claimed half-written batch comes back with new rows behind it, in another order
    sink.write(_batch(sink, rows[10:][::-1], "b2"), NoState())
    got = sink._con.execute("SELECT count(*), count(DISTINCT event_id), count(received_at) FROM pv").fetchone()
    assert got == (40, 40, 38)
    stored = {r[0] for r in sink._con.execute("SELECT event_id FROM pv").fetchall()}
    assert stored == {r[0].hex() for r in rows}


def _received(stream_rows: list[list[object]], received: int, start_us: int) -> None:
    for i, r in enumerate(stream_rows):
        r[received] = start_us + i


def _count(sink: DuckDBSink) -> tuple[int, int]:
    got = sink._con.execute("SELECT count(*), count(DISTINCT event_id) FROM pv").fetchone()
    assert got is not None
    return got[0], got[1]


def test_a_replayed_row_received_exactly_at_the_high_water_mark_is_not_inserted_twice(sink: DuckDBSink) -> None:
    stream = _batch(sink, []).stream
    rows = make_rows(stream, 11)
    _received(rows, stream.columns.index("received_at"), 1_700_000_000_000_000)
    assert sink.write(_batch(sink, rows[:10]), NoState()).written == 10
    # the newest stored row comes back (a re-pushed frame) with one new row after it
    assert sink.write(_batch(sink, rows[9:], "b2"), NoState()).written == 2
    assert _count(sink) == (11, 11)


def test_the_high_water_mark_is_read_from_the_file_by_a_new_sink(tmp_path: Path) -> None:
    cfg = make_config("redis://unused", tmp_path / "w.duckdb")
    stream = cfg.streams["pv"]
    rows = make_rows(stream, 30)
    _received(rows, stream.columns.index("received_at"), 1_700_000_000_000_000)
    first = DuckDBSink(cfg)
    first.ensure_tables([stream])
    first.write(_batch(first, rows[:20]), NoState())
    first.close()
    # a flusher restarted after a crash replays the batch it had not released, plus newer rows
    second = DuckDBSink(cfg)
    try:
        second.ensure_tables([stream])
        second.write(_batch(second, rows[5:], "b2"), NoState())
        assert _count(second) == (30, 30)
    finally:
        second.close()


def test_late_rows_older_than_the_high_water_mark_are_inserted_and_then_deduped(sink: DuckDBSink) -> None:
    stream = _batch(sink, []).stream
    rows = make_rows(stream, 20)
    _received(rows, stream.columns.index("received_at"), 1_700_000_000_000_000)
    sink.write(_batch(sink, rows[10:]), NoState())
    # a batch older than everything stored (another shard's, say) goes in whole,
    assert sink.write(_batch(sink, rows[:10], "b2"), NoState()).written == 10
    # and a replay of both inserts nothing
    sink.write(_batch(sink, rows, "b3"), NoState())
    assert _count(sink) == (20, 20)


def test_a_failed_insert_forgets_the_high_water_mark(sink: DuckDBSink) -> None:
    stream = _batch(sink, []).stream
    rows = make_rows(stream, 10)
    sink.write(_batch(sink, rows[:5]), NoState())
    assert sink._high["pv"] is not None
    # The insert may have committed before its error: the mark is read again, not guessed.
    sink._con.execute("ALTER TABLE pv RENAME TO pv_moved")
    with pytest.raises(SinkError):
        sink.write(_batch(sink, rows[5:], "b2"), NoState())
    assert "pv" not in sink._high
    sink._con.execute("ALTER TABLE pv_moved RENAME TO pv")
    sink.write(_batch(sink, rows, "b3"), NoState())
    assert _count(sink) == (10, 10)


def test_event_ids_of_the_wrong_length_are_rejected_not_misaligned(sink: DuckDBSink) -> None:
    stream = _batch(sink, []).stream
    rows = make_rows(stream, 10)
    # 15 + 17 bytes: the batch's ids still join to 16 bytes a row on average
    rows[3][0] = rows[3][0][:15]
    rows[4][0] = rows[4][0] + b"x"
    result = sink.write(_batch(sink, rows), NoState())
    assert result.written == 8
    assert {e.index for e in result.rejected} == {3, 4}
    stored = sorted(r[0] for r in sink._con.execute("SELECT event_id FROM pv").fetchall())
    assert stored == sorted(r[0].hex() for i, r in enumerate(rows) if i not in (3, 4))


def test_a_keyed_table_of_an_earlier_version_still_dedupes(tmp_path: Path) -> None:
    import duckdb

    from flusher.sinks.common import column_types
    from flusher.sinks.duckdb import DUCKDB_TYPES

    cfg = make_config("redis://unused", tmp_path / "old.duckdb")
    stream = cfg.streams["pv"]
    con = duckdb.connect(str(tmp_path / "old.duckdb"))
    cols = ", ".join(
        f'"{n}" {DUCKDB_TYPES[t]}' + (" PRIMARY KEY" if n == "event_id" else "") for n, t in column_types(stream)
    )
    con.execute(f"CREATE TABLE pv ({cols})")
    con.close()
    s = DuckDBSink(cfg)
    try:
        assert s.ensure_tables([stream]) == ["duckdb: (re)created view pv_dedup"]
        rows = make_rows(stream, 20)
        s.write(_batch(s, rows), NoState())
        s.write(_batch(s, rows + make_rows(stream, 5, start=20), "b2"), NoState())
        assert s._con.execute("SELECT count(*), count(DISTINCT event_id) FROM pv").fetchone() == (25, 25)
    finally:
        s.close()


@pytest.mark.parametrize("threads", [1, 2, 0])
def test_threads_setting(tmp_path: Path, threads: int) -> None:
    import duckdb
    import msgspec

    cfg = make_config("redis://unused", tmp_path / "t.duckdb")
    duck = msgspec.structs.replace(cfg.sink.duckdb, threads=threads)
    cfg = msgspec.structs.replace(cfg, sink=msgspec.structs.replace(cfg.sink, duckdb=duck))
    s = DuckDBSink(cfg)
    try:
        got = s._con.execute("SELECT current_setting('threads')").fetchone()
        default = duckdb.connect().execute("SELECT current_setting('threads')").fetchone()
        assert got is not None
        assert int(got[0]) == (threads or int(default[0] if default else -1))
    finally:
        s.close()


def test_prepared_batches_write_the_same_rows(sink: DuckDBSink) -> None:
    stream = _batch(sink, []).stream
    rows = make_rows(stream, 30)
    prepared = sink.prepare(_batch(sink, rows))
    assert prepared.prepared is not None
    assert sink.write(prepared, NoState()).written == 30
    assert sink.write(sink.prepare(_batch(sink, rows, "again")), NoState()).written == 30  # a replay
    # a value Arrow refuses: nothing is prepared and the write still rejects just that row
    bad = make_rows(stream, 5, start=30)
    bad[1][stream.columns.index("n")] = "one"
    unprepared = sink.prepare(_batch(sink, bad, "b3"))
    assert unprepared.prepared is None
    result = sink.write(unprepared, NoState())
    assert result.written == 4
    assert [e.index for e in result.rejected] == [1]
    got = sink._con.execute("SELECT count(*), count(DISTINCT event_id), sum(n) FROM pv").fetchone()
    assert got == (34, 34, sum(range(30)) + 30 + 32 + 33 + 34)


def concurrent_writes_and_queries(path: str, seconds: float) -> None:
    """Writes in one thread, admin-style queries in two others, for ``seconds``; prints the counts."""
    import faulthandler
    import threading
    import time

    # A deadlock holds the GIL, so only a C-level watchdog can report it and end the process.
    faulthandler.dump_traceback_later(seconds + 30, exit=True)
    cfg = make_config("redis://unused", Path(path))
    s = DuckDBSink(cfg)
    stream = cfg.streams["pv"]
    s.ensure_tables([stream])
    stop = time.monotonic() + seconds
    counts = {"writes": 0, "queries": 0}

    def write() -> None:
        i = 0
        while time.monotonic() < stop:
            rows = make_rows(stream, 200, i * 200)
            s.write(s.prepare(Batch(stream=stream, batch_id=str(i), columns=stream.columns, rows=rows)), NoState())
            i += 1
        counts["writes"] = i

    def query() -> None:
        while time.monotonic() < stop:
            s.query("SELECT count(*) FROM pv")
            counts["queries"] += 1

    threads = [threading.Thread(target=write), threading.Thread(target=query), threading.Thread(target=query)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = s.query("SELECT count(*) FROM pv").rows[0][0]
    s.close()
    print(counts["writes"], counts["queries"], total)


@pytest.mark.integration  # a child process writes and queries for seconds
def test_queries_during_writes_do_not_deadlock(tmp_path: Path) -> None:
    # The admin query endpoint reads while the flusher writes. In a child process:
    # a deadlock freezes every thread of its process, pytest's own timeout included.
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    code = (
        "import sys; from tests.flusher.test_duckdb_sink import concurrent_writes_and_queries as f; "
        "f(sys.argv[1], float(sys.argv[2]))"
    )
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path / "w.duckdb"), "4"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"writes and queries deadlocked:\n{exc.stderr!r}") from None
    assert proc.returncode == 0, f"writes and queries deadlocked or failed:\n{proc.stderr[-3000:]}"
    writes, queries, total = map(int, proc.stdout.split())
    assert writes > 0
    assert queries > 0
    assert total == writes * 200


def test_checkpoint_empties_the_write_ahead_log(sink: DuckDBSink) -> None:
    wal = Path(str(sink.path) + ".wal")
    sink.write(_batch(sink, make_rows(_batch(sink, []).stream, 20)), NoState())
    assert wal.exists()
    assert wal.stat().st_size > 0
    sink.checkpoint()
    assert not wal.exists() or wal.stat().st_size == 0
    assert _count(sink) == (20, 20)


def test_a_batch_whose_every_row_is_refused_writes_nothing_and_fails_nothing(sink: DuckDBSink) -> None:
    stream = _batch(sink, []).stream
    rows = make_rows(stream, 3)
    sink.write(_batch(sink, rows[:1]), NoState())  # the table has a high-water mark
    for row in rows[1:]:
        row[stream.columns.index("jsn")] = "{not json"
    result = sink.write(_batch(sink, rows[1:], "b2"), NoState())
    assert result.written == 0
    assert [e.index for e in result.rejected] == [0, 1]
    assert _count(sink) == (1, 1)


def test_an_int_no_double_holds_in_a_float_field_is_refused_per_row(sink: DuckDBSink) -> None:
    stream = _batch(sink, []).stream
    rows = make_rows(stream, 3)
    rows[1][stream.columns.index("score")] = 2**53 + 1  # an old frame or an import, never the collector
    result = sink.write(_batch(sink, rows), NoState())
    assert result.written == 2
    assert [e.index for e in result.rejected] == [1]

"""What both SQL sinks must do, against the real servers: test_postgres_sink.py and test_mysql_sink.py
import these cases and give the fixtures ``wh`` (the warehouse) and ``expected_types``."""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flusher.sinks import make_sink
from flusher.sinks.base import Batch, Sink
from flusher.sinks.mysql import MySQLSink
from flusher.sinks.postgres import PostgresSink
from oceanus.config import Config
from oceanus.errors import ConfigError, PermanentError, QueryError, QueryTimeout, Reason, TransientError
from tests.flusher.helpers import STREAMS_TOML, NoState, make_config, make_rows
from tests.support.servers import RedisServer
from tests.support.sqlwarehouse import SqlWarehouse

SqlSink = PostgresSink | MySQLSink


def sink_config(wh: SqlWarehouse, tmp_path: Path, streams_toml: str = STREAMS_TOML) -> Config:
    return wh.configure(make_config("redis://unused", tmp_path / "unused.duckdb", streams_toml))


def open_sink(wh: SqlWarehouse, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SqlSink]:
    """The ``sink`` fixture of both test modules: tables made, closed at the end."""
    for key, value in wh.env().items():
        monkeypatch.setenv(key, value)
    cfg = sink_config(wh, tmp_path)
    s = make_sink(cfg)
    assert isinstance(s, PostgresSink | MySQLSink)
    s.ensure_tables(list(cfg.streams.values()))
    try:
        yield s
    finally:
        s.close()


def batch_of(wh: SqlWarehouse, tmp_path: Path, rows: list[list[Any]], streams_toml: str = STREAMS_TOML) -> Batch:
    stream = sink_config(wh, tmp_path, streams_toml).streams["pv"]
    return Batch(stream=stream, batch_id="b1", columns=stream.columns, rows=rows)


def columns_of(wh: SqlWarehouse, table: str) -> dict[str, str]:
    rows = wh.rows(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = %s "
        "AND table_name = %s ORDER BY ordinal_position",
        (wh.name, table),
    )
    return {str(n): str(t).lower() for n, t in rows}


def stored(wh: SqlWarehouse) -> list[tuple[Any, ...]]:
    return wh.rows("SELECT event_id, n FROM {s}.pv ORDER BY n")


def test_table_and_view_are_derived_from_the_config(
    wh: SqlWarehouse, sink: SqlSink, tmp_path: Path, expected_types: dict[str, str]
) -> None:
    assert columns_of(wh, "pv") == expected_types
    assert list(columns_of(wh, "pv_dedup")) == list(expected_types)
    assert sink.ensure_tables([batch_of(wh, tmp_path, []).stream]) == []  # idempotent


def test_replayed_batch_inserts_nothing_twice(wh: SqlWarehouse, sink: SqlSink, tmp_path: Path) -> None:
    b = batch_of(wh, tmp_path, [])
    rows = make_rows(b.stream, 120)
    assert sink.write(batch_of(wh, tmp_path, rows), NoState()).written == 120
    # a replay after a crash (a superset of the batch), plus duplicates inside one batch
    more = make_rows(b.stream, 10, start=120)
    result = sink.write(batch_of(wh, tmp_path, rows + more + rows[:5]), NoState())
    assert result.rejected == ()
    assert stored(wh) == [(r[0].hex(), r[b.stream.columns.index("n")]) for r in rows + more]
    n_at, jsn_at = b.stream.columns.index("n"), b.stream.columns.index("jsn")
    got = sink.query("SELECT event_id, n, score, ok, sid FROM pv_dedup WHERE n = 7")
    assert got.rows == [[rows[7][0].hex(), 7, 3.5, False, "7"]]
    assert rows[7][n_at] == 7
    assert rows[7][jsn_at] == '{"i": 7}'


def test_timestamps_and_json_are_stored_exactly(wh: SqlWarehouse, sink: SqlSink, tmp_path: Path) -> None:
    b = batch_of(wh, tmp_path, [])
    rows = make_rows(b.stream, 3)
    at = b.stream.columns.index("at")
    rows[0][at] = -62_135_596_800_000_000  # 0001-01-01T00:00:00
    rows[1][at] = 253_402_300_799_999_999  # 9999-12-31T23:59:59.999999
    rows[2][at] = 1_733_356_800_123_456  # 2024-12-05T00:00:00.123456
    sink.write(batch_of(wh, tmp_path, rows), NoState())
    got = sink.query("SELECT at, jsn FROM pv ORDER BY n").rows
    # PostgreSQL answers timestamptz (UTC), MySQL a naive DATETIME holding UTC: the same instants.
    assert [dt.datetime.fromisoformat(r[0]).replace(tzinfo=None) for r in got] == [
        dt.datetime(1, 1, 1),
        dt.datetime(9999, 12, 31, 23, 59, 59, 999999),
        dt.datetime(2024, 12, 5, 0, 0, 0, 123456),
    ]
    assert [r[1] if isinstance(r[1], dict) else json.loads(r[1]) for r in got] == [{"i": 0}, {"i": 1}, {"i": 2}]


def test_bad_values_are_rejected_per_row_and_the_rest_written(wh: SqlWarehouse, sink: SqlSink, tmp_path: Path) -> None:
    stream = batch_of(wh, tmp_path, []).stream
    rows = make_rows(stream, 10)
    c = stream.columns.index
    rows[2][c("jsn")] = "{not json"
    rows[4][c("n")] = 2**63  # one past BIGINT
    rows[5][c("n")] = "five"
    rows[7][c("ok")] = 1
    rows[8][c("event_id")] = b"short"
    result = sink.write(batch_of(wh, tmp_path, rows), NoState())
    assert [e.index for e in result.rejected] == [2, 4, 5, 7, 8]
    assert result.rejected[0].reason.startswith("jsn: not valid JSON")
    assert result.rejected[2].reason == "n: expected int (64 bits), got str"
    assert result.rejected[4].reason == "event_id: expected 16 bytes, got bytes"
    assert [n for _e, n in stored(wh)] == [0, 1, 3, 6, 9]


def test_a_row_the_server_refuses_is_found_and_the_rest_written(
    wh: SqlWarehouse, sink: SqlSink, tmp_path: Path
) -> None:
    # A rule only the server knows (every value passes the sink's own checks): the batch
    # fails on its data, the sink goes row by row and returns exactly the refused rows.
    wh.execute("ALTER TABLE {s}.pv ADD CONSTRAINT n_not_13 CHECK (n <> 13 AND n <> 40)")
    stream = batch_of(wh, tmp_path, []).stream
    rows = make_rows(stream, 50)
    sink.write(batch_of(wh, tmp_path, rows[:10]), NoState())  # already stored: skipped, not refused
    result = sink.write(batch_of(wh, tmp_path, rows), NoState())
    assert [e.index for e in result.rejected] == [13, 40]
    assert "n_not_13" in result.rejected[0].reason
    assert result.written == 48
    assert [n for _e, n in stored(wh)] == [n for n in range(50) if n not in (13, 40)]


def test_new_field_becomes_a_nullable_column(
    wh: SqlWarehouse, sink: SqlSink, tmp_path: Path, expected_types: dict[str, str]
) -> None:
    sink.write(batch_of(wh, tmp_path, make_rows(batch_of(wh, tmp_path, []).stream, 3)), NoState())
    toml = STREAMS_TOML + 'plan = { type = "string" }\nqty = { type = "int" }\n'
    stream = batch_of(wh, tmp_path, [], toml).stream
    changes = sink.ensure_tables([stream])
    assert any("plan" in line for line in changes)
    assert any("qty" in line for line in changes)
    assert list(columns_of(wh, "pv"))[-2:] == ["plan", "qty"]
    assert list(columns_of(wh, "pv_dedup"))[-2:] == ["plan", "qty"]
    rows = make_rows(stream, 2, start=3)
    rows[0][stream.columns.index("qty")] = 5
    sink.write(Batch(stream=stream, batch_id="b2", columns=stream.columns, rows=rows), NoState())
    assert wh.rows("SELECT n, plan, qty FROM {s}.pv ORDER BY n") == [
        (0, None, None),
        (1, None, None),
        (2, None, None),
        (3, None, 5),
        (4, None, None),
    ]


def test_type_change_is_refused_naming_stream_and_column(wh: SqlWarehouse, sink: SqlSink, tmp_path: Path) -> None:
    stream = batch_of(wh, tmp_path, [], STREAMS_TOML.replace('n = { type = "int" }', 'n = { type = "string" }')).stream
    with pytest.raises(ConfigError, match=r"^streams\.pv\.fields\.n: .* has this column as"):
        sink.ensure_tables([stream])


def test_query_is_read_only_one_statement_and_bounded(wh: SqlWarehouse, sink: SqlSink, tmp_path: Path) -> None:
    sink.write(batch_of(wh, tmp_path, make_rows(batch_of(wh, tmp_path, []).stream, 3)), NoState())
    assert sink.query("SELECT count(*) AS n FROM pv").rows == [[3]]
    with pytest.raises(QueryError, match="only read-only statements"):
        sink.query("DELETE FROM pv")
    with pytest.raises(QueryError):  # a data-modifying statement the first word hides
        sink.query(
            "SELECT 1 INTO OUTFILE '/tmp/oceanus-query-test'"
            if wh.kind == "mysql"
            else "WITH d AS (DELETE FROM pv RETURNING 1) SELECT count(*) FROM d"
        )
    with pytest.raises(QueryError):
        sink.query("SELECT 1; DELETE FROM pv")
    sleep = "SELECT pg_sleep(5)" if wh.kind == "postgres" else "SELECT SLEEP(5)"
    with pytest.raises(QueryTimeout, match=r"query interrupted after 0\.5 s \(flusher\.query_timeout_s\)"):
        sink.query(sleep, 0.5)
    assert sink.query("SELECT count(*) AS n FROM pv").rows == [[3]]


def test_reconnects_after_the_server_drops_the_connection(wh: SqlWarehouse, sink: SqlSink, tmp_path: Path) -> None:
    stream = batch_of(wh, tmp_path, []).stream
    rows = make_rows(stream, 30)
    sink.write(batch_of(wh, tmp_path, rows[:10]), NoState())
    assert wh.kill_sink_connections() == 1
    # One attempt, classified; the worker's retry (the next call) connects afresh.
    with pytest.raises(TransientError) as info:
        sink.write(batch_of(wh, tmp_path, rows[:20]), NoState())
    assert info.value.reason is Reason.CONNECTION
    sink.write(batch_of(wh, tmp_path, rows[:20]), NoState())
    sink.write(batch_of(wh, tmp_path, rows), NoState())
    assert [n for _e, n in stored(wh)] == list(range(30))
    assert sink.connects == 2


def test_connection_failures_are_classified(wh: SqlWarehouse, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = sink_config(wh, tmp_path)
    url_env = "OCEANUS_PG_URL" if wh.kind == "postgres" else "OCEANUS_MYSQL_URL"
    good = wh.url()
    cases: list[tuple[str, type[Exception], Reason]] = [
        (good.rsplit("/", 1)[0] + "/oc_no_such_database", PermanentError, Reason.NOT_FOUND),
        (
            good.replace("://postgres@", "://oc_no_such_role@").replace("://root@", "://oc_no_such_user@"),
            PermanentError,
            Reason.AUTH,
        ),
        (good.replace(":5432/", ":1/").replace(":3306/", ":1/"), TransientError, Reason.CONNECTION),
    ]
    for url, kind, reason in cases:
        monkeypatch.setenv(url_env, url)
        s: Sink = make_sink(cfg)
        try:
            with pytest.raises(kind) as info:
                s.ensure_tables(list(cfg.streams.values()))
            assert info.value.reason is reason, (url, info.value)  # type: ignore[attr-defined]
        finally:
            s.close()
    monkeypatch.delenv(url_env)
    with pytest.raises(ConfigError, match=rf"^sink\.{wh.kind}\.url_env: the environment variable {url_env} is not"):
        make_sink(cfg)


def test_a_real_deadlock_is_transient(wh: SqlWarehouse, sink: SqlSink, tmp_path: Path) -> None:
    """Two sessions lock two rows in opposite orders; the server picks a victim; its error is transient."""
    from flusher.sinks import mysql, postgres

    wh.execute("CREATE TABLE {s}.locks (id int PRIMARY KEY, v int)")
    wh.execute("INSERT INTO {s}.locks VALUES (1, 0), (2, 0)")
    errors: list[BaseException] = []
    first_locked = [threading.Event(), threading.Event()]

    def session(me: int) -> None:
        conn: Any
        if wh.kind == "postgres":
            import psycopg

            conn = psycopg.connect(wh.url())
        else:
            import pymysql

            conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", database=wh.name)
        try:
            cur = conn.cursor()
            cur.execute(f"UPDATE {wh.name}.locks SET v = 1 WHERE id = {me + 1}")
            first_locked[me].set()
            first_locked[1 - me].wait(10)
            cur.execute(f"UPDATE {wh.name}.locks SET v = 1 WHERE id = {2 - me}")
            conn.commit()
        except Exception as exc:  # noqa: BLE001 - the deadlock victim's error is the point
            errors.append(exc)
            conn.rollback()
        finally:
            conn.close()

    threads = [threading.Thread(target=session, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(errors) == 1, errors
    classify = postgres.classify if wh.kind == "postgres" else mysql.classify
    error = classify(errors[0], "insert")
    assert isinstance(error, TransientError), error
    assert error.reason is Reason.SERVER


def test_oceanus_query_asks_the_server(
    wh: SqlWarehouse, sink: SqlSink, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import argparse

    from oceanus.commands import query
    from tests.flusher.helpers import make_config_text

    sink.write(batch_of(wh, tmp_path, make_rows(batch_of(wh, tmp_path, []).stream, 4)), NoState())
    text = make_config_text("redis://unused", tmp_path / "unused.duckdb").replace(
        'kind = "duckdb"', f'kind = "{wh.kind}"'
    )
    if wh.kind == "postgres":
        text = text.replace("[sink.duckdb]", f'[sink.postgres]\nschema = "{wh.name}"\n\n[sink.duckdb]')
    (tmp_path / "oceanus.toml").write_text(text)
    args = argparse.Namespace(
        config=str(tmp_path / "oceanus.toml"),
        data_dir=str(tmp_path / "none"),
        format="csv",
        sql="SELECT n, sid FROM pv_dedup WHERE n >= 2 ORDER BY n",
    )
    assert query.main(args) == 0
    assert capsys.readouterr().out == "n,sid\n2,2\n3,3\n"
    with pytest.raises(QueryError, match="only read-only statements"):
        query.main(argparse.Namespace(**{**vars(args), "sql": "DROP TABLE pv"}))


def test_a_refusal_in_a_connections_first_write_leaves_the_next_writes_working(
    wh: SqlWarehouse, sink: SqlSink, tmp_path: Path
) -> None:
    # Whatever the first write on a connection sets up (a staging table) must survive its rollback.
    wh.execute("ALTER TABLE {s}.pv ADD CONSTRAINT n_not_3 CHECK (n <> 3)")
    stream = batch_of(wh, tmp_path, []).stream
    rows = make_rows(stream, 10)
    assert [e.index for e in sink.write(batch_of(wh, tmp_path, rows[:5]), NoState()).rejected] == [3]
    assert sink.write(batch_of(wh, tmp_path, rows[5:]), NoState()).rejected == ()
    assert [n for _e, n in stored(wh)] == [0, 1, 2, 4, 5, 6, 7, 8, 9]


def test_a_stream_whose_view_name_is_too_long_is_refused(wh: SqlWarehouse, sink: SqlSink, tmp_path: Path) -> None:
    name = "p" * 59  # + "_dedup": 65, past both servers' identifier length
    toml = STREAMS_TOML.replace("[streams.pv", f"[streams.{name}")
    stream = sink_config(wh, tmp_path, toml).streams[name]
    with pytest.raises(ConfigError, match=rf"^streams\.{name}: .* at most 6[34] .*shorten the stream's name"):
        sink.ensure_tables([stream])


def test_the_flusher_drains_into_it_and_serves_query_behind_the_token(
    wh: SqlWarehouse, redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio
    import urllib.error
    import urllib.request

    from flusher.runner import Flusher
    from oceanus import config
    from oceanus.buffer import Keys
    from tests.flusher.helpers import make_config_text, push_frames
    from tests.flusher.test_runner import run_flusher, until

    for key, value in wh.env().items():
        monkeypatch.setenv(key, value)
    token = "t0ken-for-the-sql-sink-tests-0123456789"
    (tmp_path / "token").write_text(token)
    text = make_config_text(redis_server.url, tmp_path / "unused.duckdb", query_token_file=str(tmp_path / "token"))
    cfg = wh.configure(config.loads(text, env={"OCEANUS_FLUSHER_QUERY_ENABLED": "true"}))
    stream = cfg.streams["pv"]
    client = redis_server.client()
    ids = push_frames(client, Keys(cfg.redis.key_prefix), stream, frames=6, rows_per_frame=250)
    # a frame pushed twice (a collector whose reply was lost): stored once
    first = client.lindex(Keys(cfg.redis.key_prefix).queue("pv"), 0)
    client.rpush(Keys(cfg.redis.key_prefix).queue("pv"), first)  # type: ignore[arg-type]

    def post(url: str, sql: str, bearer: str | None) -> tuple[int, Any]:
        headers = {"authorization": f"Bearer {bearer}"} if bearer else {}
        req = urllib.request.Request(url + "/query", data=sql.encode(), method="POST", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    async def body(f: Flusher) -> None:
        async def drained() -> bool:
            return len(wh.rows("SELECT event_id FROM {s}.pv")) == len(ids)

        await until(drained, "every row in the warehouse")
        assert f.admin is not None
        loop = asyncio.get_running_loop()
        assert (await loop.run_in_executor(None, post, f.admin.url, "SELECT 1", None))[0] == 401
        status, answer = await loop.run_in_executor(
            None, post, f.admin.url, "SELECT count(*) AS n, count(DISTINCT event_id) AS d FROM pv_dedup", token
        )
        assert (status, answer) == (200, {"columns": ["n", "d"], "rows": [[len(ids), len(ids)]]})
        status, answer = await loop.run_in_executor(None, post, f.admin.url, "DELETE FROM pv", token)
        assert status == 400
        assert "only read-only statements" in answer["error"]

    try:
        run_flusher(cfg, make_sink(cfg), body)
    finally:
        client.close()
    assert sorted(e for (e,) in wh.rows("SELECT event_id FROM {s}.pv")) == sorted(ids)


#: Values whose SQL form is easy to get wrong: quotes, backslashes, control characters, non-BMP text,
#: the ends of BIGINT, floats that need every digit.
TRICKY = [
    ("it's", -(2**63), 0.1, True),
    ("back\\slash\\", 2**63 - 1, -1e300, False),
    ("line\nbreak\r\ttab \x1a ctrl-z", 0, 5e-324, True),
    ("'; DROP TABLE pv; --", -1, 1.7976931348623157e308, False),
    ('日本語 "quoted" 😀', 42, -0.0, True),
]


def test_tricky_values_round_trip_exactly(wh: SqlWarehouse, sink: SqlSink, tmp_path: Path) -> None:
    stream = batch_of(wh, tmp_path, []).stream
    rows = make_rows(stream, len(TRICKY))
    c = stream.columns.index
    for row, (text, n, score, ok) in zip(rows, TRICKY, strict=True):
        row[c("sid")], row[c("n")], row[c("score")], row[c("ok")] = text, n, score, ok
        row[c("jsn")] = json.dumps({"t": text})
    assert sink.write(batch_of(wh, tmp_path, rows), NoState()).rejected == ()
    got = wh.rows("SELECT sid, n, score, ok, jsn FROM {s}.pv")
    by_n = {r[1]: (r[0], r[1], r[2], bool(r[3]), json.loads(r[4]) if isinstance(r[4], str) else r[4]) for r in got}
    assert [by_n[n] for _t, n, _s, _o in TRICKY] == [(t, n, s, o, {"t": t}) for t, n, s, o in TRICKY]


def test_a_table_dropped_under_the_sink_is_made_again_on_the_next_attempt(
    wh: SqlWarehouse, sink: SqlSink, tmp_path: Path
) -> None:
    stream = batch_of(wh, tmp_path, []).stream
    rows = make_rows(stream, 6)
    sink.write(batch_of(wh, tmp_path, rows[:3]), NoState())
    wh.execute("DROP VIEW {s}.pv_dedup")
    wh.execute("DROP TABLE {s}.pv")
    with pytest.raises(PermanentError) as info:
        sink.write(batch_of(wh, tmp_path, rows), NoState())
    assert info.value.reason is Reason.NOT_FOUND
    sink.write(batch_of(wh, tmp_path, rows), NoState())
    assert [n for _e, n in stored(wh)] == list(range(6))
    assert sink.query("SELECT count(*) FROM pv_dedup").rows == [[6]]

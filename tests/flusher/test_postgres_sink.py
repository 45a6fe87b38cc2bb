"""The PostgreSQL sink against the machine's server (its own schema per test, dropped in finally)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest

from flusher.sinks import make_sink
from flusher.sinks.base import Batch
from flusher.sinks.postgres import PostgresSink, partition_name
from oceanus.errors import ConfigError, Reason, TransientError
from tests.flusher.helpers import NoState, make_rows
from tests.flusher.sql_sink_cases import (  # noqa: F401 - the shared cases, collected here
    batch_of,
    open_sink,
    sink_config,
    test_a_real_deadlock_is_transient,
    test_a_refusal_in_a_connections_first_write_leaves_the_next_writes_working,
    test_a_row_the_server_refuses_is_found_and_the_rest_written,
    test_a_stream_whose_view_name_is_too_long_is_refused,
    test_a_table_dropped_under_the_sink_is_made_again_on_the_next_attempt,
    test_bad_values_are_rejected_per_row_and_the_rest_written,
    test_connection_failures_are_classified,
    test_new_field_becomes_a_nullable_column,
    test_oceanus_query_asks_the_server,
    test_query_is_read_only_one_statement_and_bounded,
    test_reconnects_after_the_server_drops_the_connection,
    test_replayed_batch_inserts_nothing_twice,
    test_table_and_view_are_derived_from_the_config,
    test_the_flusher_drains_into_it_and_serves_query_behind_the_token,
    test_timestamps_and_json_are_stored_exactly,
    test_tricky_values_round_trip_exactly,
    test_type_change_is_refused_naming_stream_and_column,
)
from tests.support.sqlwarehouse import SqlWarehouse, warehouse

#: Every test here but a few pure ones talks to the machine's database server.
pytestmark = pytest.mark.integration

DAY_US = 86_400_000_000


@pytest.fixture
def wh() -> Iterator[SqlWarehouse]:
    with warehouse("postgres") as w:
        yield w


@pytest.fixture
def sink(wh: SqlWarehouse, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PostgresSink]:
    for s in open_sink(wh, tmp_path, monkeypatch):
        assert isinstance(s, PostgresSink)
        yield s


@pytest.fixture
def expected_types() -> dict[str, str]:
    return {
        "event_id": "text",
        "received_at": "timestamp with time zone",
        "ip": "text",
        "ua": "text",
        "device": "text",
        "sid": "text",
        "n": "bigint",
        "score": "double precision",
        "ok": "boolean",
        "at": "timestamp with time zone",
        "jsn": "jsonb",
        "extra": "jsonb",
    }


def partitions(wh: SqlWarehouse) -> list[str]:
    rows = wh.rows(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "JOIN pg_class p ON p.oid = i.inhparent JOIN pg_namespace n ON n.oid = p.relnamespace "
        "WHERE n.nspname = %s AND p.relname = 'pv' ORDER BY 1",
        (wh.name,),
    )
    return [str(r[0]) for r in rows]


def test_day_partitions_ahead_and_for_each_day_a_batch_touches(
    wh: SqlWarehouse, sink: PostgresSink, tmp_path: Path
) -> None:
    today = dt.datetime.now(dt.UTC).date()
    ahead = [f"pv_p{today + dt.timedelta(days=d):%Y%m%d}" for d in range(3)]  # partition_days_ahead = 2
    assert partitions(wh) == ahead
    stream = batch_of(wh, tmp_path, []).stream
    rows = make_rows(stream, 4)
    at = stream.columns.index("received_at")
    # 2024-12-04 23:59:59.999999, 2024-12-05 00:00:00, the same day again, and 1999-01-01
    rows[0][at] = 1_733_356_800_000_000 - 1
    rows[1][at] = 1_733_356_800_000_000
    rows[2][at] = 1_733_356_800_000_000 + DAY_US - 1
    rows[3][at] = 915_148_800_000_000
    sink.write(Batch(stream=stream, batch_id="b", columns=stream.columns, rows=rows), NoState())
    assert partitions(wh) == sorted(["pv_p19990101", "pv_p20241204", "pv_p20241205", *ahead])
    got = wh.rows("SELECT tableoid::regclass::text, n FROM {s}.pv ORDER BY n")
    assert got == [
        (f"{wh.name}.pv_p20241204", 0),
        (f"{wh.name}.pv_p20241205", 1),
        (f"{wh.name}.pv_p20241205", 2),
        (f"{wh.name}.pv_p19990101", 3),
    ]
    # the key holds the partition column, and is what ON CONFLICT names
    key = wh.rows(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = %s::regclass AND contype = 'p'",
        (f"{wh.name}.pv",),
    )
    assert key == [("PRIMARY KEY (event_id, received_at)",)]


def test_partition_names_fit_postgres_identifiers() -> None:
    day = dt.date(2026, 1, 2)
    assert partition_name("pageview", day) == "pageview_p20260102"
    long_a, long_b = "a" * 60, "a" * 59 + "b"
    assert len(partition_name(long_a, day)) <= 63
    assert partition_name(long_a, day) != partition_name(long_b, day)
    assert partition_name(long_a, day).endswith("_p20260102")


def test_a_statement_past_its_timeout_is_transient(
    wh: SqlWarehouse, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import msgspec
    import psycopg

    from tests.flusher.sql_sink_cases import sink_config

    for key, value in wh.env().items():
        monkeypatch.setenv(key, value)
    cfg = sink_config(wh, tmp_path)
    cfg = msgspec.structs.replace(
        cfg,
        sink=msgspec.structs.replace(
            cfg.sink, postgres=msgspec.structs.replace(cfg.sink.postgres, statement_timeout_s=0.5)
        ),
    )
    s = PostgresSink(cfg)
    blocker = psycopg.connect(wh.url())
    try:
        s.ensure_tables(list(cfg.streams.values()))
        stream = cfg.streams["pv"]
        blocker.execute(f"LOCK TABLE {wh.name}.pv IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(TransientError) as info:
            s.write(Batch(stream=stream, batch_id="b", columns=stream.columns, rows=make_rows(stream, 5)), NoState())
        assert info.value.reason is Reason.TIMEOUT
        blocker.rollback()
        s.write(Batch(stream=stream, batch_id="b", columns=stream.columns, rows=make_rows(stream, 5)), NoState())
        assert wh.rows("SELECT count(*) FROM {s}.pv") == [(5,)]
    finally:
        blocker.close()
        s.close()


def test_the_url_variable_is_not_taken_for_a_config_key() -> None:
    from oceanus import config

    # OCEANUS_* variables are config keys, except the ones the config names as holding a secret.
    cfg = config.load(config.REPO_CONFIG, env={"OCEANUS_SINK_KIND": "postgres", "OCEANUS_PG_URL": "postgresql://x"})
    assert cfg.sink.kind == "postgres"
    text = config.REPO_CONFIG.read_text().replace('url_env = "OCEANUS_MYSQL_URL"', 'url_env = "OCEANUS_SHOP_DW"')
    cfg = config.loads(text, env={"OCEANUS_SHOP_DW": "mysql://root@db/x"})
    assert cfg.sink.mysql.url_env == "OCEANUS_SHOP_DW"
    cfg = config.load(config.REPO_CONFIG, env={"OCEANUS_SINK_POSTGRES_URL_ENV": "OCEANUS_DW", "OCEANUS_DW": "pg://"})
    assert cfg.sink.postgres.url_env == "OCEANUS_DW"
    with pytest.raises(ConfigError, match=r"^OCEANUS_SHOP_DX: not a configuration key"):
        config.loads(text, env={"OCEANUS_SHOP_DX": "mysql://root@db/x"})


def test_two_flushers_making_the_same_partitions_at_once(
    wh: SqlWarehouse, sink: PostgresSink, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from tests.flusher.sql_sink_cases import sink_config

    others = [PostgresSink(sink_config(wh, tmp_path)) for _ in range(3)]
    start = threading.Barrier(len(others))
    errors: list[BaseException] = []
    days = [dt.date(2020, 1, 1) + dt.timedelta(days=d) for d in range(40)]

    def make(s: PostgresSink) -> None:
        conn = s._connection()
        start.wait(10)
        try:
            s._ensure_partitions(conn, "pv", days)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=make, args=(s,)) for s in others]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        for s in others:
            s.close()
    assert errors == []
    assert len([p for p in partitions(wh) if p.startswith("pv_p2020")]) == 40


def test_names_past_63_bytes() -> None:
    from flusher.sinks.postgres import short_name

    a, b = "a" * 60, "a" * 59 + "b"
    assert short_name("_oceanus_stage_", "pageview", "") == "_oceanus_stage_pageview"
    assert len(short_name("_oceanus_stage_", a, "")) == 63
    assert short_name("_oceanus_stage_", a, "") != short_name("_oceanus_stage_", b, "")


def test_check_config_names_a_missing_database_url() -> None:
    from oceanus import config

    text = config.REPO_CONFIG.read_text()
    reader = text.replace('query_url_env = ""', 'query_url_env = "PG_READER"', 1)  # the first: [sink.postgres]
    cfg = config.loads(reader, env={"OCEANUS_SINK_KIND": "postgres"})
    assert config.missing_secrets(cfg, {}) == [
        "sink.postgres.url_env: the database URL is missing ($OCEANUS_PG_URL)",
        "sink.postgres.query_url_env: the database URL is missing ($PG_READER)",
    ]
    assert config.missing_secrets(cfg, {"OCEANUS_PG_URL": "postgresql://x", "PG_READER": "postgresql://r"}) == []
    cfg = config.loads(text, env={"OCEANUS_SINK_KIND": "mysql"})
    assert config.missing_secrets(cfg, {}) == ["sink.mysql.url_env: the database URL is missing ($OCEANUS_MYSQL_URL)"]
    assert config.missing_secrets(config.loads(text, env={}), {}) == []


def test_a_day_partition_dropped_under_the_sink_is_made_again(
    wh: SqlWarehouse, sink: PostgresSink, tmp_path: Path
) -> None:
    # Retention drops old days; a late batch of such a day (a replayed dead letter) must not be refused.
    stream = batch_of(wh, tmp_path, []).stream
    rows = make_rows(stream, 4)
    for r in rows:
        r[stream.columns.index("received_at")] = 1_733_356_800_000_000  # 2024-12-05
    sink.write(Batch(stream=stream, batch_id="b", columns=stream.columns, rows=rows[:2]), NoState())
    wh.execute("DROP TABLE {s}.pv_p20241205")
    with pytest.raises(TransientError, match="a dropped day partition"):
        sink.write(Batch(stream=stream, batch_id="b", columns=stream.columns, rows=rows), NoState())
    result = sink.write(Batch(stream=stream, batch_id="b", columns=stream.columns, rows=rows), NoState())
    assert result.rejected == ()
    assert [n for _e, n in wh.rows("SELECT event_id, n FROM {s}.pv ORDER BY n")] == [0, 1, 2, 3]


def test_a_role_limited_to_its_schema_can_make_the_tables(
    wh: SqlWarehouse, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A role granted only its own schema (no CREATE on the database) makes the tables and writes.

    PostgreSQL refuses ``CREATE SCHEMA IF NOT EXISTS`` to such a role even when the schema exists."""
    role = f"oc_sink_{wh.name[3:]}"
    wh.execute("CREATE SCHEMA {s}")
    wh.execute(f"CREATE ROLE {role} LOGIN")
    try:
        wh.execute(f"GRANT USAGE, CREATE ON SCHEMA {{s}} TO {role}")
        for key, value in wh.env().items():
            monkeypatch.setenv(key, value.replace("postgres@", f"{role}@"))
        cfg = sink_config(wh, tmp_path)
        s = make_sink(cfg)
        try:
            s.ensure_tables(list(cfg.streams.values()))
            b = batch_of(wh, tmp_path, [])
            assert s.write(batch_of(wh, tmp_path, make_rows(b.stream, 3)), NoState()).written == 3
        finally:
            s.close()
    finally:
        wh.execute(f"DROP OWNED BY {role}")
        wh.execute(f"DROP ROLE {role}")

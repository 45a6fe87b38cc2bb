"""The MySQL sink against the machine's MariaDB (its own database per test, dropped in finally)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from flusher.sinks.mysql import MySQLSink, connect_params
from oceanus.errors import ConfigError
from tests.flusher.helpers import NoState, make_rows
from tests.flusher.sql_sink_cases import (  # noqa: F401 - the shared cases, collected here
    batch_of,
    open_sink,
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


@pytest.fixture
def wh() -> Iterator[SqlWarehouse]:
    with warehouse("mysql") as w:
        yield w


@pytest.fixture
def sink(wh: SqlWarehouse, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MySQLSink]:
    for s in open_sink(wh, tmp_path, monkeypatch):
        assert isinstance(s, MySQLSink)
        yield s


@pytest.fixture
def expected_types() -> dict[str, str]:
    return {
        "event_id": "char",
        "received_at": "datetime",
        "ip": "mediumtext",
        "ua": "mediumtext",
        "device": "mediumtext",
        "sid": "mediumtext",
        "n": "bigint",
        "score": "double",
        "ok": "tinyint",
        "at": "datetime",
        # MariaDB's JSON is LONGTEXT with a JSON_VALID check
        "jsn": "longtext",
        "extra": "longtext",
    }


def test_unique_key_is_event_id_and_received_at_has_an_index(wh: SqlWarehouse, sink: MySQLSink) -> None:
    keys = wh.rows(
        "SELECT INDEX_NAME, COLUMN_NAME, NON_UNIQUE FROM information_schema.STATISTICS "
        "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = 'pv' ORDER BY INDEX_NAME, SEQ_IN_INDEX",
        (wh.name,),
    )
    assert keys == [("PRIMARY", "event_id", 0), ("received_at", "received_at", 1)]


def test_a_value_insert_ignore_would_coerce_is_refused_not_stored(
    wh: SqlWarehouse, sink: MySQLSink, tmp_path: Path
) -> None:
    # Narrow a column behind the sink's back: INSERT IGNORE would store '12345678' cut to 4
    # characters with a warning; the sink sees the warning and refuses that row instead.
    wh.execute("ALTER TABLE {s}.pv MODIFY sid VARCHAR(4)")
    stream = batch_of(wh, tmp_path, []).stream
    rows = make_rows(stream, 6)
    rows[3][stream.columns.index("sid")] = "12345678"
    result = sink.write(batch_of(wh, tmp_path, rows), NoState())
    assert [e.index for e in result.rejected] == [3]
    assert "Data too long for column 'sid'" in result.rejected[0].reason
    assert wh.rows("SELECT n, sid FROM {s}.pv ORDER BY n") == [(0, "0"), (1, "1"), (2, "2"), (4, "4"), (5, "5")]


def test_statements_are_split_by_bytes(wh: SqlWarehouse, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import msgspec

    from tests.flusher.sql_sink_cases import sink_config

    for key, value in wh.env().items():
        monkeypatch.setenv(key, value)
    cfg = sink_config(wh, tmp_path)
    cfg = msgspec.structs.replace(
        cfg,
        sink=msgspec.structs.replace(cfg.sink, mysql=msgspec.structs.replace(cfg.sink.mysql, max_statement_bytes=4096)),
    )
    s = MySQLSink(cfg)
    try:
        s.ensure_tables(list(cfg.streams.values()))
        rows = make_rows(cfg.streams["pv"], 500)
        s.write(batch_of(wh, tmp_path, rows), NoState())  # ~60 statements of a dozen rows
        s.write(batch_of(wh, tmp_path, rows), NoState())
        assert wh.rows("SELECT count(*), count(DISTINCT event_id), min(n), max(n) FROM {s}.pv") == [(500, 500, 0, 499)]
    finally:
        s.close()


def test_url_parsing() -> None:
    assert connect_params("mysql://u%40x:p%2Fw@db.example:3307/shop") == {
        "host": "db.example",
        "port": 3307,
        "user": "u@x",
        "password": "p/w",
        "database": "shop",
    }
    with pytest.raises(ConfigError, match="names no database"):
        connect_params("mysql://root@127.0.0.1:3306/")
    with pytest.raises(ConfigError, match="expected a mysql:// URL"):
        connect_params("postgresql://root@127.0.0.1/x")


def test_a_nul_character_is_stored_as_sent(wh: SqlWarehouse, sink: MySQLSink, tmp_path: Path) -> None:
    # MySQL keeps NUL in text (PostgreSQL refuses it: that sink dead-letters such a row).
    stream = batch_of(wh, tmp_path, []).stream
    rows = make_rows(stream, 1)
    rows[0][stream.columns.index("sid")] = "a\x00b\\\x00'"
    assert sink.write(batch_of(wh, tmp_path, rows), NoState()).rejected == ()
    assert wh.rows("SELECT sid FROM {s}.pv") == [("a\x00b\\\x00'",)]

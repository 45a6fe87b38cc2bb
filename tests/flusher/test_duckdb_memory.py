"""DuckDB's buffer pool is capped and the file is reopened, so the flusher's memory stays flat as tables grow."""

from __future__ import annotations

from pathlib import Path

import pytest

from flusher.sinks.base import Batch
from flusher.sinks.duckdb import DuckDBSink
from oceanus import config
from oceanus.errors import ConfigError, SinkError
from tests.flusher.helpers import NoState, make_config_text, make_rows


def _sink(tmp_path: Path, memory_limit: str | None, **env: str) -> DuckDBSink:
    text = make_config_text("redis://unused", tmp_path / "w.duckdb")
    if memory_limit is not None:
        env["OCEANUS_SINK_DUCKDB_MEMORY_LIMIT"] = f'"{memory_limit}"'
    return DuckDBSink(config.loads(text, env=env))


def _limit(sink: DuckDBSink) -> str:
    rows = sink.query("SELECT current_setting('memory_limit')").rows
    return str(rows[0][0])


def test_default_cap_is_applied(tmp_path: Path) -> None:
    sink = _sink(tmp_path, None)
    try:
        # DuckDB reports the cap in its own units (512MB -> "488.2 MiB").
        assert _limit(sink) == "488.2 MiB"
    finally:
        sink.close()


def test_cap_from_the_environment(tmp_path: Path) -> None:
    sink = _sink(tmp_path, "1GiB")
    try:
        assert _limit(sink) == "1.0 GiB"
    finally:
        sink.close()


def test_a_bad_cap_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"sink\.duckdb\.memory_limit"):
        _sink(tmp_path, "1; DROP TABLE x")


def test_file_is_reopened_after_reopen_rows_and_keeps_every_guarantee(tmp_path: Path) -> None:
    sink = _sink(tmp_path, "256MB", OCEANUS_SINK_DUCKDB_REOPEN_ROWS="250")
    try:
        stream = config.loads(make_config_text("redis://unused", sink.path)).streams["pv"]
        sink.ensure_tables([stream])
        batches = [
            Batch(stream=stream, batch_id=f"b{i}", columns=stream.columns, rows=make_rows(stream, 100, i * 100))
            for i in range(6)
        ]
        for b in batches[:3]:
            assert sink.write(b, NoState()).written == 100
        assert sink.reopens == 1  # after 300 rows, not before 250
        # A replay across the reopen inserts nothing twice; the settings survive the reopen.
        sink.write(batches[1], NoState())
        assert sink.query("SELECT count(*) FROM pv").rows[0][0] == 300
        for b in batches[3:]:
            assert sink.write(sink.prepare(b), NoState()).written == 100
        assert sink.reopens == 2
        assert _limit(sink) == "244.1 MiB"
        n, distinct = sink.query("SELECT count(*), count(DISTINCT event_id) FROM pv").rows[0]
        assert n == distinct == 600
    finally:
        sink.close()


def test_reopen_can_be_turned_off(tmp_path: Path) -> None:
    sink = _sink(tmp_path, None, OCEANUS_SINK_DUCKDB_REOPEN_ROWS="0")
    try:
        stream = config.loads(make_config_text("redis://unused", sink.path)).streams["pv"]
        sink.ensure_tables([stream])
        for i in range(3):
            rows = make_rows(stream, 500, i * 500)
            sink.write(Batch(stream=stream, batch_id=f"b{i}", columns=stream.columns, rows=rows), NoState())
        assert sink.reopens == 0
    finally:
        sink.close()


def test_a_failed_reopen_is_retried_by_the_next_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Between close and open another process could take the file's lock; that open is made to fail here.
    sink = _sink(tmp_path, None, OCEANUS_SINK_DUCKDB_REOPEN_ROWS="100")
    try:
        stream = config.loads(make_config_text("redis://unused", sink.path)).streams["pv"]
        sink.ensure_tables([stream])
        real_open = DuckDBSink._open
        calls = {"n": 0}

        def open_once_failing(self: DuckDBSink):  # type: ignore[no-untyped-def]
            calls["n"] += 1
            if calls["n"] <= 2:
                raise ConfigError("sink.duckdb.path: cannot open it for writing: Conflicting lock is held")
            return real_open(self)

        monkeypatch.setattr(DuckDBSink, "_open", open_once_failing)
        batches = [
            Batch(stream=stream, batch_id=f"b{i}", columns=stream.columns, rows=make_rows(stream, 100, i * 100))
            for i in range(2)
        ]
        assert sink.write(batches[0], NoState()).written == 100  # written; its reopen failed quietly
        with pytest.raises(SinkError, match="cannot reopen") as err:
            sink.write(batches[1], NoState())  # the retry fails too: nothing is written, the flusher backs off
        assert err.value.retryable
        assert sink.write(batches[1], NoState()).written == 100
        assert sink.reopens == 2  # the retried one, then the one this write's 100 rows are due
        assert sink.query("SELECT count(*) FROM pv").rows[0][0] == 200
    finally:
        sink.close()

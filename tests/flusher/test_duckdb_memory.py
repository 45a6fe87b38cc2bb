"""DuckDB's buffer pool is capped, so the flusher's memory stays flat as the tables grow."""

from __future__ import annotations

from pathlib import Path

import pytest

from flusher.sinks.duckdb import DuckDBSink
from oceanus import config
from oceanus.errors import ConfigError
from tests.flusher.helpers import make_config_text


def _sink(tmp_path: Path, memory_limit: str | None) -> DuckDBSink:
    text = make_config_text("redis://unused", tmp_path / "w.duckdb")
    env = {} if memory_limit is None else {"OCEANUS_SINK_DUCKDB_MEMORY_LIMIT": f'"{memory_limit}"'}
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
    with pytest.raises(ConfigError, match="sink.duckdb.memory_limit"):
        _sink(tmp_path, "1; DROP TABLE x")

"""``oceanus query`` on a hand-filled DuckDB file (no flusher holding it)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
from collections.abc import Callable
from pathlib import Path

import duckdb
import pytest

from flusher.runner import Flusher, _write_discovery
from flusher.sinks.duckdb import DuckDBSink
from oceanus import cli, config, discovery
from oceanus.commands import devstate, query
from tests.flusher.helpers import make_config_text
from tests.flusher.test_runner import run_flusher
from tests.support.servers import RedisServer


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    con = duckdb.connect(str(tmp_path / devstate.WAREHOUSE_FILE))
    con.execute("CREATE TABLE pageview (event_id VARCHAR, received_at TIMESTAMPTZ, evt VARCHAR, extra JSON)")
    con.execute(
        "INSERT INTO pageview VALUES "
        "('a1', TIMESTAMPTZ '2024-05-01 10:00:00+00', 'view', '{\"demo_id\": \"x-1\"}'), "
        "('a2', TIMESTAMPTZ '2024-05-01 10:00:01+00', 'click', NULL), "
        "('a3', TIMESTAMPTZ '2024-05-01 10:00:02+00', 'view, \"quoted\"', NULL)"
    )
    con.close()
    return tmp_path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(["query", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_table_format(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "--data-dir", str(data_dir), "SELECT evt, count(*) AS n FROM pageview GROUP BY evt ORDER BY n DESC, evt"
    )
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["evt", "n"]
    assert set(lines[1]) == {"-", " "}
    assert lines[2].split() == ["click", "1"]
    assert lines[-1] == "(3 rows)"


def test_csv_format_quotes(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys,
        "--data-dir",
        str(data_dir),
        "--format",
        "csv",
        "SELECT event_id, evt, extra FROM pageview ORDER BY event_id",
    )
    assert code == 0
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == ["event_id", "evt", "extra"]
    assert rows[3] == ["a3", 'view, "quoted"', ""]
    assert json.loads(rows[1][2]) == {"demo_id": "x-1"}


def test_json_format_is_typed(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys,
        "--data-dir",
        str(data_dir),
        "--format",
        "json",
        "SELECT event_id, received_at, json_extract_string(extra, '$.demo_id') AS demo_id, 1.5 AS f "
        "FROM pageview ORDER BY event_id LIMIT 1",
    )
    assert code == 0
    [row] = json.loads(out)
    assert row["event_id"] == "a1"
    assert row["demo_id"] == "x-1"
    assert row["f"] == 1.5
    assert row["received_at"].startswith("2024-05-01")


def test_sql_error_is_one_line(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--data-dir", str(data_dir), "SELECT nope FROM pageview")
    assert code == 1
    assert out == ""
    assert err.count("\n") == 1
    assert "nope" in err


def test_read_only(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "--data-dir", str(data_dir), "DELETE FROM pageview")
    assert code == 1
    assert "read-only" in err.lower()
    assert query.run_sql(data_dir, "SELECT count(*) FROM pageview").rows == [[3]]


def test_no_warehouse_yet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "--data-dir", str(tmp_path), "SELECT 1")
    assert code == 1
    assert "no warehouse at" in err
    assert "oceanus dev" in err


def test_stale_flusher_file_falls_back_to_the_file(data_dir: Path) -> None:
    # A flusher killed with -9 leaves its discovery file; its pid is gone.
    path = devstate.warehouse_path(data_dir)
    discovery.flusher_file(path).write_text(json.dumps({"pid": 2**22 + 7, "admin_url": "http://127.0.0.1:9"}))
    assert query.run_sql(data_dir, "SELECT count(*) FROM pageview").rows == [[3]]


def test_live_flusher_that_stopped_answering_falls_back(data_dir: Path) -> None:
    path = devstate.warehouse_path(data_dir)
    # Our own pid is alive; nothing listens on port 9 of loopback.
    discovery.flusher_file(path).write_text(json.dumps({"pid": os.getpid(), "admin_url": "http://127.0.0.1:9"}))
    assert query.run_sql(data_dir, "SELECT count(*) FROM pageview").rows == [[3]]


def test_locked_file_is_explained(data_dir: Path) -> None:
    import subprocess
    import sys

    # Another process holds the write lock and publishes no admin URL.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys; c = duckdb.connect(sys.argv[1]); print('locked', flush=True); sys.stdin.read()",
            str(devstate.warehouse_path(data_dir)),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(query.QueryError, match="locked by another process"):
            query.run_sql(data_dir, "SELECT 1")
    finally:
        holder.kill()
        holder.wait()


# --------------------------------------------------------------------------- through a running flusher


def _serve_queries(redis_server: RedisServer, data_dir: Path, check: Callable[[], None]) -> None:
    """A real flusher holding ``DIR/warehouse.duckdb`` with /query on, as ``oceanus dev`` runs it."""
    path = devstate.warehouse_path(data_dir)
    token_file = devstate.write_query_token(data_dir)
    cfg = config.loads(
        make_config_text(redis_server.url, path, query_token_file=str(token_file)),
        env={"OCEANUS_FLUSHER_QUERY_ENABLED": "true"},
    )

    async def body(f: Flusher) -> None:
        assert f.admin is not None
        _write_discovery(discovery.flusher_file(path), f.admin.url)
        await asyncio.get_running_loop().run_in_executor(None, check)

    run_flusher(cfg, DuckDBSink(cfg), body)


def test_query_through_the_flusher_sends_the_dev_token(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OCEANUS_QUERY_TOKEN", raising=False)

    def check() -> None:
        # The file is locked by the flusher: this answer can only come through its /query.
        assert query.run_sql(tmp_path, "SELECT count(*) AS n FROM pv").rows == [[0]]
        with pytest.raises(query.QueryError, match="Permission Error"):
            query.run_sql(tmp_path, "SELECT * FROM read_text('/etc/passwd')")

    _serve_queries(redis_server, tmp_path, check)


def test_query_through_the_flusher_without_the_token_is_refused(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OCEANUS_QUERY_TOKEN", raising=False)

    def check() -> None:
        token = devstate.read_query_token(tmp_path)
        devstate.query_token_path(tmp_path).unlink()
        with pytest.raises(query.QueryError, match=r"^/query needs the header Authorization: Bearer"):
            query.run_sql(tmp_path, "SELECT 1")
        # Another user's token in the environment is the fallback.
        assert token is not None
        monkeypatch.setenv("OCEANUS_QUERY_TOKEN", token)
        assert query.run_sql(tmp_path, "SELECT 1 AS one").rows == [[1]]

    _serve_queries(redis_server, tmp_path, check)

"""The ``[imports]`` inside a running ``oceanus flusher`` process on DuckDB (importer.hosted).

A real flusher process holds the DuckDB file (so ``oceanus import`` could not open
it), writes events from Redis, and runs the imports on a connection of its own;
the rows are read back through its /query while it runs, and from the file after.
Killed with -9 mid-import and started again, the table holds every row once: each
batch and its watermark still commit in one transaction.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis

from oceanus import config, discovery
from oceanus.buffer import Keys
from oceanus.commands import devstate
from oceanus.commands.query import QueryError, run_sql_at
from tests.flusher.helpers import make_config_text, push_frames
from tests.importer.helpers import URL_ENV, assert_same, import_toml, signal_at, table_count
from tests.support.servers import RedisServer, wait_for
from tests.support.shopdb import ShopDB

pytestmark = pytest.mark.timeout(180)
REPO = Path(__file__).resolve().parents[2]


def _config_text(tmp_path: Path, redis_url: str, shop: ShopDB, **keys: Any) -> tuple[str, Path, Path]:
    path = tmp_path / devstate.WAREHOUSE_FILE
    token_file = devstate.write_query_token(tmp_path)
    imports = import_toml(path, shop, **keys)
    text = make_config_text(redis_url, path, query_token_file=str(token_file))
    text = text.replace("[flusher]\n", "[flusher]\nquery_enabled = true\n", 1)
    return text + "\n" + imports[imports.index("[imports.users]") :], path, token_file


def _flusher(cfg_path: Path, shop: ShopDB) -> subprocess.Popen[str]:
    env = {**os.environ, URL_ENV: shop.url, "OCEANUS_LOG_LEVEL": "INFO"}
    env.pop("OCEANUS_CONFIG", None)
    return subprocess.Popen(
        [sys.executable, "-m", "oceanus.cli", "flusher", "--config", str(cfg_path)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _count(path: Path, token: str, sql: str) -> int | None:
    try:
        rows = run_sql_at(path, sql, token).rows
    except QueryError:  # the import has not created its table yet
        return None
    return int(rows[0][0])


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_imports_run_inside_a_running_flusher(tmp_path: Path, redis_server: RedisServer, pg_shop: ShopDB) -> None:
    pg_shop.create_users()
    pg_shop.fill(1, 300)
    text, path, token_file = _config_text(tmp_path, redis_server.url, pg_shop, every_s=0.2)
    cfg_path = tmp_path / "oceanus.toml"
    cfg_path.write_text(text)
    cfg = config.loads(text)
    token = token_file.read_text().strip()
    client = redis.Redis.from_url(redis_server.url)
    proc = _flusher(cfg_path, pg_shop)
    try:
        wait_for(lambda: discovery.read_flusher_info(path) is not None, timeout=60, what="the flusher")
        ids = push_frames(client, Keys(cfg.redis.key_prefix), cfg.streams["pv"], frames=20, rows_per_frame=50)
        wait_for(
            lambda: _count(path, token, "SELECT count(*) FROM users_latest") == 300,
            timeout=60,
            what="300 users imported inside the flusher",
        )
        pg_shop.fill(301, 10)
        wait_for(
            lambda: _count(path, token, "SELECT count(*) FROM users_latest") == 310,
            timeout=60,
            what="the next run's 10 users",
        )
        wait_for(
            lambda: _count(path, token, "SELECT count(*) FROM pv") == len(ids),
            timeout=60,
            what="the events written beside the imports",
        )
        # Its /metrics serves the import's series too.
        import urllib.request

        info = discovery.read_flusher_info(path)
        assert info is not None
        with urllib.request.urlopen(info.admin_url + "/metrics", timeout=5) as resp:
            assert 'oceanus_import_rows_total{import="users"} 310.0' in resp.read().decode()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        _stop(proc)
        client.close()
    assert assert_same(pg_shop, config.loads(text)) == 310
    assert table_count(cfg) == 310  # every row version once
    assert table_count(cfg, "SELECT count(*) FROM pv") == len(ids)


def test_flusher_killed_mid_import_then_restarted(tmp_path: Path, redis_server: RedisServer, pg_shop: ShopDB) -> None:
    pg_shop.create_users()
    pg_shop.fill(1, 20_000)
    text, _path, _ = _config_text(tmp_path, redis_server.url, pg_shop, batch_rows=200)
    cfg_path = tmp_path / "oceanus.toml"
    cfg_path.write_text(text)
    cfg = config.loads(text)
    proc = _flusher(cfg_path, pg_shop)
    try:
        signal_at(proc, "import users: batch 1 committed", signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        _stop(proc)
    partial = table_count(cfg)
    assert 200 <= partial < 20_000, "the import was not killed mid-way"
    assert partial % 200 == 0  # whole batches only
    # The watermark is exactly the last committed row.
    assert (
        table_count(
            cfg,
            "SELECT count(*) FROM _oceanus_import_state WHERE watermark = "
            "(SELECT '[{\"datetime\":\"' || strftime(max(updated_at), '%Y-%m-%dT%H:%M:%S') "
            "|| '\"},' || max_by(id, (updated_at, id)) || ']' FROM users)",
        )
        == 1
    )
    proc = _flusher(cfg_path, pg_shop)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "import users: " in line and " rows in " in line:
                assert f"import users: {20_000 - partial} rows" in line
                break
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        _stop(proc)
    assert table_count(cfg) == 20_000  # no row twice in the table itself
    assert assert_same(pg_shop, cfg) == 20_000


def test_a_flusher_without_the_source_variable_skips_the_imports(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from importer.hosted import hosted_imports

    cfg = config.load(REPO / "oceanus.toml", env={})
    assert set(cfg.imports) == {"users", "items", "orders", "order_items"}
    monkeypatch.delenv("OCEANUS_SHOP_URL", raising=False)
    assert hosted_imports(cfg) == []
    assert "imports.users: OCEANUS_SHOP_URL is not set; this flusher does not run the import" in caplog.text
    monkeypatch.setenv("OCEANUS_SHOP_URL", "sqlite:////nonexistent/shop.sqlite")
    assert len(hosted_imports(cfg)) == 1
    bq = config.load(REPO / "oceanus.toml", env={"OCEANUS_SINK_KIND": "bigquery"})
    assert hosted_imports(bq) == []  # BigQuery: `oceanus import serve` runs them

"""``oceanus import serve``: runs each import every ``every_s``, serves /metrics, and on
SIGTERM commits the batch it is writing and exits 0."""

from __future__ import annotations

import re
import signal
import urllib.request
from pathlib import Path

import pytest

from tests.importer.helpers import assert_same, import_config, import_process, import_toml, signal_at, table_count
from tests.support.servers import free_port, wait_for
from tests.support.shopdb import ShopDB

pytestmark = pytest.mark.timeout(120)


def _metric(port: int, name: str) -> float | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
        text = resp.read().decode()
    match = re.search(rf'^{name}\{{import="users"\}} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else None


def test_serve_repeats_and_exports_metrics(tmp_path: Path, pg_shop: ShopDB) -> None:
    pg_shop.create_users()
    pg_shop.fill(1, 300)
    cfg_path = tmp_path / "oceanus.toml"
    cfg_path.write_text(import_toml(tmp_path / "wh.duckdb", pg_shop, every_s=0.2))
    port = free_port()
    proc = import_process(cfg_path, pg_shop, "serve", "--metrics-port", str(port))
    try:
        wait_for(lambda: _metric(port, "oceanus_import_rows_total") == 300.0, timeout=30, what="300 rows counted")
        pg_shop.fill(301, 10)
        wait_for(lambda: _metric(port, "oceanus_import_rows_total") == 310.0, timeout=30, what="310 rows counted")
        assert _metric(port, "oceanus_import_failures_total") == 0.0
        lag = _metric(port, "oceanus_import_watermark_lag_seconds")
        # The newest updated_at is 2026-01-01 00:01:43 (310 // 3 s), taken as UTC.
        assert lag is not None
        assert lag > 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    cfg = import_config(tmp_path, pg_shop)
    assert assert_same(pg_shop, cfg) == 310


def test_sigterm_commits_the_current_batch_and_exits(tmp_path: Path, pg_shop: ShopDB) -> None:
    pg_shop.create_users()
    pg_shop.fill(1, 40_000)
    cfg_path = tmp_path / "oceanus.toml"
    cfg_path.write_text(import_toml(tmp_path / "wh.duckdb", pg_shop, batch_rows=200))
    proc = import_process(cfg_path, pg_shop, "serve", "--metrics-port", "0")
    try:
        signal_at(proc, "batch 1 committed", signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    cfg = import_config(tmp_path, pg_shop, batch_rows=200)
    stopped_at = table_count(cfg)
    assert 200 <= stopped_at < 40_000
    assert stopped_at % 200 == 0
    watermark = table_count(
        cfg,
        "SELECT count(*) FROM _oceanus_import_state WHERE watermark = "
        "(SELECT '[{\"datetime\":\"' || strftime(max(updated_at), '%Y-%m-%dT%H:%M:%S') "
        "|| '\"},' || max_by(id, (updated_at, id)) || ']' FROM users)",
    )
    assert watermark == 1, "the stored watermark is not the last committed row"

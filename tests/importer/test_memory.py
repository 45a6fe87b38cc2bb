"""Memory stays flat however large the source table: server-side cursors, one batch at a time.

200k rows here (a 10 M-row table behaves the same: nothing scales with the
table); Python's allocations are traced, the peak must stay at a few batches.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from importer.runner import run_import
from tests.importer.helpers import URL_ENV, import_config, table_count
from tests.support.shopdb import ShopDB

pytestmark = pytest.mark.timeout(240)

ROWS = 200_000
BATCH_ROWS = 5_000
#: Holding every row as Python tuples would take ~60 MB; one batch takes ~1.5 MB.
MAX_PEAK_BYTES = 12_000_000


def test_peak_memory_is_bounded_by_the_batch(tmp_path: Path, shop: ShopDB) -> None:
    shop.execute(
        f"CREATE TABLE {shop.table} (id bigint PRIMARY KEY, updated_at timestamp NOT NULL, "
        "name varchar(40), amount decimal(12,2))"
    )
    if shop.kind == "postgres":
        shop.execute(
            f"INSERT INTO {shop.table} SELECT g, TIMESTAMP '2026-01-01 00:00:00' + g * INTERVAL '1 second', "
            f"'name-' || g, g * 0.01 FROM generate_series(1, {ROWS}) g"
        )
    else:
        shop.execute(
            f"INSERT INTO {shop.table} SELECT seq, TIMESTAMP '2026-01-01 00:00:00' + INTERVAL seq SECOND, "
            f"CONCAT('name-', seq), seq * 0.01 FROM seq_1_to_{ROWS}"
        )
    cfg = import_config(tmp_path, shop, columns=("id", "updated_at", "name", "amount"), batch_rows=BATCH_ROWS)
    tracemalloc.start()
    try:
        result = run_import(cfg, cfg.imports["users"], env={URL_ENV: shop.url})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.rows == ROWS
    assert table_count(cfg) == ROWS
    assert peak < MAX_PEAK_BYTES, f"peak {peak / 1e6:.1f} MB of Python allocations for {ROWS} rows"

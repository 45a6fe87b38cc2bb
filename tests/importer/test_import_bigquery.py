"""``oceanus import`` into BigQuery, through the emulator (/work notes: BIGNUMERIC columns and
BYTES in NDJSON are not emulated; their mapping is checked without it)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from importer.columns import Column
from importer.runner import run_import
from importer.targets.bigquery import bigquery_type, ndjson
from oceanus import config
from oceanus.errors import SourceError
from tests.importer.helpers import URL_ENV, assert_same, import_toml, kill_after_first_batch
from tests.support.bq_helpers import emulator_client
from tests.support.servers import BigQueryEmulator
from tests.support.shopdb import ALLOWED, ShopDB, normalize

pytestmark = pytest.mark.timeout(180)

#: ``balance`` is numeric(30,10): a BIGNUMERIC, which the emulator cannot create.
COLUMNS = tuple(c for c in ALLOWED if c != "balance")


def _config(tmp_path: Path, shop: ShopDB, emulator: BigQueryEmulator, **keys: Any) -> config.Config:
    return config.loads(_toml(tmp_path, shop, emulator, **keys))


def _toml(tmp_path: Path, shop: ShopDB, emulator: BigQueryEmulator, **keys: Any) -> str:
    dataset = f"imp_{uuid.uuid4().hex[:10]}"
    text = import_toml(tmp_path / "unused.duckdb", shop, columns=COLUMNS, **keys)
    text = text.replace(
        f'[sink.duckdb]\npath = "{tmp_path / "unused.duckdb"}"\n',
        f'[sink]\nkind = "bigquery"\n[sink.bigquery]\nproject = "{emulator.project}"\ndataset = "{dataset}"\n'
        f'api_endpoint = "{emulator.rest_url}"\nretry_deadline_s = 5\ntimeout_s = 30\n',
    )
    return text


def _latest(emulator: BigQueryEmulator, cfg: config.Config) -> list[tuple[Any, ...]]:
    from google.cloud import bigquery

    client = emulator_client(emulator)
    try:
        sql = (
            f"SELECT {', '.join(COLUMNS)} FROM `{emulator.project}.{cfg.sink.bigquery.dataset}.users_latest` "
            "ORDER BY id"
        )
        rows = client.query(sql, retry=bigquery.DEFAULT_RETRY.with_deadline(5)).result()
        return [normalize(COLUMNS, tuple(r.values())) for r in rows]
    finally:
        client.close()


def _run(cfg: config.Config, shop: ShopDB) -> tuple[int, int]:
    result = run_import(cfg, cfg.imports["users"], env={URL_ENV: shop.url})
    assert result.complete
    return result.rows, result.tombstones


def test_incremental_with_key_diff(tmp_path: Path, shop: ShopDB, bq_emulator: BigQueryEmulator) -> None:
    shop.create_users()
    shop.fill(1, 250)
    cfg = _config(tmp_path, shop, bq_emulator, deletes="key_diff")
    assert _run(cfg, shop) == (250, 0)
    assert assert_same(shop, cfg, columns=COLUMNS, got=_latest(bq_emulator, cfg)) == 250
    shop.execute(f"UPDATE {shop.table} SET occupation = 'changed', updated_at = {shop.now_sql} WHERE id % 7 = 0")
    shop.fill(251, 20, updated_at="2026-01-01 00:01:23")  # the watermark's updated_at: 250 // 3 s
    shop.execute(f"DELETE FROM {shop.table} WHERE id % 11 = 0")
    # Changed and kept: 35 - 3; new and kept: 20 - 2 (253, 264); tombstones: 22.
    assert _run(cfg, shop) == (32 + 18, 22)
    assert assert_same(shop, cfg, columns=COLUMNS, got=_latest(bq_emulator, cfg)) == 270 - 22 - 2
    assert _run(cfg, shop) == (0, 0)
    assert assert_same(shop, cfg, columns=COLUMNS, got=_latest(bq_emulator, cfg)) == 246


def test_full_reload(tmp_path: Path, pg_shop: ShopDB, bq_emulator: BigQueryEmulator) -> None:
    pg_shop.create_users()
    pg_shop.fill(1, 120)
    cfg = _config(tmp_path, pg_shop, bq_emulator, mode="full", cursor_column=None)
    assert _run(cfg, pg_shop) == (120, 0)
    pg_shop.execute(f"DELETE FROM {pg_shop.table} WHERE id <= 20")
    pg_shop.execute(f"UPDATE {pg_shop.table} SET age = 99 WHERE id > 100")
    assert _run(cfg, pg_shop) == (100, 0)
    assert assert_same(pg_shop, cfg, columns=COLUMNS, got=_latest(bq_emulator, cfg)) == 100


def test_killed_after_its_first_batch_then_rerun(
    tmp_path: Path, pg_shop: ShopDB, bq_emulator: BigQueryEmulator
) -> None:
    """SIGKILL after the first load: the re-run goes on from the stored watermark (at most one
    batch again, whose copies ``_latest`` folds); the view equals the source exactly."""
    pg_shop.create_users()
    pg_shop.fill(1, 3000)
    text = _toml(tmp_path, pg_shop, bq_emulator, batch_rows=100)
    cfg_path = tmp_path / "oceanus.toml"
    cfg_path.write_text(text)
    cfg = config.loads(text)
    kill_after_first_batch(cfg_path, pg_shop)
    partial = len(_latest(bq_emulator, cfg))
    assert 100 <= partial < 3000, "the run was not killed mid-way"
    rows, _ = _run(cfg, pg_shop)
    assert 3000 - partial <= rows <= 3000 - partial + 100
    assert assert_same(pg_shop, cfg, columns=COLUMNS, got=_latest(bq_emulator, cfg)) == 3000


@pytest.mark.parametrize(
    ("precision", "scale", "expected"),
    [
        (12, 2, ("NUMERIC", 12, 2)),
        (38, 9, ("NUMERIC", 38, 9)),
        (39, 9, ("BIGNUMERIC", 39, 9)),
        (30, 10, ("BIGNUMERIC", 30, 10)),
        (76, 38, ("BIGNUMERIC", 76, 38)),
        (20, 0, ("NUMERIC", 20, 0)),
    ],
)
def test_decimals_keep_precision_and_scale(precision: int, scale: int, expected: tuple[str, int, int]) -> None:
    col = Column(name="d", kind="decimal", precision=precision, scale=scale, source_type="numeric")
    assert bigquery_type(col) == expected


def test_a_decimal_past_bignumeric_names_the_column() -> None:
    col = Column(name="huge", kind="decimal", precision=76, scale=0, source_type="numeric")
    with pytest.raises(SourceError, match=r"^column `huge` is numeric\(76,0\); BigQuery's BIGNUMERIC holds at most"):
        bigquery_type(col)


def test_ndjson_keeps_values_exact() -> None:
    import datetime as dt
    from decimal import Decimal

    import pyarrow as pa

    batch = pa.table(
        {
            "n": pa.array([Decimal("12345678901234567890.0123456789")], type=pa.decimal128(30, 10)),
            "t": pa.array([dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)], type=pa.timestamp("us", tz="UTC")),
            "w": pa.array([dt.datetime(2026, 1, 2, 3, 4, 5)], type=pa.timestamp("us")),
            "d": pa.array([dt.date(1999, 12, 31)], type=pa.date32()),
            "b": pa.array([b"\x00\xff"], type=pa.binary()),
            "j": pa.array(['{"a": [1, 2]}'], type=pa.string()),
        }
    )
    assert ndjson(batch) == (
        b'{"n":"12345678901234567890.0123456789","t":"2026-01-02T03:04:05.678901+00:00",'
        b'"w":"2026-01-02T03:04:05","d":"1999-12-31","b":"AP8=","j":"{\\"a\\": [1, 2]}"}\n'
    )

"""``oceanus import`` from the machine's PostgreSQL and MariaDB into DuckDB, PostgreSQL and MariaDB.

Every test owns a schema/database of its own, in the source and in a SQL
warehouse (tests/importer/conftest.py: ``shop`` x ``target``), and checks the
warehouse against the source exactly: row count, a checksum per column, then row
by row; ``users_latest`` holds each key once.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from importer.runner import run_import
from oceanus.config import Config
from oceanus.errors import SourceError
from tests.importer.helpers import (
    URL_ENV,
    Warehouse,
    assert_same,
    column_names,
    import_config,
    import_process,
    kill_after_first_batch,
    read,
    relations,
    table_count,
)
from tests.support.shopdb import ALLOWED, ShopDB

pytestmark = pytest.mark.timeout(120)


def _run(cfg: Config, shop: ShopDB) -> tuple[int, int]:
    result = run_import(cfg, cfg.imports["users"], env={URL_ENV: shop.url})
    assert result.complete
    return result.rows, result.tombstones


def test_incremental_changes_deletes_and_ties(target: Warehouse, shop: ShopDB) -> None:
    shop.create_users()
    shop.fill(1, 2500)
    cfg = target.config(shop, deletes="key_diff")
    assert _run(cfg, shop) == (2500, 0)
    assert assert_same(shop, cfg) == 2500

    # Rows at the watermark's cursor value with larger keys (a tie: `>` alone on the
    # cursor would skip them), changed rows, deleted rows.
    shop.execute(f"UPDATE {shop.table} SET occupation = 'changed', updated_at = {shop.now_sql} WHERE id % 7 = 0")
    shop.fill(2501, 100, updated_at="2026-01-01 00:13:53")  # max(updated_at) of 1..2500: 2500 // 3 s
    shop.execute(f"DELETE FROM {shop.table} WHERE id % 11 = 0")
    # Changed and still there: 357 - 32 (also deleted); new and still there: 100 - 9.
    assert _run(cfg, shop) == (325 + 91, 227)
    assert assert_same(shop, cfg) == 2600 - 227 - 9

    # A re-run with nothing new writes nothing: re-running is always safe.
    stored = table_count(cfg)
    assert _run(cfg, shop) == (0, 0)
    assert table_count(cfg) == stored == 2500 + 416 + 227
    assert_same(shop, cfg)


def test_soft_deletes(target: Warehouse, shop: ShopDB) -> None:
    shop.create_users()
    shop.fill(1, 300)
    cfg = target.config(shop, deletes="soft", soft_delete_column="deleted_at")
    assert _run(cfg, shop) == (300, 0)
    now = shop.now_sql
    shop.execute(f"UPDATE {shop.table} SET deleted_at = {now}, updated_at = {now} WHERE id % 13 = 0")
    assert _run(cfg, shop) == (23, 0)
    assert assert_same(shop, cfg, where="deleted_at IS NULL") == 300 - 23
    # Undeleted: the newest version is live again.
    shop.execute(f"UPDATE {shop.table} SET deleted_at = NULL, updated_at = {now} WHERE id = 13")
    assert _run(cfg, shop) == (1, 0)
    assert assert_same(shop, cfg, where="deleted_at IS NULL") == 300 - 22


def test_full_reload(target: Warehouse, shop: ShopDB) -> None:
    shop.create_users()
    shop.fill(1, 250)
    cfg = target.config(shop, mode="full", cursor_column=None)
    assert _run(cfg, shop) == (250, 0)
    assert assert_same(shop, cfg) == 250
    shop.execute(f"DELETE FROM {shop.table} WHERE id <= 50")
    shop.execute(f"UPDATE {shop.table} SET age = 99 WHERE id > 200")
    shop.fill(251, 10)
    assert _run(cfg, shop) == (210, 0)
    assert assert_same(shop, cfg) == 210
    assert table_count(cfg) == 250 + 210


def test_killed_after_its_first_batch_then_rerun(tmp_path: Path, target: Warehouse, shop: ShopDB) -> None:
    """SIGKILL right after the first commit: the next run goes on from the stored watermark,
    and the table holds every row exactly once (rows and watermark commit together)."""
    shop.create_users()
    shop.fill(1, 40_000)
    cfg_path = tmp_path / "oceanus.toml"
    cfg_path.write_text(target.toml(shop, batch_rows=200))
    cfg = target.config(shop, batch_rows=200)
    kill_after_first_batch(cfg_path, shop)
    partial = table_count(cfg)
    assert 200 <= partial < 40_000, "the run was not killed mid-way"
    assert partial % 200 == 0  # whole batches only
    proc = import_process(cfg_path, shop, "run")
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err
    assert f"import users: {40_000 - partial} rows" in out
    assert table_count(cfg) == 40_000  # no row twice in the table itself
    assert assert_same(shop, cfg) == 40_000


def test_unlisted_columns_never_leave_the_source(tmp_path: Path, target: Warehouse, shop: ShopDB) -> None:
    shop.create_users()
    shop.fill(1, 500)
    cfg_path = tmp_path / "oceanus.toml"
    cfg_path.write_text(target.toml(shop, deletes="key_diff"))
    cfg = target.config(shop)
    logs = ""
    for _ in range(2):
        proc = import_process(cfg_path, shop, "run")
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        logs += out + err
    assert shop.secret not in logs
    names = relations(cfg)
    assert {"users", "users_latest", "_oceanus_import_state"} <= set(names)
    leaked = [(t, c) for t, c in column_names(cfg) if c in ("email", "password_hash")]
    assert leaked == [], "a secret column reached the warehouse"
    for name in names:
        assert shop.secret not in repr(read(cfg, f"SELECT * FROM {name}")), f"a secret reached {name}"
    if target.kind == "duckdb":
        assert shop.secret.encode() not in Path(cfg.sink.duckdb.path).read_bytes()
    assert_same(shop, cfg)


def test_select_names_only_listed_columns(tmp_path: Path, pg_shop: ShopDB) -> None:
    """A role that may read the listed columns only: a SELECT of anything more fails."""
    pg_shop.create_users()
    pg_shop.fill(1, 50)
    role = f"oc_reader_{pg_shop.schema[3:]}"  # type: ignore[attr-defined]
    pg_shop.execute(f"CREATE ROLE {role} LOGIN")
    try:
        pg_shop.execute(f"GRANT USAGE ON SCHEMA {pg_shop.schema} TO {role}")  # type: ignore[attr-defined]
        pg_shop.execute(f"GRANT SELECT ({', '.join(ALLOWED)}) ON {pg_shop.table} TO {role}")
        cfg = import_config(tmp_path, pg_shop, deletes="key_diff")
        url = pg_shop.url.replace("postgres@", f"{role}@")
        result = run_import(cfg, cfg.imports["users"], env={URL_ENV: url})
        assert (result.rows, result.complete) == (50, True)
        assert_same(pg_shop, cfg)
    finally:
        pg_shop.execute(f"DROP OWNED BY {role}")
        pg_shop.execute(f"DROP ROLE {role}")


def test_unmappable_type_names_the_column(tmp_path: Path, shop: ShopDB) -> None:
    col_type = "interval" if shop.kind == "postgres" else "time"
    shop.execute(f"CREATE TABLE {shop.table} (id bigint PRIMARY KEY, updated_at timestamp NOT NULL, odd {col_type})")
    cfg = import_config(tmp_path, shop, columns=("id", "updated_at", "odd"))
    with pytest.raises(SourceError) as info:
        run_import(cfg, cfg.imports["users"], env={URL_ENV: shop.url})
    assert str(info.value) == (
        f"imports.users.columns: {shop.table}: column `odd` has type {col_type}, which oceanus cannot store "
        "exactly; leave it out of `columns` or expose it through a view with a cast"
    )


def test_numeric_without_precision_is_refused(tmp_path: Path, pg_shop: ShopDB) -> None:
    """PostgreSQL's unconstrained numeric has no exact warehouse type (MySQL's DECIMAL always has one)."""
    pg_shop.execute(f"CREATE TABLE {pg_shop.table} (id bigint PRIMARY KEY, updated_at timestamp NOT NULL, n numeric)")
    cfg = import_config(tmp_path, pg_shop, columns=("id", "updated_at", "n"))
    with pytest.raises(SourceError, match=r"^imports\.users\.columns: .*column `n` is numeric without a precision"):
        run_import(cfg, cfg.imports["users"], env={URL_ENV: pg_shop.url})


def test_binary_needs_allow_binary(tmp_path: Path, target: Warehouse, shop: ShopDB) -> None:
    blob = "bytea" if shop.kind == "postgres" else "blob"
    shop.execute(f"CREATE TABLE {shop.table} (id bigint PRIMARY KEY, updated_at timestamp NOT NULL, data {blob})")
    value = "\\x00ff10" if shop.kind == "postgres" else "0x00FF10"
    quoted = f"'{value}'" if shop.kind == "postgres" else value
    shop.execute(f"INSERT INTO {shop.table} VALUES (1, TIMESTAMP '2026-01-01 00:00:00', {quoted})")
    cfg = target.config(shop, columns=("id", "updated_at", "data"))
    with pytest.raises(SourceError, match=r"imports\.users\.columns: column `data` .*allow_binary = true"):
        run_import(cfg, cfg.imports["users"], env={URL_ENV: shop.url})
    cfg = target.config(shop, columns=("id", "updated_at", "data"), allow_binary=True)
    assert _run(cfg, shop) == (1, 0)
    assert read(cfg, "SELECT data FROM users_latest") == [(b"\x00\xff\x10",)]


def test_nullable_cursor_is_refused(tmp_path: Path, shop: ShopDB) -> None:
    shop.execute(f"CREATE TABLE {shop.table} (id bigint PRIMARY KEY, updated_at timestamp NULL)")
    cfg = import_config(tmp_path, shop, columns=("id", "updated_at"))
    with pytest.raises(SourceError, match=r"imports\.users\.cursor_column: column `updated_at` may be NULL"):
        run_import(cfg, cfg.imports["users"], env={URL_ENV: shop.url})


def test_append_only_table_by_primary_key(target: Warehouse, shop: ShopDB) -> None:
    shop.create_users()
    shop.fill(1, 150)
    cfg = target.config(shop, cursor_column="id")
    assert _run(cfg, shop) == (150, 0)
    shop.fill(151, 30)
    assert _run(cfg, shop) == (30, 0)
    assert assert_same(shop, cfg) == 180
    assert table_count(cfg) == 180


def test_missing_url_env_names_the_key(tmp_path: Path, pg_shop: ShopDB) -> None:
    cfg = import_config(tmp_path, pg_shop)
    from oceanus.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^imports\.users\.source_url_env: the environment variable SHOP_DB_URL"):
        run_import(cfg, cfg.imports["users"], env={})


def test_a_warehouse_held_by_another_process_is_named(tmp_path: Path, pg_shop: ShopDB) -> None:
    """DuckDB allows one writing process per file (the flusher's, usually): the run says so."""
    from oceanus.errors import SinkError

    pg_shop.create_users()
    pg_shop.fill(1, 10)
    cfg = import_config(tmp_path, pg_shop)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys; c = duckdb.connect(sys.argv[1]); print('open', flush=True); sys.stdin.read()",
            cfg.sink.duckdb.path,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "open\n"
        with pytest.raises(SinkError, match=r"^sink\.duckdb\.path: cannot open .*one writing process per file"):
            run_import(cfg, cfg.imports["users"], env={URL_ENV: pg_shop.url})
    finally:
        holder.kill()
        holder.wait()
    assert _run(cfg, pg_shop) == (10, 0)


@pytest.mark.parametrize("scheme", ["postgresql", "mysql"])
def test_an_unreachable_source_never_shows_the_password(tmp_path: Path, pg_shop: ShopDB, scheme: str) -> None:
    from tests.support.servers import free_port

    cfg = import_config(tmp_path, pg_shop)
    password = "pw-" + pg_shop.secret
    url = f"{scheme}://reader:{password}@127.0.0.1:{free_port()}/shop"
    with pytest.raises(SourceError) as info:
        run_import(cfg, cfg.imports["users"], env={URL_ENV: url})
    assert str(info.value).startswith(f"cannot connect to the {'PostgreSQL' if scheme == 'postgresql' else 'MySQL'}")
    assert password not in str(info.value)


#: (column, PostgreSQL type, MySQL type) of the round-trip table; id and updated_at come first.
TYPED_COLUMNS = (
    ("d38", "numeric(38,10)", "decimal(38,10)"),
    ("d12", "numeric(12,2)", "decimal(12,2)"),
    ("i", "bigint", "bigint"),
    ("f", "double precision", "double"),
    ("s", "text", "longtext"),
    ("dt", "date", "date"),
    ("ts", "timestamp(6)", "datetime(6)"),
    ("tz", "timestamptz", "timestamp(6) NULL"),
    ("j", "jsonb", "json"),
    ("b", "boolean", "boolean"),
)
TYPED_ROWS = (
    "(1, TIMESTAMP '2026-01-01 00:00:00', 9999999999999999999999999999.9999999999, -9999999999.99, "
    "9223372036854775807, 0.1, 'quote '' back\\\\slash 日本 🐳', DATE '1000-01-01', "
    "TIMESTAMP '1970-01-01 00:00:00.000001', TIMESTAMP '2030-01-19 03:14:08.123456', "
    """'{"a": [1, 2.5, "ü"], "b": null}', true)""",
    "(2, TIMESTAMP '2026-01-01 00:00:00', -0.0000000001, 0.01, -9223372036854775808, -1.5e300, '', "
    "DATE '9999-12-31', TIMESTAMP '9999-12-31 23:59:59.999999', TIMESTAMP '1999-12-31 23:59:59.5', '[]', false)",
    "(3, TIMESTAMP '2026-01-01 00:00:01', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
)


def _typed(name: str, value: object) -> object:
    """A value as compared: decimals by their text (same digits, same scale), instants in UTC."""
    import datetime as dt
    import json
    from decimal import Decimal

    if value is None:
        return None
    if isinstance(value, Decimal):
        return str(value)
    if name == "tz":
        assert isinstance(value, dt.datetime)
        return (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)
    if name == "j":
        return json.loads(value) if isinstance(value, str | bytes) else value
    if name == "b":
        return bool(value)
    return value


def test_types_round_trip_exactly(target: Warehouse, shop: ShopDB) -> None:
    """Decimals keep every digit and their scale, ints their 64 bits, floats every bit, text its bytes,
    dates and microseconds their range, instants their meaning, JSON its value."""
    i = 1 if shop.kind == "postgres" else 2
    ddl = ", ".join(f"{c[0]} {c[i]}" for c in TYPED_COLUMNS)
    stamp = "timestamp(6)" if shop.kind == "postgres" else "datetime(6)"  # MySQL's TIMESTAMP is an instant
    shop.execute(f"CREATE TABLE {shop.table} (id bigint PRIMARY KEY, updated_at {stamp} NOT NULL, {ddl})")
    shop.execute(f"INSERT INTO {shop.table} VALUES {', '.join(TYPED_ROWS)}")
    names = ("id", "updated_at", *(c[0] for c in TYPED_COLUMNS))
    cfg = target.config(shop, columns=names, batch_rows=2)
    assert _run(cfg, shop) == (3, 0)
    select = f"SELECT {', '.join(names)} FROM {{}} ORDER BY id"
    want = [
        tuple(_typed(n, v) for n, v in zip(names, row, strict=True)) for row in shop.query(select.format(shop.table))
    ]
    got = [
        tuple(_typed(n, v) for n, v in zip(names, row, strict=True)) for row in read(cfg, select.format("users_latest"))
    ]
    assert got == want
    assert want[0][2] == "9999999999999999999999999999.9999999999"
    assert want[1][2] == "-1E-10"


@pytest.mark.parametrize("target", ["postgres", "mysql", "duckdb"], indirect=True)
def test_a_decimal_wider_than_the_warehouse_is_refused_naming_it(target: Warehouse, pg_shop: ShopDB) -> None:
    """numeric(70,5): PostgreSQL stores it to the last digit; DuckDB (38) and MySQL (65) refuse it, naming it."""
    pg_shop.execute(
        f"CREATE TABLE {pg_shop.table} (id bigint PRIMARY KEY, updated_at timestamp NOT NULL, wide numeric(70,5))"
    )
    value = "1" * 65 + ".12345"
    pg_shop.execute(f"INSERT INTO {pg_shop.table} VALUES (1, TIMESTAMP '2026-01-01', {value})")
    cfg = target.config(pg_shop, columns=("id", "updated_at", "wide"))
    if target.kind == "postgres":
        assert _run(cfg, pg_shop) == (1, 0)
        assert [str(v) for (v,) in read(cfg, "SELECT wide FROM users_latest")] == [value]
        return
    server, digits = ("DuckDB", "at most 38 digits") if target.kind == "duckdb" else ("MySQL", "at most 65 digits")
    with pytest.raises(SourceError) as info:
        run_import(cfg, cfg.imports["users"], env={URL_ENV: pg_shop.url})
    assert str(info.value).startswith(
        f"imports.users.columns: column `wide` is numeric(70,5); {server}'s DECIMAL holds {digits}"
    )


def test_the_table_follows_the_allowed_columns_and_a_type_change_is_refused(target: Warehouse, pg_shop: ShopDB) -> None:
    """prepare is idempotent; a newly allowed column is added (NULL in rows imported before it); one left out
    again leaves the view; a column whose source type changed stops the run, naming it."""
    pg_shop.create_users()
    pg_shop.fill(1, 30)
    few = ("id", "updated_at", "occupation")
    more = (*few, "points")
    cfg = target.config(pg_shop, columns=few)
    assert _run(cfg, pg_shop) == (30, 0)
    assert _run(cfg, pg_shop) == (0, 0)
    pg_shop.execute(f"UPDATE {pg_shop.table} SET updated_at = updated_at + INTERVAL '1 day' WHERE id <= 10")
    cfg = target.config(pg_shop, columns=more)
    assert _run(cfg, pg_shop) == (10, 0)
    points = [p for _id, p in read(cfg, "SELECT id, points FROM users_latest ORDER BY id")]
    assert [p is None for p in points] == [False] * 10 + [True] * 20
    cfg = target.config(pg_shop, columns=few)
    assert _run(cfg, pg_shop) == (0, 0)
    assert sorted(c for t, c in column_names(cfg) if t == "users_latest") == sorted((*few, "_imported_at"))
    assert_same(pg_shop, cfg, columns=few)
    pg_shop.execute(f"ALTER TABLE {pg_shop.table} ALTER COLUMN points TYPE numeric(14,3)")
    cfg = target.config(pg_shop, columns=more)
    with pytest.raises(SourceError, match=r"^imports\.users\.columns: column `points`: the table \S*users stores "):
        run_import(cfg, cfg.imports["users"], env={URL_ENV: pg_shop.url})


@pytest.mark.parametrize("target", ["postgres", "mysql"], indirect=True)
def test_an_import_name_is_refused_past_the_servers_name_length(target: Warehouse, pg_shop: ShopDB) -> None:
    """``<name>_latest`` at the server's limit (PostgreSQL 63 bytes, which it would cut silently; MySQL 64)
    is made whole; one character more is refused before anything is written, naming the import."""
    from oceanus import config
    from oceanus.errors import ConfigError

    pg_shop.create_users()
    pg_shop.fill(1, 5)
    limit = 63 if target.kind == "postgres" else 64
    for length, ok in ((limit - len("_latest"), True), (limit - len("_latest") + 1, False)):
        name = "u" * length
        cfg = config.loads(
            target.toml(pg_shop, columns=("id", "updated_at")).replace("[imports.users]", f"[imports.{name}]")
        )
        if ok:
            result = run_import(cfg, cfg.imports[name], env={URL_ENV: pg_shop.url})
            assert result.rows == 5
            assert read(cfg, f"SELECT count(*) FROM {name}_latest") == [(5,)]
            continue
        with pytest.raises(ConfigError) as info:
            run_import(cfg, cfg.imports[name], env={URL_ENV: pg_shop.url})
        server = "PostgreSQL" if target.kind == "postgres" else "MySQL"
        assert str(info.value) == (
            f"imports.{name}: {server} names are at most {limit} characters and the view {name}_latest would be "
            "longer; shorten the import's name"
        )
        assert name not in {n.lower() for n in relations(cfg)}


@pytest.mark.parametrize("target", ["postgres"], indirect=True)
def test_a_role_limited_to_its_schema_can_import(
    target: Warehouse, pg_shop: ShopDB, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The warehouse role may create tables in the sink's schema but not schemas in the database."""
    assert target.sql is not None
    schema = target.sql.name
    role = f"oc_writer_{schema[3:]}"
    pg_shop.create_users()
    pg_shop.fill(1, 20)
    target.sql.execute(f"CREATE SCHEMA {schema}")
    target.sql.execute(f"CREATE ROLE {role} LOGIN")
    try:
        target.sql.execute(f"GRANT USAGE, CREATE ON SCHEMA {schema} TO {role}")
        monkeypatch.setenv("OCEANUS_PG_URL", target.sql.url().replace("postgres@", f"{role}@"))
        cfg = target.config(pg_shop)
        assert _run(cfg, pg_shop) == (20, 0)
        assert_same(pg_shop, cfg)
    finally:
        target.sql.execute(f"DROP OWNED BY {role}")
        target.sql.execute(f"DROP ROLE {role}")

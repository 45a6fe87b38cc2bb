"""``oceanus report``: every shipped report run on hand-built shop data, against results computed by hand.

The same rows go into DuckDB (the file read-only, and through a running flusher's
/query) and into the BigQuery emulator; ``ecview`` and its ``_dedup`` view are
made by the sinks from the repo's oceanus.toml, the ``*_latest`` views stand in
as plain tables (what the importer's views show).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

from flusher.runner import Flusher, _write_discovery
from flusher.sinks.duckdb import DuckDBSink
from oceanus import cli, config, discovery
from oceanus.commands import devstate, report
from oceanus.commands.query import QueryError
from tests.flusher.helpers import make_config_text
from tests.flusher.test_runner import run_flusher
from tests.support.servers import BigQueryEmulator, RedisServer

REPO = Path(__file__).resolve().parents[2]

# --------------------------------------------------------------------------- the shop, by hand

#: users_latest: id, age, gender, occupation. User 4's record lacks age and occupation.
USERS = [
    (1, 25, "female", "engineer"),
    (2, 34, "male", "teacher"),
    (3, 19, "female", "engineer"),
    (4, None, "male", ""),
]
ITEMS = [(10, "pen", 120), (11, "notebook", 300), (12, "eraser", 80)]
#: orders_latest: id, user_id, total_price, status, ordered_at (UTC).
ORDERS = [
    (100, 1, 120, "paid", "2026-12-03 12:00:00"),  # u1 item 10, 2 days after the view: converted
    (101, 2, 120, "paid", "2026-12-10 10:00:01"),  # u2 item 10, 7 days + 1 s after: not within 7 days
    (102, 3, 300, "cancelled", "2026-12-02 00:00:00"),  # u3 item 11, cancelled: neither converted nor bought
    (103, 1, 300, "paid", "2026-11-30 00:00:00"),  # u1 item 11, before the view: bought, not converted
    (104, 2, 80, "shipped", "2026-12-04 10:00:00"),  # u2 item 12, exactly 7 days after: converted
]
#: order_items_latest: id, order_id, item_id, quantity, price.
ORDER_ITEMS = [
    (1000, 100, 10, 1, 120),
    (1001, 101, 10, 1, 120),
    (1002, 102, 11, 1, 300),
    (1003, 103, 11, 1, 300),
    (1004, 104, 12, 1, 80),
]
#: ecview rows: user_id, age, occupation, screen, viewed_at, received_at.
VIEWS = [
    ("1", 40, "student", "/items/10", "2026-12-01 10:00:00", "2026-12-01 10:00:01"),  # the member record wins
    ("1", 40, "student", "/items/10", "2026-12-02 10:00:00", "2026-12-02 10:00:01"),
    ("2", 34, "teacher", "/items/10", "2026-12-03 10:00:00", "2026-12-03 10:00:01"),
    ("3", 19, "engineer", "/items/11", "2026-12-01 09:00:00", "2026-12-01 09:00:01"),
    ("1", 25, "engineer", "/items/11", "2026-12-01 11:00:00", "2026-12-01 11:00:01"),
    ("2", 34, "teacher", "/items/12", None, "2026-11-27 10:00:00"),  # no client time
    ("9", 45, "designer", "/items/12", "2026-12-01 08:00:00", "2026-12-01 08:00:01"),  # not a member
    ("4", 62, "sales", "/cart", "2026-12-01 12:00:00", "2026-12-01 12:00:01"),  # the event fills the gaps
    ("9", None, None, "/items/", "2026-12-01 13:00:00", "2026-12-01 13:00:01"),  # no item id, no age
    ("3", 19, "engineer", "/items/12", "2026-12-05 00:00:00", "2026-12-05 00:00:01"),
]

EXPECTED: dict[str, tuple[list[str], list[list[Any]]]] = {
    "views_by_occupation_age": (
        ["occupation", "age_band", "views", "viewers"],
        [
            ["designer", "40-49", 1, 1],
            ["engineer", "0-19", 2, 1],
            ["engineer", "20-29", 3, 1],
            ["sales", "60+", 1, 1],
            ["teacher", "30-39", 2, 1],
            ["unknown", "unknown", 1, 1],
        ],
    ),
    "item_conversion_7d": (
        ["item_id", "name", "viewers", "buyers_7d", "conversion"],
        [[10, "pen", 2, 1, 0.5], [12, "eraser", 3, 1, 0.3333], [11, "notebook", 2, 0, 0.0]],
    ),
    "viewed_not_bought": (
        ["item_id", "name", "views", "viewers", "not_bought"],
        [[12, "eraser", 3, 3, 2], [11, "notebook", 2, 2, 1]],
    ),
}


def test_every_report_has_an_expected_result_and_every_dialect() -> None:
    reports = report.available()
    assert set(reports) == set(EXPECTED)
    for name, dialects in reports.items():
        assert set(dialects) == set(report.DIALECTS), name
        headers = {d: sql.split("\nWITH")[0] for d, sql in dialects.items()}
        # One header comment, shared by the dialects, opening with the report's name.
        assert len(set(headers.values())) == 1, name
        assert headers["duckdb"].startswith(f"-- {name}: "), name


def _lit(value: Any, kind: str) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, int):
        return str(value)
    text = "'" + str(value).replace("'", "''") + "'"
    return f"{kind} {text}" if kind else text


def _values(rows: list[tuple[Any, ...]], kinds: tuple[str, ...]) -> str:
    return ", ".join("(" + ", ".join(_lit(v, k) for v, k in zip(row, kinds, strict=True)) + ")" for row in rows)


def shop_statements(dialect: str, prefix: str = "") -> list[str]:
    """DDL and inserts of the shop tables and the ecview rows (ecview itself comes from the sink)."""
    big, text, dtm = ("INT64", "STRING", "DATETIME") if dialect == "bigquery" else ("BIGINT", "VARCHAR", "TIMESTAMP")
    eid = [uuid.UUID(int=i + 1).hex for i in range(len(VIEWS))]
    ecview = [
        (eid[i], user, age, occ, screen, seen, received)
        for i, (user, age, occ, screen, seen, received) in enumerate(VIEWS)
    ]
    return [
        f"CREATE TABLE {prefix}users_latest (id {big}, age {big}, gender {text}, occupation {text})",
        f"INSERT INTO {prefix}users_latest VALUES {_values(USERS, ('', '', '', ''))}",
        f"CREATE TABLE {prefix}items_latest (id {big}, name {text}, price {big})",
        f"INSERT INTO {prefix}items_latest VALUES {_values(ITEMS, ('', '', ''))}",
        f"CREATE TABLE {prefix}orders_latest (id {big}, user_id {big}, total_price {big}, status {text}, "
        f"ordered_at {dtm})",
        f"INSERT INTO {prefix}orders_latest VALUES {_values(ORDERS, ('', '', '', '', dtm))}",
        f"CREATE TABLE {prefix}order_items_latest (id {big}, order_id {big}, item_id {big}, quantity {big}, "
        f"price {big})",
        f"INSERT INTO {prefix}order_items_latest VALUES {_values(ORDER_ITEMS, ('', '', '', '', ''))}",
        f"INSERT INTO {prefix}ecview (event_id, user_id, age, occupation, screen, viewed_at, received_at) VALUES "
        + _values(ecview, ("", "", "", "", "", "TIMESTAMP", "TIMESTAMP")),
    ]


def _shop_config(path: Path) -> config.Config:
    return config.load(REPO / "oceanus.toml", env={"OCEANUS_SINK_DUCKDB_PATH": str(path)})


@pytest.fixture
def warehouse(tmp_path: Path) -> Path:
    path = tmp_path / devstate.WAREHOUSE_FILE
    cfg = _shop_config(path)
    sink = DuckDBSink(cfg)
    try:
        sink.ensure_tables([cfg.streams["ecview"]])
    finally:
        sink.close()
    con = duckdb.connect(str(path))
    try:
        for sql in shop_statements("duckdb"):
            con.execute(sql)
    finally:
        con.close()
    return path


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_report_on_duckdb(warehouse: Path, name: str) -> None:
    result = report.run_report(_shop_config(warehouse), name, warehouse.parent)
    assert (result.columns, result.rows) == EXPECTED[name]


# --------------------------------------------------------------------------- PostgreSQL, the machine's server


@pytest.fixture
def pg_warehouse(monkeypatch: pytest.MonkeyPatch) -> Iterator[config.Config]:
    """The PostgreSQL sink's ecview table and _dedup view in a schema of this test, with the shop beside it."""
    import psycopg

    from flusher.sinks.postgres import PostgresSink
    from tests.support.sqlwarehouse import warehouse

    try:
        ctx = warehouse("postgres")
        wh = ctx.__enter__()
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL is not reachable ({exc})")
    try:
        for key, value in wh.env().items():
            monkeypatch.setenv(key, value)
        cfg = wh.configure(config.load(REPO / "oceanus.toml", env={}))
        sink = PostgresSink(cfg)
        try:
            sink.ensure_tables([cfg.streams["ecview"]])
        finally:
            sink.close()
        wh.execute("SET TimeZone = 'UTC'")
        # The sink makes day partitions as batches need them; these hand-written rows go to a default one.
        wh.execute("CREATE TABLE {s}.ecview_rest PARTITION OF {s}.ecview DEFAULT")
        for sql in shop_statements("postgres", prefix="{s}."):
            wh.execute(sql)
        yield cfg
    finally:
        ctx.__exit__(None, None, None)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_report_on_postgres(pg_warehouse: config.Config, name: str) -> None:
    result = report.run_report(pg_warehouse, name, Path("/nonexistent"))
    assert (result.columns, result.rows) == EXPECTED[name]


def test_report_command_json_and_csv(
    warehouse: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OCEANUS_SINK_DUCKDB_PATH", str(warehouse))
    args = [
        "report",
        "viewed_not_bought",
        "--config",
        str(REPO / "oceanus.toml"),
        "--data-dir",
        str(warehouse.parent / "no-dev"),
    ]
    assert cli.main([*args, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == [
        {"item_id": 12, "name": "eraser", "views": 3, "viewers": 3, "not_bought": 2},
        {"item_id": 11, "name": "notebook", "views": 2, "viewers": 2, "not_bought": 1},
    ]
    assert cli.main([*args, "--format", "csv"]) == 0
    assert capsys.readouterr().out == "item_id,name,views,viewers,not_bought\n12,eraser,3,3,2\n11,notebook,2,2,1\n"


def test_report_list_and_sql(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["report"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in lines] == sorted(EXPECTED)
    assert lines[1].split(None, 1)[1] == "the items most viewed by members who never bought them."
    assert cli.main(["report", "item_conversion_7d", "--sql", "--dialect", "postgres"]) == 0
    assert "INTERVAL '7 days'" in capsys.readouterr().out
    assert cli.main(["report", "item_conversion_7d", "--sql", "--dialect", "mysql"]) == 0
    assert "INTERVAL 7 DAY" in capsys.readouterr().out


def test_unknown_report_names_the_reports(warehouse: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["report", "nope", "--sql", "--dialect", "duckdb"]) == 2
    assert "no report named 'nope'; the reports: item_conversion_7d, viewed_not_bought" in capsys.readouterr().err


def test_report_through_a_running_flusher(
    warehouse: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a flusher holds the file, the report goes through its /query with the dev token."""
    monkeypatch.delenv("OCEANUS_QUERY_TOKEN", raising=False)
    data_dir = warehouse.parent
    token_file = devstate.write_query_token(data_dir)
    cfg = config.loads(
        make_config_text(redis_server.url, warehouse, query_token_file=str(token_file)),
        env={"OCEANUS_FLUSHER_QUERY_ENABLED": "true"},
    )
    results: list[Any] = []

    def check() -> None:
        results.append(report.run_report(_shop_config(warehouse), "item_conversion_7d", data_dir))
        # The answer came from the flusher: without the token it refuses, and there is no fallback.
        token_file.unlink()
        with pytest.raises(QueryError, match="token"):
            report.run_report(_shop_config(warehouse), "item_conversion_7d", data_dir)

    async def body(f: Flusher) -> None:
        assert f.admin is not None
        _write_discovery(discovery.flusher_file(warehouse), f.admin.url)
        await asyncio.get_running_loop().run_in_executor(None, check)

    run_flusher(cfg, DuckDBSink(cfg), body)
    (result,) = results
    assert (result.columns, result.rows) == EXPECTED["item_conversion_7d"]


# --------------------------------------------------------------------------- SQL sinks, the shop imported


@pytest.fixture(params=["postgres", "mysql"])
def imported_shop(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[config.Config]:
    """The shop in a SQLite file (``oceanus demo --shop``'s tables, a personal column included), copied by
    ``oceanus import`` with the repo's ``[imports]`` into the sink's schema (PostgreSQL) or database
    (MariaDB), beside the sink's ecview table and its rows."""
    import sqlite3

    from flusher.sinks import make_sink
    from importer.runner import run_import
    from oceanus.commands.demoshop import SCHEMA
    from tests.support.sqlwarehouse import warehouse

    shop = tmp_path / "shop.db"
    con = sqlite3.connect(shop)
    try:
        for statement in SCHEMA:
            con.execute(statement)
        con.executemany("INSERT INTO users VALUES (?, ?, ?, ?, ?)", [(*u, f"member{u[0]}@example.com") for u in USERS])
        con.executemany("INSERT INTO items (id, name, price) VALUES (?, ?, ?)", ITEMS)
        con.executemany("INSERT INTO orders VALUES (?, ?, ?, ?, ?)", ORDERS)
        con.executemany("INSERT INTO order_items VALUES (?, ?, ?, ?, ?)", ORDER_ITEMS)
        con.commit()
    finally:
        con.close()
    with warehouse(request.param) as wh:
        for key, value in wh.env().items():
            monkeypatch.setenv(key, value)
        cfg = wh.configure(config.load(REPO / "oceanus.toml", env={}))
        sink = make_sink(cfg)
        try:
            sink.ensure_tables([cfg.streams["ecview"]])
        finally:
            sink.close()
        if wh.kind == "postgres":
            wh.execute("SET TimeZone = 'UTC'")
            wh.execute("CREATE TABLE {s}.ecview_rest PARTITION OF {s}.ecview DEFAULT")
        wh.execute(shop_statements(wh.kind, prefix="{s}.")[-1])  # the ecview rows
        for imp in cfg.imports.values():
            result = run_import(cfg, imp, env={imp.source_url_env: f"sqlite://{shop}"})
            assert (imp.name, result.complete) == (imp.name, True)
        assert wh.rows("SELECT count(*) FROM {s}.orders_latest") == [(len(ORDERS),)]
        yield cfg


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_report_on_a_sql_sink_with_the_shop_imported(imported_shop: config.Config, name: str) -> None:
    result = report.run_report(imported_shop, name, Path("/nonexistent"))
    assert (result.columns, result.rows) == EXPECTED[name]


# --------------------------------------------------------------------------- BigQuery, through the emulator


@pytest.fixture(scope="module")
def bq_shop(bq_emulator: BigQueryEmulator) -> Callable[[str], Any]:
    from google.cloud import bigquery

    from flusher.sinks.bigquery import BigQuerySink

    dataset = f"rep_{uuid.uuid4().hex[:10]}"
    cfg = config.load(
        REPO / "oceanus.toml",
        env={
            "OCEANUS_SINK_KIND": "bigquery",
            "OCEANUS_SINK_BIGQUERY_PROJECT": bq_emulator.project,
            "OCEANUS_SINK_BIGQUERY_DATASET": dataset,
            "OCEANUS_SINK_BIGQUERY_API_ENDPOINT": bq_emulator.rest_url,
            "OCEANUS_SINK_BIGQUERY_RETRY_DEADLINE_S": "5",
        },
    )
    client = bq_emulator.client()
    retry = bigquery.DEFAULT_RETRY.with_deadline(5)
    client.create_dataset(f"{bq_emulator.project}.{dataset}", retry=retry)
    sink = BigQuerySink(cfg)
    try:
        sink.ensure_tables([cfg.streams["ecview"]])
    finally:
        sink.close()
    for sql in shop_statements("bigquery", prefix=f"`{bq_emulator.project}.{dataset}`."):
        client.query(sql, retry=retry).result()
    client.close()
    return lambda name: report.run_report(cfg, name, Path("/nonexistent"))


@pytest.mark.timeout(180)
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_report_on_bigquery_emulator(bq_shop: Callable[[str], Any], name: str) -> None:
    try:
        result = bq_shop(name)
    except QueryError as exc:
        pytest.fail(f"{name}: {exc}")
    assert (result.columns, result.rows) == EXPECTED[name]

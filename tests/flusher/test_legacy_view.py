"""``streams.<s>.legacy_view``: ``oceanus tables sync`` makes a view in the 2016 table layout, and a
query written for the 2016 tables runs on it (renamed table only) and returns what the 2016 table held."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from pathlib import Path

import duckdb
import pytest

from flusher.sinks.duckdb import DuckDBSink
from oceanus import cli, config
from oceanus.errors import ConfigError
from tests.support.servers import BigQueryEmulator

REPO = Path(__file__).resolve().parents[2]

#: A query in the 2016 style: the 2016 tables' names and string columns, `dt` compared as text.
QUERY_2016 = (
    "SELECT dt, sid, evt, oid, url, tit, rad, dev, ua, jsn FROM bizocean "
    "WHERE sid = 'a1b2c3' AND dt >= '2026-12-01' AND evt IN ('pageview', 'search_not_found') ORDER BY dt"
)
#: Three page views: (received_at, evt, jsn); one on a whole second.
EVENTS = [
    (dt.datetime(2026, 12, 1, 0, 15, 0, 123456), "pageview", None),
    (dt.datetime(2026, 12, 1, 0, 15, 1), "search_not_found", '{"kwd": "invoice"}'),
    (dt.datetime(2026, 11, 30, 23, 59, 59, 999999), "pageview", None),  # before the day the query asks for
]


def expected_2016(jsn_text: dict[str | None, str | None]) -> list[tuple[str | None, ...]]:
    """The rows the 2016 table held: every value the string r2bq wrote, ``dt`` = ``str(datetime.utcnow())``."""
    rows: list[tuple[str | None, ...]] = []
    for at, evt, jsn in EVENTS:
        if str(at) >= "2026-12-01":
            rows.append(
                (
                    str(at),
                    "a1b2c3",
                    evt,
                    "2",
                    "https://www.bizocean.jp/doc/",
                    "Docs",
                    "198.51.100.7",
                    "pc",
                    "Mozilla/5.0",
                    jsn_text[jsn],
                )
            )
    return rows


def _config_text() -> str:
    text = (REPO / "oceanus.toml").read_text()
    text = text.replace("[streams.pageview]\n", '[streams.pageview]\nlegacy_view = "bizocean"\n', 1)
    text = text.replace("[streams.form]\n", '[streams.form]\nlegacy_view = "form_2016"\n', 1)
    return text.replace("[streams.ecview]\n", '[streams.ecview]\nlegacy_view = "ecview_strings"\n', 1)


def _insert_sql(table: str, ts: str) -> list[str]:
    pv = ", ".join(
        f"('{uuid.UUID(int=i + 1).hex}', {ts} '{at}', '198.51.100.7', 'Mozilla/5.0', 'pc', 'a1b2c3', '{evt}', "
        f"'2', 'https://www.bizocean.jp/doc/', 'Docs', {'NULL' if jsn is None else repr(jsn)})"
        for i, (at, evt, jsn) in enumerate(EVENTS)
    )
    return [
        f"INSERT INTO {table}pageview (event_id, received_at, ip, ua, device, sid, evt, oid, url, tit, jsn) "
        f"VALUES {pv}",
    ]


def test_duckdb_view_answers_a_2016_query(tmp_path: Path) -> None:
    path = tmp_path / "w.duckdb"
    cfg = config.loads(_config_text(), env={"OCEANUS_SINK_DUCKDB_PATH": str(path)})
    sink = DuckDBSink(cfg)
    try:
        changes = sink.ensure_tables(list(cfg.streams.values()))
    finally:
        sink.close()
    assert "duckdb: (re)created view bizocean (the 2016 layout of pageview)" in changes
    con = duckdb.connect(str(path))
    try:
        con.execute(_insert_sql("", "TIMESTAMP")[0])
        con.execute(
            "INSERT INTO form (event_id, received_at, ip, ua, device, sid, name, extra) VALUES "
            "('f1', TIMESTAMP '2026-12-02 03:04:05.5', '203.0.113.9', 'ua', 'mobile', 'ff', 'Ada', "
            '\'{"uid": "u-1", "oid": "7", "other": 1}\')'
        )
        con.execute(
            "INSERT INTO ecview (event_id, received_at, user_id, age, viewed_at) VALUES "
            "('e1', TIMESTAMP '2026-12-02 00:00:00', '42', 34, TIMESTAMP '2026-12-01 00:15:00.25')"
        )
        assert con.execute(QUERY_2016).fetchall() == expected_2016(
            {None: None, '{"kwd": "invoice"}': '{"kwd": "invoice"}'}
        )
        # Every column is a string, as in 2016.
        types = {
            r[1]
            for r in con.execute(
                "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'bizocean'"
            ).fetchall()
        }
        assert types == {"VARCHAR"}
        cols = [r[0] for r in con.execute("DESCRIBE bizocean").fetchall()]
        assert cols == [
            "dt",
            "sid",
            "evt",
            "uid",
            "oid",
            "url",
            "ref",
            "tit",
            "jsn",
            "scr",
            "vie",
            "enc",
            "rad",
            "ua",
            "dev",
        ]
        # The form's 2016 columns kept in extra are columns again; an int and a timestamp field are strings.
        assert con.execute("SELECT dt, sid, name, rad, dev, uid, oid, url, enc FROM form_2016").fetchall() == [
            ("2026-12-02 03:04:05.500000", "ff", "Ada", "203.0.113.9", "mobile", "u-1", "7", None, None)
        ]
        assert con.execute("SELECT user_id, age, viewed_at FROM ecview_strings").fetchall() == [
            ("42", "34", "2026-12-01 00:15:00.250000")
        ]
    finally:
        con.close()


def test_tables_sync_prints_the_view_once_and_again_when_a_field_is_added(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg_path = tmp_path / "oceanus.toml"
    cfg_path.write_text(_config_text())
    monkeypatch.setenv("OCEANUS_SINK_DUCKDB_PATH", str(tmp_path / "w.duckdb"))
    assert cli.main(["tables", "sync", "--config", str(cfg_path)]) == 0
    assert "duckdb: (re)created view bizocean (the 2016 layout of pageview)" in capsys.readouterr().out
    assert cli.main(["tables", "sync", "--config", str(cfg_path)]) == 0
    assert "bizocean" not in capsys.readouterr().out
    cfg_path.write_text(
        _config_text().replace(
            'enc = { type = "string", max_length = 16, description = "page encoding" }',
            'enc = { type = "string", max_length = 16, description = "page encoding" }\nlang = { type = "string" }',
            1,
        )
    )
    assert cli.main(["tables", "sync", "--config", str(cfg_path)]) == 0
    assert "duckdb: (re)created view bizocean (the 2016 layout of pageview)" in capsys.readouterr().out
    con = duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True)
    try:
        assert [r[0] for r in con.execute("DESCRIBE bizocean").fetchall()][-4:] == ["lang", "rad", "ua", "dev"]
    finally:
        con.close()


def test_a_legacy_view_may_not_take_a_table_name() -> None:
    text = _config_text().replace('legacy_view = "bizocean"', 'legacy_view = "form"')
    with pytest.raises(ConfigError, match=r"^streams\.pageview\.legacy_view: form is the name of streams\.form$"):
        config.loads(text)
    text = _config_text().replace('legacy_view = "form_2016"', 'legacy_view = "bizocean"')
    with pytest.raises(
        ConfigError,
        match=r"^streams\.form\.legacy_view: bizocean is the name of "
        r"streams\.pageview\.legacy_view$",
    ):
        config.loads(text)


@pytest.mark.timeout(180)
def test_bigquery_view_answers_a_2016_query(bq_emulator: BigQueryEmulator) -> None:
    from google.cloud import bigquery

    from flusher.sinks.bigquery import BigQuerySink

    dataset = f"leg_{uuid.uuid4().hex[:10]}"
    cfg = config.loads(
        _config_text(),
        env={
            "OCEANUS_SINK_KIND": "bigquery",
            "OCEANUS_SINK_BIGQUERY_PROJECT": bq_emulator.project,
            "OCEANUS_SINK_BIGQUERY_DATASET": dataset,
            "OCEANUS_SINK_BIGQUERY_API_ENDPOINT": bq_emulator.rest_url,
            "OCEANUS_SINK_BIGQUERY_RETRY_DEADLINE_S": "5",
        },
    )
    sink = BigQuerySink(cfg)
    try:
        changes = sink.ensure_tables([cfg.streams["pageview"]])
    finally:
        sink.close()
    assert f"created view {bq_emulator.project}.{dataset}.bizocean" in changes
    client = bq_emulator.client()
    retry = bigquery.DEFAULT_RETRY.with_deadline(5)
    try:
        prefix = f"`{bq_emulator.project}.{dataset}`."
        for sql in _insert_sql(prefix, "TIMESTAMP"):
            client.query(sql.replace('\'{"kwd": "invoice"}\'', 'JSON \'{"kwd": "invoice"}\''), retry=retry).result()
        job = client.query(
            QUERY_2016,
            retry=retry,
            job_config=bigquery.QueryJobConfig(default_dataset=f"{bq_emulator.project}.{dataset}"),
        )
        got = [tuple(r.values()) for r in job.result()]
    finally:
        client.close()
    # BigQuery's JSON keeps the value, not the spacing (docs/MIGRATION.md).
    assert got == expected_2016(
        {None: None, '{"kwd": "invoice"}': json.dumps({"kwd": "invoice"}, separators=(",", ":"))}
    )

"""``[imports.NAME]``: every mistake is refused at start-up with the key's path."""

from __future__ import annotations

import pytest

from oceanus import config
from oceanus.errors import ConfigError

BASE = '[streams.pageview.fields]\nurl = { type = "string" }\n'
GOOD = {
    "source_url_env": '"SHOP_DB_URL"',
    "table": '"shop.users"',
    "columns": '["id", "age", "updated_at", "deleted_at"]',
    "primary_key": '"id"',
    "cursor_column": '"updated_at"',
}


def _load(name: str = "users", **keys: str | None) -> config.Config:
    body = {**GOOD, **keys}
    lines = "\n".join(f"{k} = {v}" for k, v in body.items() if v is not None)
    return config.loads(f"{BASE}[imports.{name}]\n{lines}\n")


def test_a_good_import_decodes_with_its_defaults() -> None:
    imp = _load().imports["users"]
    assert (imp.name, imp.table, imp.columns, imp.mode, imp.deletes, imp.every_s, imp.batch_rows) == (
        "users",
        "shop.users",
        ("id", "age", "updated_at", "deleted_at"),
        "incremental",
        "none",
        3600.0,
        10_000,
    )
    assert config.loads(BASE).imports == {}


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"primary_key": '"uid"'}, "imports.users: `primary_key` `uid` is not in `columns`"),
        ({"cursor_column": None}, 'imports.users: `cursor_column` is required when `mode = "incremental"`'),
        ({"cursor_column": '"ts"'}, "imports.users: `cursor_column` `ts` is not in `columns`"),
        ({"deletes": '"soft"'}, 'imports.users: `soft_delete_column` is required when `deletes = "soft"`'),
        (
            {"deletes": '"soft"', "soft_delete_column": '"gone"'},
            "imports.users: `soft_delete_column` `gone` is not in `columns`",
        ),
        (
            {"soft_delete_column": '"deleted_at"'},
            'imports.users: `soft_delete_column` applies to `deletes = "soft"` only',
        ),
        (
            {"mode": '"full"', "deletes": '"key_diff"'},
            'imports.users: `deletes = "key_diff"` applies to `mode = "incremental"`: a full reload drops gone rows',
        ),
        ({"columns": '["id", "id"]', "cursor_column": '"id"'}, "imports.users: `columns` lists a column twice"),
        (
            {"columns": '["id", "_deleted"]', "cursor_column": '"id"'},
            "imports.users: `columns`: `_deleted` is a column oceanus adds itself",
        ),
        ({"columns": "[]"}, "imports.users.columns: Expected `array` of length >= 1"),
        ({"columns": '["id", "a b"]'}, "imports.users.columns[1]: Expected `str` matching regex"),
        ({"table": '"users; drop"'}, "imports.users.table: Expected `str` matching regex"),
        ({"source_url_env": '"postgresql://u:pw@h/db"'}, "imports.users.source_url_env: Expected `str` matching"),
        ({"source_url": '"postgresql://u:pw@h/db"'}, "imports.users: Object contains unknown field `source_url`"),
        ({"every_s": "0"}, "imports.users.every_s: Expected `float` > 0.0"),
        ({"batch_rows": "0"}, "imports.users.batch_rows: Expected `int` >= 1"),
    ],
)
def test_mistakes_name_the_key(keys: dict[str, str | None], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        _load("users", **keys)
    assert str(info.value).startswith(message), str(info.value)


def test_names_that_clash_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"^imports\.pageview: a stream has that table name"):
        _load("pageview")
    with pytest.raises(ConfigError, match=r"^imports\.users_latest: the name is kept"):
        _load("users_latest")
    with pytest.raises(ConfigError, match=r"^imports\.Users: import names are lowercase"):
        _load("Users")


def test_the_readme_example_decodes() -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Business data next to events", 1)[1]
    example = section.split("```toml\n", 1)[1].split("```", 1)[0]
    imports = config.loads(BASE + example).imports
    assert list(imports) == ["users", "items"]
    assert (imports["users"].deletes, imports["items"].mode) == ("key_diff", "full")


@pytest.mark.parametrize(
    ("sink", "place"),
    [
        ('[sink.duckdb]\npath = "wh.duckdb"\n', "users, users_latest in wh.duckdb (the flusher runs it; "),
        (
            '[sink]\nkind = "postgres"\n[sink.postgres]\nschema = "shop"\n',
            "users, users_latest in PostgreSQL schema shop ($OCEANUS_PG_URL) (`oceanus import serve` runs it)",
        ),
        (
            '[sink]\nkind = "mysql"\n',
            "users, users_latest in the MySQL database of $OCEANUS_MYSQL_URL (`oceanus import serve` runs it)",
        ),
    ],
)
def test_check_config_names_where_each_import_goes(sink: str, place: str) -> None:
    from oceanus.commands.checkconfig import describe

    lines = "\n".join(f"{k} = {v}" for k, v in GOOD.items())
    cfg = config.loads(f"{sink}{BASE}[imports.users]\n{lines}\n")
    (line,) = [ln for ln in describe(cfg).splitlines() if ln.startswith("import ")]
    assert line.startswith(f"import users: shop.users (4 columns, incremental) -> {place}")

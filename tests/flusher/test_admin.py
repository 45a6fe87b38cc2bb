"""The flusher's admin server: /query off by default, behind a token, locked down, timed out, on its own thread.

Every test runs the real flusher (real redis-server, real DuckDB file) and talks
HTTP to its admin port.
"""

from __future__ import annotations

import asyncio
import json
import stat
import threading
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from flusher.admin import MAX_QUERIES_IN_FLIGHT, MIN_TOKEN_CHARS, QUERY_TOKEN_ENV, load_query_token
from flusher.runner import Flusher
from flusher.sinks.duckdb import DuckDBSink
from oceanus import config
from oceanus.buffer import Keys
from oceanus.commands import devstate
from oceanus.config import Config, FlusherConfig
from oceanus.errors import ConfigError
from tests.flusher.helpers import make_config, make_config_text, push_frames
from tests.flusher.test_runner import run_flusher, until
from tests.support.servers import RedisServer

TOKEN = "t0ken-for-the-admin-tests-0123456789"
#: A cross join of 10^10 rows: minutes of work, so only an interrupt ends it early.
SLOW_SQL = b"SELECT sum(a.range * b.range) FROM range(100000) AS a, range(100000) AS b"


def _http(
    url: str, data: bytes | None = None, token: str | None = None, timeout: float = 30
) -> tuple[int, dict[str, str], bytes]:
    headers = {"authorization": f"Bearer {token}"} if token is not None else {}
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def _error(body: bytes) -> str:
    message = json.loads(body)["error"]
    assert isinstance(message, str)
    return message


def _query_cfg(server: RedisServer, tmp_path: Path, **flusher: Any) -> Config:
    token_file = tmp_path / "query.token"
    token_file.write_text(TOKEN + "\n")
    text = make_config_text(server.url, tmp_path / "w.duckdb", query_token_file=str(token_file), **flusher)
    return config.loads(text, env={"OCEANUS_FLUSHER_QUERY_ENABLED": "true"})


async def _call(url: str, data: bytes | None = None, token: str | None = None) -> tuple[int, dict[str, str], bytes]:
    return await asyncio.get_running_loop().run_in_executor(None, _http, url, data, token)


def test_query_is_off_by_default_and_probes_stay_public(redis_server: RedisServer, tmp_path: Path) -> None:
    cfg = make_config(redis_server.url, tmp_path / "w.duckdb")
    assert cfg.flusher.query_enabled is False

    async def body(f: Flusher) -> None:
        assert f.admin is not None
        url = f.admin.url
        status, _, answer = await _call(url + "/query", b"SELECT 1", TOKEN)
        assert status == 404
        assert "flusher.query_enabled" in _error(answer)
        assert (await _call(url + "/healthz"))[0] == 200
        assert (await _call(url + "/readyz"))[0] == 200
        assert (await _call(url + "/metrics"))[0] == 200

    run_flusher(cfg, DuckDBSink(cfg), body)


def test_query_needs_the_bearer_token(redis_server: RedisServer, tmp_path: Path) -> None:
    cfg = _query_cfg(redis_server, tmp_path)

    async def body(f: Flusher) -> None:
        assert f.admin is not None
        url = f.admin.url
        for token in (None, "", TOKEN[:-1], TOKEN + "x", TOKEN.upper()):
            status, headers, answer = await _call(url + "/query", b"SELECT 1", token)
            assert status == 401, token
            assert "Authorization: Bearer" in _error(answer)
            assert headers["www-authenticate"].startswith("Bearer")
        status, _, answer = await _call(url + "/query", b"SELECT 41 + 1 AS n", TOKEN)
        assert (status, json.loads(answer)) == (200, {"columns": ["n"], "rows": [[42]]})
        # Probes and metrics need no token.
        assert (await _call(url + "/healthz"))[0] == 200
        assert (await _call(url + "/metrics"))[0] == 200

    run_flusher(cfg, DuckDBSink(cfg), body)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM read_text('/etc/passwd')",
        "SELECT * FROM glob('/etc/*')",
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT content FROM read_blob('/etc/passwd')",
        # A URL: DuckDB would auto-install and load httpfs from the internet, then fetch it.
        "SELECT * FROM read_parquet('https://extensions.duckdb.org/x.parquet')",
    ],
)
def test_query_reads_no_file_directory_or_url(redis_server: RedisServer, tmp_path: Path, sql: str) -> None:
    cfg = _query_cfg(redis_server, tmp_path)

    async def body(f: Flusher) -> None:
        assert f.admin is not None
        status, _, answer = await _call(f.admin.url + "/query", sql.encode(), TOKEN)
        assert status == 400
        assert "disabled by configuration" in _error(answer) or "disabled through configuration" in _error(answer)
        assert "root:" not in answer.decode()

    run_flusher(cfg, DuckDBSink(cfg), body)


def test_query_cannot_install_load_or_unlock(tmp_path: Path, redis_server: RedisServer) -> None:
    """The sink's reader connection itself, under whatever statement filter sits above it."""
    cfg = _query_cfg(redis_server, tmp_path)
    sink = DuckDBSink(cfg)
    try:
        for sql in ("INSTALL httpfs", "LOAD httpfs", "SET enable_external_access = true"):
            with pytest.raises(Exception, match=r"disabled|locked|read-only"):
                sink.query(sql)
        # Below the statement filter: the database refuses them too.
        for sql, why in (
            ("INSTALL httpfs", "disabled by configuration"),
            ("LOAD httpfs", "disabled through configuration"),
            ("SET enable_external_access = true", "configuration has been locked"),
            ("SET autoinstall_known_extensions = true", "configuration has been locked"),
        ):
            with pytest.raises(Exception, match=why):
                sink._reader.execute(sql)
        settings = dict(
            sink.query(
                "SELECT name, value FROM duckdb_settings() WHERE name IN ('enable_external_access', "
                "'autoinstall_known_extensions', 'autoload_known_extensions', 'lock_configuration', 'threads')"
            ).rows
        )
        assert settings == {
            "enable_external_access": "false",
            "autoinstall_known_extensions": "false",
            "autoload_known_extensions": "false",
            "lock_configuration": "true",
            "threads": "1",
        }
    finally:
        sink.close()


def test_slow_query_is_interrupted_at_the_timeout(redis_server: RedisServer, tmp_path: Path) -> None:
    cfg = _query_cfg(redis_server, tmp_path, query_timeout_s=0.5)

    async def body(f: Flusher) -> None:
        assert f.admin is not None
        t0 = time.monotonic()
        status, _, answer = await _call(f.admin.url + "/query", SLOW_SQL, TOKEN)
        took = time.monotonic() - t0
        assert status == 400
        assert _error(answer) == (
            "query interrupted after 0.5 s (flusher.query_timeout_s); narrow it with a WHERE or a LIMIT"
        )
        assert 0.5 <= took < 3.0
        # The reader connection is usable again at once.
        status, _, answer = await _call(f.admin.url + "/query", b"SELECT 7 AS n", TOKEN)
        assert (status, json.loads(answer)["rows"]) == (200, [[7]])

    run_flusher(cfg, DuckDBSink(cfg), body)


def test_writes_continue_while_eight_slow_queries_run(redis_server: RedisServer, tmp_path: Path) -> None:
    timeout_s = 2.0
    cfg = _query_cfg(redis_server, tmp_path, query_timeout_s=timeout_s)
    keys = Keys(cfg.redis.key_prefix)
    answers: list[tuple[int, str]] = []
    lock = threading.Lock()

    async def body(f: Flusher) -> None:
        assert f.admin is not None
        url = f.admin.url

        def slow() -> None:
            status, _, answer = _http(url + "/query", SLOW_SQL, TOKEN, timeout=60)
            with lock:
                answers.append((status, _error(answer)))

        threads = [threading.Thread(target=slow) for _ in range(8)]
        for t in threads:
            t.start()
        # The four admitted queries run one after the other: ~8 s in all.
        await until(lambda: _in_flight(f, MAX_QUERIES_IN_FLIGHT), "the queries admitted")
        ids = push_frames(redis_server.client(), keys, cfg.streams["pv"], frames=50, rows_per_frame=20)
        t0 = time.monotonic()
        await until(lambda: _written(f, len(ids)), "rows written while the queries run")
        took = time.monotonic() - t0
        # Written while the first query still ran: no write waited for a query.
        assert took < timeout_s, f"the writes took {took:.1f}s with queries running"
        status, _, _ = await _call(url + "/healthz")
        assert status == 200

        def join_all() -> None:
            for t in threads:
                t.join(60)

        await asyncio.get_running_loop().run_in_executor(None, join_all)

    run_flusher(cfg, DuckDBSink(cfg), body)
    statuses = sorted(s for s, _ in answers)
    assert statuses == [400] * MAX_QUERIES_IN_FLIGHT + [429] * (8 - MAX_QUERIES_IN_FLIGHT)
    assert all("flusher.query_timeout_s" in e for s, e in answers if s == 400)
    assert all(f"{MAX_QUERIES_IN_FLIGHT} queries are already waiting or running" in e for s, e in answers if s == 429)
    assert DuckDBSink(cfg).query("SELECT count(*) FROM pv").rows == [[1000]]


async def _in_flight(f: Flusher, n: int) -> bool:
    assert f.admin is not None
    assert f.admin._query is not None
    return f.admin._query._in_flight == n


async def _written(f: Flusher, rows: int) -> bool:
    return f.metrics.registry.get_sample_value("oceanus_rows_written_total", {"stream": "pv"}) == rows


# --------------------------------------------------------------------------- the token's sources


def test_token_comes_from_the_env_then_the_file(tmp_path: Path) -> None:
    path = tmp_path / "tok"
    path.write_text("  from-the-file-0123456789 \n")
    fcfg = FlusherConfig(query_enabled=True, query_token_file=str(path))
    assert load_query_token(fcfg, env={}) == "from-the-file-0123456789"
    assert load_query_token(fcfg, env={QUERY_TOKEN_ENV: "from-the-env-0123456789"}) == "from-the-env-0123456789"


def test_enabled_without_a_token_or_with_a_short_one_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError,
        match=r"^flusher.query_enabled: /query needs a bearer token; set "
        r"OCEANUS_QUERY_TOKEN or flusher.query_token_file",
    ):
        load_query_token(FlusherConfig(query_enabled=True), env={})
    with pytest.raises(
        ConfigError, match=f"^OCEANUS_QUERY_TOKEN: the /query token is 15 characters, under {MIN_TOKEN_CHARS}$"
    ):
        load_query_token(FlusherConfig(query_enabled=True), env={QUERY_TOKEN_ENV: "x" * 15})
    assert load_query_token(FlusherConfig(query_enabled=True), env={QUERY_TOKEN_ENV: "x" * 16}) == "x" * 16
    with pytest.raises(ConfigError, match=r"^flusher\.query_token_file: cannot read"):
        load_query_token(FlusherConfig(query_enabled=True, query_token_file=str(tmp_path / "nope")), env={})


def test_a_flusher_with_query_enabled_and_no_token_does_not_start(redis_server: RedisServer, tmp_path: Path) -> None:
    cfg = config.loads(
        make_config_text(redis_server.url, tmp_path / "w.duckdb"), env={"OCEANUS_FLUSHER_QUERY_ENABLED": "true"}
    )

    async def main() -> None:
        f = Flusher(cfg, DuckDBSink(cfg))
        try:
            with pytest.raises(ConfigError, match=r"flusher\.query_enabled"):
                await f.run()
        finally:
            await f.close()

    asyncio.run(main())


def test_dev_token_file_is_private_and_new_each_time(tmp_path: Path) -> None:
    first = devstate.write_query_token(tmp_path)
    assert stat.S_IMODE(first.stat().st_mode) == 0o600
    token = devstate.read_query_token(tmp_path)
    assert token is not None
    assert len(token) == 43
    first.chmod(0o644)  # a file left readable by an older version
    devstate.write_query_token(tmp_path)
    assert stat.S_IMODE(first.stat().st_mode) == 0o600
    assert devstate.read_query_token(tmp_path) not in (None, token)


def test_readme_query_example_decodes() -> None:
    repo = Path(__file__).resolve().parents[2]
    snippet = (repo / "README.md").read_text().split("```toml\n[flusher]\nquery_enabled = true\n", 1)[1]
    raw = tomllib.loads((repo / "oceanus.toml").read_text())
    raw.setdefault("flusher", {}).update(tomllib.loads("query_enabled = true\n" + snippet.split("```", 1)[0]))
    fcfg = config.decode(raw).flusher
    assert (fcfg.query_enabled, fcfg.query_token_file, fcfg.query_timeout_s) == (
        True,
        "/run/secrets/oceanus-query-token",
        10.0,
    )

"""A real ``oceanus flusher`` process: SIGTERM drains and exits 0; kill -9 mid-batch loses and doubles nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import duckdb
import redis

from oceanus.buffer import Keys, decode_frame
from tests.flusher.helpers import make_config, make_config_text, push_frames
from tests.support.servers import RedisServer, as_bytes_list, wait_for

REPO = Path(__file__).resolve().parents[2]
KEYS = Keys("oceanus")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCEANUS_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _start(config_file: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "oceanus.cli", "flusher", "--config", str(config_file)],
            cwd=REPO,
            env=_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _admin_url(db: Path, proc: subprocess.Popen[bytes]) -> str:
    def ready() -> str | None:
        if proc.poll() is not None:
            raise AssertionError(f"flusher exited with {proc.returncode}")
        info = json.loads(db.with_name(db.name + ".flusher.json").read_text())
        if info["pid"] != proc.pid:
            return None
        with urllib.request.urlopen(info["admin_url"] + "/readyz", timeout=2) as resp:
            return str(info["admin_url"]) if resp.status == 200 else None

    return str(wait_for(ready, timeout=30, what="flusher /readyz"))


def _rows_in_queue(client: redis.Redis) -> list[str]:
    ids = []
    items: list[bytes] = client.lrange(KEYS.queue("pv"), 0, -1)  # type: ignore[assignment]
    for item in items:
        cols, rows = decode_frame(item)
        ids += [r[cols.index("event_id")].hex() for r in rows]
    return ids


def _stored(db: Path) -> list[str]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return [r[0] for r in con.execute("SELECT event_id FROM pv").fetchall()]
    finally:
        con.close()


def _setup(redis_server: RedisServer, tmp_path: Path, frames: int, rows: int) -> tuple[Path, Path, list[str]]:
    db = tmp_path / "w.duckdb"
    config_file = tmp_path / "oceanus.toml"
    config_file.write_text(make_config_text(redis_server.url, db, heartbeat_ttl_s=1.0, drain_timeout_s=10.0))
    stream = make_config(redis_server.url, db).streams["pv"]
    ids = push_frames(redis_server.client(), KEYS, stream, frames=frames, rows_per_frame=rows)
    return db, config_file, ids


def test_sigterm_drains_and_exits_zero(redis_server: RedisServer, tmp_path: Path) -> None:
    db, config_file, ids = _setup(redis_server, tmp_path, frames=400, rows=100)
    client = redis_server.client()
    proc = _start(config_file, tmp_path / "flusher.log")
    try:
        _admin_url(db, proc)
        wait_for(lambda: client.llen(KEYS.queue("pv")) < 400, what="first claims")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, (tmp_path / "flusher.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not db.with_name(db.name + ".flusher.json").exists()
    assert client.scard(KEYS.inflight_index("pv")) == 0
    assert client.keys("oceanus:inflight:*") == []
    stored, waiting = _stored(db), _rows_in_queue(client)
    assert stored, "some rows were written before the signal"
    assert sorted(stored + waiting) == sorted(ids)  # every row exactly once, in the table or still queued
    assert "draining" in (tmp_path / "flusher.log").read_text()


def test_kill_9_mid_batch_then_restart_recovers_every_row_once(redis_server: RedisServer, tmp_path: Path) -> None:
    db, config_file, ids = _setup(redis_server, tmp_path, frames=300, rows=100)
    client = redis_server.client()
    log = tmp_path / "flusher.log"
    orphaned: set[bytes] = set()
    for _ in range(5):  # bounded: until a kill lands while a batch is claimed
        proc = _start(config_file, log)
        try:
            _admin_url(db, proc)
            wait_for(lambda: client.scard(KEYS.inflight_index("pv")) > 0, interval=0.001, what="a claimed batch")
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        orphaned = set(as_bytes_list(client.smembers(KEYS.inflight_index("pv"))))
        if orphaned:
            break
    assert orphaned, "never killed mid-batch"
    assert client.llen(KEYS.queue("pv")) > 0 or orphaned

    proc = _start(config_file, log)
    try:
        _admin_url(db, proc)
        wait_for(
            lambda: client.llen(KEYS.queue("pv")) == 0 and client.scard(KEYS.inflight_index("pv")) == 0,
            timeout=60,
            what="backlog and orphans drained",
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert "re-claimed orphaned batch" in text
    stored = _stored(db)
    assert len(stored) == len(ids)
    assert sorted(stored) == sorted(ids)
    assert all(client.exists(k) == 0 for k in orphaned)


def test_tables_sync_prints_the_changes(redis_server: RedisServer, tmp_path: Path) -> None:
    db = tmp_path / "w.duckdb"
    config_file = tmp_path / "oceanus.toml"
    config_file.write_text(make_config_text(redis_server.url, db))
    cmd = [sys.executable, "-m", "oceanus.cli", "tables", "sync", "--config", str(config_file)]
    first = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == ["duckdb: created table pv (12 columns)"]
    second = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=60)
    assert second.stdout.strip() == "duckdb: 1 table(s) up to date"
    config_file.write_text(
        make_config_text(redis_server.url, db).replace('n = { type = "int" }', 'n = { type = "bool" }')
    )
    third = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=60)
    assert third.returncode == 2
    assert third.stderr.startswith("oceanus tables: streams.pv.fields.n:")

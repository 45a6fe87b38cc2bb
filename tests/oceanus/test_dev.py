"""``oceanus dev`` start-up checks, the redis-server child and the banner.

The whole stack (collector and flusher too) is exercised by test_dev_e2e.py.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import msgspec
import pytest
import redis

from oceanus import cli, config
from oceanus.buffer import Keys, encode_frame
from oceanus.commands import banner, dev, devstate

REPO = Path(__file__).resolve().parents[2]


def run_dev(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = cli.main(["dev", *args])
    return code, capsys.readouterr().err


@pytest.fixture
def listening() -> Iterator[int]:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    try:
        yield int(s.getsockname()[1])
    finally:
        s.close()


def test_port_in_use_is_one_line(tmp_path: Path, listening: int, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_dev(capsys, "--data-dir", str(tmp_path / "d"), "--port", str(listening))
    assert code == 2
    assert err.count("\n") == 1
    assert f"port {listening} is in use" in err
    assert "--port" in err


def test_data_dir_not_writable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    code, err = run_dev(capsys, "--data-dir", str(blocker / "data"), "--port", "0")
    assert code == 2
    assert err.count("\n") == 1
    assert "is not writable" in err
    assert str(blocker / "data") in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through directory permissions")
def test_data_dir_read_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    code, err = run_dev(capsys, "--data-dir", str(ro), "--port", "0")
    assert code == 2
    assert "is not writable" in err


def test_invalid_config_names_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text((REPO / "oceanus.toml").read_text().replace("max_batch_events = 500", "max_batch_events = -1"))
    code, err = run_dev(capsys, "--config", str(bad), "--data-dir", str(tmp_path / "d"), "--port", "0")
    assert code == 2
    assert err.count("\n") == 1
    assert "collector.max_batch_events" in err


def test_unknown_env_key_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OCEANUS_COLLECTOR_NOPE", "1")
    code, err = run_dev(capsys, "--data-dir", str(tmp_path / "d"), "--port", "0")
    assert code == 2
    assert "OCEANUS_COLLECTOR_NOPE" in err


def test_redis_server_missing(tmp_path: Path) -> None:
    # An empty PATH: no redis-server to find.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "oceanus.cli", "dev", "--data-dir", str(tmp_path / "d"), "--port", "0"],
        env={**os.environ, "PATH": str(bindir)},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1
    assert "redis-server is not installed" in proc.stderr
    assert "apt-get install" in proc.stderr


def _info(data_dir: Path, pid: int, **pids: int) -> devstate.DevInfo:
    return devstate.DevInfo(
        pid=pid,
        config="oceanus.toml",
        data_dir=str(data_dir),
        collector_url="http://127.0.0.1:1",
        collector_pid=pids.get("collector", 0),
        flusher_pid=pids.get("flusher", 0),
        redis_url="redis://127.0.0.1:1/0",
        redis_pid=pids.get("redis", 0),
        key_prefix="oceanus",
        duckdb_path=str(data_dir / "warehouse.duckdb"),
        spool_dir=str(data_dir / "spool"),
        started_at=0.0,
    )


def test_refuses_a_second_dev_on_the_same_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tmp_path.joinpath("d").mkdir()
    devstate.write_dev_info(tmp_path / "d", _info(tmp_path / "d", os.getpid()))
    code, err = run_dev(capsys, "--data-dir", str(tmp_path / "d"), "--port", "0")
    assert code == 1
    assert f"(pid {os.getpid()}) is already running" in err


def test_refuses_while_an_orphaned_child_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "d"
    data.mkdir()
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        # The supervisor is gone (a pid that cannot exist), its redis-server is not.
        devstate.write_dev_info(data, _info(data, 2**22 + 7, redis=orphan.pid))
        code, err = run_dev(capsys, "--data-dir", str(data), "--port", "0")
        assert code == 1
        assert f"redis-server (pid {orphan.pid})" in err
        assert f"kill {orphan.pid}" in err
    finally:
        orphan.kill()
        orphan.wait()


def test_stale_dev_file_is_cleared(tmp_path: Path) -> None:
    data = tmp_path / "d"
    data.mkdir()
    devstate.write_dev_info(data, _info(data, 2**22 + 7))
    assert devstate.read_dev_info(data) is None
    dev.check_not_running(data)
    assert not (data / devstate.DEV_FILE).exists()


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
def test_redis_child_keeps_data_across_a_clean_stop(tmp_path: Path) -> None:
    dev.prepare_data_dir(tmp_path)
    stop = dev._Stop()
    keys = Keys("oceanus")
    frame = encode_frame(["event_id", "received_at"], [[b"x" * 16, 1]])
    child, port = dev.start_redis(tmp_path, os.environ, stop)
    try:
        r = redis.Redis(port=port)
        assert r.config_get("appendonly") == {"appendonly": "yes"}
        assert r.config_get("appendfsync") == {"appendfsync": "always"}
        r.rpush(keys.queue("pageview"), frame)
        r.close()
        assert dev.buffered_frames(port, config.load(REPO / "oceanus.toml", env={})) == 1
    finally:
        assert child.stop(30, stop) == 0  # SIGTERM: Redis shuts down cleanly
    child, port = dev.start_redis(tmp_path, os.environ, stop)
    try:
        r = redis.Redis(port=port)
        assert r.lrange(keys.queue("pageview"), 0, -1) == [frame]
        r.close()
    finally:
        child.stop(30, stop)
    assert (tmp_path / "redis" / "appendonlydir").is_dir()


def test_banner_examples_are_valid_events(tmp_path: Path) -> None:
    from collector.validate import Invalid, compile_streams

    cfg = config.load(REPO / "oceanus.toml", env={})
    text = banner.banner(
        cfg,
        tmp_path,
        "http://127.0.0.1:8080",
        "redis://127.0.0.1:1/0",
        "http://127.0.0.1:2",
        default_data_dir=False,
        default_port=True,
    )
    validators = compile_streams(cfg.streams.values(), cfg.collector)
    pixel = next(line.split()[-1] for line in text.splitlines() if line.startswith("Pixel URL:"))
    parts = urlsplit(pixel)
    assert parts.path == "/b/pageview"
    validators["pageview"].values(dict(parse_qsl(parts.query)), from_text=True)
    for name in cfg.streams:
        line = next(ln for ln in text.splitlines() if f"/e/{name} " in ln)
        body = json.loads(line.split("-d ", 1)[1].strip("'"))
        try:
            validators[name].values(body, from_text=False)
        except Invalid as exc:  # pragma: no cover - the message is the point
            pytest.fail(f"banner example for {name} is invalid: {exc}")
    assert f"--data-dir {tmp_path}" in text
    assert "oceanus query" in text
    assert "pageview_dedup" in text


def test_dev_info_round_trip(tmp_path: Path) -> None:
    info = _info(tmp_path, os.getpid())
    devstate.write_dev_info(tmp_path, info)
    assert devstate.read_dev_info(tmp_path) == info
    assert msgspec.json.decode((tmp_path / "dev.json").read_bytes())["pid"] == os.getpid()
    devstate.remove_dev_info(tmp_path, os.getpid() + 1)  # not ours: kept
    assert (tmp_path / "dev.json").exists()
    devstate.remove_dev_info(tmp_path, os.getpid())
    assert not (tmp_path / "dev.json").exists()

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from oceanus import config
from oceanus.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_default_config_decodes() -> None:
    cfg = config.load(REPO / "oceanus.toml", env={})
    assert list(cfg.streams) == ["pageview", "form", "ecview", "segment", "snowplow"]
    assert (cfg.collector.segment.stream, cfg.collector.snowplow.stream) == ("segment", "snowplow")
    pv = cfg.streams["pageview"]
    assert pv.fields["sid"].required
    assert pv.fields["sid"].transforms == ("lowercase",)
    assert pv.fields["jsn"].type == "json"
    assert pv.fields["jsn"].max_length == 4096
    assert cfg.streams["ecview"].fields["age"].min == 0
    assert cfg.streams["ecview"].fields["age"].max == 130
    assert cfg.streams["form"].fields["email"].format == "email"
    assert pv.columns[:5] == config.SERVER_COLUMNS
    assert pv.columns[-1] == "extra"
    assert {s.shards for s in cfg.streams.values()} == {1}


def test_shards_from_1_to_1024() -> None:
    for n in (1, 1024):
        assert config.loads(f"[streams.pv]\nshards = {n}\n[streams.pv.fields]\na = {{}}").streams["pv"].shards == n
    for bad, why in ((0, ">= 1"), (1025, "<= 1024"), ('"4"', "got `str`")):
        with pytest.raises(ConfigError) as info:
            config.loads(f"[streams.pv]\nshards = {bad}\n[streams.pv.fields]\na = {{}}")
        assert str(info.value).startswith("streams.pv.shards: "), str(info.value)
        assert why in str(info.value)


def test_redis_cluster_url_and_replica_acks() -> None:
    pv = "[streams.pv.fields]\na = {}"
    one = config.loads(pv).redis
    assert (one.cluster, one.min_replicas_ack, one.wait_timeout_ms) == (False, 0, 500)
    for url in ("redis+cluster://a:7000,b:7001", "rediss+cluster://u:p@a:7000"):
        assert config.loads(f'[redis]\nurl = "{url}"\n{pv}').redis.cluster
    assert not config.loads(f'[redis]\nurl = "rediss://a:6380/0"\n{pv}').redis.cluster
    acks = config.loads(f"[redis]\nmin_replicas_ack = 1\nwait_timeout_ms = 1999\n{pv}").redis
    assert (acks.min_replicas_ack, acks.wait_timeout_ms) == (1, 1999)
    for body, message in (
        (
            "min_replicas_ack = 1\nwait_timeout_ms = 2000",
            "redis.wait_timeout_ms: 2000 ms must be below redis.timeout_s (2 s), or the round times out "
            "before WAIT answers",
        ),
        ("min_replicas_ack = -1", "redis.min_replicas_ack: Expected `int` >= 0"),
        ("wait_timeout_ms = 0", "redis.wait_timeout_ms: Expected `int` >= 1"),
    ):
        with pytest.raises(ConfigError) as info:
            config.loads(f"[redis]\n{body}\n{pv}")
        assert str(info.value) == message
    # The bounds, at and one past each.
    top = config.loads(f"[redis]\nmin_replicas_ack = 16\ntimeout_s = 61\nwait_timeout_ms = 60000\n{pv}").redis
    assert (top.min_replicas_ack, top.wait_timeout_ms) == (16, 60000)
    for body, message in (
        ("min_replicas_ack = 17", "redis.min_replicas_ack: Expected `int` <= 16"),
        ("wait_timeout_ms = 60001", "redis.wait_timeout_ms: Expected `int` <= 60000"),
    ):
        with pytest.raises(ConfigError) as info:
            config.loads(f"[redis]\n{body}\n{pv}")
        assert str(info.value) == message
    # Without replica acks the WAIT timeout is unused and not held against timeout_s.
    assert config.loads(f"[redis]\nwait_timeout_ms = 5000\n{pv}").redis.wait_timeout_ms == 5000


@pytest.mark.parametrize(
    ("toml", "path"),
    [
        ('[streams.pv.fields]\nsid = { type = "strng" }', "streams.pv.fields.sid.type"),
        ("[streams.pv.fields]\nsid = { max_length = -1 }", "streams.pv.fields.sid.max_length"),
        ('[streams.pv.fields]\nsid = { pattern = "(" }', "streams.pv.fields.sid"),
        ("[streams.pv.fields]\nsid = { colour = 1 }", "streams.pv.fields.sid"),
        ('[collector]\nport = "x"\n[streams.pv.fields]\na = {}', "collector.port"),
        ('[streams.pv]\nclustering = ["nope"]\n[streams.pv.fields]\na = {}', "streams.pv.clustering[0]"),
        ("[streams.pv.fields]\nevent_id = {}", "streams.pv.fields.event_id"),
        ("[streams.pv.batch]\nmax_bytes = 20000000\n[streams.pv.fields]\na = {}", "streams.pv.batch.max_bytes"),
        ("[collector]\nport = 1", "streams"),
    ],
)
def test_errors_name_the_key(toml: str, path: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.loads(toml)
    assert str(info.value).startswith(path), str(info.value)


def test_env_overrides() -> None:
    text = (REPO / "oceanus.toml").read_text()
    cfg = config.loads(
        text,
        env={
            "OCEANUS_REDIS_URL": "redis://10.0.0.1:6380/2",
            "OCEANUS_COLLECTOR_PORT": "9999",
            "OCEANUS_SINK_DUCKDB_PATH": "/tmp/x.duckdb",
            "OCEANUS_COLLECTOR_CORS_ORIGINS": '["https://a.example"]',
        },
    )
    assert cfg.redis.url == "redis://10.0.0.1:6380/2"
    assert cfg.collector.port == 9999
    assert cfg.sink.duckdb.path == "/tmp/x.duckdb"
    assert cfg.collector.cors_origins == ("https://a.example",)
    with pytest.raises(ConfigError, match="OCEANUS_REDIS_URLL"):
        config.loads(text, env={"OCEANUS_REDIS_URLL": "x"})
    with pytest.raises(ConfigError, match=r"collector\.port"):
        config.loads(text, env={"OCEANUS_COLLECTOR_PORT": "http"})


def test_check_config_cli_one_line_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[streams.pv.fields]\nage = { type = "int", min = 5, max = 1 }\n')
    proc = subprocess.run(
        [sys.executable, "-m", "oceanus.cli", "check-config", "--config", str(bad)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1
    assert "streams.pv.fields.age" in proc.stderr
    ok = subprocess.run(
        [sys.executable, "-m", "oceanus.cli", "check-config", "--config", str(REPO / "oceanus.toml")],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0
    assert "stream pageview" in ok.stdout


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cret@h:6379/0", "redis://:***@h:6379/0"),
        ("rediss://user:s3cret@h:6380/0", "rediss://user:***@h:6380/0"),
        ("redis+cluster://u:p%40ss@a:7000,b:7001", "redis+cluster://u:***@a:7000,b:7001"),
        ("redis://user@h:6379/0", "redis://user@h:6379/0"),
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("unix:///run/redis.sock", "unix:///run/redis.sock"),
    ],
)
def test_a_redis_password_is_never_shown(url: str, shown: str) -> None:
    assert config.redacted_url(url) == shown


def test_check_config_hides_the_redis_password(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[redis]\nurl = "redis+cluster://oceanus:s3cret@a:7000,b:7001"\n[streams.pv.fields]\na = {}\n')
    out = subprocess.run(
        [sys.executable, "-m", "oceanus.cli", "check-config", "--config", str(cfg)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "s3cret" not in out.stdout + out.stderr
    assert "redis: redis+cluster://oceanus:***@a:7000,b:7001 (cluster" in out.stdout

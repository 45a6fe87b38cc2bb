"""One real redis-server and one in-process app for the whole fuzz package."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from oceanus import config
from tests.fuzz.asgi import Driver
from tests.reliability.harness import Stack
from tests.support.servers import RedisServer

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="package")
def fuzz_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("fuzz-redis"), appendfsync="no").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="package")
def fuzz_config(fuzz_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> config.Config:
    spool = tmp_path_factory.mktemp("fuzz-spool")
    return config.load(
        REPO / "oceanus.toml",
        env={
            "OCEANUS_REDIS_URL": fuzz_redis.url,
            "OCEANUS_COLLECTOR_SPOOL_DIR": str(spool),
            # Short, so the slow-body test is quick; the rule is the same at any value.
            "OCEANUS_COLLECTOR_BODY_TIMEOUT_S": "1.0",
        },
    )


@pytest.fixture(scope="package")
def driver(fuzz_config: config.Config) -> Iterator[Driver]:
    d = Driver(fuzz_config)
    try:
        yield d
    finally:
        d.close()


@pytest.fixture(scope="package")
def live_collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """redis-server + ``oceanus collector`` (2 granian workers) on free loopback ports; no flusher."""
    stack = Stack(
        tmp_path_factory.mktemp("live"), workers=2, appendfsync="no", env={"OCEANUS_COLLECTOR_BODY_TIMEOUT_S": "1.0"}
    )
    stack.redis.start()
    try:
        stack.start_collector()
        yield stack
    finally:
        stack.stop()

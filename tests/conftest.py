"""Shared fixtures: real servers on free ports, torn down in ``finally``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from oceanus import config
from tests.support.servers import BigQueryEmulator, RedisServer

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server with AOF (appendfsync always) in the test's temp dir."""
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def bq_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BigQueryEmulator]:
    from tests.support.spatial import extension_file

    if extension_file() is None:
        pytest.skip("duckdb-extension-spatial is not installed")
    emulator = BigQueryEmulator(tmp_path_factory.mktemp("bqemulator")).start()
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture
def default_config() -> config.Config:
    return config.load(REPO / "oceanus.toml", env={})

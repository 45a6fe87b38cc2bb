"""Shared fixtures: real servers on free ports, torn down in ``finally``."""

from __future__ import annotations

import faulthandler
import sys
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from oceanus import config
from tests.support.servers import BigQueryEmulator, RedisServer

REPO = Path(__file__).resolve().parent.parent

# pytest-timeout raises in the main thread, which needs the GIL; a test frozen
# with the GIL held (a C-level deadlock) would never see it. faulthandler's
# watchdog is a C thread: past this budget it prints every thread's stack and
# ends the run, so a freeze fails in minutes instead of eating the CI budget.
# The budget is the test's own timeout plus room for its fixtures' teardown.
WATCHDOG_EXTRA_S = 120.0


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, None, None]:
    marker = item.get_closest_marker("timeout")
    timeout = float(marker.args[0]) if marker and marker.args else float(item.config.getini("timeout") or 300)
    faulthandler.dump_traceback_later(timeout + WATCHDOG_EXTRA_S, exit=True, file=sys.__stderr__)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


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

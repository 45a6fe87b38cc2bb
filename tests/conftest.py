"""Shared fixtures: real servers on free ports, torn down in ``finally``."""

from __future__ import annotations

import faulthandler
import sys
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from oceanus import config
from tests.support.cluster import RedisCluster
from tests.support.servers import BigQueryEmulator, RedisServer

REPO = Path(__file__).resolve().parent.parent

#: Fixtures that start a real server (directly or through another fixture): a test
#: that uses one is an ``integration`` test. ``item.fixturenames`` is the closure,
#: so a fixture built on these counts too.
SERVER_FIXTURES = frozenset(
    {"redis_server", "redis_cluster", "bq_emulator", "fuzz_redis", "live_collector", "protocol_stack"}
)
#: Folders whose every test drives real processes or outside services.
INTEGRATION_DIRS = frozenset({"reliability", "browser", "importer", "notifier", "deploy"})
#: ``make unit`` sets this: a server started anyway is a test that lacks its marker.
UNIT_TIER_ENV = "PYTEST_TIER"  # not OCEANUS_*: the config loader reads those


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    tests_dir = Path(__file__).resolve().parent
    for item in items:
        try:
            top = Path(str(item.path)).resolve().relative_to(tests_dir).parts[0]
        except ValueError:
            top = ""
        fixtures = set(getattr(item, "fixturenames", ()))
        if top in INTEGRATION_DIRS or fixtures & SERVER_FIXTURES or item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(autouse=True, scope="session")
def _unit_tier_starts_no_server() -> Iterator[None]:
    """In ``make unit``, starting a server fails the test that tried, naming the fix."""
    import os

    if os.environ.get(UNIT_TIER_ENV) != "unit":
        yield
        return
    mp = pytest.MonkeyPatch()

    def refuse(self: object, *args: object, **kwargs: object) -> None:
        raise RuntimeError(
            f"{type(self).__name__} started in the unit tier: mark the test "
            "`pytest.mark.integration` (or use a server fixture, which marks it)"
        )

    mp.setattr(RedisServer, "start", refuse)
    mp.setattr(BigQueryEmulator, "start", refuse)
    mp.setattr(RedisCluster, "start", refuse)
    try:
        yield
    finally:
        mp.undo()


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
    # sys.__stderr__ (not pytest's capture) is None only without a console; faulthandler's own
    # default, sys.stderr, is then the one left.
    out = sys.__stderr__ if sys.__stderr__ is not None else sys.stderr
    faulthandler.dump_traceback_later(timeout + WATCHDOG_EXTRA_S, exit=True, file=out)
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
def _redis_cluster_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    cluster = RedisCluster(tmp_path_factory.getbasetemp())
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture
def redis_cluster(_redis_cluster_session: RedisCluster) -> RedisCluster:
    """Six redis-servers as one Redis Cluster (3 masters, 1 replica each; tests/support/cluster.py),
    shared by the session: healthy and empty at the start of each test. Its slot layout may
    differ from test to test (failovers), so look up who serves what."""
    _redis_cluster_session.wait_healthy()
    _redis_cluster_session.flush()
    return _redis_cluster_session


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

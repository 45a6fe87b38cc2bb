"""``oceanus collector`` as a real granian process: workers, merged metrics, SIGTERM drain."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest

from tests.collector.conftest import REPO, queued_rows
from tests.support.servers import RedisServer, free_port, wait_for


def _get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class Collector:
    def __init__(self, redis: RedisServer, tmp: Path, workers: int, **env: str) -> None:
        self.port = free_port()
        self.log = tmp / "collector.log"
        full_env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("OCEANUS_")},
            "OCEANUS_REDIS_URL": redis.url,
            "OCEANUS_COLLECTOR_SPOOL_DIR": f'"{tmp / "spool"}"',
            **env,
        }
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "oceanus.cli",
                    "collector",
                    "--config",
                    str(REPO / "oceanus.toml"),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--workers",
                    str(workers),
                ],
                env=full_env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=tmp,
                # Its own process group: granian's workers must not outlive a killed parent.
                start_new_session=True,
            )

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"collector exited: {self.log.read_text()}")
            # /readyz answers from whichever worker is up; every worker logs when it
            # has started (a worker signalled mid-start hangs inside granian).
            text = self.log.read_text()
            return all(f"Started worker-{i}" in text for i in range(1, workers + 1)) and (
                _get(self.port, "/readyz")[0] == 200
            )

        wait_for(ready, timeout=30, what="collector workers started and /readyz")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        # Whatever is left of the group (a worker orphaned by a crash): gone.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)


class CollectorFactory(Protocol):
    """The ``collector_factory`` fixture: a collector on this test's Redis, stopped at teardown."""

    def __call__(self, workers: int = 2, **env: str) -> Collector: ...


@pytest.fixture
def collector_factory(redis_server: RedisServer, tmp_path: Path) -> Iterator[CollectorFactory]:
    started: list[Collector] = []

    class Factory(Collector):
        def __init__(self, workers: int = 2, **env: str) -> None:
            super().__init__(redis_server, tmp_path, workers, **env)
            started.append(self)

    try:
        yield Factory
    finally:
        for c in started:
            c.stop()


def test_pixel_through_granian_workers_and_merged_metrics(
    collector_factory: CollectorFactory, redis_server: RedisServer
) -> None:
    c = collector_factory(workers=2)
    statuses = [_get(c.port, f"/b/pageview?sid={i:x}&evt=view")[0] for i in range(20)]
    assert statuses == [200] * 20
    assert _get(c.port, "/b/pageview?evt=view")[0] == 400
    assert sorted(int(r["sid"], 16) for r in queued_rows(redis_server, "pageview")) == list(range(20))

    def counted() -> bool:
        body = _get(c.port, "/metrics")[1].decode()
        return (
            'oceanus_events_accepted_total{stream="pageview"} 20.0' in body
            and 'oceanus_http_requests_total{status="400",stream="pageview"} 1.0' in body
            and 'oceanus_http_requests_total{status="200",stream="pageview"} 20.0' in body
        )

    # Each worker moves its counts into the shared files once per round; poll for the total.
    wait_for(counted, timeout=10, what="merged counts")


def _server_rx_queues(port: int) -> list[int]:
    """Unread bytes on the server side of established connections to ``port``."""
    out = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state, queues = fields[1], fields[3], fields[4]
        if state == "01" and int(local.split(":")[1], 16) == port:
            out.append(int(queues.split(":")[1], 16))
    return out


def test_sigterm_drains_in_flight_events_and_exits_zero(
    collector_factory: CollectorFactory, redis_server: RedisServer
) -> None:
    # A linger longer than the drain keeps the events queued in the workers when the
    # signal lands: only the drain itself can get them out in time.
    c = collector_factory(
        workers=2,
        OCEANUS_COLLECTOR_BATCH_LINGER_MS="60000",
        OCEANUS_COLLECTOR_BATCH_MAX_EVENTS="100000",
        OCEANUS_COLLECTOR_DRAIN_TIMEOUT_S="8",
    )
    n = 40
    socks = []
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", c.port), timeout=15)
        s.sendall(f"GET /b/pageview?sid={i:x}&evt=view HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        socks.append(s)
    # Every request has been read by a worker (nothing left in the kernel's receive queues).
    wait_for(
        lambda: len(_server_rx_queues(c.port)) >= n and not any(_server_rx_queues(c.port)),
        timeout=10,
        what="requests read by the workers",
    )
    assert queued_rows(redis_server, "pageview") == []  # still lingering: in flight
    t0 = time.monotonic()
    c.proc.send_signal(signal.SIGTERM)
    statuses = []
    for s in socks:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        statuses.append(int(data.split(b" ", 2)[1]) if data else 0)
        s.close()
    code = c.proc.wait(timeout=20)
    elapsed = time.monotonic() - t0
    assert statuses == [200] * n
    assert code == 0
    assert elapsed < 8
    rows = queued_rows(redis_server, "pageview")
    assert sorted(int(r["sid"], 16) for r in rows) == list(range(n))


def _workers(pid: int) -> list[int]:
    """granian's worker processes: the children of the collector's main process."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(p) for p in text.split()]


def _spooled_pids(spool: Path) -> set[int]:
    """Pids whose spool file holds records (``spool-{pid}-{random}.log``)."""
    return {int(f.name.split("-")[1]) for f in spool.glob("spool-*.log") if f.stat().st_size > 0}


def test_killed_worker_is_respawned_and_its_spool_replayed(collector_factory: CollectorFactory, tmp_path: Path) -> None:
    # Redis is not up yet (connection refused): every acknowledged event is in a spool file.
    redis = RedisServer(tmp_path / "late-redis", port=free_port())
    c = collector_factory(workers=2, OCEANUS_REDIS_URL=redis.url, OCEANUS_REDIS_TIMEOUT_S="0.5")

    def two_workers() -> list[int]:
        now = _workers(c.proc.pid)
        return now if len(now) == 2 else []

    workers = wait_for(two_workers, what="two workers")
    spool = tmp_path / "spool"
    n = 0
    # Keep-alive connections are spread over the workers; send until one of them
    # has spooled events (bounded by count).
    while n < 400 and (n < 30 or not _spooled_pids(spool) & set(workers)):
        status = _get(c.port, f"/b/pageview?sid={n:x}&evt=view")[0]
        assert status == 200
        n += 1
    victim = sorted(_spooled_pids(spool) & set(workers))[0]
    os.kill(victim, signal.SIGKILL)

    def replaced() -> list[int]:
        now = _workers(c.proc.pid)
        return now if len(now) == 2 and victim not in now else []

    now = wait_for(replaced, timeout=20, what="a new worker in place of the killed one")
    assert c.proc.poll() is None
    # The new worker answers (both workers take requests; at least one lands on it).
    statuses = [_get(c.port, f"/b/pageview?sid={i:x}&evt=view")[0] for i in range(n, n + 20)]
    assert statuses == [200] * 20
    n += 20
    assert set(now) - set(workers)

    redis.start()
    try:
        # Every acknowledged event, the dead worker's spool included, reaches Redis.
        def all_rows() -> bool:
            return sorted(int(r["sid"], 16) for r in queued_rows(redis, "pageview")) == list(range(n))

        wait_for(all_rows, timeout=20, what=f"all {n} acknowledged events in Redis")
        wait_for(
            lambda: victim not in _spooled_pids(spool) and not list(spool.glob(f"spool-{victim}-*")),
            timeout=10,
            what="the dead worker's spool file replayed and removed",
        )
    finally:
        c.stop()
        redis.stop()

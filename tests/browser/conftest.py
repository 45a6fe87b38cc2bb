"""A live collector (granian subprocess, demo and status pages on) against a
real redis-server, and Debian's chromium driven by Playwright.

One collector and one browser per module: starting them costs more than the
tests. Tests stay independent by reading only the rows of their own browser
context's ``sid`` (a fresh context has no cookie, so the tag draws a new one).
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from oceanus.buffer import Keys, decode_frame
from tests.support.servers import RedisServer, as_bytes_list, free_port, kill_group, wait_for

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "tests" / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
STATUS_TOKEN = "browser-test-token"


def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


class LiveCollector:
    """``oceanus collector`` on a free loopback port; stopped with SIGTERM (drain), killed if it overstays."""

    def __init__(self, redis: RedisServer, tmp: Path) -> None:
        self.redis = redis
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / "collector.log"
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("OCEANUS_")},
            "OCEANUS_REDIS_URL": redis.url,
            "OCEANUS_COLLECTOR_SPOOL_DIR": f'"{tmp / "spool"}"',
            "OCEANUS_COLLECTOR_DEMO": "true",
            "OCEANUS_COLLECTOR_STATUS_PAGE": "true",
            "OCEANUS_COLLECTOR_STATUS_TOKEN": f'"{STATUS_TOKEN}"',
            "OCEANUS_COLLECTOR_DRAIN_TIMEOUT_S": "2",
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
                    "1",
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=tmp,
                start_new_session=True,
            )

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"collector exited: {self.log.read_text()}")
            return http_get(self.url + "/readyz")[0] == 200

        wait_for(ready, timeout=30, what="collector /readyz")

    def rows(self, stream: str, sid: str | None = None) -> list[dict[str, Any]]:
        """The stream's rows in Redis, in arrival order (frames decoded)."""
        client = self.redis.client()
        try:
            items = as_bytes_list(client.lrange(Keys().queue(stream), 0, -1))
        finally:
            client.close()
        out: list[dict[str, Any]] = []
        for item in items:
            columns, rows = decode_frame(item)
            out.extend(dict(zip(columns, row, strict=True)) for row in rows)
        return [r for r in out if sid is None or r.get("sid") == sid]

    def wait_rows(self, stream: str, sid: str, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        def enough() -> list[dict[str, Any]]:
            rows = self.rows(stream, sid)
            return rows if len(rows) >= count else []

        return wait_for(enough, timeout=timeout, interval=0.05, what=f"{count} {stream} rows for sid {sid}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        kill_group(self.proc.pid)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveCollector]:
    tmp = tmp_path_factory.mktemp("browser")
    redis = RedisServer(tmp / "redis").start()
    try:
        collector = LiveCollector(redis, tmp)
        try:
            yield collector
        finally:
            collector.stop()
    finally:
        redis.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's chromium (make system-deps installs it); never a downloaded build."""
    if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
        pytest.skip("chromium is not installed: `make system-deps` (apt-get install chromium) provides it")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed: pip install -e '.[test]'")
    with sync_playwright() as pw:
        b = pw.chromium.launch(
            executable_path=CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium"), args=CHROMIUM_ARGS
        )
        try:
            yield b
        finally:
            b.close()


class HoldingProxy:
    """A TCP proxy that holds every chunk a client sends for ``hold_s`` and
    forwards it only if the client is still connected then.

    It models a slow network: a request the browser abandons (its page closed
    while the request was on its way) never reaches the collector; a request the
    browser keeps alive past the page (sendBeacon, fetch keepalive) does.
    """

    def __init__(self, upstream_port: int, hold_s: float = 0.5) -> None:
        self.upstream_port = upstream_port
        self.hold_s = hold_s
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.dropped = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._start(self._accept)

    def _start(self, target: Any, *args: Any) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(t)
        t.start()

    def _accept(self) -> None:
        self.listener.settimeout(0.1)
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._start(self._serve, client)

    def _client_gone(self, client: socket.socket) -> bool:
        deadline = time.monotonic() + self.hold_s
        while (left := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([client], [], [], left)
            if readable:
                try:
                    if client.recv(1, socket.MSG_PEEK) == b"":
                        return True
                except OSError:
                    return True
                # More data from a live client: keep holding what we have.
                time.sleep(min(left, 0.01))
        return False

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        self._start(self._pipe_back, upstream, client)
        try:
            while not self._stop.is_set():
                data = client.recv(65536)
                if not data:
                    return
                if self._client_gone(client):
                    self.dropped += 1
                    return
                upstream.sendall(data)
        except OSError:
            return
        finally:
            for s in (client, upstream):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    @staticmethod
    def _pipe_back(upstream: socket.socket, client: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := upstream.recv(65536):
                client.sendall(data)

    def close(self) -> None:
        self._stop.set()
        self.listener.close()
        for t in self._threads:
            t.join(timeout=2)

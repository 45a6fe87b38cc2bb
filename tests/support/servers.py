"""Real servers for tests: redis-server and the BigQuery emulator on free ports.

Readiness is polled with a deadline, never slept for.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import redis

T = TypeVar("T")


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports: every socket stays bound until all are chosen, so
    the kernel cannot hand the same port out twice (it may after a close)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def as_bytes(value: bytes | str) -> bytes:
    """A redis-py reply as the bytes it is.

    redis-py annotates replies as ``bytes | str`` because a client may set
    ``decode_responses``; the tests' clients never do, so a str here is a bug
    in the test's client, not data to convert.
    """
    if isinstance(value, str):
        raise TypeError(f"expected bytes from a redis client without decode_responses, got str {value!r}")
    return value


def as_bytes_list(values: Iterable[bytes | str]) -> list[bytes]:
    """:func:`as_bytes` over a list reply (``lrange``, ``smembers``, ...)."""
    return [as_bytes(v) for v in values]


def wait_for(
    check: Callable[[], T | None], timeout: float = 15.0, interval: float = 0.02, what: str = "condition"
) -> T:
    """Poll ``check`` until it returns a truthy value (exceptions count as not yet)."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = check()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - polling
            last = exc
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last error: {last!r})")
        time.sleep(interval)


def kill_group(pid: int) -> None:
    """SIGKILL whatever is left of a child started with ``start_new_session=True``.

    granian forks its workers; if the main process dies first they would be
    orphaned and outlive the test, so each server child leads its own group.
    """
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


class RedisServer:
    """A redis-server child with its own port and AOF directory."""

    def __init__(
        self, data_dir: Path, port: int | None = None, appendfsync: str = "always", unix_socket: Path | None = None
    ) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.appendfsync = appendfsync
        #: Also listen on this socket (its path must stay under ~100 bytes).
        self.unix_socket = unix_socket
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (make test installs it with apt)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.data_dir),
                "--appendonly",
                "yes",
                "--appendfsync",
                self.appendfsync,
                "--save",
                "",
                "--daemonize",
                "no",
                "--logfile",
                str(self.data_dir / "redis.log"),
                *(["--unixsocket", str(self.unix_socket), "--unixsocketperm", "700"] if self.unix_socket else []),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self.ping, timeout=20, what=f"redis-server on {self.port}")
        return self

    def ping(self) -> bool:
        import redis

        client = redis.Redis(port=self.port, socket_timeout=0.5)
        try:
            # LOADING while replaying the AOF counts as not ready.
            return bool(client.ping())
        finally:
            client.close()

    def client(self) -> redis.Redis:
        import redis

        return redis.Redis(port=self.port)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=20)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class BigQueryEmulator:
    """``bqemulator start`` (REST + gRPC) on free ports, in memory."""

    def __init__(self, log_dir: Path, project: str = "oceanus-test") -> None:
        self.project = project
        self.rest_port, self.grpc_port = free_ports(2)
        self.log_dir = Path(log_dir)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self) -> BigQueryEmulator:
        exe = Path(sys.executable).parent / "bqemulator"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / "bqemulator.log", "wb")  # noqa: SIM115 - lives as long as the child
        self.proc = subprocess.Popen(
            [
                str(exe),
                "start",
                "--project",
                self.project,
                "--rest-port",
                str(self.rest_port),
                "--grpc-port",
                str(self.grpc_port),
                "--log-level",
                "warning",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "NO_COLOR": "1"},
        )

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"bqemulator exited; see {self.log_dir / 'bqemulator.log'}")
            return port_open(self.rest_port) and port_open(self.grpc_port)

        wait_for(ready, timeout=60, what="bqemulator")
        return self

    def client(self):  # type: ignore[no-untyped-def]
        from google.api_core.client_options import ClientOptions
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import bigquery

        return bigquery.Client(
            project=self.project,
            credentials=AnonymousCredentials(),
            client_options=ClientOptions(api_endpoint=self.rest_url),
        )

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

"""A real redis-server started with a deployment file's own arguments, and the
check that it admits oceanus's URL and nothing else."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

from collector.resp import RedisLink, pack
from tests.support.servers import free_port, port_open, wait_for


@contextmanager
def redis_with(args: list[str], data_dir: Path) -> Iterator[int]:
    """redis-server ARGS on a free loopback port; only the address, directory and fsync differ."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            *args,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(data_dir),
            "--appendfsync",
            "everysec",
            "--daemonize",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: port_open(port) or proc.poll() is not None, what=f"redis-server on {port}")
        assert proc.poll() is None, f"redis-server exited with {proc.returncode}: the arguments are refused"
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def at_port(url: str, port: int) -> str:
    """The same URL (user, password, database) pointed at 127.0.0.1:port."""
    parts = urlsplit(url)
    netloc = f"{parts.username}:{parts.password}@127.0.0.1:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def assert_admits_only(url: str, port: int, password: str) -> None:
    """``url`` works for the collector's own link and for redis-py (the flusher, status);
    no admin command, no anonymous client, no default user."""

    async def push() -> list[Any]:
        link = RedisLink(url, 2.0)
        try:
            return await link.call(pack("RPUSH", "oceanus:q:t", b"frame"), 1)
        finally:
            link.close()

    assert asyncio.run(push()) == [1]
    client = redis.Redis.from_url(url)
    try:
        assert client.eval("return redis.call('LLEN', KEYS[1])", 1, "oceanus:q:t") == 1
        assert client.info("memory")["used_memory"] > 0  # `oceanus status` reads INFO
        for command in (("FLUSHALL",), ("CONFIG", "SET", "appendonly", "no"), ("ACL", "LIST")):
            with pytest.raises(redis.exceptions.NoPermissionError):
                client.execute_command(*command)
    finally:
        client.close()
    anonymous = redis.Redis(port=port)
    try:
        with pytest.raises(redis.exceptions.AuthenticationError):
            anonymous.ping()
        with pytest.raises(redis.exceptions.AuthenticationError):
            anonymous.execute_command("AUTH", "default", password)
    finally:
        anonymous.close()


def probe_passes(command: list[str], port: int, password: str) -> bool:
    """A ``redis-cli`` health check, pointed at ``port``, with REDISCLI_AUTH set."""
    cmd = [a.replace("redis-cli", f"redis-cli -p {port}") for a in command]
    return (
        subprocess.run(
            cmd,
            env={"REDISCLI_AUTH": password, "PATH": "/usr/bin:/bin:/usr/local/bin"},
            capture_output=True,
            timeout=10,
            check=False,
        ).returncode
        == 0
    )

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from oceanus import config
from oceanus.buffer import Keys, decode_frame
from tests.support.servers import RedisServer, as_bytes_list

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def make_config(redis_server: RedisServer, tmp_path: Path) -> Callable[..., config.Config]:
    """The repo's oceanus.toml pointed at the test Redis and spool, with collector overrides."""

    def make(**collector: Any) -> config.Config:
        base = config.load(
            REPO / "oceanus.toml",
            env={
                "OCEANUS_REDIS_URL": redis_server.url,
                "OCEANUS_REDIS_TIMEOUT_S": "0.5",
                "OCEANUS_COLLECTOR_SPOOL_DIR": f'"{tmp_path / "spool"}"',
            },
        )
        return msgspec.structs.replace(base, collector=msgspec.structs.replace(base.collector, **collector))

    return make


def queued_rows(server: RedisServer, stream: str) -> list[dict[str, Any]]:
    """Every row in the stream's Redis list, as dicts (frames decoded)."""
    client = server.client()
    try:
        items = as_bytes_list(client.lrange(Keys().queue(stream), 0, -1))
    finally:
        client.close()
    return frames_rows(items)


def frames_rows(items: list[bytes]) -> list[dict[str, Any]]:
    """The rows of these list items (frames), in order, as dicts."""
    out: list[dict[str, Any]] = []
    for item in items:
        columns, rows = decode_frame(item)
        out.extend(dict(zip(columns, row, strict=True)) for row in rows)
    return out


def frame_count(server: RedisServer, stream: str) -> int:
    client = server.client()
    try:
        return int(client.llen(Keys().queue(stream)))
    finally:
        client.close()


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[Any]:
    client = redis_server.client()
    try:
        yield client
    finally:
        client.close()

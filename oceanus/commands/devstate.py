"""The files through which ``oceanus dev``, ``status`` and ``query`` find each other.

``oceanus dev`` keeps everything under one data directory (default ``.oceanus/``)::

    DIR/dev.json                   ports and pids of the running stack (removed on a clean stop)
    DIR/redis/                     redis-server's AOF and log
    DIR/spool/                     the collector's disk spool
    DIR/logs/{collector,flusher}.log
    DIR/warehouse.duckdb           the DuckDB warehouse
    DIR/warehouse.duckdb.flusher.json
                                   written by the flusher while it holds DuckDB's
                                   single-writer lock (:mod:`oceanus.discovery`)
    DIR/shop.sqlite                ``oceanus demo --shop``'s shop tables, imported by the flusher
    DIR/query.token                the bearer token of the flusher's POST /query,
                                   new on every start, mode 0600 (only this user
                                   may query the warehouse through the flusher)

``status`` and ``query`` read ``dev.json`` when it is there and fall back to the
file layout above when it is not (the stack is stopped).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import msgspec

from oceanus.discovery import pid_alive

DEV_FILE = "dev.json"
WAREHOUSE_FILE = "warehouse.duckdb"
REDIS_DIR = "redis"
SPOOL_DIR = "spool"
LOG_DIR = "logs"
QUERY_TOKEN_FILE = "query.token"
#: ``oceanus demo --shop``'s shop database, the source of the ``[imports]`` under ``oceanus dev``.
SHOP_FILE = "shop.sqlite"
#: The environment variable oceanus.toml's ``[imports]`` read their source URL from.
SHOP_URL_ENV = "OCEANUS_SHOP_URL"
#: Random bytes in a /query token (URL-safe base64: 43 characters).
QUERY_TOKEN_BYTES = 32


class DevInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What a running ``oceanus dev`` publishes in ``DIR/dev.json``."""

    pid: int
    config: str
    data_dir: str
    collector_url: str
    collector_pid: int
    flusher_pid: int
    redis_url: str
    redis_pid: int
    key_prefix: str
    duckdb_path: str
    spool_dir: str
    started_at: float


def warehouse_path(data_dir: Path) -> Path:
    return (data_dir / WAREHOUSE_FILE).resolve()


def write_dev_info(data_dir: Path, info: DevInfo) -> None:
    path = data_dir / DEV_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_bytes(msgspec.json.format(msgspec.json.encode(info)) + b"\n")
    # rename is atomic: a concurrent `oceanus status` never reads half a file.
    os.replace(tmp, path)


def read_dev_info(data_dir: Path) -> DevInfo | None:
    """The running stack's info, or None when no live ``oceanus dev`` owns ``data_dir``."""
    try:
        info = msgspec.json.decode((data_dir / DEV_FILE).read_bytes(), type=DevInfo)
    except (OSError, msgspec.DecodeError):
        return None
    # A file left behind by a killed `oceanus dev` describes nothing.
    return info if pid_alive(info.pid) else None


def remove_dev_info(data_dir: Path, pid: int) -> None:
    path = data_dir / DEV_FILE
    try:
        current = msgspec.json.decode(path.read_bytes(), type=DevInfo)
    except (OSError, msgspec.DecodeError):
        return
    if current.pid == pid:
        path.unlink(missing_ok=True)


def query_token_path(data_dir: Path) -> Path:
    return (data_dir / QUERY_TOKEN_FILE).resolve()


def write_query_token(data_dir: Path) -> Path:
    """A fresh /query token in ``DIR/query.token``, readable by this user only."""
    path = query_token_path(data_dir)
    token = secrets.token_urlsafe(QUERY_TOKEN_BYTES)
    # Created 0600; fchmod too, as O_CREAT keeps the mode of a file that was already there.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, token.encode("ascii") + b"\n")
    finally:
        os.close(fd)
    return path


def read_query_token(data_dir: Path) -> str | None:
    try:
        token = query_token_path(data_dir).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return token or None

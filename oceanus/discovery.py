"""The flusher's discovery file: how ``oceanus query``, ``status`` and ``dev`` find
the flusher that holds a DuckDB file.

DuckDB lets one process write a file; while the flusher holds it, it writes
``<duckdb path>.flusher.json`` beside it (``{"pid": ..., "admin_url": ...}``) so
that readers ask its admin server instead of opening the file. The writer is
the flusher, the readers are the commands: both sides use this module, so the
name and the format have one definition.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import msgspec

#: Suffix the flusher adds to the DuckDB path for its discovery file.
FLUSHER_FILE_SUFFIX = ".flusher.json"


class FlusherInfo(msgspec.Struct, frozen=True):
    """The flusher's discovery file beside the DuckDB file."""

    pid: int
    admin_url: str


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(FlusherInfo).decode


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except OSError as exc:
        # EPERM: the process exists but belongs to someone else.
        return exc.errno == errno.EPERM
    try:
        # A zombie (exited, not yet reaped by whoever adopted it) holds no port or file.
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


def flusher_file(duckdb_path: Path) -> Path:
    return duckdb_path.with_name(duckdb_path.name + FLUSHER_FILE_SUFFIX)


def write_flusher_info(path: Path, admin_url: str, pid: int | None = None) -> None:
    """Publish ``admin_url`` for ``pid`` (default: this process) in ``path``."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(_encode(FlusherInfo(pid=os.getpid() if pid is None else pid, admin_url=admin_url)) + b"\n")
    os.replace(tmp, path)  # readers never see half a file


def remove_flusher_info(path: Path, pid: int | None = None) -> None:
    """Remove ``path`` if ``pid`` (default: this process) wrote it; a successor's file stays."""
    try:
        info = _decode(path.read_bytes())
    except (OSError, msgspec.DecodeError):
        return
    if info.pid == (os.getpid() if pid is None else pid):
        path.unlink(missing_ok=True)


def read_flusher_info(duckdb_path: Path) -> FlusherInfo | None:
    """The live flusher holding ``duckdb_path``, or None."""
    try:
        info = _decode(flusher_file(duckdb_path).read_bytes())
    except (OSError, msgspec.DecodeError):
        return None
    return info if pid_alive(info.pid) else None

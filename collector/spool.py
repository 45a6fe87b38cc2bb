"""The local disk spool: where frames go while Redis is unreachable.

One append-only file per worker process under ``collector.spool_dir``
(``spool-{pid}-{random}.log``), held with an exclusive ``flock`` for the life of
the process. A worker that starts (or replays) claims every other spool file
it can lock -- the lock is free only when its owner is gone -- so frames
spooled by a crashed or restarted collector are replayed too.

Record: ``len:u32 | crc32:u32 | msgpack([stream, frame])``, little-endian. Each
append is one ``write`` followed by ``fsync`` before the HTTP responses are
sent. A torn record at the tail (power cut mid-append) fails its length or CRC
check and is dropped: its requests were never acknowledged.

Replay reads records in order and hands them to a push callback in chunks;
after each acknowledged chunk the read offset is saved beside the file
(``.off``, fsync'd) so a crash during replay re-sends at most one chunk (the
flusher dedupes rows by ``event_id``). A fully replayed file of our own is
truncated; a claimed one is deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import struct
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec

_HEADER = struct.Struct("<II")
#: Records handed to one replay push (one pipelined round trip).
REPLAY_CHUNK_RECORDS = 256
#: The spool counts as full when less room than this is left (readiness).
FULL_MARGIN_BYTES = 65_536

Record = tuple[str, bytes]
Push = Callable[[list[Record]], Awaitable[None]]

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(tuple[str, bytes]).decode


class _File:
    __slots__ = ("path", "fd", "offset", "size", "frames", "own")

    def __init__(self, path: Path, fd: int, own: bool) -> None:
        self.path = path
        self.fd = fd
        self.own = own
        self.size = os.fstat(fd).st_size
        self.offset = _read_offset(path)
        if self.offset > self.size:
            self.offset = 0
        self.frames = 0

    @property
    def pending_bytes(self) -> int:
        return self.size - self.offset


def _offset_path(path: Path) -> Path:
    return path.with_suffix(".off")


def _read_offset(path: Path) -> int:
    try:
        return int(_offset_path(path).read_text() or 0)
    except (OSError, ValueError):
        return 0


def _write_offset(path: Path, offset: int) -> None:
    tmp = _offset_path(path).with_suffix(".off.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, str(offset).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, _offset_path(path))


def _try_lock(path: Path) -> int | None:
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


class Spool:
    """Bounded, fsync'd, ordered. Not thread-safe: one owner task uses it."""

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self._files: list[_File] = []  # claimed orphans first (oldest first), ours last
        self._own: _File | None = None

    def open(self) -> Spool:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"spool-{os.getpid()}-{os.urandom(4).hex()}.log"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._own = _File(path, fd, own=True)
        self._files = [self._own]
        self.claim_orphans()
        return self

    def claim_orphans(self) -> int:
        """Take over spool files whose owner process is gone. Returns how many."""
        known = {f.path for f in self._files}
        found: list[_File] = []
        for path in sorted(self.directory.glob("spool-*.log"), key=lambda p: p.stat().st_mtime):
            if path in known:
                continue
            fd = _try_lock(path)
            if fd is None:
                continue
            f = _File(path, fd, own=False)
            f.frames = _count(f)
            found.append(f)
        if found:
            own = self._files[-1:]
            self._files = [f for f in self._files if not f.own] + found + own
        return len(found)

    @property
    def pending_bytes(self) -> int:
        return sum(f.pending_bytes for f in self._files)

    @property
    def pending_frames(self) -> int:
        return sum(f.frames for f in self._files)

    @property
    def pending(self) -> bool:
        return any(f.pending_bytes for f in self._files)

    @property
    def full(self) -> bool:
        return self.max_bytes - self.pending_bytes < FULL_MARGIN_BYTES

    def append(self, records: list[Record]) -> bool:
        """Write and fsync ``records``; False (nothing written) if they do not fit.

        Blocking: call it from a thread (the writer does).
        """
        own = self._own
        if own is None:
            raise RuntimeError("spool is not open")
        chunks: list[bytes] = []
        for stream, frame in records:
            payload = _encode((stream, frame))
            chunks.append(_HEADER.pack(len(payload), zlib.crc32(payload)))
            chunks.append(payload)
        data = b"".join(chunks)
        if self.pending_bytes + len(data) > self.max_bytes:
            return False
        written = 0
        view = memoryview(data)
        while written < len(data):
            written += os.write(own.fd, view[written:])
        os.fsync(own.fd)
        own.size += len(data)
        own.frames += len(records)
        return True

    async def replay(self, push: Push, max_records: int | None = None) -> int:
        """Push pending records in order (at least ``max_records`` if given, else all);
        returns how many were pushed.

        ``push`` raising stops the replay where it is (the offset is kept).
        """
        pushed = 0
        for f in list(self._files):
            while f.pending_bytes:
                if max_records is not None and pushed >= max_records:
                    return pushed
                chunk, end = await asyncio.to_thread(_read_chunk, f, REPLAY_CHUNK_RECORDS)
                if chunk:
                    await push(chunk)
                    pushed += len(chunk)
                    f.frames = max(0, f.frames - len(chunk))
                f.offset = end
                if f.offset >= f.size:
                    self._finish(f)
                else:
                    _write_offset(f.path, f.offset)
        return pushed

    def _finish(self, f: _File) -> None:
        """A file is fully replayed: truncate ours, delete a claimed one."""
        if f.own:
            os.ftruncate(f.fd, 0)
            os.fsync(f.fd)
            f.size = f.offset = f.frames = 0
            with contextlib.suppress(FileNotFoundError):
                _offset_path(f.path).unlink()
        else:
            with contextlib.suppress(FileNotFoundError):
                _offset_path(f.path).unlink()
            f.path.unlink(missing_ok=True)
            os.close(f.fd)
            self._files.remove(f)

    def close(self) -> None:
        for f in self._files:
            if f.own and f.size == 0:
                f.path.unlink(missing_ok=True)
            os.close(f.fd)
        self._files = []
        self._own = None


def _read_chunk(f: _File, limit: int) -> tuple[list[Record], int]:
    """Up to ``limit`` valid records from ``f.offset`` and the offset after them.

    When no valid record is left but bytes remain, they are a torn tail (an
    append cut short, never acknowledged): the returned offset skips them.
    """
    out: list[Record] = []
    size = f.size
    pos = f.offset
    while len(out) < limit and pos + _HEADER.size <= size:
        length, crc = _HEADER.unpack(os.pread(f.fd, _HEADER.size, pos))
        if pos + _HEADER.size + length > size:
            break
        payload = os.pread(f.fd, length, pos + _HEADER.size)
        if zlib.crc32(payload) != crc:
            break
        try:
            out.append(_decode(payload))
        except msgspec.DecodeError:
            break
        pos += _HEADER.size + length
    if not out:
        pos = size
    return out, pos


def _count(f: _File) -> int:
    saved = f.offset
    total = 0
    try:
        while f.offset < f.size:
            chunk, f.offset = _read_chunk(f, 4096)
            total += len(chunk)
    finally:
        f.offset = saved
    return total

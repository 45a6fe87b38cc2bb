"""The local disk spool: where frames go while Redis is unreachable.

One append-only file per worker process under ``collector.spool_dir``
(``spool-{pid}-{random}.log``), held with an exclusive ``flock`` for the life of
the process. A worker that starts (or replays) claims every other spool file
it can lock -- the lock is free only when its owner is gone -- so frames
spooled by a crashed or restarted collector are replayed too.

Record: ``len:u32 | crc32:u32 | msgpack([stream, frame])``, little-endian. Each
append is one ``write`` followed by ``fsync`` before the HTTP responses are
sent. A record that fails its length, CRC or decode check is unreadable: the
reader resyncs on the next offset where a whole record validates, so one bad
record costs only itself -- every record after it was acknowledged too. The
unreadable bytes are copied to ``<spool file>.quarantine`` beside it, logged
and counted (``oceanus_spool_quarantined_bytes_total``): ``torn_tail`` when
they run to the end of the file and their header claims more bytes than are
there (an append cut short by a power cut; never acknowledged), ``corrupt``
otherwise.

Replay reads records in order and hands them to a push callback in chunks;
after each acknowledged chunk the read offset is saved beside the file
(``.off``, fsync'd) so a crash during replay re-sends at most one chunk (the
flusher dedupes rows by ``event_id``). A fully replayed file of our own is
truncated; a claimed one is deleted.

Pending bytes are the bytes not yet replayed (size minus the saved offset) of
every ``spool-*.log``; :func:`usage` is the one reading of that from the
directory, for every page that shows it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import struct
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import NamedTuple

import msgspec

_HEADER = struct.Struct("<II")
#: Records handed to one replay push (one pipelined round trip, then one fsync of
#: the offset). 4,096 was measured against it and was no faster (bench/RESULTS.md,
#: "Spool replay").
REPLAY_CHUNK_RECORDS = 256
#: ... and at most about this many bytes, so frames near the size limit do not make
#: one round trip of hundreds of megabytes.
REPLAY_CHUNK_BYTES = 4_194_304
#: The spool counts as full when less room than this is left (readiness).
FULL_MARGIN_BYTES = 65_536
#: Replay rate to plan drain budgets with: below the slowest measured (one-event
#: frames into ``appendfsync always`` Redis on a shared 2-core box: 6-25 MB/s, and
#: 4-6 MB/s while other test suites ran; bench/RESULTS.md, "Spool replay").
REPLAY_PLANNING_BYTES_PER_S = 5_000_000
#: Drain seconds besides the replay: in-flight requests and the queued batch.
DRAIN_BASE_S = 10.0
#: Bytes read per step while looking for the next valid record after a bad one.
RESYNC_BLOCK_BYTES = 1_048_576
#: Suffix of the file beside a spool file that keeps its unreadable bytes.
QUARANTINE_SUFFIX = ".quarantine"
#: Reasons bytes are quarantined (the metric's ``reason`` label).
TORN_TAIL = "torn_tail"
CORRUPT = "corrupt"
# Every payload is msgpack([stream, frame]): a fixarray of two starts with this
# byte, so the resync scan checks a CRC only where it appears.
_PAYLOAD_START = b"\x92"

Record = tuple[str, bytes]
Push = Callable[[list[Record]], Awaitable[None]]

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(tuple[str, bytes]).decode
log = logging.getLogger("oceanus.collector")


def drain_budget_s(max_bytes: int) -> float:
    """``collector.drain_timeout_s`` that replays a full spool of ``max_bytes`` on SIGTERM."""
    return DRAIN_BASE_S + max_bytes / REPLAY_PLANNING_BYTES_PER_S


class Usage(NamedTuple):
    """Pending (not yet replayed) bytes in a spool directory, and the files holding them."""

    bytes: int
    files: int


class Bad(NamedTuple):
    """Unreadable bytes ``[start, end)`` of a spool file, and why (``TORN_TAIL`` or ``CORRUPT``)."""

    start: int
    end: int
    reason: str


def _pending(size: int, offset: int) -> int:
    # An offset past the end (the file was truncated under it) replays the whole file.
    return size - offset if 0 <= offset <= size else size


def usage(directory: str | os.PathLike[str], unowned_only: bool = False) -> Usage:
    """Pending spool bytes of every worker's file under ``directory``.

    The one reading of the spool's depth from disk: ``oceanus status`` and the
    collector's ``/_/status`` both call it, so they cannot disagree. Replayed
    bytes (before the saved offset), ``.off`` and quarantine files are not
    pending. ``unowned_only``: only files no live process holds (left behind).
    """
    total = files = 0
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return Usage(0, 0)
    for entry in entries:
        if not (entry.name.startswith("spool-") and entry.name.endswith(".log")):
            continue
        try:
            size = entry.stat().st_size
        except OSError:
            continue
        pending = _pending(size, _read_offset(Path(entry.path)))
        if pending > 0 and unowned_only and not _unowned(Path(entry.path)):
            continue
        if pending > 0:
            total += pending
            files += 1
    return Usage(total, files)


class _File:
    __slots__ = ("fd", "frames", "offset", "own", "path", "quarantined_to", "size")

    def __init__(self, path: Path, fd: int, own: bool) -> None:
        self.path = path
        self.fd = fd
        self.own = own
        self.size = os.fstat(fd).st_size
        self.offset = _read_offset(path)
        if self.offset > self.size:
            self.offset = 0
        self.frames = 0
        # Bad bytes before this offset are already in the quarantine file: a replay
        # that re-reads them (its push failed) must not copy or count them twice.
        self.quarantined_to = self.offset

    @property
    def pending_bytes(self) -> int:
        return _pending(self.size, self.offset)


def _offset_path(path: Path) -> Path:
    return path.with_suffix(".off")


def quarantine_path(path: Path) -> Path:
    return path.with_suffix(QUARANTINE_SUFFIX)


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


def _unowned(path: Path) -> bool:
    """No process holds ``path``'s lock (a shared probe, released at once)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return False
    finally:
        os.close(fd)  # closing drops the probe's lock
    return True


class Spool:
    """Bounded, fsync'd, ordered. Not thread-safe: one owner task uses it."""

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self._files: list[_File] = []  # claimed orphans first (oldest first), ours last
        self._own: _File | None = None
        #: Bytes moved to quarantine files since open, by reason (for the metric).
        self.quarantined: dict[str, int] = {TORN_TAIL: 0, CORRUPT: 0}

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
        """Push pending records in order (``max_records`` if given, in chunks of at
        most that many; else all); returns how many were pushed.

        ``push`` raising stops the replay where it is (the offset is kept).
        """
        pushed = 0
        for f in list(self._files):
            while f.pending_bytes:
                if max_records is not None and pushed >= max_records:
                    return pushed
                # The last chunk of a bounded replay takes only what is left of the bound.
                limit = REPLAY_CHUNK_RECORDS if max_records is None else min(REPLAY_CHUNK_RECORDS, max_records - pushed)
                chunk, end = await asyncio.to_thread(self._read, f, limit)
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

    def _read(self, f: _File, limit: int) -> tuple[list[Record], int]:
        """The next chunk of ``f``; its unreadable bytes go to quarantine first (blocking)."""
        chunk, end, bad = _read_chunk(f, limit, REPLAY_CHUNK_BYTES)
        for b in bad:
            if b.start >= f.quarantined_to:
                self._quarantine(f, b)
                f.quarantined_to = b.end
        return chunk, end

    def _quarantine(self, f: _File, bad: Bad) -> None:
        data = os.pread(f.fd, bad.end - bad.start, bad.start)
        qpath = quarantine_path(f.path)
        fd = os.open(qpath, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.quarantined[bad.reason] += len(data)
        if bad.reason == CORRUPT:
            log.error(
                "spool %s: %d unreadable bytes at offset %d skipped (resynced on the next valid record), copied to %s",
                f.path,
                len(data),
                bad.start,
                qpath,
            )
        else:
            log.warning(
                "spool %s: torn tail of %d bytes at offset %d (an append cut short, never acknowledged), copied to %s",
                f.path,
                len(data),
                bad.start,
                qpath,
            )

    def _finish(self, f: _File) -> None:
        """A file is fully replayed: truncate ours, delete a claimed one."""
        if f.own:
            os.ftruncate(f.fd, 0)
            os.fsync(f.fd)
            f.size = f.offset = f.frames = f.quarantined_to = 0
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


def _read_chunk(f: _File, limit: int, max_bytes: int) -> tuple[list[Record], int, list[Bad]]:
    """Up to ``limit`` valid records (and about ``max_bytes``) from ``f.offset``,
    the offset after them, and the unreadable byte ranges skipped on the way.

    A record that fails a check is skipped up to the next offset where a whole
    record validates (header in bounds, CRC, decode); with none left, the rest
    of the file is skipped.
    """
    out: list[Record] = []
    bad: list[Bad] = []
    size = f.size
    pos = f.offset
    stop = pos + max_bytes
    while len(out) < limit and pos < min(size, stop):
        record, end = _record_at(f.fd, pos, size)
        if record is not None:
            out.append(record)
            pos = end
            continue
        resync = _next_record(f.fd, pos + 1, size)
        if resync is None:
            bad.append(Bad(pos, size, TORN_TAIL if _runs_past_end(f.fd, pos, size) else CORRUPT))
            pos = size
        else:
            bad.append(Bad(pos, resync, CORRUPT))
            pos = resync
    return out, pos, bad


def _record_at(fd: int, pos: int, size: int) -> tuple[Record | None, int]:
    """The record at ``pos`` and the offset after it, or (None, pos) if it does not validate."""
    if pos + _HEADER.size > size:
        return None, pos
    length, crc = _HEADER.unpack(os.pread(fd, _HEADER.size, pos))
    end = pos + _HEADER.size + length
    if end > size:
        return None, pos
    payload = os.pread(fd, length, pos + _HEADER.size)
    if zlib.crc32(payload) != crc:
        return None, pos
    try:
        return _decode(payload), end
    except msgspec.DecodeError:
        return None, pos


def _next_record(fd: int, start: int, size: int) -> int | None:
    """The first offset at or after ``start`` where a whole record validates."""
    pos = start
    while pos + _HEADER.size < size:
        # Candidate offsets pos .. pos+len(block)-1; block holds their payloads' first bytes.
        block = os.pread(fd, RESYNC_BLOCK_BYTES, pos + _HEADER.size)
        if not block:
            return None
        i = block.find(_PAYLOAD_START)
        while i != -1:
            if _record_at(fd, pos + i, size)[0] is not None:
                return pos + i
            i = block.find(_PAYLOAD_START, i + 1)
        pos += len(block)
    return None


def _runs_past_end(fd: int, pos: int, size: int) -> bool:
    """The bytes from ``pos`` to the end are the start of a record cut short."""
    if pos + _HEADER.size > size:
        return True
    length: int = _HEADER.unpack(os.pread(fd, _HEADER.size, pos))[0]
    return pos + _HEADER.size + length > size


def _count(f: _File) -> int:
    saved = f.offset
    total = 0
    try:
        while f.offset < f.size:
            chunk, f.offset, _ = _read_chunk(f, REPLAY_CHUNK_RECORDS, REPLAY_CHUNK_BYTES)
            total += len(chunk)
    finally:
        f.offset = saved
    return total

"""The Redis contract between the collector and the flusher.

Everything that reads or writes oceanus's Redis keys goes through the names
and the codec in this module.

Keys (``P`` is ``redis.key_prefix``, default ``oceanus``)::

    P:q:{stream}                 LIST   frames waiting to be flushed (RPUSH by collectors)
    P:inflight:{stream}:{owner}:{seq}
                                 LIST   frames claimed by one flusher instance
    P:inflight-index:{stream}    SET    names of the stream's in-flight keys
    P:state:{inflight key}       HASH   sink write state kept beside a claimed batch
    P:hb:{owner}                 STRING heartbeat of a flusher instance (TTL)
    P:dead:{stream}              LIST   rows the warehouse refused, with its reason
    P:stats:{stream}:{minute}    HASH   collector counters for one UTC minute (``minute`` =
                                        unix seconds // 60); fields ``accepted`` and
                                        ``rejected`` (events); TTL STATS_TTL_S (48 h)
    P:recent-errors              LIST   newest first, capped at RECENT_ERRORS_MAX items; each
                                        item is JSON ``{"stream", "field", "rule", "at"}``
                                        (``at`` unix seconds) -- never the payload

Collectors write the stats and recent errors in the same pipeline as their
RPUSH, once per micro-batch, never per event.

Frame: one list item holds one collector micro-batch of one stream::

    b"O1" + zlib( msgpack( [columns, rows] ) )

``columns`` is the list of column names the rows were encoded with (the
stream's ``columns`` when the collector encoded them, so a config change while
frames are buffered is harmless); ``rows`` is a list of arrays in that order.
Column values: ``event_id`` 16 raw bytes (time-ordered, see :class:`EventIds`),
``received_at`` int microseconds since the epoch (UTC), ``ip``/``ua``/``device``
str, string fields str, int/float/bool as such, timestamp int microseconds,
json the JSON text (str), ``extra`` the JSON text of unknown keys or nil.
Absent optional values are nil.

Why one compressed item per micro-batch: Redis memory divided by bytes per
buffered event is how long an outage oceanus rides out. A plain JSON item per
event costs well over 200 B in Redis for a ~170 B pageview; a compressed frame
of many similar rows costs a fraction of that.
"""

from __future__ import annotations

import os
import time
import zlib
from collections.abc import Sequence
from typing import Any

import msgspec

FRAME_MAGIC = b"O1"
#: Lifetime of one per-minute stats hash (48 h in seconds).
STATS_TTL_S = 172_800
#: Validation errors kept in ``P:recent-errors``.
RECENT_ERRORS_MAX = 100

#: zlib level 1: most of the ratio of level 6 on repetitive rows, several times faster.
FRAME_ZLIB_LEVEL = 1

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(tuple[list[str], list[list[Any]]])


class FrameError(ValueError):
    """A Redis item is not an oceanus frame."""


def encode_frame(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> bytes:
    return FRAME_MAGIC + zlib.compress(_encoder.encode((columns, rows)), FRAME_ZLIB_LEVEL)


def decode_frame(item: bytes) -> tuple[list[str], list[list[Any]]]:
    if not item.startswith(FRAME_MAGIC):
        raise FrameError("not an oceanus frame (bad magic)")
    try:
        return _decoder.decode(zlib.decompress(memoryview(item)[len(FRAME_MAGIC) :]))
    except (zlib.error, msgspec.DecodeError) as exc:
        raise FrameError(f"corrupt frame: {exc}") from None


class Keys:
    """Key names under one prefix."""

    __slots__ = ("prefix",)

    def __init__(self, prefix: str = "oceanus") -> None:
        self.prefix = prefix

    def queue(self, stream: str) -> str:
        return f"{self.prefix}:q:{stream}"

    def inflight(self, stream: str, owner: str, seq: int) -> str:
        return f"{self.prefix}:inflight:{stream}:{owner}:{seq}"

    def inflight_index(self, stream: str) -> str:
        return f"{self.prefix}:inflight-index:{stream}"

    def state(self, inflight_key: str) -> str:
        return f"{self.prefix}:state:{inflight_key}"

    def heartbeat(self, owner: str) -> str:
        return f"{self.prefix}:hb:{owner}"

    def dead(self, stream: str) -> str:
        return f"{self.prefix}:dead:{stream}"

    def stats(self, stream: str, minute: int) -> str:
        """Per-minute counters of one stream (``minute`` = unix seconds // 60)."""
        return f"{self.prefix}:stats:{stream}:{minute}"

    def recent_errors(self) -> str:
        return f"{self.prefix}:recent-errors"

    @staticmethod
    def owner_of(inflight_key: str) -> str:
        """The owner part of an in-flight key (``P:inflight:{stream}:{owner}:{seq}``)."""
        return inflight_key.rsplit(":", 2)[-2]


class EventIds:
    """Unique, time-ordered 128-bit event ids without a syscall per id.

    Layout (big-endian): 48-bit unix milliseconds | 48-bit random per process |
    32-bit counter. Sorting by id sorts by receive time (to the millisecond);
    two processes collide only if their 48-bit randoms match (and the counter
    matches within the same millisecond). The random part is re-drawn after a
    fork so granian workers never share it.
    """

    def __init__(self) -> None:
        self._reseed()
        os.register_at_fork(after_in_child=self._reseed)

    def _reseed(self) -> None:
        self._node = int.from_bytes(os.urandom(6), "big") << 32
        self._counter = int.from_bytes(os.urandom(2), "big")

    def new(self, now_ns: int | None = None) -> bytes:
        ms = (now_ns if now_ns is not None else time.time_ns()) // 1_000_000
        self._counter = (self._counter + 1) & 0xFFFFFFFF
        return ((ms << 80) | self._node | self._counter).to_bytes(16, "big")


def event_id_hex(raw: bytes) -> str:
    """The warehouse form of an event id: 32 lowercase hex digits."""
    return raw.hex()


def event_id_time_ms(raw: bytes) -> int:
    return int.from_bytes(raw[:6], "big")

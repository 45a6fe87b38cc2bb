"""A bounded load generator that remembers every acknowledged event.

Each sender is one keep-alive HTTP/1.1 connection sending events one request
at a time, so a sender's sequence numbers are also the order the collector
acknowledged them in. Every event carries a marker in the pageview ``oid``
field (``SSSSQQQQQQQQ``: sender and sequence number in hex, 12 characters of
the field's 16) -- the server sets ``event_id`` itself, so the marker is how an
acknowledgement is matched to a warehouse row.

The load runs on its own thread and event loop, bounded by a duration and an
event count, so a test can kill processes while it runs. Only loopback targets.
"""

from __future__ import annotations

import asyncio
import ipaddress
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

#: One request's bound; an answer later than this counts as not acknowledged.
REQUEST_TIMEOUT_S = 10.0
#: Wait between reconnect attempts of one sender while the collector is down.
RECONNECT_WAIT_S = 0.05
MARKER_SENDERS = 0x10000


def marker(sender: int, seq: int) -> str:
    return f"{sender:04x}{seq:08x}"


def parse_marker(text: str) -> tuple[int, int]:
    return int(text[:4], 16), int(text[4:12], 16)


@dataclass
class LoadResult:
    sent: int = 0
    #: Markers answered with a 2xx, per sender in acknowledgement order.
    acked: dict[int, list[str]] = field(default_factory=dict)
    statuses: Counter[str] = field(default_factory=Counter)
    elapsed_s: float = 0.0
    #: (time.monotonic() of the 2xx, marker) per acknowledged event, in answer order (``record_times``).
    ack_times: list[tuple[float, str]] = field(default_factory=list)

    def acked_between(self, start: float, end: float) -> set[str]:
        """Markers acknowledged in the monotonic-clock window [start, end]."""
        return {m for t, m in self.ack_times if start <= t <= end}

    @property
    def acked_count(self) -> int:
        return sum(len(v) for v in self.acked.values())

    def acked_set(self) -> set[str]:
        return {m for v in self.acked.values() for m in v}


class Load:
    """``senders`` concurrent senders against ``host:port`` until stopped or bounded.

    ``batch`` > 1 posts JSON arrays to ``/e/pageview`` instead of pixel GETs.
    ``rate`` (events/s across all senders) paces the load; 0 means as fast as
    the collector answers.
    """

    def __init__(
        self,
        port: int,
        *,
        senders: int = 8,
        duration_s: float = 10.0,
        max_events: int = 1_000_000,
        batch: int = 1,
        rate: float = 0.0,
        host: str = "127.0.0.1",
        first_sender: int = 0,
        record_times: bool = False,
    ) -> None:
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError("load is only ever aimed at a loopback address")
        if senders + first_sender > MARKER_SENDERS:
            raise ValueError("too many senders for the marker")
        self.host, self.port = host, port
        self.senders, self.duration_s, self.max_events = senders, duration_s, max_events
        self.batch, self.rate, self.first_sender = batch, rate, first_sender
        #: Keep (time, marker) per acknowledgement (memory: only the scenarios that need it ask).
        self.record_times = record_times
        self.result = LoadResult()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._budget = max_events

    # -- control ---------------------------------------------------------------------

    def start(self) -> Load:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="loadgen", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> LoadResult:
        self._stop.set()
        return self.join()

    def join(self) -> LoadResult:
        if self._thread is not None:
            self._thread.join(self.duration_s + REQUEST_TIMEOUT_S * 3)
            if self._thread.is_alive():
                raise RuntimeError("the load generator did not stop within its bound")
        return self.result

    def wait_acked(self, n: int, timeout_s: float) -> bool:
        """True once ``n`` events are acknowledged (polled, bounded)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.result.acked_count >= n:
                return True
            if self._thread is not None and not self._thread.is_alive():
                return self.result.acked_count >= n
            time.sleep(0.02)
        return False

    # -- the load --------------------------------------------------------------------

    async def _main(self) -> None:
        t0 = time.monotonic()
        deadline = t0 + self.duration_s
        await asyncio.gather(*(self._sender(self.first_sender + i, deadline) for i in range(self.senders)))
        self.result.elapsed_s = time.monotonic() - t0

    def _take(self, n: int) -> int:
        # Single event-loop thread: no lock needed.
        n = min(n, self._budget)
        self._budget -= n
        return n

    async def _sender(self, sender: int, deadline: float) -> None:
        res = self.result
        acked = res.acked.setdefault(sender, [])
        seq = 0
        sid = f"{sender:04x}" + "ab" * 6
        interval = self.senders * self.batch / self.rate if self.rate > 0 else 0.0
        next_at = time.monotonic()
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        while not self._stop.is_set() and time.monotonic() < deadline:
            n = self._take(self.batch)
            if n <= 0:
                break
            if interval:
                next_at += interval
                delay = next_at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)  # pacing, not synchronisation
            markers = [marker(sender, seq + i) for i in range(n)]
            seq += n
            res.sent += n
            request = self._request(sid, markers)
            try:
                if conn is None:
                    conn = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), REQUEST_TIMEOUT_S)
                status = await asyncio.wait_for(_exchange(conn, request), REQUEST_TIMEOUT_S)
            except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
                res.statuses[type(exc).__name__] += n
                if conn is not None:
                    conn[1].close()
                conn = None
                await asyncio.sleep(RECONNECT_WAIT_S)
                continue
            res.statuses[str(status)] += n
            if 200 <= status < 300:
                acked.extend(markers)
                if self.record_times:
                    now = time.monotonic()
                    res.ack_times.extend((now, m) for m in markers)
        if conn is not None:
            conn[1].close()

    def _request(self, sid: str, markers: list[str]) -> bytes:
        host = f"{self.host}:{self.port}"
        if self.batch == 1:
            target = f"/b/pageview?sid={sid}&evt=pv&oid={markers[0]}&url=https%3A%2F%2Fexample.com%2Fp&scr=1920x1080"
            return f"GET {target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: oceanus-loadgen\r\n\r\n".encode()
        body = ",".join(f'{{"sid":"{sid}","evt":"pv","oid":"{m}","url":"https://example.com/p"}}' for m in markers)
        data = f"[{body}]".encode()
        head = (
            f"POST /e/pageview HTTP/1.1\r\nHost: {host}\r\nUser-Agent: oceanus-loadgen\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
        )
        return head.encode() + data


async def _exchange(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], request: bytes) -> int:
    reader, writer = conn
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    if length:
        await reader.readexactly(length)
    return status

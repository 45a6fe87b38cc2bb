"""Collector metrics (names: docs/TELEMETRY.md), aggregated across granian workers.

granian runs several worker processes, so ``oceanus collector`` points
``PROMETHEUS_MULTIPROC_DIR`` at a fresh per-run directory before the workers
start; each worker's values live in mmap'd files there and ``GET /metrics``
(answered by any worker) merges them all. Without the variable (the app run
in-process by tests) the values live in an ordinary registry.

The hot path never touches prometheus_client: a request adds to plain dicts
and lists here (:meth:`Metrics.request`), and so does each writer round
(:meth:`Metrics.round`); :meth:`Metrics.flush` moves the sums into the real
metrics at most every few hundred milliseconds, and before a scrape. A
multiprocess-mode ``inc``/``observe`` takes a lock and writes an mmap, several
microseconds per call; this keeps the per-request cost to one dict update.
"""

from __future__ import annotations

import os
from bisect import bisect_left
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from collector.spool import CORRUPT, TORN_TAIL

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
ROUTES = ("pixel", "events", "other")
DURATION_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
PUSH_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


def multiprocess() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


class Metrics:
    """One per worker process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("oceanus_http_requests", "Requests answered", ["stream", "status"], registry=r)
        self.duration = Histogram(
            "oceanus_http_request_duration_seconds",
            "Time from request to response sent",
            ["route"],
            buckets=DURATION_BUCKETS_S,
            registry=r,
        )
        self.accepted = Counter("oceanus_events_accepted", "Events acknowledged", ["stream"], registry=r)
        self.rejected = Counter(
            "oceanus_events_rejected", "Events refused with a 4xx", ["stream", "reason"], registry=r
        )
        self.batch_events = Histogram(
            "oceanus_collector_batch_events", "Events per pipelined RPUSH round", buckets=BATCH_BUCKETS, registry=r
        )
        self.push_duration = Histogram(
            "oceanus_redis_push_duration_seconds", "Pipelined RPUSH round trip", buckets=PUSH_BUCKETS_S, registry=r
        )
        # Gauges: how to merge workers. Up is the worst worker (min), draining any (max), spool a sum.
        self.redis_up = Gauge(
            "oceanus_redis_up", "1 when the last Redis round trip succeeded", multiprocess_mode="livemin", registry=r
        )
        self.spool_bytes = Gauge(
            "oceanus_spool_bytes", "Bytes in the local disk spool", multiprocess_mode="livesum", registry=r
        )
        self.spool_frames = Gauge(
            "oceanus_spool_frames", "Frames waiting in the spool", multiprocess_mode="livesum", registry=r
        )
        self.draining = Gauge("oceanus_collector_draining", "1 after SIGTERM", multiprocess_mode="livemax", registry=r)
        self.spool_quarantined = Counter(
            "oceanus_spool_quarantined_bytes",
            "Unreadable spool bytes skipped and copied to a quarantine file",
            ["reason"],
            registry=r,
        )
        for reason in (TORN_TAIL, CORRUPT):  # exposed at 0, so rate() and the alert see the series start
            self.spool_quarantined.labels(reason)
        self.spool_abandoned = Counter(
            "oceanus_spool_abandoned_bytes",
            "Spool bytes a worker exited with (drain budget spent or Redis down)",
            registry=r,
        )
        self.redis_up.set(1)
        self.spool_bytes.set(0)
        self.spool_frames.set(0)
        self.draining.set(0)
        # Local sums, moved into the metrics above by flush().
        self._requests: dict[tuple[str, int], int] = {}
        self._durations: dict[str, list[int]] = {route: [0] * (len(DURATION_BUCKETS_S) + 1) for route in ROUTES}
        self._duration_sums: dict[str, float] = dict.fromkeys(ROUTES, 0.0)
        self._rejected: dict[tuple[str, str], int] = {}
        self._accepted: dict[str, int] = {}
        self._batches = [0] * (len(BATCH_BUCKETS) + 1)
        self._batch_sum = 0
        self._pushes = [0] * (len(PUSH_BUCKETS_S) + 1)
        self._push_sum = 0.0

    @property
    def dirty(self) -> bool:
        """Counts are waiting to be flushed."""
        return bool(self._requests or self._rejected or self._accepted)

    # -- hot path -------------------------------------------------------------

    def request(self, stream: str, status: int, route: str, seconds: float) -> None:
        key = (stream, status)
        self._requests[key] = self._requests.get(key, 0) + 1
        self._durations[route][bisect_left(DURATION_BUCKETS_S, seconds)] += 1
        self._duration_sums[route] += seconds

    def reject(self, stream: str, reason: str, n: int = 1) -> None:
        key = (stream, reason)
        self._rejected[key] = self._rejected.get(key, 0) + n

    def round(self, accepted: dict[str, list[Any]], events: int) -> None:
        """A writer round stored ``events`` events (``accepted``: stream -> its rows)."""
        for stream, rows in accepted.items():
            self._accepted[stream] = self._accepted.get(stream, 0) + len(rows)
        self._batches[bisect_left(BATCH_BUCKETS, events)] += 1
        self._batch_sum += events

    def push(self, seconds: float) -> None:
        """One Redis round trip of the writer."""
        self._pushes[bisect_left(PUSH_BUCKETS_S, seconds)] += 1
        self._push_sum += seconds

    # -- every few rounds -----------------------------------------------------------

    def flush(self) -> None:
        if self._requests:
            pending, self._requests = self._requests, {}
            for (stream, status), n in pending.items():
                self.requests.labels(stream, str(status)).inc(n)
        if self._rejected:
            rejected, self._rejected = self._rejected, {}
            for (stream, reason), n in rejected.items():
                self.rejected.labels(stream, reason).inc(n)
        if self._accepted:
            accepted, self._accepted = self._accepted, {}
            for stream, n in accepted.items():
                self.accepted.labels(stream).inc(n)
        if any(self._batches):
            _add_to_histogram(self.batch_events, self._batches, self._batch_sum)
            self._batches = [0] * len(self._batches)
            self._batch_sum = 0
        if any(self._pushes):
            _add_to_histogram(self.push_duration, self._pushes, self._push_sum)
            self._pushes = [0] * len(self._pushes)
            self._push_sum = 0.0
        for route, counts in self._durations.items():
            total = sum(counts)
            if not total:
                continue
            _add_to_histogram(self.duration.labels(route), counts, self._duration_sums[route])
            self._durations[route] = [0] * len(counts)
            self._duration_sums[route] = 0.0

    def render(self) -> tuple[bytes, str]:
        """The exposition text of all workers (or of this process)."""
        from prometheus_client import CONTENT_TYPE_LATEST

        self.flush()
        if multiprocess():
            from prometheus_client import multiprocess as mp

            registry = CollectorRegistry()
            mp.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def _add_to_histogram(child: Any, counts: list[int], total: float) -> None:
    """Add pre-bucketed observations to a histogram child.

    prometheus_client has no public bulk ``observe``; its children keep one
    value per bucket (non-cumulative, last one +Inf) and a sum, and those
    values have ``inc`` in both the plain and the multiprocess mode.
    """
    buckets = child._buckets
    for i, n in enumerate(counts):
        if n:
            buckets[i].inc(n)
    child._sum.inc(total)

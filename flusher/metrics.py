"""The flusher's Prometheus metrics, exactly the names in ``docs/TELEMETRY.md``.

One private registry per flusher (tests run several in one process).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

#: Sink write latency buckets (seconds): DuckDB inserts take milliseconds, BigQuery calls up to tens of seconds.
WRITE_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: The values of ``change`` on oceanus_shard_lease_changes_total (flusher/leases.py).
LEASE_CHANGES = ("taken", "released", "lost")


class FlusherMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.backlog_items = Gauge(
            "oceanus_backlog_items", "Frames waiting in one shard's Redis list", ["stream", "shard"], registry=r
        )
        self.inflight_batches = Gauge(
            "oceanus_inflight_batches", "Claimed batches not yet written", ["stream"], registry=r
        )
        self.rows_written = Counter("oceanus_rows_written", "Rows the warehouse accepted", ["stream"], registry=r)
        self.written_bytes = Counter(
            "oceanus_written_bytes", "Bytes of the rows the warehouse accepted (batch nbytes)", ["stream"], registry=r
        )
        self.rows_dead_lettered = Counter(
            "oceanus_rows_dead_lettered",
            "Rows the warehouse refused, moved to the dead-letter list",
            ["stream"],
            registry=r,
        )
        self.batch_target_rows = Gauge(
            "oceanus_batch_target_rows", "The adaptive batch size now", ["stream"], registry=r
        )
        self.sink_write_duration = Histogram(
            "oceanus_sink_write_duration_seconds",
            "One sink write call",
            ["stream"],
            buckets=WRITE_BUCKETS_S,
            registry=r,
        )
        self.sink_retries = Counter(
            "oceanus_sink_retries", "Retried writes by reason", ["stream", "reason"], registry=r
        )
        self.lag_seconds = Gauge("oceanus_lag_seconds", "Age of the oldest unflushed event", ["stream"], registry=r)
        self.redis_used_memory = Gauge("oceanus_redis_used_memory_bytes", "Redis used_memory", registry=r)
        self.redis_maxmemory = Gauge("oceanus_redis_maxmemory_bytes", "Redis maxmemory (0 = unlimited)", registry=r)
        #: Redis Cluster only: 1 for the master serving each shard's slot, so that a node's backlog is
        #: ``oceanus_backlog_items * on (stream, shard) group_left (node) oceanus_shard_node_info``.
        self.shard_node = Gauge(
            "oceanus_shard_node_info",
            "The Redis Cluster master serving a shard's slot (value 1; absent on one Redis)",
            ["stream", "shard", "node"],
            registry=r,
        )
        self._shard_nodes: dict[tuple[str, str], str] = {}
        self.draining = Gauge("oceanus_flusher_draining", "1 after SIGTERM", registry=r)
        self.shard_leases = Gauge(
            "oceanus_shard_leases", "Shards of the stream whose lease this flusher holds", ["stream"], registry=r
        )
        self.lease_changes = Counter(
            "oceanus_shard_lease_changes",
            "Shard leases this flusher took, released (rebalancing, shutdown) or lost (not renewed in time)",
            ["stream", "change"],
            registry=r,
        )
        self.worker_restarts = Counter(
            "oceanus_worker_restarts", "Worker loops restarted after an unexpected exception", ["stream"], registry=r
        )

    def set_shard_node(self, stream: str, shard: int, node: str) -> None:
        """The master now serving a shard ("" unknown); a failover or resharding moves the series."""
        key = (stream, str(shard))
        old = self._shard_nodes.get(key, "")
        if old == node:
            return
        if old:
            self.shard_node.remove(stream, str(shard), old)
        if node:
            self.shard_node.labels(stream, str(shard), node).set(1)
            self._shard_nodes[key] = node
        else:
            self._shard_nodes.pop(key, None)

    def init_stream(self, stream: str, shards: int = 1) -> None:
        """Create the labelled series at 0 so dashboards see every stream from the start."""
        for shard in range(shards):
            self.backlog_items.labels(stream, str(shard))
        self.inflight_batches.labels(stream)
        self.rows_written.labels(stream)
        self.written_bytes.labels(stream)
        self.rows_dead_lettered.labels(stream)
        self.batch_target_rows.labels(stream)
        self.sink_write_duration.labels(stream)
        self.lag_seconds.labels(stream)
        self.worker_restarts.labels(stream)
        self.shard_leases.labels(stream)
        for change in LEASE_CHANGES:
            self.lease_changes.labels(stream, change)

    def render(self) -> bytes:
        return generate_latest(self.registry)

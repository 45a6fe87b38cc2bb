"""``oceanus import``'s Prometheus metrics, exactly the names in ``docs/TELEMETRY.md``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class ImportMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # A private registry (tests run several importers in one process), or the
        # flusher's when it hosts the imports: one /metrics for both.
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.rows = Counter(
            "oceanus_import_rows", "Rows committed to the warehouse (tombstones included)", ["import"], registry=r
        )
        self.watermark_lag = Gauge(
            "oceanus_import_watermark_lag_seconds",
            "Now minus the newest imported cursor value when it is a time, else minus the last complete run",
            ["import"],
            registry=r,
        )
        self.failures = Counter("oceanus_import_failures", "Runs that ended in an error", ["import"], registry=r)
        self.last_success = Gauge(
            "oceanus_import_last_success_timestamp_seconds",
            "Unix time the last run of the import completed",
            ["import"],
            registry=r,
        )

"""The notifier's Prometheus metrics, exactly the names in ``docs/TELEMETRY.md``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

#: Event received -> channel accepted (seconds): a second is normal, minutes mean an outage.
DELIVERY_BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0)
#: Outcomes of ``oceanus_notifications_total``.
OUTCOMES = ("sent", "dead", "held", "duplicate")


class NotifyMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.notifications = Counter(
            "oceanus_notifications",
            "Notifications by outcome: sent, dead (given up), held (rate limit), duplicate (already sent; redelivery)",
            ["rule", "channel", "outcome"],
            registry=r,
        )
        self.matched = Counter("oceanus_notify_matched_events", "Events that matched a rule", ["rule"], registry=r)
        self.retries = Counter(
            "oceanus_notify_retries", "Failed delivery attempts that will be retried", ["channel"], registry=r
        )
        self.frames_backlog = Gauge(
            "oceanus_notify_backlog_frames",
            "Frames waiting in one shard's notify queue",
            ["stream", "shard"],
            registry=r,
        )
        self.jobs_backlog = Gauge(
            "oceanus_notify_backlog_jobs", "Delivery jobs waiting or being delivered", ["channel"], registry=r
        )
        self.dead_letters = Gauge(
            "oceanus_notify_dead_letters", "Jobs in a channel's dead-letter list", ["channel"], registry=r
        )
        self.latency = Histogram(
            "oceanus_notify_delivery_seconds",
            "From the event's receipt by the collector to the channel's acceptance",
            ["channel"],
            buckets=DELIVERY_BUCKETS_S,
            registry=r,
        )
        self.corrupt_frames = Counter(
            "oceanus_notify_corrupt_frames", "Frames that did not decode (skipped)", registry=r
        )
        self.loop_errors = Counter(
            "oceanus_notify_loop_errors",
            "Errors that stopped a pass of one of the notifier's loops (started again after a backoff)",
            ["loop"],
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)

"""BigQuery outage under load: the fault proxy answers 503, then holds requests past the
client timeout, then 429; the backlog grows in Redis, then drains once BigQuery is back.
Ends with the accounting line (rows read back from the emulator) and the drain rate."""

from __future__ import annotations

import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.reliability.harness import STREAM, Stack, Tally
from tests.reliability.loadgen import Load
from tests.support.faultproxy import FaultKind, FaultProxy
from tests.support.servers import BigQueryEmulator, wait_for

#: More than any phase can use: a phase ends with ``clear()``, not by running out.
MANY = 1_000_000
#: The slowest drain the emulator's insertAll has shown (~1,500-1,900 rows/s measured), with room to spare.
#: The load is paced, so the backlog — and the drain — do not grow with the collector's speed.
SLOWEST_DRAIN_ROWS_S = 500.0


def rows_written(stack: Stack) -> float:
    with urllib.request.urlopen(stack.admin_url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    for line in text.splitlines():
        if line.startswith("oceanus_rows_written_total{") and f'stream="{STREAM}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def outage(tmp_path: Path, emulator: BigQueryEmulator, phase_s: float, senders: int, rate: float) -> Tally:
    proxy = FaultProxy(emulator.rest_url).start()
    stack = Stack(
        tmp_path,
        sink="bigquery",
        env={
            "OCEANUS_FLUSHER_HEARTBEAT_TTL_S": "2.0",
            "OCEANUS_FLUSHER_RETRY_MAX_S": "1.0",
            "OCEANUS_SINK_BIGQUERY_PROJECT": emulator.project,
            "OCEANUS_SINK_BIGQUERY_DATASET": f"r_{uuid.uuid4().hex[:10]}",
            "OCEANUS_SINK_BIGQUERY_API_ENDPOINT": proxy.url,
            # The flusher, not the client library, retries; a held request times out in 2 s.
            "OCEANUS_SINK_BIGQUERY_RETRY_DEADLINE_S": "0",
            "OCEANUS_SINK_BIGQUERY_TIMEOUT_S": "2.0",
        },
    )
    stack.bigquery = emulator
    stack.bq_dataset = stack.env()["OCEANUS_SINK_BIGQUERY_DATASET"]
    try:
        stack.start()
        load = Load(stack.port, senders=senders, duration_s=3 * phase_s + 2.0, rate=rate).start()
        wait_for(lambda: proxy.count("insertAll") > 0, timeout=30, what="a first insertAll")
        backlog_peak = 0
        phases: list[FaultKind] = ["unavailable", "hang", "throttled"]
        for kind in phases:
            proxy.inject(kind, times=MANY, path="insertAll", hang_s=5.0)
            end = time.monotonic() + phase_s
            while time.monotonic() < end:
                backlog_peak = max(backlog_peak, stack.backlog_frames())
                time.sleep(0.1)  # sampling the backlog during the phase
            proxy.clear()
        result = load.join()
        recovered_at = time.monotonic()
        written_at_recovery = rows_written(stack)
        backlog = stack.backlog_frames()
        pending = result.acked_count - written_at_recovery
        drain_s = stack.wait_drained(timeout=60 + pending / SLOWEST_DRAIN_ROWS_S)
        drained_rows = rows_written(stack) - written_at_recovery
        faults = {k: proxy.count("insertAll", k) for k in phases}
        print(
            f"bigquery outage {3 * phase_s:g}s: faults answered={faults} backlog peak={backlog_peak} frames, "
            f"at recovery={backlog} frames; drained {drained_rows:.0f} rows in {drain_s:.1f}s "
            f"= {drained_rows / max(drain_s, 1e-3):.0f} rows/s "
            f"(recovery to empty: {time.monotonic() - recovered_at:.1f}s)"
        )
        assert all(faults.values()), f"a fault phase was never exercised: {faults}"
        assert backlog_peak > 0, "the backlog never grew: the outage was not seen"
        return stack.finish(result, "bigquery outage (503, timeouts, 429)")
    finally:
        stack.stop()
        proxy.stop()


def test_bigquery_outage_quick(tmp_path: Path, bq_emulator: BigQueryEmulator) -> None:
    tally = outage(tmp_path, bq_emulator, phase_s=2.5, senders=4, rate=1500)
    assert tally.acked > 0, tally.lost_markers[:20]
    assert tally.lost == 0, tally.lost_markers[:20]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_bigquery_outage_long(tmp_path: Path, bq_emulator: BigQueryEmulator) -> None:
    tally = outage(tmp_path, bq_emulator, phase_s=20.0, senders=8, rate=3000)
    assert tally.acked > 0, tally.lost_markers[:20]
    assert tally.lost == 0, tally.lost_markers[:20]

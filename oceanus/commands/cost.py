"""``oceanus cost``: the monthly BigQuery ingest bill of each stream in each write mode.

Prices: https://cloud.google.com/bigquery/pricing#data_ingestion_pricing (US multi-region, checked 2026-11):

- streaming inserts (``insert_all``): $0.01 per 200 MiB, each row billed at
  least 1 KiB - a 300-byte page view is billed as 1,024 bytes;
- Storage Write API (``storage_write``): $0.025 per GiB, no per-row minimum,
  the first 2 TiB a month free (per billing account, so applied once to the
  sum of all streams);
- batch load jobs (``load``): free (shared slot pool, 1,500 loads/table/day).

Row size is BigQuery's logical size, about the size of the row as JSON. Where
the numbers come from, first found wins: ``--avg-bytes`` / ``--events-per-day``
(per stream); the running flusher's ``/metrics`` (``oceanus_written_bytes_total``
/ ``oceanus_rows_written_total`` for the size, rows over the process's uptime
for the rate); else the command says what to pass.
"""

from __future__ import annotations

import argparse
import time
import urllib.request
from collections.abc import Mapping

import msgspec

from oceanus import config
from oceanus.errors import ConfigError

MIB = 1024**2
GIB = 1024**3
TIB = 1024**4
DAYS_PER_MONTH = 30

STREAMING_USD_PER_200_MIB = 0.01
STREAMING_MIN_ROW_BYTES = 1024
STORAGE_WRITE_USD_PER_GIB = 0.025
STORAGE_WRITE_FREE_BYTES_PER_MONTH = 2 * TIB
LOAD_USD = 0.0

MODES = ("insert_all", "storage_write", "load")

#: Seconds to wait for the flusher's admin endpoint: the command must not hang on it.
METRICS_TIMEOUT_S = 1.0


class Load(msgspec.Struct, frozen=True):
    """One stream's traffic: where each number came from is shown beside it."""

    events_per_day: float
    avg_bytes: float
    source: str


def billed_bytes(mode: str, rows: float, avg_bytes: float) -> float:
    if mode == "insert_all":
        return rows * max(avg_bytes, STREAMING_MIN_ROW_BYTES)
    if mode == "load":
        return 0.0
    return rows * avg_bytes


def gross_usd(mode: str, monthly_bytes: float) -> float:
    """Monthly price before any free tier."""
    if mode == "insert_all":
        return monthly_bytes / (200 * MIB) * STREAMING_USD_PER_200_MIB
    if mode == "storage_write":
        return monthly_bytes / GIB * STORAGE_WRITE_USD_PER_GIB
    return LOAD_USD


def storage_write_usd(total_monthly_bytes: float) -> float:
    """The Storage Write API bill of a billing account, free tier taken off once."""
    return max(0.0, total_monthly_bytes - STORAGE_WRITE_FREE_BYTES_PER_MONTH) / GIB * STORAGE_WRITE_USD_PER_GIB


def monthly_usd(mode: str, events_per_day: float, avg_bytes: float) -> float:
    """One stream alone: what it costs per month in ``mode``, free tier included."""
    logical = events_per_day * DAYS_PER_MONTH * avg_bytes
    if mode == "storage_write":
        return storage_write_usd(logical)
    return gross_usd(mode, billed_bytes(mode, events_per_day * DAYS_PER_MONTH, avg_bytes))


def flusher_metrics(cfg: config.Config, timeout_s: float = METRICS_TIMEOUT_S) -> dict[str, Load]:
    """Per-stream traffic measured by a running flusher, or {} when none answers."""
    from prometheus_client.parser import text_string_to_metric_families

    url = f"http://{cfg.flusher.admin_host}:{cfg.flusher.admin_port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            text = resp.read().decode()
    except (OSError, ValueError):
        return {}
    rows: dict[str, float] = {}
    nbytes: dict[str, float] = {}
    started = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            stream = sample.labels.get("stream", "")
            if sample.name == "oceanus_rows_written_total":
                rows[stream] = sample.value
            elif sample.name == "oceanus_written_bytes_total":
                nbytes[stream] = sample.value
            elif sample.name == "process_start_time_seconds":
                started = sample.value
    uptime_s = time.time() - started if started else 0.0
    out: dict[str, Load] = {}
    for stream, n in rows.items():
        if n <= 0 or stream not in nbytes or uptime_s <= 0:
            continue
        out[stream] = Load(n / uptime_s * 86_400, nbytes[stream] / n, f"flusher metrics, {uptime_s / 3600:.1f} h")
    return out


def stream_loads(
    cfg: config.Config, events_per_day: float | None, avg_bytes: float | None, measured: Mapping[str, Load]
) -> dict[str, Load]:
    out: dict[str, Load] = {}
    for name in cfg.streams:
        m = measured.get(name)
        epd = events_per_day if events_per_day is not None else (m.events_per_day if m else None)
        size = avg_bytes if avg_bytes is not None else (m.avg_bytes if m else None)
        if epd is None or size is None:
            missing = "--events-per-day" if epd is None else "--avg-bytes"
            raise ConfigError(
                f"no traffic measured for stream `{name}` (no flusher metrics at "
                f"{cfg.flusher.admin_host}:{cfg.flusher.admin_port}); pass {missing}"
            )
        given = [k for k, v in (("--events-per-day", events_per_day), ("--avg-bytes", avg_bytes)) if v is not None]
        source = ", ".join([*given, *([m.source] if m and len(given) < 2 else [])])
        out[name] = Load(epd, size, source)
    return out


def report(cfg: config.Config, loads: Mapping[str, Load]) -> str:
    """The table ``oceanus cost`` prints; ``*`` marks each stream's configured mode."""
    lines = [
        f"{'stream':<14}{'events/day':>12}{'avg bytes':>10}{'GiB/month':>11}"
        f"{'insert_all':>13}{'storage_write':>15}{'(no free tier)':>16}{'load':>8}   source",
    ]
    sw_total = 0.0
    chosen_other = 0.0
    for name, stream in cfg.streams.items():
        ld = loads[name]
        gib = ld.events_per_day * DAYS_PER_MONTH * ld.avg_bytes / GIB
        cells = []
        for mode in MODES:
            mark = "*" if stream.mode == mode else " "
            width = {"insert_all": 12, "storage_write": 14, "load": 7}[mode]
            cells.append(f"{_usd(monthly_usd(mode, ld.events_per_day, ld.avg_bytes)):>{width}}{mark}")
            if mode == "storage_write":
                gross = gross_usd(mode, billed_bytes(mode, ld.events_per_day * DAYS_PER_MONTH, ld.avg_bytes))
                cells.append(f"{'(' + _usd(gross) + ')':>16}")
        lines.append(
            f"{name:<14}{ld.events_per_day:>12,.0f}{ld.avg_bytes:>10,.0f}{gib:>11,.2f}{''.join(cells)}   {ld.source}"
        )
        monthly = ld.events_per_day * DAYS_PER_MONTH * ld.avg_bytes
        if stream.mode == "storage_write":
            sw_total += monthly
        elif stream.mode == "insert_all":
            chosen_other += gross_usd(
                "insert_all", billed_bytes("insert_all", ld.events_per_day * DAYS_PER_MONTH, ld.avg_bytes)
            )
    total = chosen_other + storage_write_usd(sw_total)
    lines += [
        "",
        f"configured modes (*): ${total:,.2f}/month "
        f"(Storage Write API's 2 TiB/month free tier applied once across streams; {DAYS_PER_MONTH}-day month)",
        "prices: insert_all $0.01/200 MiB, 1 KiB minimum per row; storage_write $0.025/GiB after 2 TiB/month free; "
        "load free (https://cloud.google.com/bigquery/pricing#data_ingestion_pricing)",
    ]
    return "\n".join(lines)


def _usd(v: float) -> str:
    return f"${v:,.2f}"


def main(args: argparse.Namespace) -> int:
    cfg = config.load(getattr(args, "config", None))
    events_per_day = getattr(args, "events_per_day", None)
    avg_bytes = getattr(args, "avg_bytes", None)
    if events_per_day is not None and events_per_day < 0:
        raise ConfigError("--events-per-day must be >= 0")
    if avg_bytes is not None and avg_bytes <= 0:
        raise ConfigError("--avg-bytes must be > 0")
    measured = {} if events_per_day is not None and avg_bytes is not None else flusher_metrics(cfg)
    print(report(cfg, stream_loads(cfg, events_per_day, avg_bytes, measured)))
    return 0

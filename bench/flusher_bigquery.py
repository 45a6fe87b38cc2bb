"""BigQuery sink write modes against a local bqemulator: rows/s and the flusher's CPU per row.

``run(mode, rows)`` starts its own emulator on free ports, creates the
``pageview`` table of the repo's ``oceanus.toml``, and writes ``rows``
realistic page views through :class:`BigQuerySink` in batches of the stream's
``batch.max_rows``. ``mode`` is ``insert_all``, ``storage_write`` (proto,
committed stream), ``storage_write:arrow``, ``storage_write:default``,
``load`` (Parquet) or ``load:ndjson``.

- ``rows_per_s``: wall clock over all batches. The emulator (another process
  on the same cores) is the bottleneck here, not BigQuery: compare modes
  with each other, not with production.
- ``cpu_us_per_row``: CPU time of this process only (encoding, the client
  libraries) per row - what the flusher itself spends.

Load-job pacing (one job per table per ``load_interval_s``) is a quota policy,
not work: the bench gives the load writer a clock that jumps past it.

    python -m bench flusher_bigquery --mode storage_write --rows 100000 --json
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import msgspec

from oceanus import config
from oceanus.buffer import EventIds

REPO = Path(__file__).resolve().parent.parent
MODES = ("insert_all", "storage_write", "storage_write:arrow", "storage_write:default", "load", "load:ndjson")


def pageviews(stream: config.StreamConfig, n: int, start: int = 0) -> list[list[Any]]:
    """Rows shaped like bizocean's page views (~350 bytes as JSON), in ``stream.columns`` order."""
    ids = EventIds()
    now_us = time.time_ns() // 1000
    out: list[list[Any]] = []
    for i in range(start, start + n):
        values: dict[str, Any] = {
            "event_id": ids.new(),
            "received_at": now_us + i,
            "ip": f"203.0.113.{i % 250}",
            "ua": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36",
            "device": "pc" if i % 3 else "sp",
            "sid": f"{i * 2654435761 % 2**64:016x}",
            "evt": "pv",
            "uid": f"u{i % 5000}" if i % 4 == 0 else None,
            "oid": f"{i % 9000}",
            "url": f"https://www.bizocean.jp/doc/detail/{i % 90000}/",
            "ref": "https://www.google.com/",
            "tit": f"テンプレート {i % 90000} | bizocean",
            "jsn": None,
            "scr": "1920x1080",
            "vie": "1536x740",
            "enc": "UTF-8",
            "extra": None,
        }
        out.append([values.get(c) for c in stream.columns])
    return out


def _config(emu: Any, mode: str) -> config.Config:
    base, _, variant = mode.partition(":")
    cfg = config.load(REPO / "oceanus.toml", env={})
    pageview = msgspec.structs.replace(cfg.streams["pageview"], mode=base)
    bq = msgspec.structs.replace(
        cfg.sink.bigquery,
        project=emu.project,
        dataset=f"bench_{uuid.uuid4().hex[:8]}",
        api_endpoint=emu.rest_url,
        grpc_endpoint=emu.grpc_target,
        retry_deadline_s=30.0,
        timeout_s=120.0,
        load_interval_s=60.0,
        max_rows_per_request=500,
        write_format="arrow" if variant == "arrow" else "proto",
        write_stream="default" if variant == "default" else "committed",
        load_format="ndjson" if variant == "ndjson" else "parquet",
    )
    sink_cfg = msgspec.structs.replace(cfg.sink, kind="bigquery", bigquery=bq)
    return msgspec.structs.replace(cfg, sink=sink_cfg, streams={"pageview": pageview})


def run(mode: str, rows: int) -> dict[str, Any]:
    from flusher.sinks.base import Batch
    from flusher.sinks.bigquery import BigQuerySink
    from tests.support.bq_modes import MemState
    from tests.support.servers import BigQueryEmulator
    from tests.support.spatial import install

    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}")
    install()
    with tempfile.TemporaryDirectory(prefix="oceanus-bench-bq-") as tmp:
        emu = BigQueryEmulator(Path(tmp)).start()
        try:
            cfg = _config(emu, mode)
            stream = cfg.streams["pageview"]
            sink = BigQuerySink(cfg)
            sink.ensure_tables([stream])
            if stream.mode == "load":
                writer: Any = sink._mode_writer("load")
                writer.clock = itertools.count(0.0, 3600.0).__next__
            per_batch = stream.batch.max_rows
            batches = [
                Batch(
                    stream=stream,
                    batch_id=uuid.uuid4().hex,
                    columns=stream.columns,
                    rows=pageviews(stream, min(per_batch, rows - lo), lo),
                )
                for lo in range(0, rows, per_batch)
            ]
            # One small batch first: connections, table metadata, stream creation.
            sink.write(
                Batch(stream=stream, batch_id="warm", columns=stream.columns, rows=pageviews(stream, 10, rows)),
                MemState(),
            )
            cpu0, t0 = time.process_time(), time.perf_counter()
            written = sum(sink.write(b, MemState()).written for b in batches)
            wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            stored = list(sink.client.query(f"SELECT COUNT(*) AS n FROM `{sink.table_id(stream)}`").result())
            sink.close()
        finally:
            emu.stop()
    return {
        "bench": "flusher_bigquery",
        "mode": mode,
        "rows": rows,
        "written": written,
        "stored": int(stored[0]["n"]) - 10,
        "batch_rows": per_batch,
        "seconds": round(wall, 3),
        "rows_per_s": round(written / wall),
        "cpu_us_per_row": round(cpu / max(written, 1) * 1e6, 2),
    }


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench flusher_bigquery")
    p.add_argument("--mode", choices=MODES, action="append", help="repeatable; default: all")
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--json", action="store_true", help="one JSON object per mode, the last line a list of them")
    args = p.parse_args(argv)
    results = []
    for mode in args.mode or MODES:
        result = run(mode, args.rows)
        results.append(result)
        print(
            json.dumps(result)
            if args.json
            else f"{mode:<22} {result['rows_per_s']:>9,} rows/s  {result['cpu_us_per_row']:>7} µs CPU/row",
            file=sys.stderr if args.json else sys.stdout,
        )
    if args.json:
        print(json.dumps(results if len(results) > 1 else results[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

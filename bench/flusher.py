"""``python -m bench flusher --rows N [--json] [--mode duckdb|postgres|mysql|insert_all|storage_write|load]``

DuckDB mode: pre-fills a real redis-server (a child on a free port, AOF with
``appendfsync always`` as in the k8s Redis) with N realistic pageview rows as
collector frames, then runs the real flusher loop (claim -> decode -> DuckDB
-> release) into a DuckDB file in a temp dir until the queue and the in-flight
keys are empty. Reports rows/s of the drain and the flusher process's CPU time
per row (all its threads; redis-server is a separate process, not counted).

The postgres and mysql modes run the same drain into the machine's PostgreSQL
(127.0.0.1:5432, db test) or MariaDB (127.0.0.1:3306), in a schema / database
of their own that is dropped afterwards.

The BigQuery modes are measured by ``bench.flusher_bigquery.run(mode, rows)``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec

from flusher.runner import Flusher
from flusher.sinks.duckdb import DuckDBSink
from oceanus import config
from oceanus.buffer import EventIds, Keys, encode_frame
from oceanus.config import StreamConfig

#: Rows per frame: a busy collector's micro-batch (collector.batch_max_events is 1024).
DEFAULT_FRAME_ROWS = 500
#: Frames per RPUSH while pre-filling.
PUSH_CHUNK_FRAMES = 200
#: The drain must finish within this (seconds); the bench fails rather than hang.
DRAIN_TIMEOUT_S = 600.0
BIGQUERY_MODES = ("insert_all", "storage_write", "load")
#: The SQL-server sinks, measured against the machine's PostgreSQL / MariaDB.
SQL_MODES = ("postgres", "mysql")
#: Age of the pre-filled events (ns): older than any stream's linger.
BACKLOG_AGE_NS = 600 * 10**9

_UAS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1",
)
_PAGES = ("/", "/templates/", "/templates/invoice/", "/templates/estimate/123", "/search?q=receipt", "/login")


def pageview_rows(stream: StreamConfig, n: int, rng: random.Random, ids: EventIds) -> list[list[Any]]:
    # Received a while ago: the queue is a backlog, as after an outage or a flusher
    # restart. Young frames would let the drain's tail wait for company (the linger,
    # max_wait_s / 2), and the bench would time that wait instead of the work.
    now_ns = time.time_ns() - BACKLOG_AGE_NS
    now_us = now_ns // 1000
    rows = []
    for i in range(n):
        page = rng.choice(_PAGES)
        values = {
            "event_id": ids.new(now_ns + i * 1000),
            "received_at": now_us + i,
            "ip": f"203.0.113.{rng.randrange(256)}",
            "ua": rng.choice(_UAS),
            "device": rng.choice(("pc", "sp", "tablet")),
            "sid": f"{rng.getrandbits(64):016x}",
            "evt": "pv",
            "uid": f"u{rng.randrange(10**6)}" if i % 4 == 0 else None,
            "oid": str(rng.randrange(10**5)) if i % 3 == 0 else None,
            "url": "https://www.bizocean.jp" + page,
            "ref": "https://www.google.com/" if i % 2 else None,
            "tit": "書式の王様 bizocean - テンプレート",
            "jsn": '{"ab":"b"}' if i % 10 == 0 else None,
            "scr": "1920x1080",
            "vie": "1280x720",
            "enc": "UTF-8",
            "extra": None,
        }
        rows.append([values.get(c) for c in stream.columns])
    return rows


def prefill(client: Any, keys: Keys, stream: StreamConfig, rows: int, frame_rows: int) -> int:
    rng, ids = random.Random(42), EventIds()
    frames, left, chunk = 0, rows, []
    while left > 0:
        n = min(frame_rows, left)
        chunk.append(encode_frame(stream.columns, pageview_rows(stream, n, rng, ids)))
        left -= n
        frames += 1
        if len(chunk) >= PUSH_CHUNK_FRAMES or left == 0:
            client.rpush(keys.queue(stream.name), *chunk)
            chunk = []
    return frames


async def _drain(flusher: Flusher, stream: str) -> tuple[float, float]:
    task = asyncio.create_task(flusher.run())
    t0, c0 = time.perf_counter(), time.process_time()
    deadline = t0 + DRAIN_TIMEOUT_S
    q, idx = flusher.keys.queue(stream), flusher.keys.inflight_index(stream)
    while True:
        # Polled at a short interval: the drain takes seconds, so 5 ms is noise.
        if await flusher.aredis.llen(q) == 0 and await flusher.aredis.scard(idx) == 0:
            break
        if time.perf_counter() > deadline or task.done():
            raise RuntimeError("the flusher did not drain the queue in time")
        await asyncio.sleep(0.005)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    flusher.stopping.set()
    await task
    await flusher.close()
    return seconds, cpu


def run_duckdb(rows: int, frame_rows: int, max_rows: int | None) -> dict[str, Any]:
    from tests.support.servers import RedisServer

    with tempfile.TemporaryDirectory(prefix="oceanus-bench-") as tmp:
        server = RedisServer(Path(tmp) / "redis").start()
        try:
            cfg = config.load(
                config.REPO_CONFIG,
                env={
                    "OCEANUS_REDIS_URL": server.url,
                    "OCEANUS_SINK_KIND": "duckdb",
                    "OCEANUS_SINK_DUCKDB_PATH": str(Path(tmp) / "warehouse.duckdb"),
                    "OCEANUS_FLUSHER_ADMIN_PORT": "0",
                },
            )
            stream = cfg.streams["pageview"]
            if max_rows is not None:
                batch = msgspec.structs.replace(stream.batch, max_rows=max_rows)
                stream = msgspec.structs.replace(stream, batch=batch)
            # Only the benchmarked stream, so idle streams' polls do not count.
            cfg = msgspec.structs.replace(cfg, streams={"pageview": stream})
            keys = Keys(cfg.redis.key_prefix)
            print(f"pre-filling {rows:,} pageview rows ({frame_rows} per frame)...", file=sys.stderr)
            frames = prefill(server.client(), keys, stream, rows, frame_rows)
            sink = DuckDBSink(cfg)
            sink.ensure_tables([stream])
            flusher = Flusher(cfg, sink)
            seconds, cpu = asyncio.run(_drain(flusher, "pageview"))
            con = DuckDBSink(cfg)
            stored = con.query("SELECT count(*) FROM pageview").rows[0][0]
            con.close()
            if stored != rows:
                raise RuntimeError(f"expected {rows} rows in DuckDB, found {stored}")
            return {
                "bench": "flusher",
                "mode": "duckdb",
                "rows": rows,
                "frames": frames,
                "rows_per_frame": frame_rows,
                "seconds": round(seconds, 3),
                "rows_per_s": round(rows / seconds),
                "cpu_us_per_row": round(cpu / rows * 1e6, 2),
                "final_target_rows": flusher.workers["pageview"].controller.target_rows,
                # Share of the drain spent inside sink.write (Arrow conversion + DuckDB insert):
                # the rest is Redis, frame decoding and the loop.
                "sink_write_share": round(
                    (
                        flusher.metrics.registry.get_sample_value(
                            "oceanus_sink_write_duration_seconds_sum", {"stream": "pageview"}
                        )
                        or 0.0
                    )
                    / seconds,
                    3,
                ),
            }
        finally:
            server.stop()


def run_sql(kind: str, rows: int, frame_rows: int, max_rows: int | None) -> dict[str, Any]:
    """The same drain into PostgreSQL or MariaDB/MySQL: the machine's server, a schema (PostgreSQL) or
    database (MySQL) of its own, dropped afterwards. The server's CPU is not in ``cpu_us_per_row``."""
    import os

    from flusher.sinks import make_sink
    from tests.support.servers import RedisServer
    from tests.support.sqlwarehouse import open_warehouse

    wh = open_warehouse(kind)
    with tempfile.TemporaryDirectory(prefix="oceanus-bench-") as tmp:
        server = RedisServer(Path(tmp) / "redis").start()
        try:
            os.environ.update(wh.env())  # the sink reads its URL from the variable url_env names
            cfg = config.load(
                config.REPO_CONFIG,
                env={
                    "OCEANUS_REDIS_URL": server.url,
                    "OCEANUS_FLUSHER_ADMIN_PORT": "0",
                    **wh.env(),
                },
            )
            cfg = wh.configure(cfg)
            stream = cfg.streams["pageview"]
            if max_rows is not None:
                stream = msgspec.structs.replace(stream, batch=msgspec.structs.replace(stream.batch, max_rows=max_rows))
            cfg = msgspec.structs.replace(cfg, streams={"pageview": stream})
            keys = Keys(cfg.redis.key_prefix)
            print(f"pre-filling {rows:,} pageview rows ({frame_rows} per frame)...", file=sys.stderr)
            frames = prefill(server.client(), keys, stream, rows, frame_rows)
            sink = make_sink(cfg)
            sink.ensure_tables([stream])
            flusher = Flusher(cfg, sink)
            seconds, cpu = asyncio.run(_drain(flusher, "pageview"))
            stored = wh.rows("SELECT count(*), count(DISTINCT event_id) FROM {s}.pageview")[0]
            if tuple(stored) != (rows, rows):
                raise RuntimeError(f"expected {rows} distinct rows in {kind}, found {stored}")
            return {
                "bench": "flusher",
                "mode": kind,
                "rows": rows,
                "frames": frames,
                "rows_per_frame": frame_rows,
                "seconds": round(seconds, 3),
                "rows_per_s": round(rows / seconds),
                "cpu_us_per_row": round(cpu / rows * 1e6, 2),
                "final_target_rows": flusher.workers["pageview"].controller.target_rows,
                "sink_write_share": round(
                    (
                        flusher.metrics.registry.get_sample_value(
                            "oceanus_sink_write_duration_seconds_sum", {"stream": "pageview"}
                        )
                        or 0.0
                    )
                    / seconds,
                    3,
                ),
            }
        finally:
            server.stop()
            wh.drop()


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench flusher")
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--mode", choices=("duckdb", *SQL_MODES, *BIGQUERY_MODES), default="duckdb")
    p.add_argument("--frame-rows", type=int, default=DEFAULT_FRAME_ROWS, help="rows per collector frame")
    p.add_argument("--max-rows", type=int, help="override the stream's batch.max_rows")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = p.parse_args(argv)
    if args.rows <= 0:
        p.error("--rows must be positive")
    if args.mode == "duckdb":
        result = run_duckdb(args.rows, args.frame_rows, args.max_rows)
    elif args.mode in SQL_MODES:
        result = run_sql(args.mode, args.rows, args.frame_rows, args.max_rows)
    else:
        try:
            from bench import flusher_bigquery
        except ImportError:
            print(
                f"--mode {args.mode}: bench/flusher_bigquery.py is not there (the BigQuery benchmark is "
                "not installed in this checkout)",
                file=sys.stderr,
            )
            return 2
        result = dict(flusher_bigquery.run(mode=args.mode, rows=args.rows))
    print(f"{result.get('rows_per_s', 0):,} rows/s, {result.get('cpu_us_per_row')} CPU µs/row", file=sys.stderr)
    print(json.dumps(result) if args.json else result)
    return 0

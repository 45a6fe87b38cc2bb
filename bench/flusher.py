"""``python -m bench flusher --rows N [--mode M] [--repeat K] [--json]``, M: duckdb (default), postgres, mysql,
insert_all, storage_write or load.

DuckDB mode: pre-fills a real redis-server (a child on a free port, AOF with
``appendfsync always`` as in the k8s Redis) with N realistic pageview rows as
collector frames, then runs the real flusher loop (claim -> decode -> DuckDB
-> release) into a DuckDB file in a temp dir until the queue and the in-flight
keys are empty. Reports rows/s of the drain and the flusher process's CPU time
per row (all its threads; redis-server is a separate process, not counted).

In the same process it measures DuckDB's own insert ceiling: the same N rows as
Arrow tables of ``CEILING_BATCH_ROWS`` (built before the clock starts), each
``INSERT INTO pageview SELECT * FROM arrow_batch`` into a fresh file with the
same table and the same settings as the sink (threads, memory limit, DuckDB's
default checkpointing), without the flusher's dedupe anti-join. Both clocks
stop after a final ``CHECKPOINT``: the rows are then in the file, compressed,
whatever point of the WAL's 16 MiB cycle each run ended at.
``ratio_vs_ceiling`` is the flusher's rows/s over the ceiling's. ``--repeat K``
alternates them (ceiling, flusher, ceiling, ...) K times and reports medians.

``stage_cpu_us_per_row`` splits the flusher's CPU by stage, from timers the
bench wraps around the flusher's own calls (per batch, never per row):
``claim`` (the claim script's round trip), ``decode`` (frames -> rows, or
straight to an Arrow table by the native decoder, flusher/_columns.c),
``arrow`` (the sink's ``prepare``), ``insert`` (the sink's ``write``: the
insert and its dedupe) and ``finish`` (the MULTI that drops the claim). The
synchronous stages run on worker threads and are timed with that thread's
CPU clock; ``claim`` and ``finish`` are awaited on the event loop, whose CPU
meanwhile includes whatever else it ran (the drain's poll, heartbeats), so
those two are upper bounds. ``redis_claim_us_per_row`` is redis-server's own
time in the claim script (``INFO commandstats``).

The postgres and mysql modes run the same drain into the machine's PostgreSQL
(127.0.0.1:5432, db test) or MariaDB (127.0.0.1:3306), in a schema / database
of their own that is dropped afterwards.

The BigQuery modes are measured by ``bench.flusher_bigquery.run(mode, rows)``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import pyarrow as pa

from flusher import columns
from flusher.runner import Flusher
from flusher.sinks.common import arrow_types, column_types
from flusher.sinks.duckdb import DuckDBSink
from oceanus import config
from oceanus.buffer import EventIds, Keys, encode_frame
from oceanus.config import Config, StreamConfig

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
#: Rows per Arrow table of the DuckDB insert ceiling: pageview's batch.max_rows in oceanus.toml.
CEILING_BATCH_ROWS = 10_000
#: The flusher's stages, in the order a batch passes them.
STAGES = ("claim", "decode", "arrow", "insert", "finish")

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
    # Until the rows are in the file itself, as for the ceiling: DuckDB compresses
    # a row group when it checkpoints, which costs as much as the inserts, and
    # where the 16 MiB WAL threshold falls in a run would otherwise move both.
    if isinstance(flusher.sink, DuckDBSink):
        await asyncio.to_thread(flusher.sink.checkpoint)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    flusher.stopping.set()
    await task
    await flusher.close()
    return seconds, cpu


class StageTimers:
    """CPU and wall time per flusher stage, from wrappers around the flusher's own calls.

    Installed on one flusher's objects by :meth:`install` (instance attributes, so
    nothing changes for any other flusher and the production code carries no timer).
    """

    def __init__(self) -> None:
        self.cpu_s = dict.fromkeys(STAGES, 0.0)
        self.wall_s = dict.fromkeys(STAGES, 0.0)
        self.calls = dict.fromkeys(STAGES, 0)
        # The decode of the batch claimed ahead runs while the previous one is written.
        self._lock = threading.Lock()

    def _add(self, stage: str, cpu_s: float, wall_s: float) -> None:
        with self._lock:
            self.cpu_s[stage] += cpu_s
            self.wall_s[stage] += wall_s
            self.calls[stage] += 1

    def _wrap_sync(self, stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            c0, t0 = time.thread_time(), time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._add(stage, time.thread_time() - c0, time.perf_counter() - t0)

        return timed

    def _wrap_async(self, stage: str, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(fn)
        async def timed(*args: Any, **kwargs: Any) -> Any:
            c0, t0 = time.thread_time(), time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            finally:
                self._add(stage, time.thread_time() - c0, time.perf_counter() - t0)

        return timed

    def install(self, flusher: Flusher, stream: str) -> None:
        claimer, worker, sink = flusher.claimer, flusher.workers[stream], flusher.sink
        wraps: list[tuple[object, str, str, bool]] = [
            (claimer, "claim", "claim", True),
            (worker.builder, "build", "decode", False),
            (sink, "prepare", "arrow", False),
            (sink, "write", "insert", False),
            (claimer, "finish", "finish", True),
        ]
        for obj, name, stage, is_async in wraps:
            fn = getattr(obj, name)
            setattr(obj, name, self._wrap_async(stage, fn) if is_async else self._wrap_sync(stage, fn))

    def per_row(self, rows: int) -> tuple[dict[str, float], dict[str, float]]:
        """(CPU µs/row, wall µs/row) by stage."""
        cpu = {s: round(self.cpu_s[s] / rows * 1e6, 2) for s in STAGES}
        wall = {s: round(self.wall_s[s] / rows * 1e6, 2) for s in STAGES}
        return cpu, wall


def _duckdb_config(redis_url: str, path: Path, max_rows: int | None) -> Config:
    cfg = config.load(
        config.REPO_CONFIG,
        env={
            "OCEANUS_REDIS_URL": redis_url,
            "OCEANUS_SINK_KIND": "duckdb",
            "OCEANUS_SINK_DUCKDB_PATH": str(path),
            "OCEANUS_FLUSHER_ADMIN_PORT": "0",
        },
    )
    stream = cfg.streams["pageview"]
    if max_rows is not None:
        stream = msgspec.structs.replace(stream, batch=msgspec.structs.replace(stream.batch, max_rows=max_rows))
    # Only the benchmarked stream, so idle streams' polls do not count.
    return msgspec.structs.replace(cfg, streams={"pageview": stream})


def arrow_batches(stream: StreamConfig, rows: int, batch_rows: int = CEILING_BATCH_ROWS) -> list[pa.Table]:
    """``rows`` pageview rows as Arrow tables of ``batch_rows``, in the table's column order and types."""
    rng, ids = random.Random(7), EventIds()
    types = arrow_types(None)
    index = {c: j for j, c in enumerate(stream.columns)}
    tables = []
    for start in range(0, rows, batch_rows):
        block = pageview_rows(stream, min(batch_rows, rows - start), rng, ids)
        names, arrays = [], []
        for name, ftype in column_types(stream):
            values = [r[index[name]] for r in block]
            if name == "event_id":
                arrays.append(pa.array([v.hex() for v in values], pa.string()))
            else:
                arrays.append(pa.array(values, types[ftype]))
            names.append(name)
        tables.append(pa.Table.from_arrays(arrays, names=names))
    return tables


def ceiling_duckdb(cfg: Config, tables: list[pa.Table]) -> dict[str, Any]:
    """DuckDB's plain insert of ready Arrow tables into a fresh file, with the sink's table and settings."""
    stream = cfg.streams["pageview"]
    sink = DuckDBSink(cfg)  # creates the table exactly as the flusher's sink does
    try:
        sink.ensure_tables([stream])
        con = sink.connect()  # the sink's settings: threads, memory_limit, locked down
        try:
            rows = sum(t.num_rows for t in tables)
            t0, c0 = time.perf_counter(), time.process_time()
            for table in tables:
                con.register("arrow_batch", table)
                con.execute(f'INSERT INTO "{stream.name}" SELECT * FROM arrow_batch')
                con.unregister("arrow_batch")
            con.execute("CHECKPOINT")
            seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
            row = con.execute(f'SELECT count(*) FROM "{stream.name}"').fetchone()
            stored = row[0] if row else 0
        finally:
            con.close()
    finally:
        sink.close()
    if stored != rows:
        raise RuntimeError(f"ceiling: expected {rows} rows in DuckDB, found {stored}")
    return {"rows_per_s": rows / seconds, "seconds": seconds, "cpu_us_per_row": cpu / rows * 1e6}


def _redis_counters(client: Any) -> tuple[float, float]:
    """(redis-server CPU seconds, µs spent in EVALSHA: the claim script) so far."""
    cpu = client.info("cpu")
    stats = client.info("commandstats").get("cmdstat_evalsha", {})
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]), float(stats.get("usec", 0))


def drain_duckdb(tmp: Path, rows: int, frame_rows: int, max_rows: int | None, timers: StageTimers) -> dict[str, Any]:
    """One drain of ``rows`` pre-filled rows by the real flusher into a fresh DuckDB file."""
    from tests.support.servers import RedisServer

    server = RedisServer(tmp / "redis").start()
    try:
        cfg = _duckdb_config(server.url, tmp / "warehouse.duckdb", max_rows)
        stream = cfg.streams["pageview"]
        keys = Keys(cfg.redis.key_prefix)
        print(f"pre-filling {rows:,} pageview rows ({frame_rows} per frame)...", file=sys.stderr)
        client = server.client()
        frames = prefill(client, keys, stream, rows, frame_rows)
        sink = DuckDBSink(cfg)
        sink.ensure_tables([stream])
        flusher = Flusher(cfg, sink)
        timers.install(flusher, "pageview")
        redis0 = _redis_counters(client)
        seconds, cpu = asyncio.run(_drain(flusher, "pageview"))
        redis1 = _redis_counters(client)
        client.close()
        con = DuckDBSink(cfg)
        stored = con.query("SELECT count(*) FROM pageview").rows[0][0]
        con.close()
        if stored != rows:
            raise RuntimeError(f"expected {rows} rows in DuckDB, found {stored}")
        return {
            "frames": frames,
            "seconds": seconds,
            "rows_per_s": rows / seconds,
            "cpu_s": cpu,
            "redis_cpu_s": redis1[0] - redis0[0],
            "redis_claim_s": (redis1[1] - redis0[1]) / 1e6,
            "final_target_rows": flusher.workers["pageview"].controller.target_rows,
            # Time inside sink.write (Arrow conversion of unprepared parts + DuckDB insert).
            "sink_write_s": flusher.metrics.registry.get_sample_value(
                "oceanus_sink_write_duration_seconds_sum", {"stream": "pageview"}
            )
            or 0.0,
        }
    finally:
        server.stop()


def run_duckdb(rows: int, frame_rows: int, max_rows: int | None, repeat: int = 1) -> dict[str, Any]:
    timers = StageTimers()
    drains: list[dict[str, Any]] = []
    ceilings: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="oceanus-bench-") as tmp:
        base = _duckdb_config("redis://127.0.0.1:6379/0", Path(tmp) / "unused.duckdb", max_rows)
        tables = arrow_batches(base.streams["pageview"], rows)
        # Alternated, so that noise from the rest of the machine falls on both alike.
        for i in range(repeat):
            path = Path(tmp) / f"ceiling-{i}.duckdb"
            cfg = msgspec.structs.replace(
                base,
                sink=msgspec.structs.replace(
                    base.sink, duckdb=msgspec.structs.replace(base.sink.duckdb, path=str(path))
                ),
            )
            ceilings.append(ceiling_duckdb(cfg, tables))
            print(f"ceiling {i + 1}/{repeat}: {ceilings[-1]['rows_per_s']:,.0f} rows/s", file=sys.stderr)
            drains.append(drain_duckdb(Path(tmp) / f"drain-{i}", rows, frame_rows, max_rows, timers))
            print(f"flusher {i + 1}/{repeat}: {drains[-1]['rows_per_s']:,.0f} rows/s", file=sys.stderr)
    total_rows = rows * repeat
    flusher_rps = statistics.median(d["rows_per_s"] for d in drains)
    ceiling_rps = statistics.median(c["rows_per_s"] for c in ceilings)
    stage_cpu, stage_wall = timers.per_row(total_rows)
    seconds = sum(d["seconds"] for d in drains)
    return {
        "bench": "flusher",
        "mode": "duckdb",
        "rows": rows,
        "repeat": repeat,
        "frames": drains[0]["frames"],
        "rows_per_frame": frame_rows,
        "seconds": round(statistics.median(d["seconds"] for d in drains), 3),
        "rows_per_s": round(flusher_rps),
        "cpu_us_per_row": round(sum(d["cpu_s"] for d in drains) / total_rows * 1e6, 2),
        "final_target_rows": drains[-1]["final_target_rows"],
        # Share of the drain spent inside sink.write (the DuckDB insert with its dedupe):
        # the rest is Redis, frame decoding, Arrow building and the loop.
        "sink_write_share": round(sum(d["sink_write_s"] for d in drains) / seconds, 3),
        "duckdb_ceiling_rows_per_s": round(ceiling_rps),
        "duckdb_ceiling_cpu_us_per_row": round(statistics.median(c["cpu_us_per_row"] for c in ceilings), 2),
        "ceiling_batch_rows": CEILING_BATCH_ROWS,
        "ratio_vs_ceiling": round(flusher_rps / ceiling_rps, 3),
        # Frames decoded by flusher/_columns.c (False: a build without a C compiler, the Python path).
        "native_decoder": columns.AVAILABLE,
        "stage_cpu_us_per_row": stage_cpu,
        "stage_wall_us_per_row": stage_wall,
        "redis_claim_us_per_row": round(sum(d["redis_claim_s"] for d in drains) / total_rows * 1e6, 2),
        "redis_cpu_us_per_row": round(sum(d["redis_cpu_s"] for d in drains) / total_rows * 1e6, 2),
        "runs_rows_per_s": [round(d["rows_per_s"]) for d in drains],
        "runs_ceiling_rows_per_s": [round(c["rows_per_s"]) for c in ceilings],
    }


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
    p.add_argument(
        "--repeat", type=int, default=1, help="duckdb: alternate the ceiling and the flusher this many times"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = p.parse_args(argv)
    if args.rows <= 0:
        p.error("--rows must be positive")
    if args.repeat <= 0:
        p.error("--repeat must be positive")
    if args.mode == "duckdb":
        result = run_duckdb(args.rows, args.frame_rows, args.max_rows, args.repeat)
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

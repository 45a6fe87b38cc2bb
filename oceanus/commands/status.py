"""``oceanus status``: where every event of the local stack is, per stream.

Rows stored come from the warehouse (through :mod:`oceanus.commands.query`, so it works
while the flusher holds DuckDB's lock); the Redis backlog is counted in rows by
decoding the frames (one frame holds a whole collector micro-batch). Frames,
the oldest event and the spool depth (the bytes not yet replayed) are read
through :mod:`collector.status`, the read model behind the collector's
``/_/status`` too; the spool's frames come from the collector's ``/metrics``
while it runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

import msgspec

from collector import status as read_model
from flusher.leases import lease_holders
from oceanus import config, redisclient
from oceanus.buffer import Keys
from oceanus.commands import devstate
from oceanus.commands.query import run_sql
from oceanus.errors import QueryError

#: Frames fetched per LRANGE while counting the backlog.
SCAN_CHUNK_FRAMES = 500
REDIS_TIMEOUT_S = 2.0
#: A status that hangs is worse than one that says "unknown": a busy or paused
#: flusher gets this long to count the rows.
WAREHOUSE_TIMEOUT_S = 5.0


class StreamStatus(msgspec.Struct, kw_only=True):
    rows_stored: int | None = None
    backlog_frames: int | None = None
    backlog_rows: int | None = None
    inflight_rows: int | None = None
    oldest_unflushed_age_s: float | None = None
    dead_letters: int | None = None
    #: Each shard's backlog, the master serving it and the flusher draining it (one entry for a
    #: stream of one shard).
    shards: list[read_model.ShardStatus] = []


class SpoolStatus(msgspec.Struct, kw_only=True):
    frames: int | None = None
    #: Pending (not yet replayed) bytes, from the directory.
    bytes: int = 0
    #: "collector" (frames from its /metrics) or "disk" (collector stopped: no frame count).
    source: str = "disk"


class Status(msgspec.Struct, kw_only=True):
    running: bool
    data_dir: str
    pid: int | None = None
    collector_url: str | None = None
    redis_url: str | None = None
    redis_up: bool = False
    warehouse: str = ""
    warehouse_error: str | None = None
    streams: dict[str, StreamStatus] = {}
    spool: SpoolStatus = msgspec.field(default_factory=SpoolStatus)


class _Acc:
    """Rows and the oldest event over a set of frames."""

    def __init__(self) -> None:
        self.rows = 0
        self.oldest_ms: int | None = None

    def add(self, item: bytes | str) -> None:
        frame = read_model.summarize(item)
        self.rows += frame.rows
        if frame.oldest_ms is not None and (self.oldest_ms is None or frame.oldest_ms < self.oldest_ms):
            self.oldest_ms = frame.oldest_ms


def redis_counts(
    redis_url: str, prefix: str, streams: list[str], now: float, shards: Mapping[str, int] | None = None
) -> dict[str, StreamStatus]:
    """Backlog, in-flight rows, lag and dead letters per stream, summed over its shards
    (``shards``: a stream's count when above 1), and each shard's backlog with the master
    serving it (one instance or a cluster: oceanus/redisclient.py). Raises one of
    :data:`oceanus.redisclient.REDIS_ERRORS`."""
    keys = Keys(prefix)
    rcfg = config.RedisConfig(url=redis_url, key_prefix=prefix, timeout_s=REDIS_TIMEOUT_S)
    client = redisclient.sync_client(rcfg)
    out: dict[str, StreamStatus] = {}
    counts = {name: (shards or {}).get(name, 1) for name in streams}
    try:
        # Every shard's lease holder in one pipelined round.
        holders = lease_holders(client, keys, counts)
        for name in streams:
            queued, inflight = _Acc(), _Acc()
            nframes = dead = 0
            count = counts[name]
            nodes = read_model.shard_nodes(client, keys, name, count)
            per_shard: list[read_model.ShardStatus] = []
            for shard in range(count):
                qkey = keys.queue(name, shard)
                length = int(client.llen(qkey))
                rows_before = queued.rows
                for start in range(0, length, SCAN_CHUNK_FRAMES):
                    for item in client.lrange(qkey, start, start + SCAN_CHUNK_FRAMES - 1):
                        queued.add(item)
                # The map is loaded by the first command: ask for the node after it.
                node = nodes[shard] or redisclient.node_of(client, qkey)
                per_shard.append(
                    read_model.ShardStatus(
                        shard=shard,
                        node=node,
                        backlog_frames=length,
                        backlog_rows=queued.rows - rows_before,
                        flusher=holders[name][shard],
                    )
                )
                for key in client.smembers(keys.inflight_index(name, shard)):
                    for item in client.lrange(key, 0, -1):
                        inflight.add(item)
                nframes += length
                dead += int(client.llen(keys.dead(name, shard)))
            out[name] = StreamStatus(
                backlog_frames=nframes,
                backlog_rows=queued.rows,
                inflight_rows=inflight.rows,
                oldest_unflushed_age_s=read_model.unflushed_age_s(now, (queued.oldest_ms, inflight.oldest_ms)),
                dead_letters=dead,
                shards=per_shard,
            )
    finally:
        client.close()
    return out


def stored_rows(data_dir: Path, streams: list[str]) -> dict[str, int]:
    """Rows per stream table; streams without a table yet are absent."""
    tables = run_sql(
        data_dir,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'",
        timeout=WAREHOUSE_TIMEOUT_S,
    )
    present = {row[0] for row in tables.rows}
    wanted = [s for s in streams if s in present]
    if not wanted:
        return {}
    sql = " UNION ALL ".join(f"SELECT '{s}' AS stream, count(*) AS n FROM \"{s}\"" for s in wanted)
    return {str(row[0]): int(row[1]) for row in run_sql(data_dir, sql, timeout=WAREHOUSE_TIMEOUT_S).rows}


def metric_values(text: str, names: set[str]) -> dict[str, float]:
    """Unlabelled samples from a Prometheus text exposition."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) >= 2 and parts[0] in names:
            try:
                out[parts[0]] = float(parts[1])
            except ValueError:
                continue
    return out


def spool_status(collector_url: str | None, spool_dir: Path) -> SpoolStatus:
    pending = read_model.spool_status(spool_dir).bytes
    if collector_url:
        try:
            with urllib.request.urlopen(collector_url + "/metrics", timeout=REDIS_TIMEOUT_S) as resp:
                values = metric_values(resp.read().decode(), {"oceanus_spool_frames"})
            if "oceanus_spool_frames" in values:
                return SpoolStatus(frames=int(values["oceanus_spool_frames"]), bytes=pending, source="collector")
        except (urllib.error.URLError, OSError):
            pass
    return SpoolStatus(bytes=pending, source="disk")


def collect(data_dir: Path, config_file: str | None = None) -> Status:
    info = devstate.read_dev_info(data_dir)
    cfg = config.load(config_file or (info.config if info else None))
    streams = list(cfg.streams)
    status = Status(
        running=info is not None,
        data_dir=str(data_dir.resolve()),
        pid=info.pid if info else None,
        collector_url=info.collector_url if info else None,
        redis_url=info.redis_url if info else None,
        warehouse=info.duckdb_path if info else str(devstate.warehouse_path(data_dir)),
        streams={name: StreamStatus() for name in streams},
    )
    # The dev stack's Redis while `oceanus dev` runs; else a cluster that `redis.url` names (a
    # cluster is never the dev stack's, so it is read where it is: each shard and its master).
    redis_url, prefix = (info.redis_url, info.key_prefix) if info else (cfg.redis.url, cfg.redis.key_prefix)
    if info is not None or cfg.redis.cluster:
        status.redis_url = redis_url
        try:
            shards = {name: s.shards for name, s in cfg.streams.items()}
            counts = redis_counts(redis_url, prefix, streams, time.time(), shards)
            status.redis_up = True
            status.streams = counts
        except redisclient.REDIS_ERRORS:
            status.redis_up = False
    try:
        for name, n in stored_rows(data_dir, streams).items():
            status.streams[name].rows_stored = n
        for st in status.streams.values():
            if st.rows_stored is None:
                st.rows_stored = 0
    except QueryError as exc:
        status.warehouse_error = str(exc)
    spool_dir = Path(info.spool_dir) if info else data_dir / devstate.SPOOL_DIR
    status.spool = spool_status(info.collector_url if info else None, spool_dir)
    return status


def _n(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _age(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.1f} h"


#: The flusher cell of a shard no flusher holds: its backlog waits until one takes it.
NO_FLUSHER = "none"


def _drained_by(shards: list[read_model.ShardStatus]) -> str:
    """A stream's flusher cell: its one shard's holder, or how many of its shards are held."""
    if not shards:
        return ""  # Redis not read
    if len(shards) == 1:
        return shards[0].flusher or NO_FLUSHER
    held = sum(1 for sh in shards if sh.flusher)
    return f"{held} of {len(shards)} shards held"


def format_table(status: Status) -> str:
    if status.running:
        lines = [
            f"oceanus dev: running (pid {status.pid}); collector {status.collector_url}, "
            f"redis {status.redis_url} ({'up' if status.redis_up else 'NOT ANSWERING'})"
        ]
    elif status.redis_url:
        seeds = status.redis_url.rpartition("@")[2]  # never the password
        lines = [
            f"oceanus dev: not running on {status.data_dir}; Redis Cluster {seeds} "
            f"({'up' if status.redis_up else 'NOT ANSWERING'})"
        ]
    else:
        lines = [
            f"oceanus dev: not running on {status.data_dir}; Redis backlog unknown until it runs "
            "(it is kept in the AOF and flushed on the next start)"
        ]
    lines.append(f"warehouse: {status.warehouse}" + (f" ({status.warehouse_error})" if status.warehouse_error else ""))
    header = ("stream", "rows stored", "backlog rows", "in flight rows", "oldest unflushed", "dead letters", "flusher")
    body = [
        (
            name,
            _n(s.rows_stored),
            _n(s.backlog_rows),
            _n(s.inflight_rows),
            _age(s.oldest_unflushed_age_s),
            _n(s.dead_letters),
            _drained_by(s.shards),
        )
        for name, s in status.streams.items()
    ]
    # A stream of several shards, or on a cluster: a line per shard under it (its backlog, its master,
    # its flusher).
    for name, s in status.streams.items():
        if len(s.shards) > 1 or any(sh.node for sh in s.shards):
            at = next(i for i, r in enumerate(body) if r[0] == name)
            body[at + 1 : at + 1] = [
                (
                    f"  shard {sh.shard}" + (f" @ {sh.node}" if sh.node else ""),
                    "",
                    _n(sh.backlog_rows),
                    "",
                    "",
                    "",
                    sh.flusher or NO_FLUSHER,
                )
                for sh in s.shards
            ]
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(header)]
    last = len(header) - 1
    for row in (header, *body):
        # The stream name and the flusher left-aligned, the numbers right-aligned.
        cells = [v.ljust(w) if i in (0, last) else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
    sp = status.spool
    frames = "" if sp.frames is None else f"{sp.frames:,} frames, "
    where = "frames from the collector, bytes on disk" if sp.source == "collector" else "on disk"
    lines.append(f"spool: {frames}{sp.bytes:,} bytes not yet replayed ({where})")
    return "\n".join(lines)


def to_json(status: Status) -> str:
    return json.dumps(msgspec.to_builtins(status), indent=2)


def main(args: argparse.Namespace) -> int:
    status = collect(Path(args.data_dir), getattr(args, "config", None))
    out = to_json(status) if args.format == "json" else format_table(status)
    sys.stdout.write(out + "\n")
    return 0

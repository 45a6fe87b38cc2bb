"""``oceanus forget --field uid --value X``: delete one person's rows everywhere
oceanus keeps them.

Order matters: Redis first, then the warehouse, so a buffered row cannot land
after the warehouse was cleaned.

1. Redis, per stream that has the column:
   - queued frames (``P:q:{stream}``, read in one snapshot: memory as large as
     the backlog): each frame holding a matching row is decoded, the rows
     dropped, and the frame replaced by its re-encoded rest (or removed) with
     one Lua script that finds the frame by its exact bytes
     (``LPOS``), so it is atomic against collectors appending and flushers
     claiming: a frame claimed meanwhile is simply not found, and counted below;
   - dead letters (``P:dead:{stream}``), removed the same way;
   - claimed batches (``P:inflight:...``) are being written by a flusher and
     are not touched (a sink may be half-way through them): their matching rows
     are counted, and the command exits 1 asking to run it again once they are
     written (``oceanus status``: in-flight rows back at 0).
2. The warehouse, through the sink's own client: DuckDB ``DELETE`` on the file
   (a running flusher holds DuckDB's lock, so it must be stopped first; nothing
   is lost meanwhile, events wait in Redis), BigQuery DML ``DELETE`` (BigQuery
   refuses it for rows still in the streaming buffer of ``insert_all``, up to
   ~30 min: the error says so, run again later).

Not reachable from here: a collector's disk spool (rows wait there only while
Redis is down, and reach Redis, then the warehouse, once it is back: run again
after ``OceanusSpoolInUse`` clears).

Values compare as text: ``--value 42`` matches an int column holding 42.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import msgspec
import redis

from oceanus import config, redisclient
from oceanus.buffer import FrameError, Keys, decode_frame, encode_frame
from oceanus.commands import UsageError
from oceanus.errors import OceanusError

#: Column types ``forget`` compares as text (timestamps and JSON have no single text form).
FORGETTABLE_TYPES = frozenset({"string", "int", "bool"})
#: Server columns that identify a person.
FORGETTABLE_SERVER_COLUMNS = frozenset({"ip"})

# KEYS: list [, the notifier's tap counter of that list].  ARGV: the item's exact bytes, its
# replacement ('' = remove it). Returns 1 when done, 0 when the item is no longer in the list
# (claimed meanwhile). Removing an item of the prefix the tap copied shortens that prefix by one
# (oceanus/buffer.py, "Who changes P:notify:tapped"); a replacement keeps every position.
_REPLACE_LUA = """
local i = redis.call('LPOS', KEYS[1], ARGV[1])
if not i then return 0 end
if ARGV[2] == '' then
  redis.call('LREM', KEYS[1], 1, ARGV[1])
  if #KEYS == 2 then
    local t = tonumber(redis.call('GET', KEYS[2]) or '0')
    if i < t then
      t = math.min(t - 1, redis.call('LLEN', KEYS[1]))
      if t > 0 then redis.call('SET', KEYS[2], t) else redis.call('DEL', KEYS[2]) end
    end
  end
else
  redis.call('LSET', KEYS[1], i, ARGV[2])
end
return 1
"""


class ForgetError(OceanusError):
    """One line for the user."""


class StreamReport(msgspec.Struct):
    stream: str
    queued: int = 0
    dead: int = 0
    in_flight: int = 0
    warehouse: int = 0


def _matches(value: Any, wanted: str) -> bool:
    if value is None:
        return False
    if isinstance(value, str):
        return value == wanted
    if isinstance(value, bool):
        return ("true" if value else "false") == wanted.lower()
    return str(value) == wanted


def streams_with(cfg: config.Config, field: str, only: str | None) -> list[config.StreamConfig]:
    names = [only] if only else list(cfg.streams)
    if only and only not in cfg.streams:
        raise UsageError(f"--stream {only}: no such stream (known: {', '.join(cfg.streams)})")
    out: list[config.StreamConfig] = []
    for name in names:
        stream = cfg.streams[name]
        fc = stream.fields.get(field)
        if field in FORGETTABLE_SERVER_COLUMNS or (fc is not None and fc.type in FORGETTABLE_TYPES):
            out.append(stream)
    if not out:
        raise UsageError(
            f"--field {field}: not a string, int or bool field (or ip) of "
            + (f"stream {only}" if only else "any stream")
        )
    return out


def _scrub_frame(frame: bytes, field: str, wanted: str) -> tuple[int, bytes | None]:
    """(rows dropped, the frame without them: b"" when none is left, None when unchanged)."""
    try:
        columns, rows = decode_frame(frame)
    except FrameError:
        return 0, None
    if field not in columns:
        return 0, None
    idx = columns.index(field)
    kept = [r for r in rows if not _matches(r[idx], wanted)]
    dropped = len(rows) - len(kept)
    if not dropped:
        return 0, None
    return dropped, encode_frame(columns, kept) if kept else b""


def _scrub_dead(item: bytes, field: str, wanted: str) -> int:
    try:
        row = msgspec.json.decode(item).get("row")
    except (msgspec.DecodeError, AttributeError):
        return 0
    return 1 if isinstance(row, dict) and _matches(row.get(field), wanted) else 0


def _items(client: redis.Redis, key: str) -> list[bytes]:
    items: list[bytes] = client.lrange(key, 0, -1)  # type: ignore[assignment]
    return items


def forget_buffered(
    client: redis.Redis, keys: Keys, stream: str, field: str, wanted: str, shards: int = 1
) -> StreamReport:
    report = StreamReport(stream=stream)
    for shard in range(shards):
        _forget_in_shard(client, keys, stream, shard, field, wanted, report)
    return report


def _forget_in_shard(
    client: redis.Redis, keys: Keys, stream: str, shard: int, field: str, wanted: str, report: StreamReport
) -> None:
    replace = client.register_script(_REPLACE_LUA)
    queue = keys.queue(stream, shard)
    # One LRANGE: an atomic snapshot. Indexes would shift under flushers' claims
    # and our own removals; values do not. A frame claimed since the snapshot is
    # not found by the script and shows up in flight below (or, already written,
    # is deleted from the warehouse afterwards).
    for item in _items(client, queue):
        dropped, rest = _scrub_frame(item, field, wanted)
        if rest is not None and replace(keys=[queue, keys.notify_tapped(stream, shard)], args=[item, rest]):
            report.queued += dropped
    dead = keys.dead(stream, shard)
    for item in _items(client, dead):
        if _scrub_dead(item, field, wanted) and replace(keys=[dead], args=[item, b""]):
            report.dead += 1
    index: set[bytes] = client.smembers(keys.inflight_index(stream, shard))  # type: ignore[assignment]
    for key in index:
        for frame in _items(client, key.decode()):
            report.in_flight += _scrub_frame(frame, field, wanted)[0]


def _duckdb_delete(
    cfg: config.Config, streams: Sequence[config.StreamConfig], field: str, wanted: str
) -> dict[str, int]:
    import duckdb

    path = cfg.sink.duckdb.path
    try:
        con = duckdb.connect(path)
    except duckdb.IOException as exc:
        if "lock" in str(exc).lower():
            raise ForgetError(
                f"sink.duckdb.path {path}: a flusher holds the file; stop it (its events wait in Redis), "
                "run oceanus forget, then start it again"
            ) from None
        raise ForgetError(f"sink.duckdb.path {path}: {exc}") from None
    out: dict[str, int] = {}
    try:
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        for s in streams:
            if s.name not in tables:
                out[s.name] = 0
                continue
            q = '"' + field.replace('"', '""') + '"'
            row = con.execute(f'DELETE FROM "{s.name}" WHERE CAST({q} AS VARCHAR) = ?', [wanted]).fetchone()
            out[s.name] = int(row[0]) if row else 0
    finally:
        con.close()
    return out


def _bigquery_delete(
    cfg: config.Config, streams: Sequence[config.StreamConfig], field: str, wanted: str
) -> dict[str, int]:
    from google.api_core import exceptions as gexc
    from google.cloud import bigquery

    from flusher.sinks.bigquery import make_client

    client = make_client(cfg)
    out: dict[str, int] = {}
    try:
        for s in streams:
            table = f"{client.project}.{cfg.sink.bigquery.dataset}.{s.name}"
            job_config = bigquery.QueryJobConfig(
                query_parameters=[bigquery.ScalarQueryParameter("v", "STRING", wanted)]
            )
            sql = f"DELETE FROM `{table}` WHERE CAST(`{field}` AS STRING) = @v"
            try:
                job = client.query(sql, job_config=job_config)
                job.result(timeout=cfg.sink.bigquery.timeout_s * 10)
            except gexc.NotFound:
                out[s.name] = 0
                continue
            except gexc.GoogleAPICallError as exc:
                raise ForgetError(
                    f"BigQuery {table}: {exc.message} (rows still in the streaming buffer "
                    "cannot be deleted for up to ~30 minutes: run again later)"
                ) from None
            out[s.name] = int(job.num_dml_affected_rows or 0)
    finally:
        client.close()  # type: ignore[no-untyped-call]
    return out


def forget(cfg: config.Config, field: str, wanted: str, stream: str | None = None) -> list[StreamReport]:
    streams = streams_with(cfg, field, stream)
    keys = Keys(cfg.redis.key_prefix)
    client = redisclient.sync_client(cfg.redis)
    try:
        reports = [forget_buffered(client, keys, s.name, field, wanted, s.shards) for s in streams]
    except redisclient.REDIS_ERRORS as exc:
        raise ForgetError(f"Redis at {cfg.redis.url.split('@')[-1]}: {exc}") from None
    finally:
        client.close()
    if cfg.sink.kind == "duckdb":
        deleted = _duckdb_delete(cfg, streams, field, wanted)
    else:
        deleted = _bigquery_delete(cfg, streams, field, wanted)
    for r in reports:
        r.warehouse = deleted.get(r.stream, 0)
    return reports


def main(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    reports = forget(cfg, args.field, args.value, args.stream)
    waiting = 0
    for r in reports:
        sys.stdout.write(
            f"{r.stream}: {r.warehouse} row(s) deleted from the warehouse, {r.queued} from queued "
            f"frames, {r.dead} dead letter(s); {r.in_flight} in batches being written\n"
        )
        waiting += r.in_flight
    if waiting:
        sys.stderr.write(
            f"oceanus forget: {waiting} matching row(s) are in batches a flusher is writing now; "
            "run the same command again once they are written (oceanus status: in flight 0)\n"
        )
        return 1
    return 0

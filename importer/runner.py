"""``oceanus import run [NAME]`` and ``oceanus import serve``: the import loop.

One run of one import: describe the allow-listed columns (refusing a missing or
unmappable one), prepare the table and view, read the state, then stream the
source batch by batch, each batch committed with the watermark of its last row.
A full import stamps every row of the run with the same ``_imported_at`` and
points the view at it only once the last batch is in. Deletes: a soft-delete
column sets ``_deleted`` on the row's version; a key diff appends tombstones.

SIGTERM (and SIGINT) set a flag: the batch being written is committed, then
the run ends there (its watermark is stored, the next run goes on from it).
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from types import FrameType
from typing import Any

import msgspec

from importer.columns import Column, decode_watermark, encode_watermark, to_arrow
from importer.metrics import ImportMetrics
from importer.sources import open_source
from importer.targets import open_target
from importer.targets.base import ImportState, Target
from oceanus import config as config_mod
from oceanus.config import Config, ImportConfig
from oceanus.errors import ConfigError, OceanusError, SourceError

log = logging.getLogger("oceanus.import")

#: ``oceanus import serve`` refreshes the lag gauges at least this often (seconds).
GAUGE_REFRESH_S = 15.0
#: Default port of ``oceanus import serve``'s /metrics (0: none).
METRICS_PORT = 9103


class RunResult(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    rows: int
    tombstones: int
    seconds: float
    #: (cursor, key) of the last committed row, None for a full import.
    watermark: tuple[Any, ...] | None
    order: tuple[str, ...]
    #: False when a stop request ended the run before the source was exhausted.
    complete: bool
    #: Unix time the warehouse is current to: the newest cursor value when it is a
    #: time, else the end of this run. ``oceanus_import_watermark_lag_seconds`` is now minus it.
    current_to: float = 0.0

    def summary(self) -> str:
        wm = ""
        if self.watermark is not None:
            values = ", ".join(str(v) for v in self.watermark)
            wm = f", watermark ({', '.join(self.order)}) = ({values})"
        tomb = f" + {self.tombstones} tombstones" if self.tombstones else ""
        stopped = "" if self.complete else " (stopped early; the next run goes on from the watermark)"
        return f"import {self.name}: {self.rows} rows{tomb} in {self.seconds:.2f} s{wm}{stopped}"


def source_url(imp: ImportConfig, env: Mapping[str, str]) -> str:
    url = env.get(imp.source_url_env, "")
    if not url:
        raise ConfigError(
            f"imports.{imp.name}.source_url_env: the environment variable {imp.source_url_env} is not set"
        )
    return url


def run_import(
    cfg: Config,
    imp: ImportConfig,
    *,
    stop: threading.Event | None = None,
    metrics: ImportMetrics | None = None,
    env: Mapping[str, str] | None = None,
    target_opener: Callable[[Config], Target] = open_target,
) -> RunResult:
    """One run of ``imp``; raises :class:`OceanusError` (counted as a failure in ``metrics``).
    ``target_opener``: the warehouse connection (the flusher's database when it hosts the imports)."""
    env = os.environ if env is None else env
    stop = stop or threading.Event()
    try:
        source = open_source(source_url(imp, env), f"imports.{imp.name}.source_url_env")
        try:
            target = target_opener(cfg)
            try:
                result = _run(imp, source, target, stop, metrics)
            finally:
                target.close()
        finally:
            source.close()
    except Exception:
        if metrics is not None:
            metrics.failures.labels(imp.name).inc()
        raise
    return result


def _check_columns(imp: ImportConfig, columns: Sequence[Column]) -> None:
    where = f"imports.{imp.name}"
    for col in columns:
        if col.kind == "binary" and not imp.allow_binary:
            raise SourceError(
                f"{where}.columns: column `{col.name}` is {col.source_type} (binary); "
                "set allow_binary = true to import it"
            )
        if col.name == imp.cursor_column and col.nullable and imp.mode == "incremental":
            raise SourceError(
                f"{where}.cursor_column: column `{col.name}` may be NULL, and a row with a NULL cursor would "
                'never be imported; declare it NOT NULL (or use mode = "full")'
            )


def _run(
    imp: ImportConfig, source: Any, target: Target, stop: threading.Event, metrics: ImportMetrics | None
) -> RunResult:
    t0 = time.monotonic()
    where = f"imports.{imp.name}"
    try:
        columns = source.describe(imp.table, imp.columns)
    except SourceError as exc:
        raise SourceError(f"{where}.columns: {imp.table}: {exc}") from None
    _check_columns(imp, columns)
    try:
        target.prepare(imp, columns)
    except SourceError as exc:
        raise SourceError(f"{where}.columns: {exc}") from None
    state = target.load_state(imp)
    run_at = dt.datetime.now(dt.UTC)
    if state.last_run_at is not None and run_at <= state.last_run_at:
        # Runs must be stamped in increasing order (the view keeps the newest), even
        # if the clock stepped back.
        run_at = state.last_run_at + dt.timedelta(microseconds=1)

    names = list(imp.columns)
    order: tuple[str, ...] = ()
    after: tuple[Any, ...] | None = None
    if imp.mode == "incremental":
        assert imp.cursor_column is not None  # the config refuses incremental without it
        order = (imp.cursor_column,) if imp.cursor_column == imp.primary_key else (imp.cursor_column, imp.primary_key)
        after = decode_watermark(state.watermark)
    order_idx = [names.index(c) for c in order]
    soft_idx = names.index(imp.soft_delete_column) if imp.soft_delete_column else None

    rows = 0
    batch_no = 0
    watermark = after
    complete = True
    batches = source.rows(imp.table, imp.columns, order, after, imp.batch_rows)
    try:
        for batch in batches:
            table = to_arrow(columns, batch, run_at, soft_idx)
            if order:
                watermark = tuple(batch[-1][i] for i in order_idx)
                state = msgspec.structs.replace(state, watermark=encode_watermark(watermark), last_run_at=run_at)
            else:
                state = msgspec.structs.replace(state, last_run_at=run_at)
            target.write(imp, table, state, batch_no)
            batch_no += 1
            rows += len(batch)
            if metrics is not None:
                metrics.rows.labels(imp.name).inc(len(batch))
            log.info("import %s: batch %d committed (%d rows, %d so far)", imp.name, batch_no, len(batch), rows)
            if stop.is_set():
                complete = False
                break
    except SourceError as exc:
        raise SourceError(f"{where}: {exc}") from None
    finally:
        batches.close()

    tombstones = 0
    if complete and imp.mode == "full":
        state = msgspec.structs.replace(state, full_loaded_at=run_at, last_run_at=run_at)
        target.save_state(imp, state)
    if complete and imp.deletes == "key_diff" and _key_diff_due(imp, state):
        key_col = columns[names.index(imp.primary_key)]
        state = msgspec.structs.replace(state, key_diff_at=dt.datetime.now(dt.UTC), last_run_at=run_at)
        try:
            tombstones = target.tombstone_missing(
                imp, key_col, source.keys(imp.table, imp.primary_key, imp.batch_rows), run_at, state
            )
        except SourceError as exc:
            raise SourceError(f"{where}: {exc}") from None
        if metrics is not None:
            metrics.rows.labels(imp.name).inc(tombstones)
    seconds = time.monotonic() - t0
    current_to = _current_to(columns, order, watermark, time.time())
    if metrics is not None and complete:
        metrics.last_success.labels(imp.name).set(time.time())
        metrics.watermark_lag.labels(imp.name).set(max(0.0, time.time() - current_to))
    return RunResult(
        name=imp.name,
        rows=rows,
        tombstones=tombstones,
        seconds=seconds,
        watermark=watermark,
        order=order,
        complete=complete,
        current_to=current_to,
    )


def _key_diff_due(imp: ImportConfig, state: ImportState) -> bool:
    if imp.key_diff_every_s == 0 or state.key_diff_at is None:
        return True
    return (dt.datetime.now(dt.UTC) - state.key_diff_at).total_seconds() >= imp.key_diff_every_s


def _current_to(
    columns: Sequence[Column], order: Sequence[str], watermark: tuple[Any, ...] | None, now: float
) -> float:
    """The newest imported cursor value when it is a time (naive: taken as UTC); else ``now`` (caught up)."""
    if not order or watermark is None:
        return now
    value = watermark[0]
    if isinstance(value, dt.datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        return min(now, aware.timestamp())
    return now


# --------------------------------------------------------------------------- commands


def _selected(cfg: Config, name: str | None) -> list[ImportConfig]:
    if not cfg.imports:
        raise ConfigError("imports: no [imports.NAME] section in the config")
    if name is None:
        return list(cfg.imports.values())
    if name not in cfg.imports:
        raise ConfigError(f"imports.{name}: no such import (configured: {', '.join(cfg.imports)})")
    return [cfg.imports[name]]


def _install_stop(stop: threading.Event) -> None:
    def handle(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: finishing the current batch, then exiting", signum)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handle)


def run_command(cfg: Config, name: str | None) -> int:
    stop = threading.Event()
    _install_stop(stop)
    failed = 0
    for imp in _selected(cfg, name):
        if stop.is_set():
            break
        try:
            result = run_import(cfg, imp, stop=stop)
        except OceanusError as exc:
            print(f"import {imp.name}: failed: {exc}", file=sys.stderr)
            failed += 1
            continue
        print(result.summary(), flush=True)
    return 1 if failed else 0


def serve_command(cfg: Config, name: str | None, metrics_host: str, metrics_port: int) -> int:
    """Run each import every ``every_s`` until SIGTERM; a failed run is logged, counted and retried next time."""
    stop = threading.Event()
    _install_stop(stop)
    metrics = ImportMetrics()
    if metrics_port:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, addr=metrics_host, registry=metrics.registry)
    serve_loop(cfg, _selected(cfg, name), stop, metrics)
    log.info("stopped")
    return 0


def serve_loop(
    cfg: Config,
    imports: Sequence[ImportConfig],
    stop: threading.Event,
    metrics: ImportMetrics,
    target_opener: Callable[[Config], Target] = open_target,
) -> None:
    """Each import every ``every_s`` until ``stop`` is set (a run in progress commits its batch first)."""
    for imp in imports:
        # Every series exists from the start: an alert on `increase(...)` needs the zero.
        metrics.rows.labels(imp.name)
        metrics.failures.labels(imp.name)
    due = {imp.name: 0.0 for imp in imports}
    current_to: dict[str, float] = {}
    while not stop.is_set():
        for imp in imports:
            if stop.is_set() or time.monotonic() < due[imp.name]:
                continue
            try:
                result = run_import(cfg, imp, stop=stop, metrics=metrics, target_opener=target_opener)
                log.info("%s", result.summary())
                if result.complete:
                    current_to[imp.name] = result.current_to
            except OceanusError as exc:
                log.error("import %s: failed: %s", imp.name, exc)
            except Exception:
                # A bug, not a configuration or source problem: logged with its traceback,
                # counted, and the other imports keep their schedule.
                log.exception("import %s: failed unexpectedly", imp.name)
            due[imp.name] = time.monotonic() + imp.every_s
        for imp_name, since in current_to.items():
            metrics.watermark_lag.labels(imp_name).set(max(0.0, time.time() - since))
        wait = min([GAUGE_REFRESH_S, *(max(0.0, d - time.monotonic()) for d in due.values())])
        stop.wait(wait)


def setup_logging() -> None:
    level = os.environ.get("OCEANUS_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main(args: argparse.Namespace) -> int:
    setup_logging()
    cfg = config_mod.load(getattr(args, "config", None))
    if args.action == "run":
        return run_command(cfg, args.name)
    return serve_command(cfg, args.name, args.metrics_host, args.metrics_port)

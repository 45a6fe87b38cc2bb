"""``oceanus report NAME``: a saved analysis of the EC shop, run on the configured warehouse.

The reports are SQL files in ``oceanus/reports/`` (data, shipped in the wheel):
``<name>.<dialect>.sql``, one per warehouse dialect (``duckdb``, ``bigquery``,
``postgres``, ``mysql``), each opening with the same comment saying what it answers and
which tables it reads. They join the ``ecview`` events with the shop tables
``oceanus import`` keeps (the ``<import>_latest`` views).

DuckDB goes the way ``oceanus query`` goes: the flusher's ``POST /query`` (with
its token) while a flusher holds the file, else the file opened read-only.
BigQuery runs the query through the client, with ``sink.bigquery.dataset`` as
the default dataset so the SQL names tables without it; PostgreSQL and MySQL
through the sink's read-only query (the sink's schema on the search path; the
URL's database). The MySQL dialect (MySQL 8, MariaDB 10.6+) compares text as
``utf8mb4_bin``, as the others compare it: byte for byte, case included.
"""

from __future__ import annotations

import argparse
import importlib.resources
import sys
from pathlib import Path

from flusher.sinks.common import plain
from oceanus import config as config_mod
from oceanus.commands import UsageError, devstate
from oceanus.commands.query import FORMATTERS, QueryError, Result, query_token, run_sql_at, run_sql_sink
from oceanus.config import Config

#: The dialects a report may be written in; ``sink.kind`` picks one.
DIALECTS = ("duckdb", "bigquery", "postgres", "mysql")
#: A BigQuery report waits at most this long for its job (seconds).
BIGQUERY_TIMEOUT_S = 300.0


def _folder() -> importlib.resources.abc.Traversable:
    return importlib.resources.files("oceanus") / "reports"


def available() -> dict[str, dict[str, str]]:
    """name -> dialect -> SQL text, of every report file shipped."""
    found: dict[str, dict[str, str]] = {}
    for entry in _folder().iterdir():
        parts = entry.name.split(".")
        if len(parts) == 3 and parts[2] == "sql" and parts[1] in DIALECTS:
            found.setdefault(parts[0], {})[parts[1]] = entry.read_text(encoding="utf-8")
    return dict(sorted(found.items()))


def summary(sql: str) -> str:
    """The first line of the header comment, without the report's name."""
    first = sql.splitlines()[0].removeprefix("--").strip() if sql else ""
    return first.split(":", 1)[1].strip() if ":" in first else first


def sql_for(name: str, dialect: str) -> str:
    reports = available()
    if name not in reports:
        raise UsageError(f"no report named {name!r}; the reports: {', '.join(reports)}")
    if dialect not in reports[name]:
        raise UsageError(f"report {name} has no {dialect} version (it has: {', '.join(sorted(reports[name]))})")
    return reports[name][dialect]


def run_duckdb(cfg: Config, data_dir: Path, sql: str) -> Result:
    info = devstate.read_dev_info(data_dir)
    # A running `oceanus dev` on --data-dir names its file; otherwise the configured one.
    path = Path(info.duckdb_path) if info is not None else Path(cfg.sink.duckdb.path).resolve()
    return run_sql_at(path, sql, query_token(data_dir))


def run_bigquery(cfg: Config, sql: str) -> Result:
    from google.api_core import exceptions as gexc
    from google.cloud import bigquery

    from flusher.sinks.bigquery import make_client

    client = make_client(cfg)
    try:
        job_config = bigquery.QueryJobConfig(default_dataset=f"{client.project}.{cfg.sink.bigquery.dataset}")
        try:
            rows = client.query(sql, job_config=job_config).result(timeout=BIGQUERY_TIMEOUT_S)
        except gexc.GoogleAPICallError as exc:
            raise QueryError(f"BigQuery: {exc.message}") from None
        columns = [f.name for f in rows.schema]
        return Result(columns=columns, rows=[[plain(v) for v in row.values()] for row in rows])
    finally:
        client.close()  # type: ignore[no-untyped-call]


def run_report(cfg: Config, name: str, data_dir: Path) -> Result:
    kind = cfg.sink.kind
    if kind == "duckdb":
        return run_duckdb(cfg, data_dir, sql_for(name, "duckdb"))
    if kind == "bigquery":
        return run_bigquery(cfg, sql_for(name, "bigquery"))
    if kind in ("postgres", "mysql"):
        # The server itself, read-only, as `oceanus query` asks it (PostgreSQL: the sink's schema first on the
        # search_path; MySQL: the URL's database).
        return run_sql_sink(cfg, sql_for(name, kind))
    raise UsageError(
        f"oceanus report has no {kind} version of its SQL; print the PostgreSQL one with "
        f"`oceanus report {name} --sql --dialect postgres` and adapt it"
    )


def list_reports() -> str:
    return "\n".join(f"{name:<26} {summary(next(iter(d.values())))}" for name, d in available().items())


def main(args: argparse.Namespace) -> int:
    if args.name is None:
        print(list_reports())
        return 0
    if args.sql:
        cfg_kind = args.dialect
        if cfg_kind is None:
            cfg_kind = config_mod.load(getattr(args, "config", None)).sink.kind
        sys.stdout.write(sql_for(args.name, cfg_kind))
        return 0
    cfg = config_mod.load(getattr(args, "config", None))
    result = run_report(cfg, args.name, Path(args.data_dir))
    sys.stdout.write(FORMATTERS[args.format](result) + "\n")
    return 0

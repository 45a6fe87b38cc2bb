"""``oceanus query``: SQL on the local DuckDB warehouse, while ``oceanus dev`` runs or not.

DuckDB lets one process write a database file and no other process open it
meanwhile, not even read-only. So while a flusher holds the file, the query is
sent to the flusher's loopback admin server (``POST /query``), found through the
``<duckdb path>.flusher.json`` file it writes, with the bearer token ``oceanus
dev`` wrote to ``DIR/query.token`` (else ``OCEANUS_QUERY_TOKEN``); when no
flusher runs, the file is opened read-only here.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec

from flusher.sinks.common import plain
from oceanus import config, discovery
from oceanus.commands import devstate
from oceanus.errors import QueryError as QueryError  # re-exported: commands catch it from here

HTTP_TIMEOUT_S = 60.0
#: Sinks on a database server: queried directly (no file lock to go around).
SERVER_SINKS = frozenset({"postgres", "mysql"})
#: Table format: longer cells are cut, so one wide JSON column does not wrap every line.
MAX_CELL_CHARS = 80


class Result(msgspec.Struct, frozen=True):
    columns: list[str]
    rows: list[list[Any]]


class _ErrorBody(msgspec.Struct):
    error: str


def duckdb_path_for(data_dir: Path) -> Path:
    info = devstate.read_dev_info(data_dir)
    return Path(info.duckdb_path) if info is not None else devstate.warehouse_path(data_dir)


def query_token(data_dir: Path, env: Mapping[str, str] | None = None) -> str | None:
    """The token for the flusher's /query: ``oceanus dev``'s file first, then ``OCEANUS_QUERY_TOKEN``."""
    env = os.environ if env is None else env
    return devstate.read_query_token(data_dir) or env.get("OCEANUS_QUERY_TOKEN", "").strip() or None


def _via_flusher(admin_url: str, sql: str, timeout: float, token: str | None = None) -> Result | None:
    """Ask the running flusher; None when nothing listens any more (it just stopped)."""
    headers = {"content-type": "text/plain"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    req = urllib.request.Request(admin_url + "/query", data=sql.encode(), method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return msgspec.json.decode(resp.read(), type=Result)
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            message = msgspec.json.decode(body, type=_ErrorBody).error
        except msgspec.DecodeError:
            message = body.decode(errors="replace").strip() or exc.reason
        raise QueryError(_first_line(message)) from None
    except TimeoutError:
        raise QueryError(f"the flusher at {admin_url} did not answer within {timeout:.0f}s") from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):
            raise QueryError(f"the flusher at {admin_url} did not answer within {timeout:.0f}s") from None
        return None
    except ConnectionError:
        return None
    except msgspec.DecodeError as exc:
        raise QueryError(f"the flusher at {admin_url} sent an answer that is not a query result: {exc}") from None


def _first_line(text: str) -> str:
    return " ".join(text.strip().splitlines()[:1]) or "error"


def _local(path: Path, sql: str) -> Result:
    import duckdb

    if not path.exists():
        raise QueryError(f"no warehouse at {path} yet; start `oceanus dev` (it creates one) or pass --data-dir")
    try:
        con = duckdb.connect(str(path), read_only=True)
    except duckdb.Error as exc:
        text = str(exc)
        if "lock" in text.lower():
            raise QueryError(
                f"{path} is locked by another process and no flusher answers queries for it: {_first_line(text)}"
            ) from None
        raise QueryError(f"cannot open {path}: {_first_line(text)}") from None
    try:
        cur = con.execute(sql)
        columns = [d[0] for d in cur.description] if cur.description else []
        rows = [[plain(v) for v in row] for row in cur.fetchall()] if columns else []
        return Result(columns=columns, rows=rows)
    except duckdb.Error as exc:
        raise QueryError(_first_line(str(exc))) from None
    finally:
        con.close()


def run_sql(data_dir: Path, sql: str, timeout: float = HTTP_TIMEOUT_S) -> Result:
    return run_sql_at(duckdb_path_for(data_dir), sql, query_token(data_dir), timeout)


def run_sql_at(path: Path, sql: str, token: str | None, timeout: float = HTTP_TIMEOUT_S) -> Result:
    """``sql`` on the DuckDB file ``path``: through the flusher holding it, else opened read-only here."""
    flusher = discovery.read_flusher_info(path)
    if flusher is not None:
        result = _via_flusher(flusher.admin_url, sql, timeout, token)
        if result is not None:
            return result
    return _local(path, sql)


# --------------------------------------------------------------------------- output


def _cell(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, dict | list):
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    else:
        text = str(value)
    text = text.replace("\n", "\\n")
    return text if len(text) <= MAX_CELL_CHARS else text[: MAX_CELL_CHARS - 1] + "…"


def format_table(result: Result) -> str:
    if not result.columns:
        return "OK"
    cells = [[_cell(v) for v in row] for row in result.rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(result.columns)]
    numeric = [
        bool(result.rows)
        and all((isinstance(r[i], int | float) and not isinstance(r[i], bool)) or r[i] is None for r in result.rows)
        for i in range(len(result.columns))
    ]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True))

    out = [line(result.columns).rstrip(), "  ".join("-" * w for w in widths)]
    out += [line(r).rstrip() for r in cells]
    n = len(result.rows)
    out.append(f"({n} row{'s' if n != 1 else ''})")
    return "\n".join(out)


def format_csv(result: Result) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(result.columns)
    for row in result.rows:
        writer.writerow(["" if v is None else json.dumps(v) if isinstance(v, dict | list) else v for v in row])
    return buf.getvalue().rstrip("\n")


def format_json(result: Result) -> str:
    objects = [dict(zip(result.columns, row, strict=True)) for row in result.rows]
    return json.dumps(objects, ensure_ascii=False, indent=None)


FORMATTERS = {"table": format_table, "csv": format_csv, "json": format_json}


def run_sql_sink(cfg: config.Config, sql: str) -> Result:
    """PostgreSQL and MySQL serve many readers: ask the server itself, read-only, within
    ``flusher.query_timeout_s`` (the sink's :meth:`query`, as the flusher's ``POST /query``)."""
    from flusher.sinks import make_sink
    from flusher.sinks.base import Queryable

    sink = make_sink(cfg)
    try:
        if not isinstance(sink, Queryable):
            raise QueryError(f"sink.kind: {cfg.sink.kind} does not answer queries here")
        answer = sink.query(sql, cfg.flusher.query_timeout_s)
    finally:
        sink.close()
    return Result(columns=answer.columns, rows=answer.rows)


def main(args: argparse.Namespace) -> int:
    cfg = config.load(getattr(args, "config", None))
    server = cfg.sink.kind in SERVER_SINKS
    result = run_sql_sink(cfg, args.sql) if server else run_sql(Path(args.data_dir), args.sql)
    sys.stdout.write(FORMATTERS[args.format](result) + "\n")
    return 0

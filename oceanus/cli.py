"""The ``oceanus`` command. Each subcommand's code lives with its component and
is imported only when that subcommand runs, so ``oceanus status`` does not pay
for granian or the BigQuery client."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from oceanus.errors import OceanusError

# subcommand -> "module:function"; the function takes the parsed args and returns an exit code.
COMMANDS: dict[str, str] = {
    "collector": "collector.server:main",
    "check-config": "oceanus.commands.checkconfig:main",
    "flusher": "flusher.runner:main",
    "tables": "flusher.tables:main",
    "dev": "oceanus.commands.dev:main",
    "query": "oceanus.commands.query:main",
    "status": "oceanus.commands.status:main",
    "demo": "oceanus.commands.demo:main",
    "cost": "oceanus.commands.cost:main",
    "import": "importer.runner:main",
    "dead": "oceanus.commands.dead:main",
    "forget": "oceanus.commands.forget:main",
}


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="F", help="path to oceanus.toml (default: $OCEANUS_CONFIG, ./oceanus.toml)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="oceanus", description=__doc__.split("\n")[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("collector", help="run the HTTP collector under granian")
    _config_arg(p)
    p.add_argument("--host", help="bind address (default: collector.host)")
    p.add_argument("--port", type=int, help="port (default: collector.port)")
    p.add_argument("--workers", type=int, help="worker processes (default: collector.workers)")

    p = sub.add_parser("check-config", help="validate the config and print the streams")
    _config_arg(p)

    p = sub.add_parser("flusher", help="drain Redis into the warehouse")
    _config_arg(p)

    p = sub.add_parser("tables", help="manage warehouse tables")
    _config_arg(p)
    p.add_argument("action", choices=["sync"], help="sync: create or migrate one table per stream")

    p = sub.add_parser("dev", help="run redis-server, collector and flusher locally")
    _config_arg(p)
    p.add_argument("--data-dir", default=".oceanus", metavar="DIR")
    p.add_argument("--port", type=int, default=8080, metavar="P")

    p = sub.add_parser("query", help="run SQL on the local warehouse")
    p.add_argument("--data-dir", default=".oceanus", metavar="DIR")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p.add_argument("sql")

    p = sub.add_parser("status", help="per-stream backlog, lag and row counts")
    _config_arg(p)
    p.add_argument("--data-dir", default=".oceanus", metavar="DIR")
    p.add_argument("--format", choices=["table", "json"], default="table")

    p = sub.add_parser("demo", help="send realistic traffic to a running collector")
    p.add_argument("--url", default="http://127.0.0.1:8080")
    p.add_argument("--events", type=int, default=1000, metavar="N")
    p.add_argument("--rate", type=float, default=200.0, metavar="R", help="events per second")
    p.add_argument("--report", metavar="FILE", help="write the accepted and rejected demo ids as JSON")
    p.add_argument("--seed", type=int, help="repeat the same traffic mix")

    p = sub.add_parser("import", help="copy shop tables ([imports.NAME]) into the warehouse")
    _config_arg(p)
    p.add_argument("action", choices=["run", "serve"], help="run: each import once; serve: every every_s until SIGTERM")
    p.add_argument("name", nargs="?", help="only this import (default: all)")
    p.add_argument("--metrics-host", default="127.0.0.1", metavar="H", help="serve: /metrics address")
    p.add_argument("--metrics-port", type=int, default=9103, metavar="P", help="serve: /metrics port (0: none)")

    p = sub.add_parser("cost", help="monthly BigQuery ingest bill per stream and mode")
    _config_arg(p)
    p.add_argument("--events-per-day", type=int, metavar="N")
    p.add_argument("--avg-bytes", type=float, metavar="B")

    p = sub.add_parser("dead", help="list, replay or purge the rows the warehouse refused")
    _config_arg(p)
    p.add_argument("action", choices=["list", "replay", "purge"],
                   help="replay: back to the queue, to be written again; purge: delete")
    p.add_argument("--stream", metavar="S", help="one stream (default: every stream)")
    p.add_argument("--limit", type=int, default=20, metavar="N", help="list: items shown per stream")

    p = sub.add_parser("forget", help="delete one person's rows from the warehouse and from Redis")
    _config_arg(p)
    p.add_argument("--field", required=True, metavar="F", help="a string/int/bool field, or ip (e.g. uid)")
    p.add_argument("--value", required=True, metavar="X", help="rows whose field equals X (as text)")
    p.add_argument("--stream", metavar="S", help="one stream (default: every stream with the field)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module_name, func_name = COMMANDS[args.command].split(":")
    try:
        func = getattr(importlib.import_module(module_name), func_name)
        return int(func(args) or 0)
    except OceanusError as exc:
        # Start-up errors are one line and a non-zero exit, never a traceback.
        print(f"oceanus {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

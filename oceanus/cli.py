"""The ``oceanus`` command line. Each subcommand is imported only when it runs, so
``oceanus status`` does not pay for granian or the BigQuery client."""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import sys
from collections.abc import Sequence

from oceanus.commands import EXIT_FAILED, EXIT_USAGE, UsageError
from oceanus.errors import ConfigError, OceanusError

DESCRIPTION = "oceanus: an HTTP event collector. Events into Redis, batches into BigQuery or DuckDB, nothing lost."

# subcommand -> "module:function"; the function takes the parsed args and returns an exit code.
COMMANDS: dict[str, str] = {
    "collector": "collector.server:main",
    "check-config": "oceanus.commands.checkconfig:main",
    "flusher": "oceanus.commands.flusher_imports:main",
    "tables": "flusher.tables:main",
    "dev": "oceanus.commands.dev:main",
    "query": "oceanus.commands.query:main",
    "report": "oceanus.commands.report:main",
    "status": "oceanus.commands.status:main",
    "demo": "oceanus.commands.demo:main",
    "cost": "oceanus.commands.cost:main",
    "import": "importer.runner:main",
    "dead": "oceanus.commands.dead:main",
    "forget": "oceanus.commands.forget:main",
    "notify": "oceanus.commands.notify:main",
}

EPILOG = """\
start here:
  oceanus dev                 Redis, collector and flusher on this machine (data in .oceanus/)
  oceanus demo                send realistic traffic to it
  oceanus status              where every event is: stored, queued, in flight, dead, spooled
  oceanus query "SELECT count(*) FROM pageview"

  oceanus COMMAND --help      options and an example of one command

exit status:
  0    success
  1    failed while running: Redis, the collector or the warehouse did not answer, the SQL
       failed, a process died, or work is left undone (rows being written, events lost)
  2    usage or config error, nothing done: a wrong option, an invalid oceanus.toml or
       OCEANUS_* variable (the message names the key), a busy --port, an unwritable --data-dir
  3    oceanus collector only: it exited with acknowledged events still in its spool
  130  interrupted (Ctrl-C)
"""


def version() -> str:
    try:
        return importlib.metadata.version("oceanus")
    except importlib.metadata.PackageNotFoundError:
        # Run from a source tree that was never installed.
        import oceanus

        return str(getattr(oceanus, "__version__", "unknown"))


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="F", help="path to oceanus.toml (default: $OCEANUS_CONFIG, ./oceanus.toml)")


def _data_dir_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir", default=".oceanus", metavar="DIR", help="the directory of `oceanus dev` (default: %(default)s)"
    )


def _command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, summary: str, *examples: str
) -> argparse.ArgumentParser:
    """A subcommand with a one-line summary (in ``oceanus --help`` too) and its examples."""
    return sub.add_parser(
        name,
        help=summary,
        description=summary,
        epilog="example" + ("s" if len(examples) > 1 else "") + ":\n" + "\n".join(f"  {e}" for e in examples),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="oceanus", description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {version()}", help="print the version and exit"
    )
    sub = parser.add_subparsers(
        dest="command",
        required=True,
        metavar="COMMAND",
        title="commands",
        help="oceanus COMMAND --help: its options and an example",
    )

    p = _command(
        sub,
        "collector",
        "run the HTTP collector under granian",
        "oceanus collector --config oceanus.toml --port 8080 --workers 4",
    )
    _config_arg(p)
    p.add_argument("--host", help="bind address (default: collector.host)")
    p.add_argument("--port", type=int, help="port (default: collector.port)")
    p.add_argument("--workers", type=int, help="worker processes (default: collector.workers)")

    p = _command(
        sub, "check-config", "validate the config and print the streams", "oceanus check-config --config oceanus.toml"
    )
    _config_arg(p)

    p = _command(sub, "flusher", "drain Redis into the warehouse", "oceanus flusher --config oceanus.toml")
    _config_arg(p)

    p = _command(sub, "tables", "manage warehouse tables", "oceanus tables sync --config oceanus.toml")
    _config_arg(p)
    p.add_argument("action", choices=["sync"], help="sync: create or migrate one table per stream")

    p = _command(
        sub,
        "dev",
        "run redis-server, collector and flusher locally",
        "oceanus dev",
        "oceanus dev --port 9000 --data-dir /tmp/oc",
    )
    _config_arg(p)
    _data_dir_arg(p)
    p.add_argument(
        "--port",
        type=int,
        default=8080,
        metavar="P",
        help="the collector's port (default: %(default)s; 0: any free port)",
    )

    p = _command(
        sub,
        "query",
        "run SQL on the local warehouse",
        'oceanus query "SELECT evt, count(*) AS n FROM pageview_dedup GROUP BY ALL"',
        'oceanus query --format csv "SELECT * FROM form" > form.csv',
    )
    _config_arg(p)
    _data_dir_arg(p)
    p.add_argument(
        "--format", choices=["table", "csv", "json"], default="table", help="output format (default: %(default)s)"
    )
    p.add_argument("sql", help="one read-only SQL statement (the warehouse's dialect: DuckDB, PostgreSQL, MySQL)")

    p = _command(
        sub,
        "report",
        "run a saved EC shop analysis (views, conversion) on the warehouse",
        "oceanus report",
        "oceanus report item_conversion_7d",
        "oceanus report viewed_not_bought --format csv > not_bought.csv",
        "oceanus report views_by_occupation_age --sql --dialect bigquery",
    )
    _config_arg(p)
    _data_dir_arg(p)
    p.add_argument("name", nargs="?", help="the report (default: list the reports and what each answers)")
    p.add_argument(
        "--format", choices=["table", "csv", "json"], default="table", help="output format (default: %(default)s)"
    )
    p.add_argument("--sql", action="store_true", help="print the report's SQL instead of running it")
    p.add_argument(
        "--dialect",
        choices=["duckdb", "bigquery", "postgres", "mysql"],
        help="with --sql: the dialect to print (default: the configured sink.kind's)",
    )

    p = _command(
        sub, "status", "per-stream backlog, lag and row counts", "oceanus status", "oceanus status --format json"
    )
    _config_arg(p)
    _data_dir_arg(p)
    p.add_argument("--format", choices=["table", "json"], default="table", help="output format (default: %(default)s)")

    p = _command(
        sub,
        "demo",
        "send realistic traffic to a running collector",
        "oceanus demo --events 1000",
        "oceanus demo --url http://127.0.0.1:9000 --rate 50 --seed 1",
        "oceanus demo --shop    # a shop's members, items and orders, and their page views; then oceanus report",
    )
    p.add_argument("--url", default="http://127.0.0.1:8080", help="the collector (default: %(default)s)")
    p.add_argument("--events", type=int, default=1000, metavar="N", help="events to send (default: %(default)s)")
    p.add_argument("--rate", type=float, default=200.0, metavar="R", help="events per second (default: %(default)s)")
    p.add_argument("--report", metavar="FILE", help="write the accepted and rejected demo ids as JSON")
    p.add_argument("--seed", type=int, help="repeat the same traffic mix")
    p.add_argument(
        "--shop",
        action="store_true",
        help="the EC shop instead: its tables in DIR/shop.sqlite (imported by the flusher) and --events page views",
    )
    _data_dir_arg(p)

    p = _command(
        sub,
        "import",
        "copy shop tables ([imports.NAME]) into the warehouse",
        "oceanus import run",
        "oceanus import run users",
        "oceanus import serve --metrics-port 9103",
    )
    _config_arg(p)
    p.add_argument("action", choices=["run", "serve"], help="run: each import once; serve: every every_s until SIGTERM")
    p.add_argument("name", nargs="?", help="only this import (default: all)")
    p.add_argument("--metrics-host", default="127.0.0.1", metavar="H", help="serve: /metrics address")
    p.add_argument("--metrics-port", type=int, default=9103, metavar="P", help="serve: /metrics port (0: none)")

    p = _command(
        sub,
        "cost",
        "monthly BigQuery ingest bill per stream and mode",
        "oceanus cost --events-per-day 700000 --avg-bytes 357",
    )
    _config_arg(p)
    p.add_argument(
        "--events-per-day",
        type=int,
        metavar="N",
        help="events a day of each stream (default: measured by the running flusher)",
    )
    p.add_argument(
        "--avg-bytes",
        type=float,
        metavar="B",
        help="mean logical bytes of one row (default: measured by the running flusher)",
    )

    p = _command(
        sub,
        "dead",
        "list, replay or purge the rows the warehouse refused",
        "oceanus dead list --stream pageview",
        "oceanus dead replay --stream pageview",
    )
    _config_arg(p)
    p.add_argument(
        "action",
        choices=["list", "replay", "purge"],
        help="list: show them with the reason; replay: back to the queue, to be written again; purge: delete",
    )
    p.add_argument("--stream", metavar="S", help="one stream (default: every stream)")
    p.add_argument("--limit", type=int, default=20, metavar="N", help="list: items shown per stream")

    p = _command(
        sub,
        "forget",
        "delete one person's rows from the warehouse and from Redis",
        "oceanus forget --field uid --value u-123",
    )
    _config_arg(p)
    p.add_argument("--field", required=True, metavar="F", help="a string/int/bool field, or ip (e.g. uid)")
    p.add_argument("--value", required=True, metavar="X", help="rows whose field equals X (as text)")
    p.add_argument("--stream", metavar="S", help="one stream (default: every stream with the field)")

    p = _command(
        sub,
        "notify",
        "act on events within seconds: [rules.*] to Slack, webhooks, Sheets, e-mail, a log",
        "oceanus notify",
        "oceanus notify test paid --set evt=paid",
        "oceanus notify dead list --channel team",
        "oceanus notify dead replay --channel team",
    )
    _config_arg(p)
    p.add_argument(
        "action",
        nargs="?",
        choices=["serve", "test", "dead"],
        help="serve (default): evaluate rules and deliver; test RULE: send a sample through the "
        "rule's channels; dead list|replay: the deliveries given up on",
    )
    p.add_argument("target", nargs="?", help="test: the rule; dead: list or replay")
    p.add_argument(
        "--set", action="append", metavar="FIELD=VALUE", help="test: a value of the sample event (repeatable)"
    )
    p.add_argument("--channel", metavar="C", help="dead: one channel (default: every channel)")
    p.add_argument("--limit", type=int, default=20, metavar="N", help="dead list: items shown per channel")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module_name, func_name = COMMANDS[args.command].split(":")
    try:
        func = getattr(importlib.import_module(module_name), func_name)
        return int(func(args) or 0)
    except OceanusError as exc:
        # Errors are one line and an exit status (EPILOG), never a traceback.
        print(f"oceanus {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, ConfigError | UsageError) else EXIT_FAILED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

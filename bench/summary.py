"""``python -m bench summary [--write] [--file F]``: the current figures, from the recorded runs.

For every benchmark command recorded with ``python -m bench --record ...``, the
runs of the newest commit it was run on are summarised: the median of each
headline figure, how many runs, their range. ``--write`` puts the table at the
top of ``bench/RESULTS.md`` between its markers (the history below is kept);
without it the table goes to stdout.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench._record import RESULTS_FILE, load

RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"
START = "<!-- summary:start (python -m bench summary --write) -->"
END = "<!-- summary:end -->"

#: Per benchmark, the figures a reader looks for first: (label, path into the JSON result).
HEADLINES: dict[str, list[tuple[str, str]]] = {
    "collector": [
        ("collector rps", "collector_rps"),
        ("ratio vs bare granian", "ratio_vs_bare"),
        ("ratio vs 2016 shape", "ratio_vs_legacy"),
        ("collector p99 ms", "p99_ms"),
        ("bare p99 ms", "bare_p99_ms"),
        ("p99 vs bare", "p99_vs_bare"),
        ("p99 vs durable-ack floor", "p99_vs_bare_ack"),
        ("floor p99 vs bare", "bare_ack_p99_vs_bare"),
    ],
    "flusher": [
        ("rows/s", "rows_per_s"),
        ("CPU µs/row", "cpu_us_per_row"),
        ("DuckDB ceiling rows/s", "duckdb_ceiling_rows_per_s"),
        ("ratio vs ceiling", "ratio_vs_ceiling"),
    ],
    "memory": [("Redis bytes/event", "redis_bytes_per_event")],
    "spool_replay": [("replay MB/s", "mb_per_s")],
    "importer": [("PostgreSQL rows/s", "postgres.rows_per_s"), ("MariaDB rows/s", "mysql.rows_per_s")],
    "notify_cost": [
        ("collector rps, no rules", "none_rps"),
        ("collector rps, ten rules", "ten_rps"),
        ("ten rules vs none", "ten_vs_none"),
    ],
    "notify": [
        ("log single p95 ms (received -> delivered)", "log_single_p95_ms"),
        ("webhook single p95 ms (received -> delivered)", "webhook_single_p95_ms"),
        ("webhook burst p95 ms", "webhook_burst_p95_ms"),
        ("webhook deliveries/s", "webhook_per_s"),
    ],
    "pipeline": [("sustained events/s", "events_per_s"), ("fraction of collector alone", "fraction_of_collector")],
}


def _get(result: Mapping[str, Any], path: str) -> float | None:
    value: Any = result
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _fmt(x: float) -> str:
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}".rstrip("0").rstrip(".")
    return f"{x:.3g}"


def summarise(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per (command, figure): the median over the newest commit's runs of that command."""
    groups: dict[tuple[str, tuple[str, ...]], list[Mapping[str, Any]]] = {}
    for rec in records:
        if rec["bench"] not in HEADLINES:
            continue
        args = tuple(a for a in rec.get("args", []) if a != "--json")
        groups.setdefault((rec["bench"], args), []).append(rec)
    rows: list[dict[str, Any]] = []
    for (bench, args), recs in sorted(groups.items()):
        newest = max(recs, key=lambda r: str(r.get("at", "")))
        same = [r for r in recs if r.get("commit") == newest.get("commit")]
        command = " ".join(["python -m bench", bench, *args])
        for label, path in HEADLINES[bench]:
            values = [v for r in same if (v := _get(r["result"], path)) is not None]
            if not values:
                continue
            rows.append(
                {
                    "command": command,
                    "figure": label,
                    "median": statistics.median(values),
                    "low": min(values),
                    "high": max(values),
                    "runs": len(values),
                    "commit": newest.get("commit", "?"),
                    "at": str(newest.get("at", ""))[:10],
                }
            )
    return rows


def render(records: Sequence[Mapping[str, Any]]) -> str:
    rows = summarise(records)
    if not rows:
        return f"{START}\nNo recorded runs yet: `python -m bench --record collector --seconds 10`.\n{END}\n"
    latest = max(records, key=lambda r: str(r.get("at", "")))
    mach, vers = latest.get("machine", {}), latest.get("versions", {})
    lines = [
        START,
        "## Current figures",
        "",
        "Generated from `bench/results.jsonl` by `python -m bench summary --write`; each figure is the median of",
        "the runs of that command on the newest commit it was recorded on. Ratios carry over to other machines;",
        "absolute figures do not.",
        "",
        f"Machine: {mach.get('cpus', '?')} CPUs ({mach.get('cpu', '?')}), {mach.get('mem_gib', '?')} GiB, "
        f"{mach.get('system', '?')}. Versions: " + ", ".join(f"{k} {v}" for k, v in sorted(vers.items())) + ".",
        "",
        "| command | figure | median | range | runs | commit | date |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        spread = f"{_fmt(r['low'])} to {_fmt(r['high'])}" if r["runs"] > 1 else ""
        lines.append(
            f"| `{r['command']}` | {r['figure']} | **{_fmt(r['median'])}** | {spread} | {r['runs']} "
            f"| {r['commit']} | {r['at']} |"
        )
    lines += ["", END, ""]
    return "\n".join(lines)


def write(markdown: Path, block: str) -> None:
    text = markdown.read_text(encoding="utf-8") if markdown.exists() else "# Benchmark results\n"
    if START in text and END in text:
        head, rest = text.split(START, 1)
        tail = rest.split(END, 1)[1].lstrip("\n")
        text = head + block + "\n" + tail
    else:
        # After the title line: the current figures come first, the history follows.
        first, _, body = text.partition("\n")
        text = f"{first}\n\n{block}\n{body.lstrip(chr(10))}"
    markdown.write_text(text, encoding="utf-8")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench summary", description=__doc__.split("\n")[0])
    p.add_argument("--write", action="store_true", help="replace the table at the top of bench/RESULTS.md")
    p.add_argument("--file", type=Path, default=RESULTS_FILE, help="the recorded runs (default: bench/results.jsonl)")
    p.add_argument("--markdown", type=Path, default=RESULTS_MD, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        block = render(load(args.file))
    except ValueError as exc:
        print(f"python -m bench summary: {exc}", file=sys.stderr)
        return 2
    if args.write:
        write(args.markdown, block)
        print(f"wrote the current figures to {args.markdown}", file=sys.stderr)
    else:
        print(block)
    return 0

"""``python -m bench notify_cost [--rounds N] [--seconds S] [--json]``: what rules cost the collector.

The same collector, the same beacon, two configs built from ``oceanus.toml``:
``none`` with every ``[rules.*]`` removed (no notify queue), and ``ten`` with
ten rules on the ``pageview`` stream, configured as a user would (``[rules.*]``
tables with a ``log`` channel, in the config the collector is started with).
Rules are evaluated by ``oceanus notify``, which copies a stream's frames from
the event queue itself (its tap, notifier/tap.py): the collector's rounds are
meant to be the same with or without rules, and this measures that they are.
No notifier runs during the measurement (the tap reads Redis, not the
collector). Runs alternate (none, ten, none, ...)
so drift on a shared box hits both alike; the result is the median of each and
their ratio (``ten_vs_none``; 1.0 = free).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

_OPS = [
    '{ field = "evt", eq = "search_not_found" }',
    '{ field = "evt", eq = "paid" }',
    '{ field = "evt", contains = "error" }',
    '{ field = "url", prefix = "https://www.bizocean.jp/doc/" }',
    '{ field = "uid", exists = true }',
    '{ field = "evt", in = ["signup", "login", "logout"] }',
    '{ field = "tit", regex = "^(見積|請求)" }',
    '{ field = "oid", ne = "2" }',
    '{ field = "ref", contains = "google." }',
    '{ field = "url", contains = "/mypage/" }',
]


def configs(base: str) -> dict[str, str]:
    """``none`` and ``ten`` from the text of an oceanus.toml."""
    # A [rules.X] table runs until the next table header that is not one of its own.
    none = re.sub(r"(?ms)^\[rules\.[^\]]+\]\n.*?(?=^\[(?!rules\.)|\Z)", "", base)
    none = re.sub(r"(?ms)^\[rules\.[^\]]+\]\n.*?(?=^\[|\Z)", "", none)
    ten = none + "".join(
        f'\n[rules.bench_{i}]\nstream = "pageview"\nconditions = [{op}]\ntemplate = "{{evt}} on {{url}}"\n'
        'channels = ["log"]\n'
        for i, op in enumerate(_OPS)
    )
    return {"none": none, "ten": ten}


def _run(config: Path, seconds: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench", "collector", "--only", "collector", "--seconds", str(seconds)]
    out = subprocess.run(
        [*cmd, "--config", str(config), "--json"], cwd=REPO, capture_output=True, text=True, check=True, timeout=600
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench notify_cost", description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="runs of each config, alternating")
    p.add_argument("--seconds", type=float, default=8.0, help="measured wrk run per collector")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    from oceanus import config as config_mod

    texts = configs((REPO / "oceanus.toml").read_text())
    runs: dict[str, list[dict[str, Any]]] = {"none": [], "ten": []}
    with tempfile.TemporaryDirectory(prefix="oceanus-notify-cost-") as d:
        paths = {}
        for name, text in texts.items():
            paths[name] = Path(d) / f"{name}.toml"
            paths[name].write_text(text)
            rules = [r for r in config_mod.load(paths[name], env={}).rules.values() if r.stream == "pageview"]
            print(f"{name}: {len(rules)} rule(s) on pageview", file=sys.stderr)
        for i in range(args.rounds):
            for name in ("none", "ten"):
                r = _run(paths[name], args.seconds)
                runs[name].append(r)
                print(f"round {i + 1} {name}: {r['collector_rps']:,} rps, p99 {r['p99_ms']} ms", file=sys.stderr)
    med = {n: statistics.median(r["collector_rps"] for r in rs) for n, rs in runs.items()}
    p99 = {n: statistics.median(r["p99_ms"] for r in rs) for n, rs in runs.items()}
    out = {
        "rounds": args.rounds,
        "seconds": args.seconds,
        "none_rps": round(med["none"]),
        "ten_rps": round(med["ten"]),
        "ten_vs_none": round(med["ten"] / med["none"], 3),
        "none_p99_ms": p99["none"],
        "ten_p99_ms": p99["ten"],
        "runs": {n: [r["collector_rps"] for r in rs] for n, rs in runs.items()},
    }
    print(json.dumps(out) if args.json else out)
    return 0

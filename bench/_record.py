"""Recorded benchmark runs: one JSON line per run in ``bench/results.jsonl``.

``python -m bench --record NAME [args]`` runs a benchmark with ``--json`` and
appends what it printed, with what it ran on: the commit (``-dirty`` when the
tree had changes), the versions of the parts that decide the figures, and the
machine. ``python -m bench summary`` reads the file back (``bench/summary.py``).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import subprocess
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
#: Where runs are appended (``OCEANUS_BENCH_RESULTS`` points elsewhere, e.g. a scratch file).
RESULTS_FILE = Path(os.environ.get("OCEANUS_BENCH_RESULTS") or Path(__file__).resolve().parent / "results.jsonl")
#: Python packages whose version changes a figure.
PACKAGES = ("granian", "msgspec", "hiredis", "redis", "duckdb", "pyarrow", "google-cloud-bigquery", "uvloop")


def _run(args: list[str]) -> str:
    try:
        out = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def commit() -> str:
    head = _run(["git", "rev-parse", "--short=10", "HEAD"]) or "unknown"
    # The results file itself changes with every recorded run: it does not make the tree dirty.
    try:
        skip = [f":(exclude){RESULTS_FILE.resolve().relative_to(REPO).as_posix()}"]
    except ValueError:
        skip = []
    dirty = _run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *skip])
    return f"{head}-dirty" if dirty else head


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    if shutil.which("redis-server"):
        # "Redis server v=7.0.15 sha=... malloc=jemalloc-5.3.0 bits=64 build=..."
        words = _run(["redis-server", "--version"]).split()
        out["redis-server"] = next((w[2:] for w in words if w.startswith("v=")), "")
    return out


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = 0.0
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        mem_gib = round(pages * size / 2**30, 1)
    except (ValueError, OSError):
        pass
    return {"cpus": os.cpu_count() or 0, "cpu": model, "mem_gib": mem_gib, "system": platform.platform(terse=True)}


def make_record(
    bench: str, args: list[str], result: Mapping[str, Any], now: datetime.datetime | None = None
) -> dict[str, Any]:
    at = (now or datetime.datetime.now(datetime.UTC)).isoformat(timespec="seconds")
    return {
        "bench": bench,
        "args": list(args),
        "at": at,
        "commit": commit(),
        "versions": versions(),
        "machine": machine(),
        "result": dict(result),
    }


def append(record: Mapping[str, Any], path: Path = RESULTS_FILE) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")


def load(path: Path = RESULTS_FILE) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path.name} line {n}: not JSON ({exc})") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("result"), dict) or "bench" not in rec:
            raise ValueError(f"{path.name} line {n}: not a benchmark record")
        records.append(rec)
    return records


def last_json_line(stdout: str) -> dict[str, Any]:
    """The JSON object a benchmark printed last (``--json``)."""
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            value = json.loads(line)
            if isinstance(value, dict):
                return value
    raise ValueError("the benchmark printed no JSON object (was --json passed?)")

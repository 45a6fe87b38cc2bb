"""Recorded benchmark runs and the generated table of current figures."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import _record, summary


def _rec(
    bench: str, at: str, commit: str, result: dict[str, object], args: tuple[str, ...] = ("--json",)
) -> dict[str, object]:
    return {
        "bench": bench,
        "args": list(args),
        "at": at,
        "commit": commit,
        "result": result,
        "versions": {"duckdb": "1.5.5"},
        "machine": {"cpus": 2, "cpu": "x", "mem_gib": 24.0, "system": "L"},
    }


def test_the_median_of_the_newest_commits_runs_per_command() -> None:
    records = [
        _rec("collector", "2026-12-01T10:00:00", "old", {"collector_rps": 1.0, "ratio_vs_bare": 0.1}),
        _rec("collector", "2026-12-02T10:00:00", "new", {"collector_rps": 300.0, "ratio_vs_bare": 0.5}),
        _rec("collector", "2026-12-02T10:05:00", "new", {"collector_rps": 100.0, "ratio_vs_bare": 0.9}),
        _rec("collector", "2026-12-02T10:09:00", "new", {"collector_rps": 200.0, "ratio_vs_bare": 0.7}),
        # another command line is another row; a figure a run lacks is skipped, not zero
        _rec("collector", "2026-12-02T11:00:00", "new", {"collector_rps": 7.0}, ("--only", "collector", "--json")),
        _rec("importer", "2026-12-03T09:00:00", "new", {"postgres": {"rows_per_s": 5.0}, "mysql": {"skipped": "x"}}),
        _rec("not_a_headline_bench", "2026-12-03T09:00:00", "new", {"x": 1.0}),
    ]
    rows = {(r["command"], r["figure"]): r for r in summary.summarise(records)}
    rps = rows[("python -m bench collector", "collector rps")]
    assert (rps["median"], rps["low"], rps["high"], rps["runs"], rps["commit"]) == (200.0, 100.0, 300.0, 3, "new")
    assert rows[("python -m bench collector", "ratio vs bare granian")]["median"] == 0.7
    only = rows[("python -m bench collector --only collector", "collector rps")]
    assert (only["median"], only["runs"]) == (7.0, 1)
    assert ("python -m bench collector --only collector", "ratio vs bare granian") not in rows
    assert rows[("python -m bench importer", "PostgreSQL rows/s")]["median"] == 5.0
    assert ("python -m bench importer", "MariaDB rows/s") not in rows
    assert not any(c.startswith("python -m bench not_a_headline_bench") for c, _ in rows)


def test_write_replaces_only_the_block_between_the_markers(tmp_path: Path) -> None:
    md = tmp_path / "RESULTS.md"
    md.write_text("# Benchmark results\n\nIntro.\n\n## History\n\nold figures\n")
    records = [_rec("memory", "2026-12-02T10:00:00", "abc", {"redis_bytes_per_event": 78.8})]
    summary.write(md, summary.render(records))
    first = md.read_text()
    assert first.index(summary.START) < first.index("Intro.") < first.index("## History")
    assert "| `python -m bench memory` | Redis bytes/event | **78.8** |  | 1 | abc | 2026-12-02 |" in first
    records.append(_rec("memory", "2026-12-03T10:00:00", "def", {"redis_bytes_per_event": 80.0}))
    summary.write(md, summary.render(records))
    second = md.read_text()
    assert second.count(summary.START) == 1
    assert second.count(summary.END) == 1
    assert "**80** |  | 1 | def |" in second
    assert "**78.8**" not in second
    assert second.endswith("## History\n\nold figures\n")


def test_a_recorded_run_carries_commit_versions_and_machine(tmp_path: Path) -> None:
    now = datetime.datetime(2026, 12, 4, 12, 0, tzinfo=datetime.UTC)
    rec = _record.make_record("memory", ["--json"], {"redis_bytes_per_event": 78.8}, now=now)
    assert rec["at"] == "2026-12-04T12:00:00+00:00"
    assert rec["versions"]["python"] == ".".join(map(str, sys.version_info[:3]))
    assert "duckdb" in rec["versions"]
    assert rec["machine"]["cpus"] >= 1
    path = tmp_path / "results.jsonl"
    _record.append(rec, path)
    _record.append(rec, path)
    assert _record.load(path) == [json.loads(json.dumps(rec))] * 2
    path.write_text(path.read_text() + "not json\n")
    with pytest.raises(ValueError, match="line 3"):
        _record.load(path)


def test_the_last_json_line_is_the_result() -> None:
    assert _record.last_json_line('progress\n{"a": 1}\n{"b": 2}\n') == {"b": 2}
    with pytest.raises(ValueError, match="--json"):
        _record.last_json_line("no json here\n")


def test_summary_command_prints_the_table(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    _record.append(_rec("spool_replay", "2026-12-02T10:00:00", "abc", {"mb_per_s": 25.9}), path)
    out = subprocess.run(
        [sys.executable, "-m", "bench", "summary", "--file", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "| `python -m bench spool_replay` | replay MB/s | **25.9** |" in out.stdout


def test_record_runs_the_benchmark_and_appends_its_result(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    env = {**os.environ, "OCEANUS_BENCH_RESULTS": str(path)}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--record",
            "memory",
            "--events",
            "160",
            "--batches",
            "16",
            "--realistic-batch",
            "16",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=True,
    )
    [rec] = _record.load(path)
    assert rec["bench"] == "memory"
    assert rec["args"][-1] == "--json"
    assert rec["result"] == json.loads(out.stdout.strip().splitlines()[-1])
    assert rec["result"]["redis_bytes_per_event"] > 0


def test_notify_cost_configs_differ_only_in_rules() -> None:
    from bench.notify_cost import configs
    from oceanus import config

    texts = configs((Path(__file__).resolve().parents[2] / "oceanus.toml").read_text())
    none, ten = (config.loads(texts[n], env={}) for n in ("none", "ten"))
    assert none.rules == {}
    assert len(ten.rules) == 10
    assert {r.stream for r in ten.rules.values()} == {"pageview"}
    assert none.streams == ten.streams
    assert none.collector == ten.collector

"""``python -m bench flusher``: DuckDB's own insert ceiling, the ratio to it, and CPU by stage."""

from __future__ import annotations

import statistics
from pathlib import Path

import pyarrow as pa
import pytest

from bench import flusher as bench_flusher
from bench import summary
from flusher.sinks.common import column_types
from oceanus import config


def _cfg(path: Path) -> config.Config:
    return bench_flusher._duckdb_config("redis://127.0.0.1:6379/0", path, None)


def test_the_ceiling_inserts_ready_arrow_tables_of_the_tables_shape(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path / "ceiling.duckdb")
    stream = cfg.streams["pageview"]
    tables = bench_flusher.arrow_batches(stream, 20_005)
    assert [t.num_rows for t in tables] == [10_000, 10_000, 5]
    assert tables[0].column_names == [c for c, _ in column_types(stream)]
    assert tables[0].schema.field("received_at").type == pa.timestamp("us")
    assert len(set(tables[0].column("event_id").to_pylist() + tables[2].column("event_id").to_pylist())) == 10_005
    result = bench_flusher.ceiling_duckdb(cfg, tables)  # raises unless every row is stored
    assert result["rows_per_s"] > 0
    assert result["cpu_us_per_row"] > 0


def test_a_duckdb_run_reports_the_ceiling_ratio_and_every_stage() -> None:
    result = bench_flusher.run_duckdb(rows=3_000, frame_rows=500, max_rows=None, repeat=2)
    assert result["repeat"] == 2
    assert len(result["runs_rows_per_s"]) == len(result["runs_ceiling_rows_per_s"]) == 2
    assert result["rows_per_s"] == pytest.approx(statistics.median(result["runs_rows_per_s"]), abs=1)
    assert result["duckdb_ceiling_rows_per_s"] == pytest.approx(
        statistics.median(result["runs_ceiling_rows_per_s"]), abs=1
    )
    assert result["ratio_vs_ceiling"] == pytest.approx(
        result["rows_per_s"] / result["duckdb_ceiling_rows_per_s"], abs=0.002
    )
    assert result["ceiling_batch_rows"] == 10_000
    for key in ("stage_cpu_us_per_row", "stage_wall_us_per_row"):
        assert list(result[key]) == list(bench_flusher.STAGES)
        # Every stage ran: each timer saw calls.
        assert all(v > 0 for v in result[key].values()), result[key]
    assert result["redis_claim_us_per_row"] > 0
    for _label, path in summary.HEADLINES["flusher"]:
        assert summary._get(result, path) is not None, path


def test_stage_timers_leave_other_flushers_alone(tmp_path: Path) -> None:
    from flusher.runner import Flusher
    from flusher.sinks.duckdb import DuckDBSink

    a, b = _cfg(tmp_path / "a.duckdb"), _cfg(tmp_path / "b.duckdb")
    timed, plain = Flusher(a, DuckDBSink(a)), Flusher(b, DuckDBSink(b))
    try:
        bench_flusher.StageTimers().install(timed, "pageview")
        assert "claim" in vars(timed.claimer)
        assert "write" in vars(timed.sink)
        assert "claim" not in vars(plain.claimer)
        assert "write" not in vars(plain.sink)
    finally:
        timed.sink.close()
        plain.sink.close()


def test_repeat_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        bench_flusher.main(["--repeat", "0"])
    assert exc.value.code == 2
    assert "--repeat must be positive" in capsys.readouterr().err

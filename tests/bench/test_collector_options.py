"""``python -m bench collector --shards N``: the config copy it runs the collector with."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from bench.collector import sharded_config, summarize
from oceanus import config

REPO = Path(__file__).resolve().parents[2]


def test_shards_go_into_a_copy_of_the_config(tmp_path: Path) -> None:
    original = REPO / "oceanus.toml"
    assert sharded_config(tmp_path, argparse.Namespace(config=original, shards=1)) == original
    copy = sharded_config(tmp_path, argparse.Namespace(config=original, shards=3))
    assert copy == tmp_path / "oceanus-sharded.toml"
    cfg = config.load(copy, env={})
    assert cfg.streams["pageview"].shards == 3
    assert cfg.streams["form"].shards == 1
    assert config.load(original, env={}).streams["pageview"].shards == 1


def test_a_config_without_the_pageview_table_is_refused(tmp_path: Path) -> None:
    bare = tmp_path / "bare.toml"
    bare.write_text('[streams.other.fields]\nx = { type = "string" }\n')
    with pytest.raises(SystemExit, match=r"^--shards: no \[streams\.pageview\] table in "):
        sharded_config(tmp_path, argparse.Namespace(config=bare, shards=2))


def _run(rps: float, p99: float, **extra: float) -> dict[str, float]:
    return {"rps": rps, "p99_ms": p99, "non2xx": 0, **extra}


def test_rounds_are_summarised_as_medians_and_ratios_as_the_median_of_each_rounds_own() -> None:
    def collector(rps: float, p99: float, lost: int) -> dict[str, float]:
        return _run(rps, p99, mean_batch_events=8.0, all_ok=1000, rows_in_redis=1000 - lost)

    rounds = [
        {"collector": collector(20_000, 6.0, 0), "bare": _run(25_000, 4.0), "bare_ack": _run(22_000, 5.0, lost=-3)},
        {"collector": collector(24_000, 6.6, -2), "bare": _run(20_000, 6.0), "bare_ack": _run(26_000, 6.0, lost=0)},
        {"collector": collector(22_000, 9.0, 0), "bare": _run(30_000, 5.0), "bare_ack": _run(23_000, 7.5, lost=-1)},
    ]
    out = summarize(rounds)
    assert out["collector_rps"] == 22_000
    assert out["bare_rps"] == 25_000
    assert out["p99_ms"] == 6.6
    # Per round: 0.8, 1.2, 0.733 -> 0.8 (the ratio of the medians would be 0.88).
    assert out["ratio_vs_bare"] == 0.8
    # p99 per round: 1.5, 1.1, 1.8 -> 1.5; against the floor: 1.2, 1.1, 1.2 -> 1.2.
    assert out["p99_vs_bare"] == 1.5
    assert out["p99_vs_bare_ack"] == 1.2
    assert out["bare_ack_p99_vs_bare"] == 1.25
    assert out["lost"] == -2
    assert out["bare_ack_lost"] == -4
    assert out["rounds"][1]["bare"] == {"rps": 20_000, "p99_ms": 6.0}
    assert "legacy_rps" not in out
    assert "ratio_vs_legacy" not in out


def test_a_round_without_the_base_gives_no_ratio() -> None:
    out = summarize([{"bare": _run(25_000, 4.0)}])
    assert out["bare_rps"] == 25_000
    assert "ratio_vs_bare" not in out
    assert "collector_rps" not in out

"""``python -m bench collector --shards N``: the config copy it runs the collector with."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from bench.collector import sharded_config
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

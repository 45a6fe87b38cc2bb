"""``python -m bench``: every name it offers is a benchmark it can run."""

from __future__ import annotations

import importlib
import subprocess
import sys

from bench.__main__ import available


def test_every_offered_name_has_a_main() -> None:
    names = available()
    assert {"collector", "flusher", "memory"} <= set(names)
    assert "baselines" not in names
    for name in names:
        assert callable(getattr(importlib.import_module(f"bench.{name}"), "main", None)), name


def test_an_unknown_name_prints_usage_and_exits_2() -> None:
    proc = subprocess.run([sys.executable, "-m", "bench", "baselines"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith("usage: python -m bench [--record] {")
    assert "baselines" not in proc.stderr

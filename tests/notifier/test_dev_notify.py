"""``oceanus dev`` runs the notifier when the config has rules, and shows the log channel firing."""

from __future__ import annotations

import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.oceanus.test_dev_e2e import Dev
from tests.support.servers import free_port, wait_for


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[Dev]:
    d = Dev(tmp_path / "data", free_port())
    try:
        yield d
    finally:
        d.cleanup()


def test_the_shipped_2016_rules_fire_in_the_terminal(dev: Dev) -> None:
    dev.start()
    for query in (
        "sid=ab12&evt=paid&uid=u-42&oid=o7&url=https%3A%2F%2Fa.example%2Fbuy",
        "sid=ab12&evt=view&uid=u-43&url=https%3A%2F%2Fa.example%2F",
    ):
        with urllib.request.urlopen(f"{dev.url}/b/pageview?{query}", timeout=5) as resp:
            assert resp.status == 200
    line = "rule paid -> log: paid: uid u-42, object o7 on https://a.example/buy"
    wait_for(lambda: line in dev.output(), timeout=20, what="the paid rule's line")
    out = dev.stop(signal.SIGINT)
    assert out.count("rule paid -> log:") == 1
    assert "u-43" not in out
    lines = out.splitlines()
    order = [
        next(i for i, ln in enumerate(lines) if f"stopping {w}" in ln)
        for w in ("the collector", "the notifier", "the flusher", "redis-server")
    ]
    assert order == sorted(order), out

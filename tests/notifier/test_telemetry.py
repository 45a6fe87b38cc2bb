"""docs/TELEMETRY.md lists exactly the notifier's metrics, with their types."""

from __future__ import annotations

import re
from pathlib import Path

from notifier.metrics import NotifyMetrics

TELEMETRY = Path(__file__).resolve().parents[2] / "docs" / "TELEMETRY.md"


def test_the_notifier_section_lists_exactly_its_metrics() -> None:
    section = TELEMETRY.read_text(encoding="utf-8").split("## Notifier", 1)[1].split("\n## ", 1)[0]
    documented = dict(re.findall(r"^\| `(oceanus_[a-z_]+)` \| (counter|gauge|histogram) \|", section, re.M))
    m = NotifyMetrics()
    exposed = {}
    for family in m.registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        exposed[name] = family.type
    assert documented == exposed

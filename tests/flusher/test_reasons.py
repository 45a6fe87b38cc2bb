"""docs/TELEMETRY.md lists exactly the sink reasons the code can emit."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from oceanus.errors import Reason, SinkError

TELEMETRY = Path(__file__).resolve().parents[2] / "docs" / "TELEMETRY.md"


def _documented() -> list[str]:
    text = TELEMETRY.read_text()
    section = text.split("### Sink reasons", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([a-z_]+)` \|", section, re.M)


def test_telemetry_lists_exactly_the_reasons() -> None:
    documented = _documented()
    assert len(documented) == len(set(documented)), documented
    assert sorted(documented) == sorted(r.value for r in Reason)


def test_an_unknown_reason_is_refused() -> None:
    with pytest.raises(ValueError, match="http_400"):
        SinkError("x", retryable=False, reason="http_400")

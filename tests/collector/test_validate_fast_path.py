"""The fast path for plain string fields must decide exactly as the full check."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collector.validate import Invalid, StreamValidator
from oceanus import config

TOML = """
[streams.s.fields]
plain = { type = "string", max_length = 3 }
need = { type = "string", required = true, max_length = 3 }
free = { type = "string" }
low = { type = "string", max_length = 3, transforms = ["lowercase"] }
"""


@pytest.fixture(scope="module")
def validator() -> StreamValidator:
    cfg = config.loads(TOML, env={})
    return StreamValidator(cfg.streams["s"], cfg.collector)


def outcome(v: StreamValidator, event: dict[str, Any], from_text: bool) -> Any:
    try:
        return v.values(dict(event), from_text)
    except Invalid as exc:
        return (exc.field, exc.rule, exc.detail)


@pytest.mark.parametrize("from_text", [True, False])
def test_plain_string_rules(validator: StreamValidator, from_text: bool) -> None:
    assert outcome(validator, {"need": "abc", "free": "x" * 5000}, from_text)[:3] == [None, "abc", "x" * 5000]
    assert outcome(validator, {"need": "abc", "plain": "abcd"}, from_text) == (
        "plain",
        "max_length",
        "longer than 3 characters",
    )
    assert outcome(validator, {"need": ""}, from_text) == ("need", "required", "is required and may not be empty")
    assert outcome(validator, {}, from_text) == ("need", "required", "is required")
    assert outcome(validator, {"need": "a", "plain": ""}, from_text)[:2] == ["", "a"]
    assert outcome(validator, {"need": "a", "low": "ABC"}, from_text)[3] == "abc"
    assert outcome(validator, {"need": "a", "low": "ABCD"}, from_text) == (
        "low",
        "max_length",
        "longer than 3 characters",
    )


def test_plain_string_refuses_other_json_types(validator: StreamValidator) -> None:
    assert outcome(validator, {"need": 12}, False) == ("need", "type", "expected a string, got a number")
    assert outcome(validator, {"need": "a", "plain": ["x"]}, False) == (
        "plain",
        "type",
        "expected a string, got an array",
    )


@given(st.text(max_size=6))
def test_fast_path_agrees_with_the_transformed_field(text: str) -> None:
    # "low" takes the full check; "plain" the fast path. Same length rule, so the
    # same verdict for any text whose lowercase keeps its length.
    cfg = config.loads(TOML, env={})
    v = StreamValidator(cfg.streams["s"], cfg.collector)
    lowered = text.lower()
    if len(lowered) != len(text):
        return
    fast = outcome(v, {"need": "a", "plain": lowered}, True)
    full = outcome(v, {"need": "a", "low": lowered}, True)
    if isinstance(full, tuple):
        assert fast == ("plain", *full[1:])
    else:
        assert fast[0] == full[3] == lowered

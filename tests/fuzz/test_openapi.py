"""``GET /openapi.json`` is derived from the stream config, and schemathesis fuzzes a live
collector through it (bounded: a few examples per operation)."""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.result import Ok

from collector import openapi
from oceanus import config
from tests.fuzz.asgi import Driver
from tests.fuzz.conftest import REPO
from tests.reliability.harness import Stack

EXTRA_STREAM = """
[streams.signup]
description = "added in this test"
[streams.signup.fields]
email = { type = "string", required = true, format = "email", max_length = 200 }
plan = { type = "string", enum = ["free", "pro"] }
seats = { type = "int", min = 1, max = 500 }
"""


def test_document_follows_the_config() -> None:
    cfg = config.loads((REPO / "oceanus.toml").read_text() + EXTRA_STREAM)
    doc = openapi.build(cfg)
    for name in cfg.streams:
        assert f"/b/{name}" in doc["paths"]
        assert f"/e/{name}" in doc["paths"]
    signup = doc["components"]["schemas"]["SignupEvent"]
    assert signup["required"] == ["email"]
    assert signup["properties"]["plan"]["enum"] == ["free", "pro"]
    assert signup["properties"]["seats"] == {"type": "integer", "minimum": 1, "maximum": 500}
    assert signup["maxProperties"] == 3 + cfg.collector.max_extra_keys
    pageview = doc["components"]["schemas"]["PageviewEvent"]
    assert pageview["properties"]["sid"]["pattern"] == cfg.streams["pageview"].fields["sid"].pattern
    params = {p["name"]: p for p in doc["paths"]["/b/pageview"]["get"]["parameters"]}
    assert set(params) == set(cfg.streams["pageview"].fields)
    assert params["sid"]["required"]
    assert not params["uid"]["required"]
    batch = doc["paths"]["/e/pageview"]["post"]["requestBody"]["content"]["application/json"]["schema"]["oneOf"][1]
    assert batch["maxItems"] == cfg.collector.max_batch_events
    # A stream that is not configured has no path.
    assert "/b/signup" not in openapi.build(config.loads((REPO / "oceanus.toml").read_text()))["paths"]


def test_schemathesis_accepts_the_document(fuzz_config: config.Config) -> None:
    schema = schemathesis.openapi.from_dict(openapi.build(fuzz_config))
    operations = _operations(schema)
    assert {f"{o.method.upper()} {o.path}" for o in operations} >= {"GET /b/pageview", "POST /e/form"}


def test_served_document_is_the_built_one(driver: Driver, fuzz_config: config.Config) -> None:
    import json

    resp = driver.request("GET", "/openapi.json")
    assert resp.status == 200
    assert resp.headers[b"content-type"] == b"application/json"
    assert json.loads(resp.body) == json.loads(json.dumps(openapi.build(fuzz_config)))


def _operations(schema: Any) -> list[Any]:
    out = []
    for result in schema.get_all_operations():
        if not isinstance(result, Ok):
            raise AssertionError(f"schemathesis cannot read an operation: {result.err()}")
        out.append(result.ok())
    return out


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def test_schemathesis_live(live_collector: Stack) -> None:
    """Every operation of the served document, fuzzed (positive and negative data) against granian:
    no 5xx, only documented statuses, bodies and content types."""
    live = schemathesis.openapi.from_url(live_collector.url + "/openapi.json")
    operations = _operations(live)
    assert len(operations) >= 2 * len(live_collector.cfg.streams)
    for operation in operations:

        @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=operation.as_strategy())
        def run(case: Any) -> None:
            case.call_and_validate(checks=CHECKS, timeout=10)

        run()

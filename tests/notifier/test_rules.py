"""Rules: every operator pinned on exact values, templates that only insert, config errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from notifier.rules import compile_rule, cut, render
from oceanus import config
from oceanus.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
BASE = (REPO / "oceanus.toml").read_text(encoding="utf-8")


def load(extra: str, env: dict[str, str] | None = None) -> config.Config:
    return config.loads(BASE + "\n" + extra, env=env or {})


def rule(conditions: str, match: str = "all") -> config.RuleConfig:
    cfg = load(
        f'[channels.c]\nkind = "log"\n[rules.t]\nstream = "pageview"\nchannels = ["c"]\n'
        f'match = "{match}"\nconditions = [{conditions}]\n'
    )
    return cfg.rules["t"]


@pytest.mark.parametrize(
    ("conditions", "row", "expected"),
    [
        ('{field = "evt", eq = "paid"}', {"evt": "paid"}, True),
        ('{field = "evt", eq = "paid"}', {"evt": "Paid"}, False),
        ('{field = "evt", eq = "paid"}', {}, False),
        ('{field = "evt", ne = "paid"}', {"evt": "view"}, True),
        ('{field = "evt", ne = "paid"}', {"evt": "paid"}, False),
        ('{field = "evt", ne = "paid"}', {}, True),
        ('{field = "evt", in = ["a", "b"]}', {"evt": "b"}, True),
        ('{field = "evt", in = ["a", "b"]}', {"evt": "c"}, False),
        ('{field = "evt", contains = "error"}', {"evt": "js_error_x"}, True),
        ('{field = "evt", contains = "error"}', {"evt": "erro"}, False),
        ('{field = "url", prefix = "https://a/"}', {"url": "https://a/x"}, True),
        ('{field = "url", prefix = "https://a/"}', {"url": "http://https://a/"}, False),
        ('{field = "url", regex = "/doc/[0-9]+$"}', {"url": "https://a/doc/12"}, True),
        ('{field = "url", regex = "/doc/[0-9]+$"}', {"url": "https://a/doc/12x"}, False),
        ('{field = "oid", gt = 10}', {"oid": "11"}, True),
        ('{field = "oid", gt = 10}', {"oid": "10"}, False),
        ('{field = "oid", ge = 10}', {"oid": "10"}, True),
        ('{field = "oid", lt = 10}', {"oid": "9.5"}, True),
        ('{field = "oid", lt = 10}', {"oid": "10"}, False),
        ('{field = "oid", le = 10}', {"oid": "10"}, True),
        ('{field = "oid", le = 10}', {"oid": "x"}, False),
        ('{field = "uid", exists = true}', {"uid": "u1"}, True),
        ('{field = "uid", exists = true}', {"uid": ""}, False),
        ('{field = "uid", exists = false}', {}, True),
        ('{any = [{field = "evt", eq = "a"}, {field = "evt", eq = "b"}]}', {"evt": "b"}, True),
        ('{all = [{field = "evt", eq = "a"}, {field = "uid", eq = "u"}]}', {"evt": "a", "uid": "v"}, False),
        ('{field = "evt", eq = "a"}, {field = "uid", eq = "u"}', {"evt": "a", "uid": "u"}, True),
        ('{field = "evt", eq = "a"}, {field = "uid", eq = "u"}', {"evt": "a", "uid": "v"}, False),
    ],
)
def test_operators(conditions: str, row: dict[str, object], expected: bool) -> None:
    assert compile_rule(rule(conditions))(row) is expected


def test_any_of_top_level_conditions() -> None:
    r = rule('{field = "evt", eq = "a"}, {field = "uid", eq = "u"}', match="any")
    assert [compile_rule(r)(x) for x in ({"evt": "a"}, {"uid": "u"}, {"evt": "b", "uid": "v"})] == [True, True, False]


def test_no_conditions_match_every_event() -> None:
    cfg = load('[channels.c]\nkind = "log"\n[rules.form]\nstream = "form"\nchannels = ["c"]\n')
    assert compile_rule(cfg.rules["form"])({}) is True


def test_template_inserts_only() -> None:
    values = {"evt": "{uid}", "uid": "secret", "rule": "r"}
    assert render("{{literal}} {evt} by {rule}", values) == "{literal} {uid} by r"
    assert render("[{evt}]", {"evt": None}) == "[]"
    assert render("{x}", {"x": True}) == "true"
    assert render("<{evt}>", {"evt": "<b>"}, lambda s: s.replace("<", "&lt;")) == "<&lt;b>>"


def test_cut_bounds_a_megabyte_value() -> None:
    assert cut("x" * 1_000_000, 500) == "x" * 499 + "…"
    assert cut("x" * 500, 500) == "x" * 500
    assert cut(7, 1) == 7


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('[rules.r]\nstream = "nope"\nchannels = ["c"]', "rules.r.stream: no stream named 'nope'"),
        ('[rules.r]\nstream = "pageview"\nchannels = ["d"]', "rules.r.channels[0]: no channel named 'd'"),
        ('[rules.r]\nstream = "pageview"\nchannels = []', "rules.r.channels: Expected `array` of length >= 1"),
        (
            '[rules.r]\nstream = "pageview"\nchannels = ["c"]\nconditions = [{field = "evt", eq = "a", ne = "b"}]',
            "rules.r.conditions[0]: a condition has exactly one operator",
        ),
        (
            '[rules.r]\nstream = "pageview"\nchannels = ["c"]\nconditions = [{any = [{field = "zz", eq = 1}]}]',
            "rules.r.conditions[0].any[0].field: `zz` is not a column of stream 'pageview'",
        ),
        (
            '[rules.r]\nstream = "pageview"\nchannels = ["c"]\nconditions = [{field = "evt", regex = "("}]',
            "rules.r.conditions[0]: `regex` '(' does not compile",
        ),
        (
            '[rules.r]\nstream = "pageview"\nchannels = ["c"]\ntemplate = "{evt.__class__}"',
            "rules.r.template: '{evt.__class__}' at offset 0: a template inserts `{field}` only",
        ),
        ('[rules.r]\nstream = "pageview"\nchannels = ["c"]\ntemplate = "{evt!r}"', "rules.r.template: '{evt!r}'"),
        ('[rules.r]\nstream = "pageview"\nchannels = ["c"]\ntemplate = "{evt:>10}"', "rules.r.template: '{evt:>10}'"),
        (
            '[rules.r]\nstream = "pageview"\nchannels = ["c"]\ntemplate = "{nope}"',
            "rules.r.template: {nope} is not a column of stream 'pageview'",
        ),
        (
            '[rules.r]\nstream = "pageview"\nchannels = ["c"]\nthreshold = {count = 1, window_s = 60}',
            "rules.r.threshold.count: Expected `int` >= 2",
        ),
        (
            '[rules.r]\nstream = "pageview"\nchannels = ["c"]\nthreshold = {count = 3, window_s = 60, group_by = "x"}',
            "rules.r.threshold.group_by: `x` is not a column",
        ),
        (
            '[channels.s]\nkind = "slack"\nurl = "https://hooks.slack.com/x"',
            "channels.s.url: secrets are never written in oceanus.toml; use url_env or url_file",
        ),
        ('[channels.s]\nkind = "slack"', "channels.s: the url comes from url_env or url_file; set one"),
        ('[channels.s]\nkind = "pager"', "channels.s.kind: Invalid value 'pager'"),
        (
            '[channels.m]\nkind = "email"\nhost = "h"\nsender = "a@b"\nto = ["x@y\\r\\nBcc: z@w"]',
            "channels.m.to[0]: Expected `str` matching regex",
        ),
    ],
)
def test_config_errors_name_the_key(extra: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load('[channels.c]\nkind = "log"\n' + extra)
    assert message in str(err.value)


def test_missing_secrets_are_named(tmp_path: Path) -> None:
    secret = tmp_path / "hook.secret"
    cfg = load(
        '[channels.s]\nkind = "slack"\nurl_env = "T_SLACK"\n'
        '[channels.w]\nkind = "webhook"\nurl = "https://x.example/"\nsecret_file = "' + str(secret) + '"\n'
        '[channels.m]\nkind = "email"\nhost = "h"\nsender = "a@b.c"\nto = ["t@b.c"]\nusername = "u"\n'
        'password_env = "T_SMTP"\n'
    )
    assert config.missing_secrets(cfg, {}) == [
        "channels.s: the url is missing ($T_SLACK)",
        f"channels.w: the secret is missing (file {secret})",
        "channels.m: the password is missing ($T_SMTP)",
    ]
    secret.write_text("x")
    assert config.missing_secrets(cfg, {"T_SLACK": "https://hooks", "T_SMTP": "p"}) == []


def test_the_shipped_rules_decode() -> None:
    cfg = config.loads(BASE, env={})
    assert {"search_not_found", "paid", "error_events", "form_posts", "not_found_burst"} <= set(cfg.rules)
    assert all(set(r.channels) == {"log"} for r in cfg.rules.values())
    assert config.missing_secrets(cfg, {}) == []

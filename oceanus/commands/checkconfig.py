"""``oceanus check-config``: validate the config, print the streams, rules and channels, and name
every channel secret (environment variable or file) that is missing."""

from __future__ import annotations

import argparse

from oceanus import config
from oceanus.errors import ConfigError


def _redis_kind(r: config.RedisConfig) -> str:
    """One instance or a cluster, and what a round's acknowledgement waits for."""
    if r.cluster:
        seeds = r.url.partition("://")[2].rpartition("@")[2].count(",") + 1
        kind = f"cluster, {seeds} seed{'s' if seeds > 1 else ''}"
    else:
        kind = "one instance"
    if r.min_replicas_ack:
        return f"{kind}; a round counts once {r.min_replicas_ack} replica(s) acknowledged within {r.wait_timeout_ms} ms"
    return f"{kind}; a round counts once its master answered (no replica acknowledgement)"


def describe(cfg: config.Config) -> str:
    lines = [
        f"config: {cfg.source}",
        f"sink: {cfg.sink.kind}",
        f"redis: {config.redacted_url(cfg.redis.url)} ({_redis_kind(cfg.redis)})",
    ]
    for stream in cfg.streams.values():
        lines.append(f"stream {stream.name} (/b/{stream.name}, /e/{stream.name}, mode {stream.mode})")
        for name, field in stream.fields.items():
            rules: list[str] = [field.type]
            if field.required:
                rules.append("required")
            if field.max_length is not None:
                rules.append(f"max_length={field.max_length}")
            if field.pattern is not None:
                rules.append(f"pattern={field.pattern}")
            if field.enum is not None:
                rules.append("enum=" + "|".join(field.enum))
            if field.min is not None or field.max is not None:
                rules.append(f"range=[{field.min}, {field.max}]")
            if field.format is not None:
                rules.append(f"format={field.format}")
            rules.extend(field.transforms)
            lines.append(f"  {name}: {', '.join(rules)}")
    for imp in cfg.imports.values():
        lines.append(
            f"import {imp.name}: {imp.table} ({len(imp.columns)} columns, {imp.mode}) -> {_import_place(cfg, imp)}"
        )
    for name, ch in cfg.channels.items():
        lines.append(f"channel {name} ({type(ch).__name__.removesuffix('Channel').lower()})")
    for rule in cfg.rules.values():
        extra = f", threshold {rule.threshold.count} in {rule.threshold.window_s:g} s" if rule.threshold else ""
        lines.append(
            f"rule {rule.name}: stream {rule.stream}, {len(rule.conditions)} condition(s) "
            f"({rule.match}){extra} -> {', '.join(rule.channels)}"
        )
    return "\n".join(lines)


def _import_place(cfg: config.Config, imp: config.ImportConfig) -> str:
    """Where an import's table and view go, and which process runs it (docs/ARCHITECTURE.md, importer)."""
    tables = f"{imp.name}, {imp.name}_latest"
    kind = cfg.sink.kind
    if kind == "duckdb":
        return f"{tables} in {cfg.sink.duckdb.path} (the flusher runs it; `oceanus import run` while none does)"
    where = {
        "bigquery": f"dataset {cfg.sink.bigquery.dataset}",
        "postgres": f"PostgreSQL schema {cfg.sink.postgres.schema} (${cfg.sink.postgres.url_env})",
        "mysql": f"the MySQL database of ${cfg.sink.mysql.url_env}",
    }[kind]
    return f"{tables} in {where} (`oceanus import serve` runs it)"


def main(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    print(describe(cfg))
    missing = config.missing_secrets(cfg)
    if missing:
        # A channel without its secret would stop `oceanus notify` at start-up: say so now.
        raise ConfigError("secrets missing: " + "; ".join(missing))
    return 0

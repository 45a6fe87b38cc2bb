"""Warehouse targets, one module per warehouse; chosen by ``sink.kind``."""

from __future__ import annotations

import importlib

from importer.targets.base import Target
from oceanus.config import Config

#: ``sink.kind`` -> module:class. A SQL database target is one more module and one more line.
KINDS: dict[str, str] = {
    "duckdb": "importer.targets.duckdb:DuckDBTarget",
    "bigquery": "importer.targets.bigquery:BigQueryTarget",
}


def open_target(cfg: Config) -> Target:
    module, cls = KINDS[cfg.sink.kind].split(":")
    target: Target = getattr(importlib.import_module(module), cls)(cfg)
    return target

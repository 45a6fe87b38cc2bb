"""Warehouse targets, one module per warehouse; chosen by ``sink.kind``."""

from __future__ import annotations

import importlib

from importer.targets.base import Target
from oceanus.config import Config

#: ``sink.kind`` -> module:class: the imported tables go where the events go.
KINDS: dict[str, str] = {
    "duckdb": "importer.targets.duckdb:DuckDBTarget",
    "bigquery": "importer.targets.bigquery:BigQueryTarget",
    "postgres": "importer.targets.postgres:PostgresTarget",
    "mysql": "importer.targets.mysql:MySQLTarget",
}


def open_target(cfg: Config) -> Target:
    module, cls = KINDS[cfg.sink.kind].split(":")
    target: Target = getattr(importlib.import_module(module), cls)(cfg)
    return target

"""``oceanus flusher``: the flusher process, with the ``[imports]`` inside it on DuckDB.

The flusher does not know the importer (tests/oceanus/test_layers.py); this
command puts the two together: the flusher holds DuckDB's only writer lock, so
it hosts the import loop (importer.hosted). With BigQuery, or no ``[imports]``,
it is the plain flusher.
"""

from __future__ import annotations

import argparse

from flusher import runner
from importer.hosted import hosted_imports
from oceanus import config as config_mod


def main(args: argparse.Namespace) -> int:
    runner.setup_logging()
    cfg = config_mod.load(getattr(args, "config", None))
    return runner.run_process(cfg, hosted_imports(cfg))

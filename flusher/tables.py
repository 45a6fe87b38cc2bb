"""``oceanus tables sync``: create or migrate one warehouse table per stream.

The flusher runs the same :meth:`Sink.ensure_tables` at start-up; this command
lets a deploy do it first (and see what changed) before any flusher starts.
"""

from __future__ import annotations

import argparse
import sys

from flusher.sinks import make_sink
from oceanus import config


def main(args: argparse.Namespace) -> int:
    cfg = config.load(getattr(args, "config", None))
    sink = make_sink(cfg)
    try:
        changes = sink.ensure_tables(list(cfg.streams.values()))
    finally:
        sink.close()
    for line in changes:
        print(line)
    if not changes:
        print(f"{sink.name}: {len(cfg.streams)} table(s) up to date", file=sys.stdout)
    return 0

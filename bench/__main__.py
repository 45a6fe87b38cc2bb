"""``python -m bench NAME [args]``: run one benchmark module's ``main(argv)``.

Each benchmark prints human progress to stderr and, with ``--json``, one JSON
object as the last line of stdout, so scripts can ``tail -1``.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def available() -> list[str]:
    here = Path(__file__).parent
    # Packages (``baselines/``) hold the apps a benchmark compares against, not benchmarks.
    return sorted(m.name for m in pkgutil.iter_modules([str(here)]) if not m.name.startswith("_") and not m.ispkg)


def main(argv: list[str]) -> int:
    names = available()
    if not argv or argv[0] not in names:
        print(f"usage: python -m bench {{{'|'.join(names)}}} [options]", file=sys.stderr)
        return 2
    module = importlib.import_module(f"bench.{argv[0]}")
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""``python -m bench [--record] NAME [args]``: run one benchmark module's ``main(argv)``.

Each benchmark prints human progress to stderr and, with ``--json``, one JSON
object as the last line of stdout, so scripts can ``tail -1``. ``--record``
passes ``--json`` and appends the result, with the commit, versions and
machine, to ``bench/results.jsonl``; ``python -m bench summary --write`` turns
those into the table at the top of ``bench/RESULTS.md``.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import pkgutil
import sys
from pathlib import Path
from typing import TextIO


class _Tee(io.TextIOBase):
    """Writes go to the real stdout and are kept, so the JSON line can be recorded."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.kept = io.StringIO()

    def write(self, s: str) -> int:
        self.kept.write(s)
        return self.out.write(s)

    def flush(self) -> None:
        self.out.flush()


def available() -> list[str]:
    here = Path(__file__).parent
    # Packages (``baselines/``) hold the apps a benchmark compares against, not benchmarks.
    return sorted(m.name for m in pkgutil.iter_modules([str(here)]) if not m.name.startswith("_") and not m.ispkg)


def main(argv: list[str]) -> int:
    names = available()
    record = bool(argv) and argv[0] == "--record"
    if record:
        argv = argv[1:]
    if not argv or argv[0] not in names:
        print(f"usage: python -m bench [--record] {{{'|'.join(names)}}} [options]", file=sys.stderr)
        return 2
    module = importlib.import_module(f"bench.{argv[0]}")
    if not record:
        return int(module.main(argv[1:]) or 0)
    from bench import _record

    args = argv[1:] if "--json" in argv[1:] else [*argv[1:], "--json"]
    tee = _Tee(sys.stdout)
    with contextlib.redirect_stdout(tee):
        code = int(module.main(args) or 0)
    if code == 0:
        _record.append(_record.make_record(argv[0], args, _record.last_json_line(tee.kept.getvalue())))
        print(f"recorded in {_record.RESULTS_FILE}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

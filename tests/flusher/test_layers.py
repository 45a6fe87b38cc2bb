"""Who may import whom: a sink sits on the core (config, Redis contract, errors), never on a command."""

from __future__ import annotations

import ast
from pathlib import Path

import flusher
import oceanus.commands.query
import oceanus.errors
from flusher.sinks import base

FLUSHER = Path(flusher.__file__).parent
#: What a sink may import from oceanus: the core, nothing a CLI command defines.
CORE = frozenset({"oceanus.config", "oceanus.errors", "oceanus.buffer"})


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            # `from oceanus import query` imports the module oceanus.query.
            found.update(f"{node.module}.{alias.name}" for alias in node.names if node.module == "oceanus")
    return found


def test_sinks_import_only_the_core_of_oceanus() -> None:
    wrong = {
        f"{path.relative_to(FLUSHER.parent)}: {name}"
        for path in sorted((FLUSHER / "sinks").rglob("*.py"))
        for name in _imports(path)
        if (name == "oceanus" or name.startswith("oceanus.")) and name not in CORE and name != "oceanus"
    }
    assert not wrong, sorted(wrong)


def test_one_query_error() -> None:
    assert base.QueryError is oceanus.errors.QueryError
    assert oceanus.commands.query.QueryError is oceanus.errors.QueryError
    assert issubclass(base.QueryTimeout, oceanus.errors.QueryError)

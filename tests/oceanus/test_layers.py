"""Who may import whom (docs/ARCHITECTURE.md, "Packages"): the core imports nothing
above it, the components do not import each other's insides or any command."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: The core: config, the Redis contract, errors, the shared discovery file and the Redis client factory.
CORE = (
    "oceanus/__init__.py",
    "oceanus/config.py",
    "oceanus/buffer.py",
    "oceanus/errors.py",
    "oceanus/discovery.py",
    "oceanus/redisclient.py",
)
#: What sits on top: the entry point and the commands.
COMMANDS = ("oceanus.cli", "oceanus.commands")


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function: ``from a import b``
    counts as both ``a`` and ``a.b`` (b may be a module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def under(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def offenders(files: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(
        f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path} imports {name}"
        for path in files
        for name in imports(path)
        if under(name, forbidden)
    )


def package(name: str) -> list[Path]:
    files = sorted((REPO / name).rglob("*.py"))
    assert files, name
    return files


def test_imports_sees_function_level_and_from_imports(tmp_path: Path) -> None:
    mod = tmp_path / "m.py"
    mod.write_text(
        "import a.b\nfrom c import d\n\ndef f() -> None:\n    from e.f import g\n    import h\nfrom . import x\n"
    )
    assert imports(mod) == {"a.b", "c", "c.d", "e.f", "e.f.g", "h"}
    assert offenders([mod], ("e", "a.b.c", "c.d")) == [
        f"{mod} imports c.d",
        f"{mod} imports e.f",
        f"{mod} imports e.f.g",
    ]
    assert offenders([mod], ("ee", "b")) == []


def test_the_core_imports_nothing_above_it() -> None:
    files = [REPO / p for p in CORE]
    assert offenders(files, ("collector", "flusher", "importer", "notifier", *COMMANDS)) == []


def test_no_component_imports_a_command() -> None:
    files = package("collector") + package("flusher") + package("importer") + package("notifier")
    assert offenders(files, COMMANDS) == []


def test_collector_and_flusher_do_not_import_each_other() -> None:
    assert offenders(package("collector"), ("flusher", "importer")) == []
    assert offenders(package("flusher"), ("collector", "importer")) == []


#: The one edge from the notifier into another component: the flusher's claim protocol, generic over a
#: ``Keys(prefix)``, which the notifier runs in a namespace of its own (docs/ARCHITECTURE.md, "Notifier"),
#: and the move of that protocol's keys from the layout before hash tags, generic in the same way.
NOTIFIER_MAY_IMPORT_FROM_FLUSHER = ("flusher.claim", "flusher.upgrade")


def test_nothing_imports_the_notifier() -> None:
    files = package("collector") + package("flusher") + package("importer")
    assert offenders(files, ("notifier",)) == []


def test_the_notifier_imports_only_the_claim_protocol_of_the_flusher() -> None:
    files = package("notifier")
    assert offenders(files, ("collector", "importer")) == []
    edges = [
        o
        for o in offenders(files, ("flusher",))
        if not any(o.endswith(f" imports {m}") or f" imports {m}." in o for m in NOTIFIER_MAY_IMPORT_FROM_FLUSHER)
    ]
    assert edges == []

"""CI, `make lint` and the pre-commit hooks run the same checks."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


def _target(makefile: str, name: str) -> tuple[list[str], list[str]]:
    """(prerequisites, recipe lines) of one Makefile target."""
    m = re.search(rf"^{name}:([^\n]*)\n((?:\t[^\n]*\n)*)", makefile, re.M)
    assert m, f"no target {name}"
    return m.group(1).split(), [line.strip() for line in m.group(2).splitlines()]


def test_ci_runs_make_test_and_make_test_runs_lint_and_types() -> None:
    assert "make test" in (REPO / ".ci" / "run").read_text()
    makefile = (REPO / "Makefile").read_text()
    test_deps, _ = _target(makefile, "test")
    assert "lint" in test_deps
    lint_deps, lint = _target(makefile, "lint")
    assert "typecheck" in lint_deps
    assert "$(VENV)/bin/ruff check $(PY_DIRS)" in lint
    assert "$(VENV)/bin/ruff format --check $(PY_DIRS)" in lint
    assert _target(makefile, "typecheck")[1] == ["$(VENV)/bin/mypy $(PY_DIRS)"]
    dirs = re.search(r"^PY_DIRS := (.*)$", makefile, re.M)
    assert dirs
    python_dirs = {
        p.name
        for p in REPO.iterdir()
        if p.is_dir()
        and not p.name.startswith(".")
        and p.name not in ("build", "docs", "k8s", "docker")
        and any(p.glob("*.py"))
    }
    assert python_dirs <= set(dirs.group(1).split()), "a Python folder the linters do not read"


def test_pre_commit_hooks_are_the_lint_commands() -> None:
    config = yaml.safe_load((REPO / ".pre-commit-config.yaml").read_text())
    hooks = {h["id"]: h["entry"] for repo in config["repos"] for h in repo["hooks"]}
    assert hooks == {
        "ruff-check": ".venv/bin/ruff check",
        "ruff-format": ".venv/bin/ruff format --check",
        "mypy": "make -s typecheck",
    }

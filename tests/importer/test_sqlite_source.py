"""The SQLite source's URL: the forms people write for an absolute path, and what is refused."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from importer.sources.sqlite import SQLiteSource
from oceanus.errors import SourceError


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    # A directory name with characters a file: URI must escape.
    path = tmp_path / "a dir#1" / "shop.sqlite"
    path.parent.mkdir()
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY)")
        conn.execute("INSERT INTO users VALUES (7)")
    conn.close()
    return path


@pytest.mark.parametrize("slashes", ["///", "////"])
def test_three_and_four_slashes_name_the_same_absolute_path(shop: Path, slashes: str) -> None:
    source = SQLiteSource(f"sqlite:{slashes}{str(shop).lstrip('/')}")
    assert source.conn.execute("SELECT id FROM users").fetchall() == [(7,)]
    # Read-only: an import never changes its source.
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        source.conn.execute("INSERT INTO users VALUES (8)")


def test_a_relative_path_is_refused_showing_the_form() -> None:
    with pytest.raises(SourceError) as info:
        SQLiteSource("sqlite://shop.sqlite")
    assert str(info.value) == "the SQLite URL must name an absolute path (sqlite:///path/shop.db), not shop.sqlite"


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(SourceError) as info:
        SQLiteSource(f"sqlite://{tmp_path}/none.sqlite")
    assert str(info.value) == f"no SQLite database at {tmp_path}/none.sqlite (oceanus demo --shop writes one)"

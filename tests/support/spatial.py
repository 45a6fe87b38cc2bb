"""Install DuckDB's spatial extension from the ``duckdb-extension-spatial`` wheel.

The BigQuery emulator loads it at start and would otherwise try to download it
(there is no network here). Idempotent: ``make test`` runs it after installing.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def extension_file() -> Path | None:
    spec = importlib.util.find_spec("duckdb_extension_spatial")
    if spec is None or not spec.submodule_search_locations:
        return None
    import duckdb

    root = Path(next(iter(spec.submodule_search_locations)))
    wanted = root / "extensions" / f"v{duckdb.__version__}" / "spatial.duckdb_extension"
    if wanted.exists():
        return wanted
    found = sorted(root.glob("extensions/*/spatial.duckdb_extension"))
    return found[-1] if found else None


def install() -> str:
    import duckdb

    path = extension_file()
    if path is None:
        return "duckdb-extension-spatial is not installed; the BigQuery emulator tests will be skipped"
    con = duckdb.connect()
    try:
        con.execute(f"INSTALL '{path}'")
        con.execute("LOAD spatial")
    finally:
        con.close()
    return f"spatial extension installed from {path}"


if __name__ == "__main__":
    try:
        print(install())
    except Exception as exc:  # noqa: BLE001 - report and let the emulator tests skip
        print(f"could not install the spatial extension: {exc}", file=sys.stderr)

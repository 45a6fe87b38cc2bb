"""Source databases, one module per kind; the runner picks one by the URL's scheme."""

from __future__ import annotations

from importer.sources.base import Source
from oceanus.errors import ConfigError

#: URL scheme -> module:class.
SCHEMES: dict[str, str] = {
    "postgresql": "importer.sources.postgres:PostgresSource",
    "postgres": "importer.sources.postgres:PostgresSource",
    "mysql": "importer.sources.mysql:MySQLSource",
    "mariadb": "importer.sources.mysql:MySQLSource",
    "sqlite": "importer.sources.sqlite:SQLiteSource",
}


def open_source(url: str, where: str) -> Source:
    """Connect to the source ``url``; ``where`` names the config key in errors (never the URL: it holds a password)."""
    import importlib

    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    target = SCHEMES.get(scheme)
    if target is None:
        raise ConfigError(f"{where}: the URL's scheme must be one of {', '.join(sorted(SCHEMES))}, not {scheme!r}")
    module, cls = target.split(":")
    source: Source = getattr(importlib.import_module(module), cls)(url)
    return source

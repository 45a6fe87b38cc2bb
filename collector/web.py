"""Browser-facing pages served by the collector: the tag, the demo page and the
live status page. The ingestion app hands every GET it does not route itself
to :func:`handle`."""

from __future__ import annotations

from typing import Any

from collector._types import Receive, Scope, Send


async def handle(scope: Scope, receive: Receive, send: Send, app: Any) -> bool:
    """Serve ``scope`` if it is one of the web pages; return False if it is not."""
    return False

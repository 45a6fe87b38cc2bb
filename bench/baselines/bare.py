"""The ceiling: a bare granian ASGI app that answers every request with the GIF.

No parsing, no validation, no Redis -- what granian itself costs per request.
"""

from __future__ import annotations

from typing import Any

GIF = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
HEADERS = [(b"content-type", b"image/gif"), (b"cache-control", b"no-store"), (b"content-length", b"43")]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": GIF})

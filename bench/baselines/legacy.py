"""The 2016 shape: falcon under gunicorn's gevent worker, one redis-py RPUSH of a
JSON row per request, awaited before answering (run with ``gunicorn -k gevent``).

``LEGACY_REDIS_URL`` and ``LEGACY_KEY`` pick the list.
"""

from __future__ import annotations

import json
import os
import time
import uuid

import falcon
import redis

GIF = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)

_redis = redis.Redis.from_url(os.environ.get("LEGACY_REDIS_URL", "redis://127.0.0.1:6379/0"))
_key = os.environ.get("LEGACY_KEY", "legacy:q:pageview")


class Beacon:
    def on_get(self, req: falcon.Request, resp: falcon.Response, stream: str) -> None:
        row: dict[str, object] = dict(req.params)
        row["event_id"] = uuid.uuid4().hex
        row["received_at"] = time.time()
        row["ip"] = req.remote_addr
        row["ua"] = req.user_agent or ""
        _redis.rpush(_key, json.dumps(row))
        resp.content_type = "image/gif"
        resp.cache_control = ["no-store"]
        resp.data = GIF


app = falcon.App()
app.add_route("/b/{stream}", Beacon())

"""The official Snowplow Python tracker (snowplow-tracker) against a real collector, flusher and DuckDB.

Page views, page pings, structured, self-describing and screen-view events with
contexts go through ``POST .../tp2`` (base64 and plain JSON) and ``GET /i``;
rows are read back field by field. The emitter's own retry (its first POST
loses the reply after the collector stored the batch) ends as one row per event.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from snowplow_tracker.emitters import Emitter
from snowplow_tracker.events.page_ping import PagePing
from snowplow_tracker.events.page_view import PageView
from snowplow_tracker.events.screen_view import ScreenView
from snowplow_tracker.events.self_describing import SelfDescribing
from snowplow_tracker.events.structured_event import StructuredEvent
from snowplow_tracker.self_describing_json import SelfDescribingJson
from snowplow_tracker.subject import Subject
from snowplow_tracker.tracker import Tracker

from oceanus.buffer import Keys
from tests.collector.protocol_stack import protocol_stack, stored_rows
from tests.reliability.harness import Stack
from tests.support.servers import wait_for
from tests.support.tcpproxy import ReplyDropProxy

CTX = SelfDescribingJson("iglu:com.acme/page_ctx/jsonschema/1-0-0", {"section": "pens", "ab": [1, 2]})
PURCHASE = SelfDescribingJson("iglu:com.acme/purchase/jsonschema/1-0-2", {"sku": "P-1", "qty": 3})


def _accepted(stack: Stack, stream: str) -> int:
    keys = Keys(stack.cfg.redis.key_prefix)
    r = stack.redis.client()
    try:
        return sum(int(r.hget(k, "accepted") or 0) for k in r.keys(keys.stats(stream, 0)[:-1] + "*"))
    finally:
        r.close()


def _tracker(port: int, method: str, failures: list[Any], *, base64: bool = True, namespace: str = "web") -> Tracker:
    emitter = Emitter(
        "127.0.0.1",
        protocol="http",
        port=port,
        method=method,  # type: ignore[arg-type]
        batch_size=50,
        on_failure=lambda n, evts: failures.append((n, len(evts))),
    )
    subject = (
        Subject()
        .set_user_id("u-42")
        .set_domain_user_id("duid-1")
        .set_domain_session_id("sess-1")
        .set_domain_session_index(3)
        .set_screen_resolution(1920, 1080)
        .set_viewport(1280, 720)
        .set_timezone("Asia/Tokyo")
        .set_lang("ja")
        .set_ip_address("203.0.113.9")
        .set_useragent("ShopServer/1.0")
    )
    return Tracker(namespace, emitter, subject=subject, app_id="shop", encode_base64=base64)


def test_every_event_kind_is_stored_field_by_field(tmp_path: Path) -> None:
    with protocol_stack(tmp_path) as stack:
        failures: list[Any] = []
        post = _tracker(stack.port, "post", failures)
        ids = {
            "pv": post.track(PageView("https://shop.example/p/1", "Pen", "https://t.co/x", context=[CTX])),
            "pp": post.track(PagePing("https://shop.example/p/1", "Pen", min_x=0, max_x=10, min_y=5, max_y=50)),
            "se": post.track(StructuredEvent("shop", "add", "pen", "blue", 2.5)),
            "ue": post.track(SelfDescribing(PURCHASE, context=[CTX], true_timestamp=1_733_300_000_000)),
            "sv": post.track(ScreenView(str(uuid.UUID(int=7)), "Home")),
        }
        post.flush()
        plain = _tracker(stack.port, "post", failures, base64=False, namespace="plain")
        ids["ue_plain"] = plain.track(SelfDescribing(PURCHASE, context=[CTX]))
        plain.flush()
        get = _tracker(stack.port, "get", failures, namespace="pixel")
        ids["pv_get"] = get.track(PageView("https://shop.example/q?a=1&b=2", "Query"))
        get.flush()
        assert failures == []
        rows = {r["eid"]: r for r in stored_rows(stack, "snowplow")}

    assert sorted(rows) == sorted(str(v) for v in ids.values())
    pv = rows[ids["pv"]]
    assert (pv["e"], pv["aid"], pv["p"], pv["tna"]) == ("pv", "shop", "pc", "web")
    assert pv["tv"].startswith("py-")
    assert (pv["url"], pv["page"], pv["refr"]) == ("https://shop.example/p/1", "Pen", "https://t.co/x")
    assert (pv["uid"], pv["duid"], pv["sid"], pv["vid"]) == ("u-42", "duid-1", "sess-1", 3)
    assert (pv["res"], pv["vp"], pv["tz"], pv["lang"]) == ("1920x1080", "1280x720", "Asia/Tokyo", "ja")
    assert json.loads(pv["contexts"]) == [{"schema": CTX.schema, "data": {"section": "pens", "ab": [1, 2]}}]
    # The tracker's ip/ua speak for its end user; ip/ua are the sender's.
    assert (pv["user_ipaddress"], pv["useragent"]) == ("203.0.113.9", "ShopServer/1.0")
    assert pv["ip"] == "127.0.0.1"
    assert pv["ua"].startswith("python-requests/")
    # dtm places the row (within the window) and leads its event_id.
    assert pv["received_at"] == pv["dtm"]
    assert pv["event_id"][:12] == f"{_ms(pv['dtm']):012x}"
    assert pv["stm"] is not None
    assert pv["ue"] is None
    # A Python tracker keeps no cookie jar: each request got a fresh network user id.
    assert uuid.UUID(pv["nuid"]).version == 4
    pp = rows[ids["pp"]]
    assert pp["e"] == "pp"
    assert json.loads(pp["extra"]) == {"pp_mix": "0", "pp_max": "10", "pp_miy": "5", "pp_may": "50"}
    se = rows[ids["se"]]
    assert (se["e"], se["se_ca"], se["se_ac"], se["se_la"], se["se_pr"], se["se_va"]) == (
        "se",
        "shop",
        "add",
        "pen",
        "blue",
        2.5,
    )
    ue = rows[ids["ue"]]
    assert ue["e"] == "ue"
    assert json.loads(ue["ue"]) == {"schema": PURCHASE.schema, "data": {"sku": "P-1", "qty": 3}}
    assert ue["ttm"] is not None
    assert _ms(ue["ttm"]) == 1_733_300_000_000
    assert json.loads(rows[ids["ue_plain"]]["ue"]) == json.loads(ue["ue"])
    assert rows[ids["ue_plain"]]["tna"] == "plain"
    sv = json.loads(rows[ids["sv"]]["ue"])
    assert sv["schema"].startswith("iglu:com.snowplowanalytics.mobile/screen_view/jsonschema/")
    assert sv["data"]["name"] == "Home"
    got = rows[ids["pv_get"]]
    assert (got["e"], got["url"], got["page"], got["tna"]) == ("pv", "https://shop.example/q?a=1&b=2", "Query", "pixel")


def _ms(ts: datetime) -> int:
    return int(ts.replace(tzinfo=UTC).timestamp() * 1000)


def test_emitter_retry_after_a_lost_reply_stores_one_row_per_event(tmp_path: Path) -> None:
    with protocol_stack(tmp_path) as stack:
        proxy = ReplyDropProxy(stack.port).start()
        failures: list[Any] = []
        try:
            proxy.drop_reply_after(b"POST /com.snowplowanalytics.snowplow/tp2", times=1)
            tracker = _tracker(proxy.port, "post", failures)
            eids = [str(tracker.track(StructuredEvent("retry", "click", str(i)))) for i in range(30)]
            tracker.flush()
            # The emitter re-queues the batch on its failure and sends it again from a timer.
            wait_for(lambda: _accepted(stack, "snowplow") == 2 * len(eids), what="both copies acknowledged")
        finally:
            proxy.stop()
        assert proxy.dropped == 1
        assert failures == [(0, len(eids))]
        rows = stored_rows(stack, "snowplow")
    assert sorted(r["eid"] for r in rows) == sorted(eids)
    assert sorted(r["se_la"] for r in rows) == sorted(str(i) for i in range(30))

"""``oceanus demo --shop`` under ``oceanus dev``: the shop's tables go into DIR/shop.sqlite, the
flusher imports them (the [imports] of oceanus.toml, every 10 s), the page views go through the
collector, and ``oceanus report`` answers what the demo's own data says, computed here in Python."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from oceanus.commands import devstate
from tests.oceanus.test_dev_e2e import Dev, oceanus, pytestmark, query_json  # noqa: F401 - the same skips
from tests.support.servers import free_port, wait_for

EVENTS = 600


def _time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=None)


def expected_conversion(doc: dict[str, Any]) -> dict[int, tuple[int, int]]:
    """item -> (viewers, viewers who ordered it, not cancelled, within 7 days after a view)."""
    views: dict[tuple[int, int], list[dt.datetime]] = defaultdict(list)
    for v in doc["views"]:
        m = re.match(r"^/items/([0-9]+)", v["screen"])
        if m:
            views[(v["user_id"], int(m.group(1)))].append(_time(v["viewed_at"]))
    orders = [(o["user_id"], o["item_id"], _time(o["ordered_at"])) for o in doc["orders"] if o["status"] != "cancelled"]
    out: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    for (user, item), times in views.items():
        out[item][0] += 1
        if any(
            u == user and i == item and any(t <= at <= t + dt.timedelta(days=7) for t in times) for u, i, at in orders
        ):
            out[item][1] += 1
    return {item: (v[0], v[1]) for item, v in out.items()}


def test_demo_shop_then_reports(tmp_path: Path) -> None:
    dev = Dev(tmp_path / "data", free_port(), env={"OCEANUS_SHOP_URL": ""})
    dev.env.pop("OCEANUS_SHOP_URL")  # oceanus dev points it at DIR/shop.sqlite
    try:
        dev.start()
        report = tmp_path / "shop.json"
        res = oceanus(
            "demo",
            "--shop",
            "--url",
            dev.url,
            "--data-dir",
            str(dev.data_dir),
            "--events",
            str(EVENTS),
            "--seed",
            "7",
            "--report",
            str(report),
        )
        assert res.returncode == 0, res.stdout + res.stderr
        assert (dev.data_dir / devstate.SHOP_FILE).exists()
        doc = json.loads(report.read_text())
        assert doc["accepted"] == EVENTS
        n_orders = len(doc["orders"])
        assert n_orders > 10

        def settled() -> bool:
            try:
                rows = query_json(
                    dev,
                    "SELECT (SELECT count(*) FROM ecview_dedup) AS views, "
                    "(SELECT count(*) FROM orders_latest) AS orders, "
                    "(SELECT count(*) FROM order_items_latest) AS lines, "
                    "(SELECT count(*) FROM users_latest) AS users, "
                    "(SELECT count(*) FROM items_latest) AS items",
                )
            except AssertionError:  # an imported table does not exist yet
                return False
            seen[:] = rows
            return rows == [{"views": EVENTS, "orders": n_orders, "lines": n_orders, "users": 60, "items": 12}]

        seen: list[Any] = []
        try:
            wait_for(settled, timeout=90, what="the views stored and the shop imported")
        except TimeoutError:
            log = (dev.data_dir / devstate.LOG_DIR / "flusher.log").read_text()
            raise AssertionError(f"{seen} (want {EVENTS} views, {n_orders} orders)\n{log[-3000:]}") from None
        res = oceanus("report", "item_conversion_7d", "--format", "json", "--data-dir", str(dev.data_dir))
        assert res.returncode == 0, res.stderr
        got = {r["item_id"]: (r["viewers"], r["buyers_7d"], r["conversion"]) for r in json.loads(res.stdout)}
        want = expected_conversion(doc)
        assert {k: v[:2] for k, v in got.items()} == want
        for item, (viewers, buyers, conversion) in got.items():
            assert conversion == pytest.approx(buyers / viewers, abs=1e-4), item
        assert any(b for _, b, _ in got.values()), "some item converted"
        res = oceanus("report", "views_by_occupation_age", "--format", "json", "--data-dir", str(dev.data_dir))
        assert res.returncode == 0, res.stderr
        assert sum(r["views"] for r in json.loads(res.stdout)) == EVENTS
        dev.stop()
    finally:
        dev.cleanup()

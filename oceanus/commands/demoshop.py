"""``oceanus demo --shop``: a stationery shop's members, items and orders, and their page views.

With no database server on the machine (``make run``), the shop's tables go into
a SQLite file, ``DIR/shop.sqlite``: a source like the shop's MySQL would be. The
``[imports]`` of oceanus.toml read it (``OCEANUS_SHOP_URL``, which ``oceanus
dev`` points at that file) through the same importer as any source, inside the
flusher, every 10 s. The page views go to the collector as the shop's server
sends them (``POST /e/ecview``), so ``oceanus report`` joins real ``ecview``
rows with the imported ``*_latest`` views.

Each run adds views and orders (new ids); members and items stay the same. The
shape of the data: members 1-60 (61-70 view without being members), 12 items,
views over the last 14 days, about one item view in six followed by an order
1 hour to 10 days later (never in the future), one order in ten cancelled.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import random
import sqlite3
from pathlib import Path

import msgspec

from oceanus.commands import devstate
from oceanus.commands.demo import Client, DemoError

MEMBERS = 60
#: Visitors 61..70 view items without a member record (the report counts them from the event).
VISITORS = 70
ITEMS = (
    ("ballpoint pen", "ボールペン", 150),
    ("A5 notebook", "A5ノート", 320),  # noqa: RUF001 - Japanese names
    ("mechanical pencil", "シャープペンシル", 480),
    ("eraser", "消しゴム", 90),
    ("highlighter set", "蛍光ペンセット", 560),
    ("sticky notes", "付箋", 210),
    ("stapler", "ホッチキス", 980),
    ("fountain pen", "万年筆", 4800),
    ("ruler 30 cm", "定規30cm", 180),
    ("file folder", "クリアファイル", 120),
    ("scissors", "はさみ", 650),
    ("glue stick", "スティックのり", 140),
)
OCCUPATIONS = ("engineer", "teacher", "designer", "accountant", "student", "sales", "nurse", "writer")
VIEW_DAYS = 14
ORDER_SHARE = 1 / 6
CANCEL_SHARE = 0.1
#: ecview events per POST (the collector takes up to collector.max_batch_events).
POST_BATCH = 100

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS users (id INTEGER PRIMARY KEY, age INTEGER, gender TEXT, occupation TEXT, email TEXT)",
    "CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, name TEXT NOT NULL, jp_name TEXT, price INTEGER, "
    "stock_quantity INTEGER)",
    "CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL, total_price INTEGER, "
    "status TEXT, ordered_at TIMESTAMP NOT NULL)",
    "CREATE TABLE IF NOT EXISTS order_items (id INTEGER PRIMARY KEY, order_id INTEGER NOT NULL, "
    "item_id INTEGER NOT NULL, quantity INTEGER, price INTEGER)",
)


class View(msgspec.Struct, frozen=True):
    user_id: int
    screen: str
    viewed_at: dt.datetime


class Order(msgspec.Struct, frozen=True):
    id: int
    user_id: int
    item_id: int
    quantity: int
    price: int
    status: str
    ordered_at: dt.datetime


class ShopReport(msgspec.Struct, kw_only=True):
    shop_db: str
    views: list[View] = []
    orders: list[Order] = []
    accepted: int = 0
    refused: int = 0


def members(rng: random.Random) -> list[tuple[int, int | None, str, str, str]]:
    """Members 1..60, the same on every run (called with ``Random(0)``): re-runs add orders to the same people."""
    out = []
    for uid in range(1, MEMBERS + 1):
        age = None if rng.random() < 0.05 else rng.randrange(16, 78)
        out.append((uid, age, rng.choice(("F", "M")), rng.choice(OCCUPATIONS), f"member{uid}@example.com"))
    return out


def generate(rng: random.Random, events: int, now: dt.datetime, first_order_id: int) -> tuple[list[View], list[Order]]:
    views: list[View] = []
    orders: list[Order] = []
    for _ in range(events):
        user = rng.randrange(1, VISITORS + 1)
        at = now - dt.timedelta(seconds=rng.uniform(0, VIEW_DAYS * 86400))
        at = at.replace(microsecond=at.microsecond // 1000 * 1000)  # the shop's clock has milliseconds
        if rng.random() < 0.7:
            item = rng.randrange(1, len(ITEMS) + 1)
            views.append(View(user, f"/items/{item}", at))
            ordered = at + dt.timedelta(seconds=rng.uniform(3600, 10 * 86400))
            if user <= MEMBERS and rng.random() < ORDER_SHARE and ordered < now:
                status = "cancelled" if rng.random() < CANCEL_SHARE else rng.choice(("paid", "shipped"))
                orders.append(
                    Order(
                        first_order_id + len(orders),
                        user,
                        item,
                        rng.randrange(1, 4),
                        ITEMS[item - 1][2],
                        status,
                        ordered.replace(microsecond=0),
                    )
                )
        else:
            views.append(View(user, rng.choice(("/", "/cart", "/search", "/items/")), at))
    return views, orders


def write_shop(path: Path, rng: random.Random, events: int, now: dt.datetime) -> tuple[list[View], list[Order]]:
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path)
    try:
        con.execute("PRAGMA journal_mode = WAL")  # the import reads while a later demo writes
        for ddl in SCHEMA:
            con.execute(ddl)
        con.executemany("INSERT OR IGNORE INTO users VALUES (?, ?, ?, ?, ?)", members(random.Random(0)))
        con.executemany(
            "INSERT OR IGNORE INTO items VALUES (?, ?, ?, ?, ?)",
            [(i + 1, n, jp, p, 100) for i, (n, jp, p) in enumerate(ITEMS)],
        )
        row = con.execute("SELECT coalesce(max(id), 0) FROM orders").fetchone()
        views, orders = generate(rng, events, now, int(row[0]) + 1 if row else 1)
        # ordered_at as naive UTC text: the shop database's DATETIME.
        con.executemany(
            "INSERT INTO orders VALUES (?, ?, ?, ?, ?)",
            [
                (o.id, o.user_id, o.quantity * o.price, o.status, o.ordered_at.replace(tzinfo=None).isoformat(" "))
                for o in orders
            ],
        )
        con.executemany(
            "INSERT INTO order_items VALUES (?, ?, ?, ?, ?)",
            [(o.id, o.id, o.item_id, o.quantity, o.price) for o in orders],
        )
        con.commit()
    finally:
        con.close()
    return views, orders


Member = tuple[int, int | None, str, str, str]


def ecview_event(view: View, member: Member | None, rng: random.Random) -> dict[str, object]:
    """The shop server's message for one view (its own keys: the ecview stream's aliases)."""
    if member is not None:
        _, age, gender, occupation, _ = member
    else:
        age, gender, occupation = rng.randrange(16, 78), rng.choice(("F", "M")), rng.choice(OCCUPATIONS)
    return {
        "userid": str(view.user_id),
        "userage": "999" if age is None else str(age),
        "usergender": gender,
        "useroccupation": occupation,
        "useraction": view.screen,
        "Actiontimestamp": view.viewed_at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }


def run_shop(url: str, data_dir: Path, events: int, seed: int | None) -> ShopReport:
    client = Client(url)
    try:
        client.send("GET", "/healthz", None, {})
    except (OSError, http.client.HTTPException) as exc:
        raise DemoError(f"no collector answers at {url} ({exc}); start one with `oceanus dev`") from None
    rng = random.Random(seed)
    path = (data_dir / devstate.SHOP_FILE).resolve()
    views, orders = write_shop(path, rng, events, dt.datetime.now(dt.UTC))
    people = {m[0]: m for m in members(random.Random(0))}
    report = ShopReport(shop_db=str(path), views=views, orders=orders)
    try:
        for start in range(0, len(views), POST_BATCH):
            chunk = views[start : start + POST_BATCH]
            body = json.dumps([ecview_event(v, people.get(v.user_id), rng) for v in chunk]).encode()
            status, error = client.send("POST", "/e/ecview", body, {"content-type": "application/json"})
            if 200 <= status < 300:
                report.accepted += len(chunk)
            else:
                report.refused += len(chunk)
                raise DemoError(f"the collector refused a batch of ecview events ({status}): {error[:200]}")
    finally:
        client.close()
    return report


def summary(report: ShopReport) -> str:
    cancelled = sum(o.status == "cancelled" for o in report.orders)
    return "\n".join(
        [
            f"shop: {MEMBERS} members, {len(ITEMS)} items and {len(report.orders)} new orders ({cancelled} cancelled) "
            f"in {report.shop_db}",
            f"  sent {report.accepted} ecview events (page views of the last {VIEW_DAYS} days) to the collector",
            "  the flusher imports the shop every 10 s (oceanus.toml [imports.*], OCEANUS_SHOP_URL); then:",
            "    oceanus report                      the reports",
            "    oceanus report item_conversion_7d   view -> order within 7 days, per item",
        ]
    )

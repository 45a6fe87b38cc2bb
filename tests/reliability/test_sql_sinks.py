"""The flusher's guarantees with the PostgreSQL and MySQL sinks, under load, real processes.

Every scenario ends with the accounting line and ``lost == 0``, ``duplicates == 0``:
kill -9 of the flusher mid-batch, an outage of the database (a TCP proxy between
the flusher and the server drops every connection and refuses new ones for N s;
the machine's database servers themselves are never stopped, others use them),
and rows the warehouse refuses (dead letters, the rest stored). Quick variants
run in ``make test``; the 60 s outage is ``slow`` (``make chaos``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flusher.batch import DeadRow
from tests.reliability.harness import STREAM, Stack, Tally, account
from tests.reliability.loadgen import Load, marker
from tests.reliability.test_scenarios import FAST_ENV, QUICK_S, assert_no_loss, kill_flusher_mid_batch
from tests.support.outageproxy import OutageProxy
from tests.support.servers import wait_for
from tests.support.sqlwarehouse import KINDS, MYSQL_PORT, PG_PORT, SqlWarehouse, warehouse


@pytest.fixture(params=KINDS)
def wh(request: pytest.FixtureRequest) -> Iterator[SqlWarehouse]:
    with warehouse(request.param) as w:
        yield w


@pytest.fixture
def proxy(wh: SqlWarehouse) -> Iterator[OutageProxy]:
    p = OutageProxy(PG_PORT if wh.kind == "postgres" else MYSQL_PORT).start()
    try:
        yield p
    finally:
        p.stop()


def sql_stack(tmp_path: Path, wh: SqlWarehouse, proxy: OutageProxy) -> Stack:
    # The database's statement and socket timeouts short: a stalled write is noticed in seconds.
    env = {
        **FAST_ENV,
        **wh.env(proxy.port),
        "OCEANUS_SINK_POSTGRES_STATEMENT_TIMEOUT_S": "10",
        "OCEANUS_SINK_MYSQL_TIMEOUT_S": "10",
    }
    stack = Stack(tmp_path, sink=wh.kind, env=env)
    stack.sql = wh
    return stack


def assert_exactly_once(tally: Tally) -> None:
    assert_no_loss(tally)
    assert tally.duplicates == 0, f"{tally.duplicates} rows stored twice"


def test_kill9_flusher_mid_batch_quick(tmp_path: Path, wh: SqlWarehouse, proxy: OutageProxy) -> None:
    stack = sql_stack(tmp_path, wh, proxy).start()
    try:
        tally = kill_flusher_mid_batch(stack, Load(stack.port, senders=8, duration_s=QUICK_S), 2)
        assert_exactly_once(tally)
    finally:
        stack.stop()


def database_outage(stack: Stack, proxy: OutageProxy, load: Load, down_s: float) -> Tally:
    load.start()
    assert load.wait_acked(300, 30), "no load acknowledged before the outage"
    wait_for(lambda: bool(stack.warehouse_rows()), timeout=30, what="a first row in the warehouse")
    proxy.down()
    down_at = time.monotonic()
    backlog_peak = 0
    while time.monotonic() - down_at < down_s:
        backlog_peak = max(backlog_peak, stack.backlog_frames())
        time.sleep(0.1)  # the outage itself, sampling the backlog meanwhile
    proxy.up()
    assert backlog_peak > 0, "the backlog never grew: the outage was not seen"
    assert proxy.refused > 0, "the flusher never tried to reconnect during the outage"
    tally = stack.finish(load.join(), f"{stack.sink} outage {down_s:g}s (connections cut and refused)")
    print(f"backlog peak {backlog_peak} frames, {proxy.refused} connections refused", flush=True)
    return tally


def test_database_outage_quick(tmp_path: Path, wh: SqlWarehouse, proxy: OutageProxy) -> None:
    stack = sql_stack(tmp_path, wh, proxy).start()
    try:
        load = Load(stack.port, senders=8, duration_s=QUICK_S + 4, rate=1500)
        assert_exactly_once(database_outage(stack, proxy, load, down_s=4.0))
    finally:
        stack.stop()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_database_outage_60s(tmp_path: Path, wh: SqlWarehouse, proxy: OutageProxy) -> None:
    stack = sql_stack(tmp_path, wh, proxy).start()
    try:
        load = Load(stack.port, senders=16, duration_s=90, rate=3000)
        assert_exactly_once(database_outage(stack, proxy, load, down_s=60.0))
    finally:
        stack.stop()


def test_rows_the_database_refuses_are_dead_letters_and_the_rest_stored(
    tmp_path: Path, wh: SqlWarehouse, proxy: OutageProxy
) -> None:
    """A rule only the database knows refuses sender 1's events: each is a dead letter, every other
    acknowledged event is stored once, and no batch is stuck behind them."""
    stack = sql_stack(tmp_path, wh, proxy).start()
    refused_sender = marker(1, 0)[:4]
    try:
        wh.execute(f"ALTER TABLE {{s}}.{STREAM} ADD CONSTRAINT not_sender_1 CHECK (oid NOT LIKE '{refused_sender}%')")
        load = Load(stack.port, senders=4, duration_s=QUICK_S, rate=800).start()
        result = load.join()
        stack.wait_drained()
        for proc in stack.collectors.values():
            proc.stop()
        stack.wait_drained()
        assert stack.flusher is not None
        stack.flusher.stop()
        r = stack.redis.client()
        try:
            dead = [json.loads(item) for item in r.lrange(stack.keys.dead(STREAM), 0, -1)]
        finally:
            r.close()
        tally = account(result, stack.warehouse_rows(), f"{wh.kind} rows refused by a CHECK")
    finally:
        stack.stop()
    dead_markers = {DeadRow(**d).row["oid"] for d in dead if d.get("row")}  # type: ignore[index]
    acked_refused = {m for m in result.acked_set() if m.startswith(refused_sender)}
    print(
        f"{wh.kind}: dead letters={len(dead)} (refused by the CHECK), lost="
        f"{len(set(tally.lost_markers) - dead_markers)} (neither stored nor dead-lettered)",
        flush=True,
    )
    assert acked_refused, "sender 1 had nothing acknowledged: the scenario proved nothing"
    assert set(tally.lost_markers) == acked_refused, "a lost event is not one the database refused"
    assert acked_refused <= dead_markers, "a refused event is missing from the dead letters"
    assert all(m.startswith(refused_sender) for m in dead_markers)
    assert all("not_sender_1" in d["reason"] for d in dead)
    assert tally.duplicates == 0

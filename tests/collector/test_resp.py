"""The writer's Redis link against a real redis-server, and against one that never answers."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import hiredis
import pytest
import redis

from collector.resp import RedisLink, pack
from tests.support.servers import RedisServer, free_port

pytestmark = pytest.mark.anyio


def test_pack_is_resp_bulk_strings() -> None:
    assert pack(b"RPUSH", "k", b"a\r\nb", 7) == b"*4\r\n$5\r\nRPUSH\r\n$1\r\nk\r\n$4\r\na\r\nb\r\n$1\r\n7\r\n"


def test_url_options_it_cannot_honour_are_refused() -> None:
    with pytest.raises(ValueError, match="socket_timeout"):
        RedisLink("redis://127.0.0.1:6379/0?socket_timeout=3", 1.0)


async def test_a_round_returns_every_reply_in_order_and_error_replies_in_place(
    redis_server: RedisServer, redis_client: Any
) -> None:
    redis_client.set("not-a-list", "x")
    link = RedisLink(redis_server.url, 2.0)
    try:
        replies = await link.call(
            pack("RPUSH", "q", b"f1") + pack("RPUSH", "not-a-list", b"f2") + pack("RPUSH", "q", b"f3", b"f4"), 3
        )
        assert replies[0] == 1
        assert replies[2] == 3
        assert isinstance(replies[1], hiredis.ReplyError)
        assert "WRONGTYPE" in str(replies[1])
        # The connection is still in step after an error reply.
        assert await link.call(pack("LLEN", "q"), 1) == [3]
        # A large frame arrives in several reads and is still one reply.
        big = b"x" * 1_000_000
        assert await link.call(pack("RPUSH", "big", big), 1) == [1]
    finally:
        link.close()
    assert redis_client.lrange("q", 0, -1) == [b"f1", b"f3", b"f4"]
    assert redis_client.lindex("big", 0) == big


async def test_user_password_and_database_come_from_the_url(redis_server: RedisServer, redis_client: Any) -> None:
    redis_client.execute_command("ACL", "SETUSER", "writer", "on", ">s3cret", "~*", "+@all")
    link = RedisLink(f"redis://writer:s3cret@127.0.0.1:{redis_server.port}/3", 2.0)
    try:
        assert await link.call(pack("RPUSH", "q", b"f"), 1) == [1]
    finally:
        link.close()
    assert redis_client.llen("q") == 0  # not in database 0
    db3 = redis.Redis(port=redis_server.port, db=3)
    try:
        assert db3.lrange("q", 0, -1) == [b"f"]
    finally:
        db3.close()
    refused = RedisLink(f"redis://writer:wrong@127.0.0.1:{redis_server.port}/0", 2.0)
    with pytest.raises(ConnectionError, match="setup"):
        await refused.call(pack("PING"), 1)
    refused.close()


async def test_a_killed_connection_is_replaced_on_the_next_round(redis_server: RedisServer, redis_client: Any) -> None:
    link = RedisLink(redis_server.url, 2.0)
    try:
        assert await link.call(pack("PING"), 1) == [b"PONG"]
        assert redis_client.client_kill_filter(_type="normal", skipme=True) >= 1
        failures = 0
        for _ in range(3):  # the round that meets the dead socket fails, the next one reconnects
            try:
                assert await link.call(pack("PING"), 1) == [b"PONG"]
                break
            except ConnectionError:
                failures += 1
        else:
            pytest.fail("the link never reconnected")
        assert failures <= 1
    finally:
        link.close()


async def test_refused_and_silent_servers_raise_oserror_within_the_timeout() -> None:
    link = RedisLink(f"redis://127.0.0.1:{free_port()}/0", 1.0)
    with pytest.raises(ConnectionRefusedError):
        await link.call(pack("PING"), 1)

    closed = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(65536):
            pass  # reads the command, never answers
        closed.set()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    link = RedisLink(f"redis://127.0.0.1:{port}/0", 0.3)
    try:
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            await link.call(pack("RPUSH", "q", b"f"), 1)
        assert time.monotonic() - t0 < 2.0
        # The timed-out connection is closed, so a late reply can never be read as the next round's.
        await asyncio.wait_for(closed.wait(), 5.0)
    finally:
        link.close()
        server.close()
        await server.wait_closed()


@pytest.mark.integration
async def test_a_unix_socket_url_with_a_database(tmp_path: Path) -> None:
    sock_dir = Path(tempfile.mkdtemp(prefix="oc-", dir="/tmp"))  # socket paths are limited to ~100 bytes
    server = RedisServer(tmp_path / "redis", unix_socket=sock_dir / "r.sock").start()
    link = RedisLink(f"unix://{sock_dir / 'r.sock'}?db=2", 2.0)
    try:
        assert await link.call(pack("RPUSH", "q", b"frame") + pack("LLEN", "q"), 2) == [1, 1]
        db2 = redis.Redis(port=server.port, db=2)
        try:
            assert db2.lrange("q", 0, -1) == [b"frame"]
        finally:
            db2.close()
        assert not server.client().exists("q")  # database 0 untouched
    finally:
        link.close()
        server.stop()
        shutil.rmtree(sock_dir, ignore_errors=True)


async def test_one_connection_serves_every_round(redis_server: RedisServer) -> None:
    link = RedisLink(redis_server.url, 2.0)
    try:
        (first,) = await link.call(pack("CLIENT", "ID"), 1)
        assert await link.call(pack("CLIENT", "ID"), 1) == [first]
    finally:
        link.close()


def test_the_url_names_the_host_and_port_and_the_defaults_are_redis_own() -> None:
    explicit = RedisLink("redis://127.0.0.2:1234/0", 1.0)
    assert (explicit._host, explicit._port, explicit._path, explicit._ssl, explicit._hello) == (
        "127.0.0.2",
        1234,
        None,
        None,
        [],
    )
    default = RedisLink("redis://", 1.0)
    assert (default._host, default._port) == ("localhost", 6379)
    assert RedisLink("redis://:pw@h/0", 1.0)._hello == [pack("AUTH", "pw")]


async def test_a_host_other_than_localhost_is_the_one_connected_to() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.write(b"+PONG\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.2", 0)
    port = server.sockets[0].getsockname()[1]
    link = RedisLink(f"redis://127.0.0.2:{port}/0", 2.0)
    try:
        assert await link.call(pack("PING"), 1) == [b"PONG"]
    finally:
        link.close()
        server.close()
        await server.wait_closed()


class _Transport(asyncio.Transport):
    """Stands in for the socket under a protocol fed by hand: records abort()."""

    def __init__(self) -> None:
        super().__init__()
        self.aborted = 0

    def abort(self) -> None:
        self.aborted += 1


def _protocol() -> tuple[Any, _Transport]:
    from collector.resp import _Protocol

    p = _Protocol()
    t = _Transport()
    p.connection_made(t)
    return p, t


async def test_replies_split_across_reads_resolve_the_round_once_all_have_come() -> None:
    p, t = _protocol()
    assert p.lost is False
    waiter: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
    p.waiter, p.expected = waiter, 3
    p.data_received(b":1\r\n+O")
    p.data_received(b"K\r\n")
    assert not waiter.done()
    p.data_received(b"$2\r\nab\r\n")
    assert waiter.result() == [1, b"OK", b"ab"]
    assert (p.lost, t.aborted) == (False, 0)


async def test_more_replies_than_commands_fail_the_round_and_drop_the_connection() -> None:
    p, t = _protocol()
    waiter: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
    p.waiter, p.expected = waiter, 1
    p.data_received(b"+OK\r\n+OK\r\n")
    with pytest.raises(ConnectionError, match=r"^unexpected reply from Redis$"):
        waiter.result()
    assert (p.lost, t.aborted) == (True, 1)


async def test_a_late_reply_after_the_round_fails_nothing_more_and_drops_the_connection() -> None:
    p, t = _protocol()
    waiter: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
    p.waiter, p.expected = waiter, 1
    p.data_received(b"+A\r\n")
    assert waiter.result() == [b"A"]
    p.data_received(b"+B\r\n")  # the round is resolved already: no second result, no error
    assert waiter.exception() is None
    assert (p.lost, t.aborted) == (True, 1)


def test_a_reply_with_no_round_in_flight_drops_the_connection_at_once() -> None:
    p, t = _protocol()
    p.data_received(b"+OK\r\n")
    assert (p.lost, t.aborted) == (True, 1)
    p, t = _protocol()
    p.transport = None  # a reply racing connection_made's bookkeeping still fails cleanly
    p.data_received(b"+OK\r\n")
    assert p.lost is True


async def test_a_garbled_reply_fails_the_round_naming_it() -> None:
    p, t = _protocol()
    waiter: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
    p.waiter, p.expected = waiter, 1
    p.data_received(b"?what\r\n")
    with pytest.raises(ConnectionError, match=r"^garbled reply from Redis: "):
        waiter.result()
    assert (p.lost, t.aborted) == (True, 1)
    done: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
    done.set_result([])
    p, t = _protocol()
    p.waiter, p.expected = done, 1
    p.data_received(b"?what\r\n")  # a resolved round is left as it is
    assert done.result() == []
    assert t.aborted == 1


async def test_a_closed_connection_fails_the_round_in_flight_only() -> None:
    loop = asyncio.get_running_loop()
    p, _ = _protocol()
    waiter: asyncio.Future[list[Any]] = loop.create_future()
    p.waiter, p.expected = waiter, 1
    p.connection_lost(None)
    assert p.lost is True
    with pytest.raises(ConnectionError, match=r"^Redis closed the connection \(EOF\)$"):
        waiter.result()
    p, _ = _protocol()
    waiter = loop.create_future()
    p.waiter, p.expected = waiter, 1
    p.connection_lost(OSError("reset"))
    with pytest.raises(ConnectionError, match=r"^Redis closed the connection \(reset\)$"):
        waiter.result()
    # Between rounds, or after the round resolved: nothing to fail, no error.
    p, _ = _protocol()
    p.connection_lost(None)
    assert p.lost is True
    p, _ = _protocol()
    waiter = loop.create_future()
    waiter.set_result(["A"])
    p.waiter = waiter
    p.connection_lost(None)
    assert waiter.result() == ["A"]


async def test_a_round_whose_connection_closes_mid_way_raises_connection_error_at_once() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    link = RedisLink(f"redis://127.0.0.1:{port}/0", 30.0)
    try:
        t0 = time.monotonic()
        with pytest.raises(ConnectionError, match="Redis closed the connection"):
            await link.call(pack("PING"), 1)
        assert time.monotonic() - t0 < 10.0
    finally:
        link.close()
        server.close()
        await server.wait_closed()

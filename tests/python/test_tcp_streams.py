"""TCP through asyncio's streams (open_connection / start_server): echo, big
transfers, half close, drain, many clients, wait_closed.

Every test runs on asyncio's own loop (the reference) and on shardloop and
expects the same results; see _tcp_support.py for the conventions (no
timing assertions, ``spin``, small buffers for peers that must not read).
"""

import asyncio
import socket

import pytest

from _support import (BIG, LOOPBACK, assert_same_bytes, close_server, echo_handler, echo_in_chunks, pattern,
                      run, same_as_asyncio, spin, wait_until)
from _tcp_support import FAMILIES, SMALL_BUF, fill_transport, shrink_sndbuf, stream_client


@pytest.mark.parametrize("family", FAMILIES)
def test_streams_echo_small(loop, family):
    async def main():
        async with stream_client(host=LOOPBACK[family]) as (reader, writer):
            for msg in (b"x", b"hello world", bytes(range(256)), b"\0" * 3):
                writer.write(msg)
                await writer.drain()
                assert await reader.readexactly(len(msg)) == msg
            writer.write_eof()
            assert await reader.read() == b""
            assert reader.at_eof()

    run(loop, main())


@pytest.mark.parametrize("size", [3 * 1024 * 1024 + 7, 16 * 1024 * 1024 + 1])
def test_streams_echo_multi_mib(loop, size):
    payload = pattern(size, seed=size)

    async def main():
        async with stream_client() as (reader, writer):
            assert_same_bytes(await echo_in_chunks(reader, writer, payload), payload)

    run(loop, main(), BIG)


def test_streams_one_big_write(loop):
    payload = pattern(6 * 1024 * 1024 + 3, seed=7)

    async def main():
        async with stream_client() as (reader, writer):
            writer.write(payload)  # one write: most of it is buffered
            writer.write_eof()
            received = await reader.readexactly(len(payload))
            assert_same_bytes(received, payload)
            assert await reader.read() == b""

    run(loop, main(), BIG)


def test_streams_readexactly_readuntil(loop):
    pieces = [b"hel", b"lo\nwor", b"ld\r", b"\nXY", b"Z", b"tail"]

    async def handler(reader, writer):
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
            await spin(3)  # separate reads on the other side, most likely
        writer.close()

    async def main():
        async with stream_client(handler) as (reader, writer):
            assert await reader.readuntil(b"\n") == b"hello\n"
            assert await reader.readuntil(b"\r\n") == b"world\r\n"
            assert await reader.readexactly(3) == b"XYZ"
            with pytest.raises(asyncio.IncompleteReadError) as info:
                await reader.readexactly(10)
            assert info.value.partial == b"tail"
            assert info.value.expected == 10
            with pytest.raises(asyncio.IncompleteReadError) as info:
                await reader.readuntil(b"\n")
            assert info.value.partial == b""
            assert reader.at_eof()

    run(loop, main())


def test_streams_half_close(loop):
    """write_eof: the server reads to EOF, then still answers on the same
    connection; the client reads the answer and EOF after its own EOF."""
    request = pattern(200_000, seed=3)

    async def handler(reader, writer):
        data = await reader.read()  # until the client's EOF
        assert reader.at_eof()
        writer.write(b"got %d bytes\n" % len(data))
        writer.write(data[::-1])
        await writer.drain()
        writer.close()

    async def main():
        async with stream_client(handler) as (reader, writer):
            assert writer.can_write_eof()
            writer.write(request)
            writer.write_eof()
            assert not writer.is_closing()
            assert await reader.readline() == b"got %d bytes\n" % len(request)
            assert_same_bytes(await reader.read(), request[::-1])

    run(loop, main(), BIG)


def test_streams_drain_waits_for_a_slow_reader(loop):
    async def main():
        release = asyncio.Event()
        totals = []

        async def handler(reader, writer):
            await release.wait()
            total = 0
            while True:
                data = await reader.read(1 << 16)
                if not data:
                    break
                total += len(data)
            totals.append(total)
            writer.close()

        lst = socket.socket()
        lst.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUF)  # no autotuning
        lst.bind(("127.0.0.1", 0))
        server = await asyncio.start_server(handler, sock=lst)
        try:
            port = server.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            tr = writer.transport
            shrink_sndbuf(tr)
            low, high = tr.get_write_buffer_limits()
            sent = await fill_transport(tr, until=lambda: tr.get_write_buffer_size() > high)
            writer.write(b"m" * (1 << 20))  # far more than the kernel can still take
            sent += 1 << 20
            drain = asyncio.ensure_future(writer.drain())
            await spin()
            assert not drain.done()  # the server reads nothing yet
            release.set()
            await drain
            assert tr.get_write_buffer_size() <= low
            writer.write_eof()
            await wait_until(lambda: totals, timeout=BIG)
            assert totals == [sent]
            writer.close()
            await writer.wait_closed()
        finally:
            await close_server(server)

    run(loop, main(), BIG)


def test_streams_many_concurrent_clients(loop):
    n = 100

    async def main():
        server = await asyncio.start_server(echo_handler, "127.0.0.1", 0, backlog=n)
        try:
            port = server.sockets[0].getsockname()[1]

            async def client(i):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                msg = (b"client %d;" % i) * (i + 1)
                writer.write(msg)
                await writer.drain()
                writer.write_eof()
                data = await reader.read()
                writer.close()
                await writer.wait_closed()
                return data == msg

            results = await asyncio.gather(*(client(i) for i in range(n)))
            assert results == [True] * n
        finally:
            await close_server(server)

    run(loop, main(), BIG)


def test_streams_wait_closed(loop):
    async def main():
        server = await asyncio.start_server(echo_handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        writer.close()
        assert writer.is_closing()
        await writer.wait_closed()
        assert await reader.read() == b""
        server.close()
        assert not server.is_serving()
        await server.wait_closed()  # the handler closed its side after EOF

    run(loop, main())


def test_server_wait_closed_with_a_live_connection(loop):
    """Whether wait_closed() waits for open connections depends on the
    Python version (it does from 3.12.1): compare with asyncio."""

    async def scenario(lp):
        writers = []

        async def handler(reader, writer):
            writers.append(writer)

        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await wait_until(lambda: writers)
        server.close()
        waiter = asyncio.ensure_future(server.wait_closed())
        await spin()
        done_while_connected = waiter.done()
        writers[0].close()
        await waiter
        assert await reader.read() == b""
        writer.close()
        await writer.wait_closed()
        return done_while_connected

    same_as_asyncio(loop, scenario)

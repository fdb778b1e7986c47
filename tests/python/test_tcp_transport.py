"""TCP: the Transport API -- write/writelines, close/abort, get_extra_info, set_protocol, repr.

Every test runs on asyncio's own loop (the reference) and on shardloop and
expects the same results; see _tcp_support.py for the conventions (no
timing assertions, ``spin``, small buffers for peers that must not read).
"""

import asyncio
import logging
import os
import socket

import pytest

from _support import (BIG, Recorder, Sockets, assert_same_bytes, close_server, collecting_factory, pattern,
                      record_exceptions, recv_all, run, same_as_asyncio, spin, wait_until)
from _tcp_support import FAMILIES, connect_pair, connect_small_buffers, recv_until_eof_or_reset


def test_write_and_writelines(loop, socks):
    async def main():
        tr, proto, peer = await connect_pair(loop, socks)
        tr.write(b"a")
        tr.write(bytearray(b"bc"))
        tr.write(memoryview(b"xdefx")[1:4])
        tr.write(b"")
        tr.writelines([b"g", bytearray(b"h"), memoryview(b"i")])
        tr.writelines(x for x in (b"j", b"kl"))
        tr.writelines([])
        tr.write_eof()
        assert await recv_all(loop, peer) == b"abcdefghijkl"
        tr.close()
        await proto.lost

    run(loop, main())


def test_write_order_kept_behind_buffered_data(loop, socks):
    """Small writes made while a big one is still buffered go out after it,
    in order."""

    async def main():
        tr, proto, peer = await connect_small_buffers(loop, socks)
        big = pattern(1024 * 1024, seed=31)
        tr.write(big)
        assert tr.get_write_buffer_size() > 0
        expected = bytearray(big)
        for i in range(2000):
            piece = b"<%d>" % i
            tr.write(piece if i % 2 else bytearray(piece))
            expected += piece
        tr.close()
        assert_same_bytes(await recv_all(loop, peer), bytes(expected))
        await proto.lost

    run(loop, main(), BIG)


def test_write_memoryview_of_wider_items(loop, socks):
    import array

    async def main():
        tr, proto, peer = await connect_pair(loop, socks)
        items = array.array("i", range(100))
        tr.write(memoryview(items))
        tr.write(memoryview(b"abcdefgh").cast("H"))
        tr.close()
        assert await recv_all(loop, peer) == items.tobytes() + b"abcdefgh"
        await proto.lost

    run(loop, main())


def test_write_of_a_non_contiguous_memoryview(loop):
    """asyncio hands a non-contiguous buffer to send(), which refuses it:
    write() does not raise, the connection dies with a reported error."""

    async def scenario(lp):
        with Sockets() as s:
            contexts = record_exceptions(lp)
            tr, proto, peer = await connect_pair(lp, s)
            try:
                tr.write(memoryview(b"abcdef")[::2])
                raised = None
            except Exception as exc:
                raised = type(exc).__name__
            await spin()
            return raised, [c["message"] for c in contexts], list(proto.events)

    same_as_asyncio(loop, scenario)


@pytest.mark.skipif(not os.environ.get("SHARDLOOP_BIG_TESTS"),
                    reason="moves 4 GiB (about 9 GiB of memory, a minute): set SHARDLOOP_BIG_TESTS=1")
@pytest.mark.parametrize("extra", [0, 5])
def test_write_of_4_gib_or_more(loop, socks, extra):
    """One write() of 2**32 (+5) bytes: every byte arrives (a 32-bit
    length would send nothing, or 5 bytes)."""
    n = (1 << 32) + extra

    async def main():
        tr, proto, peer = await connect_pair(loop, socks)
        data = bytearray(n)
        data[-8:] = b"<THEEND>"
        tr.write(data)
        del data
        tr.write_eof()
        total = 0
        tail = b""
        buf = bytearray(8 << 20)
        while True:
            got = await loop.sock_recv_into(peer, buf)
            if not got:
                break
            total += got
            tail = (tail + bytes(buf[max(0, got - 8):got]))[-8:]
        assert (total, tail) == (n, b"<THEEND>")
        tr.close()
        await proto.lost

    run(loop, main(), 300)


@pytest.mark.parametrize("bad", ["text", 42, None, [b"a"]], ids=["str", "int", "None", "list"])
def test_write_of_a_non_bytes_object_raises_type_error(loop, socks, bad):
    async def main():
        tr, proto, peer = await connect_pair(loop, socks)
        with pytest.raises(TypeError) as info:
            tr.write(bad)
        assert str(info.value) == "data argument must be a bytes-like object, not %r" % type(bad).__name__
        with pytest.raises(TypeError):
            tr.writelines(["text"])
        assert not tr.is_closing()
        tr.write(b"fine")
        tr.close()
        assert await recv_all(loop, peer) == b"fine"
        await proto.lost

    run(loop, main())


def test_write_after_write_eof_raises(loop, socks):
    async def main():
        tr, proto, peer = await connect_pair(loop, socks)
        assert tr.can_write_eof()
        tr.write(b"last")
        tr.write_eof()
        tr.write_eof()  # again: nothing
        with pytest.raises(RuntimeError, match="write_eof"):
            tr.write(b"more")
        assert await recv_all(loop, peer) == b"last"
        await loop.sock_sendall(peer, b"reply")  # the other direction works
        await wait_until(lambda: proto.data == b"reply")
        tr.close()
        await proto.lost

    run(loop, main())


def test_write_after_close_warns_like_asyncio(loop):
    """Writes after close() are dropped; from the 5th on, asyncio logs
    'socket.send() raised exception.' (a warning) at each one."""

    async def scenario(lp):
        s = Sockets()
        records = []
        handler = logging.Handler()
        handler.emit = records.append
        logger = logging.getLogger("asyncio")
        logger.addHandler(handler)
        try:
            tr, proto, peer = await connect_pair(lp, s)
            tr.write(b"before")
            tr.close()
            counts = []
            for _ in range(3):  # before connection_lost ran
                tr.write(b"x")
                counts.append(len(records))
            await proto.lost
            for _ in range(4):  # after it
                tr.write(b"y")
                counts.append(len(records))
            assert await recv_all(lp, peer) == b"before"
            return counts, sorted({(r.levelname, r.getMessage()) for r in records})
        finally:
            logger.removeHandler(handler)
            s.close()

    counts, messages = same_as_asyncio(loop, scenario)
    assert counts[-1] > 0
    assert messages == [("WARNING", "socket.send() raised exception.")]


def test_close_flushes_pending_data_before_connection_lost(loop, socks):
    async def main():
        tr, proto, peer = await connect_small_buffers(loop, socks)
        payload = pattern(2 * 1024 * 1024, seed=21)
        tr.write(payload)
        assert tr.get_write_buffer_size() > 0  # the peer reads nothing yet
        tr.close()
        assert tr.is_closing()
        assert not tr.is_reading()
        tr.close()  # again: nothing
        await spin()
        assert proto.events == ["made"]  # not lost while data is pending
        received = await recv_all(loop, peer)
        assert_same_bytes(received, payload)
        await proto.lost
        await spin()
        assert proto.events == ["made", ("lost", None)]
        assert tr.get_write_buffer_size() == 0

    run(loop, main(), BIG)


def test_abort_drops_pending_data(loop, socks):
    async def scenario(lp):
        with Sockets() as s:
            tr, proto, peer = await connect_small_buffers(lp, s)
            payload = pattern(4 * 1024 * 1024, seed=22)
            tr.write(payload)
            assert tr.get_write_buffer_size() > 0
            tr.abort()
            assert tr.is_closing()
            size_after_abort = tr.get_write_buffer_size()
            await proto.lost  # at once: the peer has not read anything
            await spin()
            received, how = await recv_until_eof_or_reset(lp, peer)
            assert len(received) < len(payload)
            assert payload.startswith(received)
            tr.abort()  # again: nothing
            await spin()
            return list(proto.events), size_after_abort

    events, size_after_abort = same_as_asyncio(loop, scenario, BIG)
    assert events == ["made", ("lost", None)]


def test_close_from_data_received_stops_delivery(loop, socks):
    class CloseOnFirst(Recorder):
        def data_received(self, data):
            super().data_received(data)
            self.transport.close()

    async def main():
        tr, proto, peer = await connect_pair(loop, socks, CloseOnFirst)
        tr.pause_reading()
        await loop.sock_sendall(peer, b"one")
        await spin()
        tr.resume_reading()
        await proto.lost
        await loop.sock_sendall(peer, b"two")
        await spin()
        assert proto.events == ["made", "data", ("lost", None)]
        assert proto.data == b"one"

    run(loop, main())


@pytest.mark.parametrize("family", FAMILIES)
def test_get_extra_info(loop, socks, family):
    async def main():
        tr, proto, peer = await connect_pair(loop, socks, family=family)
        assert tr.get_extra_info("peername") == peer.getsockname()
        assert tr.get_extra_info("sockname") == peer.getpeername()
        sock = tr.get_extra_info("socket")
        assert sock.getsockname() == tr.get_extra_info("sockname")
        assert sock.getpeername() == tr.get_extra_info("peername")
        assert sock.family == family
        assert sock.type == socket.SOCK_STREAM
        assert sock.fileno() >= 0
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert tr.get_extra_info("no such key") is None
        assert tr.get_extra_info("no such key", "default") == "default"
        tr.close()
        await proto.lost

    run(loop, main())


def test_get_extra_info_on_the_server_side(loop):
    async def main():
        factory, protos = collecting_factory()
        server = await loop.create_server(factory, "127.0.0.1", 0)
        try:
            port = server.sockets[0].getsockname()[1]
            tr, proto = await loop.create_connection(Recorder, "127.0.0.1", port)
            await wait_until(lambda: protos and protos[0].transport)
            stran = protos[0].transport
            assert stran.get_extra_info("peername") == tr.get_extra_info("sockname")
            assert stran.get_extra_info("sockname") == ("127.0.0.1", port)
            assert stran.get_extra_info("socket").getpeername() == tr.get_extra_info("sockname")
            tr.close()
            await protos[0].lost
        finally:
            await close_server(server)

    run(loop, main())


def test_set_protocol_and_get_protocol(loop, socks):
    async def main():
        tr, proto, peer = await connect_pair(loop, socks)
        assert tr.get_protocol() is proto
        second = Recorder()
        tr.set_protocol(second)
        assert tr.get_protocol() is second
        await loop.sock_sendall(peer, b"to the second")
        peer.shutdown(socket.SHUT_WR)
        await second.lost
        await spin()
        assert second.data == b"to the second"
        assert second.events == ["data", "eof", ("lost", None)]
        assert proto.events == ["made"]

    run(loop, main())


def test_transport_repr_and_is_closing(loop, socks):
    async def main():
        tr, proto, peer = await connect_pair(loop, socks)
        assert isinstance(tr, asyncio.Transport)
        assert isinstance(repr(tr), str)
        assert not tr.is_closing()
        tr.close()
        assert tr.is_closing()
        assert isinstance(repr(tr), str)
        await proto.lost
        assert tr.is_closing()
        assert isinstance(repr(tr), str)

    run(loop, main())


def test_server_protocol_writes_and_closes_in_connection_made(loop):
    """A server that answers and hangs up at once (before any read): the
    client gets the whole answer, then EOF."""
    answer = pattern(300_000, seed=41)

    class Greeter(Recorder):
        def connection_made(self, transport):
            super().connection_made(transport)
            transport.write(answer)
            transport.close()

    async def main():
        factory, protos = collecting_factory(Greeter)
        server = await loop.create_server(factory, "127.0.0.1", 0)
        try:
            port = server.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            assert_same_bytes(await reader.read(), answer)
            await protos[0].lost
            assert protos[0].events == ["made", ("lost", None)]
            writer.close()
            await writer.wait_closed()
        finally:
            await close_server(server)

    run(loop, main(), BIG)


def test_abort_from_data_received(loop, socks):
    class AbortOnData(Recorder):
        def data_received(self, data):
            super().data_received(data)
            self.transport.write(b"never sent" * 400_000)
            self.transport.abort()

    async def main():
        tr, proto, peer = await connect_small_buffers(loop, socks, AbortOnData)
        await loop.sock_sendall(peer, b"x" * 1000)
        await proto.lost
        await spin()
        assert proto.events == ["made", "data", ("lost", None)]
        assert tr.get_write_buffer_size() == 0
        received, how = await recv_until_eof_or_reset(loop, peer)
        assert len(received) < 4_000_000

    run(loop, main())


def test_writelines_after_write_eof_says_what_asyncio_says(loop):
    # 3.12 gave writelines() its own checks and message; 3.11 goes through write().
    async def scenario(lp):
        a, b = socket.socketpair()
        transport, _ = await lp.create_connection(asyncio.Protocol, sock=a)
        transport.write_eof()
        try:
            transport.writelines([])
            outcome = None
        except RuntimeError as exc:
            outcome = str(exc)
        transport.close()
        b.close()
        return outcome

    same_as_asyncio(loop, scenario)

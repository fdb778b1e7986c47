"""TCP: the Protocol and BufferedProtocol contract -- call order, EOF,
resets, buffered reads, errors raised by protocol methods.

Every test runs on asyncio's own loop (the reference) and on shardloop and
expects the same results; see _tcp_support.py for the conventions (no
timing assertions, ``spin``, small buffers for peers that must not read).
"""

import asyncio
import gc
import socket

import pytest

from _support import (BIG, BufRecorder, Echo, Recorder, Sockets, assert_same_bytes, close_server,
                      collecting_factory, pattern, record_exceptions, recv_all, reset, run, same_as_asyncio,
                      spin, wait_until)
from _tcp_support import FAMILIES, accept, connect_pair, connect_small_buffers, fill_transport


def test_protocol_call_order_both_sides(loop):
    async def main():
        factory, server_protos = collecting_factory(Echo)
        server = await loop.create_server(factory, "127.0.0.1", 0)
        try:
            port = server.sockets[0].getsockname()[1]
            tr, proto = await loop.create_connection(Recorder, "127.0.0.1", port)
            assert proto.events == ["made"]
            assert proto.transport is tr
            tr.write(b"abc")
            tr.write(b"def")
            await wait_until(lambda: len(proto.data) == 6)
            tr.write_eof()
            # the server protocol closes on EOF; the client sees EOF then closes
            await proto.lost
            await server_protos[0].lost
            await spin()
            assert proto.data == b"abcdef"
            assert proto.events == ["made", "data", "eof", ("lost", None)]
            assert server_protos[0].events == ["made", "data", "eof", ("lost", None)]
            assert tr.is_closing()
            assert len(server_protos) == 1
        finally:
            await close_server(server)

    run(loop, main())


@pytest.mark.parametrize("family", FAMILIES)
def test_connection_lost_once_on_peer_reset(loop, socks, family):
    async def scenario(lp):
        with Sockets() as s:
            contexts = record_exceptions(lp)
            tr, proto, peer = await connect_pair(lp, s, family=family)
            await lp.sock_sendall(peer, b"before reset")
            await wait_until(lambda: len(proto.data) == 12)
            reset(peer)
            await proto.lost
            await spin()
            assert tr.is_closing()
            tr.write(b"after")  # no crash, nothing raised
            return list(proto.events), [c["message"] for c in contexts]

    events, messages = same_as_asyncio(loop, scenario)
    assert events == ["made", "data", ("lost", "ConnectionResetError")]
    assert messages == []  # OSErrors are not reported to the handler


def test_peer_reset_error_is_like_asyncio(loop):
    """The exception given to connection_lost on a peer reset: same type,
    errno and message as asyncio's (which comes from recv())."""

    async def scenario(lp):
        with Sockets() as s:
            tr, proto, peer = await connect_pair(lp, s)
            reset(peer)
            exc = await proto.lost
            return type(exc).__name__, exc.errno, exc.strerror, str(exc)

    same_as_asyncio(loop, scenario)


def test_connection_lost_once_on_reset_with_pending_writes(loop):
    async def scenario(lp):
        with Sockets() as s:
            contexts = record_exceptions(lp)
            tr, proto, peer = await connect_small_buffers(lp, s)
            await fill_transport(tr)
            reset(peer)  # the transport's reads and writes both fail now
            await proto.lost
            await spin()
            tr.write(b"more")
            await spin()
            lost = [e for e in proto.events if isinstance(e, tuple)]
            return len(lost), [c["message"] for c in contexts]

    n_lost, messages = same_as_asyncio(loop, scenario)
    assert n_lost == 1
    assert messages == []


def test_eof_received_true_keeps_the_transport_open_for_writing(loop, socks):
    async def main():
        tr, proto, peer = await connect_pair(loop, socks, lambda: Recorder(eof_result=True))
        await loop.sock_sendall(peer, b"request")
        peer.shutdown(socket.SHUT_WR)
        await wait_until(lambda: "eof" in proto.events)
        await spin()
        assert proto.events == ["made", "data", "eof"]
        assert not tr.is_closing()
        tr.write(b"response ")
        tr.write(b"after eof")
        assert await recv_all(loop, peer, limit=18) == b"response after eof"
        tr.close()
        assert await recv_all(loop, peer) == b""
        await proto.lost
        await spin()
        assert proto.events == ["made", "data", "eof", ("lost", None)]

    run(loop, main())


@pytest.mark.parametrize("result", [None, False, 0])
def test_eof_received_false_closes_the_transport(loop, socks, result):
    async def main():
        tr, proto, peer = await connect_pair(loop, socks, lambda: Recorder(eof_result=result))
        peer.shutdown(socket.SHUT_WR)
        await proto.lost
        await spin()
        assert proto.events == ["made", "eof", ("lost", None)]
        assert tr.is_closing()
        assert await recv_all(loop, peer) == b""

    run(loop, main())


def test_buffered_protocol_small_buffer(loop, socks):
    payload = pattern(10_000, seed=11)

    async def main():
        tr, proto, peer = await connect_pair(loop, socks, lambda: BufRecorder(size=7))
        await loop.sock_sendall(peer, payload)
        peer.shutdown(socket.SHUT_WR)
        await proto.lost
        await spin()
        assert_same_bytes(proto.data, payload)
        assert proto.updates >= len(payload) // 7  # several calls, each <= 7 bytes
        assert proto.events == ["made", "data", "eof", ("lost", None)]
        assert all(isinstance(h, int) for h in proto.hints)
        assert len(proto.hints) >= proto.updates

    run(loop, main())


def test_buffered_protocol_memoryview_buffer(loop, socks):
    payload = pattern(50_000, seed=12)

    class MV(BufRecorder):
        def get_buffer(self, sizehint):
            self.hints.append(sizehint)
            return memoryview(self.buf)[:5]  # a view smaller than the buffer

        def buffer_updated(self, nbytes):
            assert nbytes <= 5
            super().buffer_updated(nbytes)

    async def main():
        tr, proto, peer = await connect_pair(loop, socks, lambda: MV(size=64))
        await loop.sock_sendall(peer, payload)
        peer.shutdown(socket.SHUT_WR)
        await proto.lost
        assert_same_bytes(proto.data, payload)

    run(loop, main(), BIG)


def test_buffered_protocol_switch_to_plain_protocol(loop, socks):
    """set_protocol() from buffer_updated(): the rest of the stream goes to
    the new (plain) protocol's data_received, nothing is lost or fails."""
    payload = pattern(1000, seed=14)

    async def main():
        contexts = record_exceptions(loop)
        second = Recorder()

        class Switcher(BufRecorder):
            def buffer_updated(self, nbytes):
                super().buffer_updated(nbytes)
                if len(self.data) >= 8:
                    self.transport.set_protocol(second)

        tr, proto, peer = await connect_pair(loop, socks, lambda: Switcher(size=8))
        tr.pause_reading()
        await loop.sock_sendall(peer, payload)
        await spin()
        tr.resume_reading()
        await wait_until(lambda: len(proto.data) + len(second.data) >= len(payload) or contexts
                         or second.lost.done() or proto.lost.done())
        assert [c["message"] for c in contexts] == []
        assert len(proto.data) == 8
        assert_same_bytes(bytes(proto.data) + bytes(second.data), payload)
        assert tr.get_protocol() is second
        assert not tr.is_closing()
        tr.close()
        await second.lost

    run(loop, main())


@pytest.mark.parametrize("failure", ["raises", "empty"])
def test_buffered_protocol_get_buffer_failure(loop, socks, failure):
    async def scenario(lp):
        with Sockets() as s:
            contexts = record_exceptions(lp)

            class Bad(BufRecorder):
                def get_buffer(self, sizehint):
                    if failure == "raises":
                        raise ZeroDivisionError("no buffer")
                    return bytearray()

            tr, proto, peer = await connect_pair(lp, s, Bad)
            await lp.sock_sendall(peer, b"data")
            await proto.lost
            await spin()
            ctx = contexts[0]
            assert ctx["transport"] is tr and ctx["protocol"] is proto
            assert ctx["exception"] is proto.exc
            return (len(contexts), ctx["message"], type(ctx["exception"]).__name__,
                    str(ctx["exception"]), list(proto.events))

    result = same_as_asyncio(loop, scenario)
    assert result[1] == "Fatal error: protocol.get_buffer() call failed."


def test_buffered_protocol_buffer_updated_raises(loop, socks):
    async def main():
        contexts = record_exceptions(loop)

        class Bad(BufRecorder):
            def buffer_updated(self, nbytes):
                super().buffer_updated(nbytes)
                raise ZeroDivisionError("bad update")

        tr, proto, peer = await connect_pair(loop, socks, Bad)
        await loop.sock_sendall(peer, b"data")
        await proto.lost
        await spin()
        assert [c["message"] for c in contexts] == ["Fatal error: protocol.buffer_updated() call failed."]
        assert isinstance(contexts[0]["exception"], ZeroDivisionError)
        assert proto.events == ["made", "data", ("lost", "ZeroDivisionError")]
        assert proto.updates == 1
        assert await recv_all(loop, peer) == b""

    run(loop, main())


def test_data_received_raising_closes_that_connection_only(loop):
    async def main():
        contexts = record_exceptions(loop)
        class Fragile(Echo):
            def data_received(self, data):
                if data.startswith(b"boom"):
                    raise ZeroDivisionError("boom")
                super().data_received(data)

        factory, protos = collecting_factory(Fragile)
        server = await loop.create_server(factory, "127.0.0.1", 0)
        try:
            port = server.sockets[0].getsockname()[1]
            r1, w1 = await asyncio.open_connection("127.0.0.1", port)
            r2, w2 = await asyncio.open_connection("127.0.0.1", port)
            w1.write(b"boom")
            assert await r1.read() == b""  # the server dropped this one
            await protos[0].lost
            await spin()
            assert len(contexts) == 1
            ctx = contexts[0]
            assert ctx["message"] == "Fatal error: protocol.data_received() call failed."
            assert isinstance(ctx["exception"], ZeroDivisionError)
            assert ctx["protocol"] is protos[0]
            assert ctx["transport"] is protos[0].transport
            assert protos[0].events == ["made", ("lost", "ZeroDivisionError")]
            assert protos[0].exc is ctx["exception"]
            # the other client and new clients are still served
            w2.write(b"still here")
            assert await r2.readexactly(10) == b"still here"
            r3, w3 = await asyncio.open_connection("127.0.0.1", port)
            w3.write(b"new")
            assert await r3.readexactly(3) == b"new"
            assert server.is_serving()
            for w in (w1, w2, w3):
                w.close()
                await w.wait_closed()
        finally:
            await close_server(server)

    run(loop, main())


def test_eof_received_raising_is_reported(loop, socks):
    async def main():
        contexts = record_exceptions(loop)

        class Bad(Recorder):
            def eof_received(self):
                super().eof_received()
                raise ZeroDivisionError("eof")

        tr, proto, peer = await connect_pair(loop, socks, Bad)
        peer.shutdown(socket.SHUT_WR)
        await proto.lost
        await spin()
        assert [c["message"] for c in contexts] == ["Fatal error: protocol.eof_received() call failed."]
        assert proto.events == ["made", "eof", ("lost", "ZeroDivisionError")]

    run(loop, main())


def test_protocol_factory_raising_on_the_server(loop):
    """A failing protocol factory does not stop the server.  What the
    exception handler hears about it is compared with asyncio (which only
    reports it in debug mode)."""

    async def scenario(lp):
        contexts = record_exceptions(lp)
        calls = []

        def factory():
            calls.append(1)
            if len(calls) == 1:
                raise ZeroDivisionError("factory")
            return Echo()

        server = await lp.create_server(factory, "127.0.0.1", 0)
        try:
            port = server.sockets[0].getsockname()[1]
            c1 = socket.create_connection(("127.0.0.1", port))
            await wait_until(lambda: calls)
            await spin()
            r2, w2 = await asyncio.open_connection("127.0.0.1", port)
            w2.write(b"ok")
            assert await r2.readexactly(2) == b"ok"
            w2.close()
            await w2.wait_closed()
            c1.close()
            return [c["message"] for c in contexts]
        finally:
            await close_server(server)

    same_as_asyncio(loop, scenario)


@pytest.mark.parametrize("side", ["server", "client"])
def test_unreferenced_transport_stays_alive(loop, socks, side):
    """A protocol need not keep its transport: the loop keeps a connection
    alive while it is open, a garbage collection must not close it."""

    async def main():
        got = bytearray()
        lost = []

        class Sink(asyncio.Protocol):  # keeps no reference to the transport
            def connection_made(self, transport):
                transport.write(b"ready")

            def data_received(self, data):
                got.extend(data)

            def connection_lost(self, exc):
                lost.append(exc)

        if side == "server":
            server = await loop.create_server(Sink, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            peer = socks.add(socket.create_connection(("127.0.0.1", port)))
            peer.setblocking(False)
        else:
            server = None
            lst = socks.listener()
            await loop.create_connection(Sink, *lst.getsockname())  # result dropped
            peer = await accept(loop, lst, socks)
        try:
            assert await recv_all(loop, peer, limit=5) == b"ready"
            await spin()
            gc.collect()
            await spin()
            await loop.sock_sendall(peer, b"ping")
            await wait_until(lambda: bytes(got) == b"ping" or lost, timeout=3)
            assert lost == []
            assert bytes(got) == b"ping"
        finally:
            if server is not None:
                server.close()

    run(loop, main())

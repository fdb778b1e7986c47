"""TCP: asyncio streams, the Protocol/BufferedProtocol contract, the
Transport API, create_connection / create_server / connect_accepted_socket,
and accept under descriptor exhaustion -- on real loopback sockets.

Every test runs on asyncio's own loop (the reference) and on shardloop and
expects the same results.  Where asyncio's behaviour depends on the Python
version, the test runs the same scenario on a fresh asyncio loop as well
and compares (``same_as_asyncio``) instead of hard-coding one version's
answer.

No test asserts on elapsed time.  "X does not happen" is checked by letting
the loop go round a fixed number of iterations after the kernel state is
settled (``spin``); "X happens" by waiting for it with a generous bound.
Peers that must not read get a small receive buffer, and "the transport
has buffered data" is reached by writing until the transport says so, so
no test depends on how much the kernel happens to buffer.

Scenarios that change process-wide state (RLIMIT_NOFILE) run in a child
interpreter.
"""

import asyncio
import contextlib
import errno
import gc
import json
import logging
import os
import socket
import textwrap

import pytest

from _support import (BIG, HAVE_IPV6, LOOPBACK, PY312, PY313, BufRecorder, Echo, Recorder, Sockets,
                      assert_same_bytes, child_report, close_server, collecting_factory, echo_handler,
                      echo_in_chunks, pattern, record_exceptions, recv_all, reset, run, run_child,
                      same_as_asyncio, spin, wait_until)


requires_ipv6 = pytest.mark.skipif(not HAVE_IPV6, reason="no IPv6 loopback")
requires_py312 = pytest.mark.skipif(not PY312, reason="asyncio 3.12+ API")
requires_py313 = pytest.mark.skipif(not PY313, reason="asyncio 3.13+ API")
linux_only = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc (Linux)")

FAMILIES = [
    pytest.param(socket.AF_INET, id="ipv4"),
    pytest.param(socket.AF_INET6, id="ipv6", marks=requires_ipv6),
]

SMALL_BUF = 32 * 1024  # SO_RCVBUF / SO_SNDBUF for peers that must not read


# ---------------------------------------------------------------- helpers


async def accept(loop, lst, socks):
    conn, _ = await loop.sock_accept(lst)
    return socks.add(conn)


async def recv_until_eof_or_reset(loop, sock):
    data = bytearray()
    while True:
        try:
            chunk = await loop.sock_recv(sock, 1 << 20)
        except ConnectionResetError:
            return bytes(data), "reset"
        if not chunk:
            return bytes(data), "eof"
        data += chunk


async def fill_transport(tr, chunk=64 * 1024, until=None, cap=256 << 20):
    """Write *chunk*s to *tr* until ``until()`` is true (default: the
    transport holds data the kernel would not take).  Returns bytes written."""
    if until is None:
        until = lambda: tr.get_write_buffer_size() > 0  # noqa: E731
    data = b"w" * chunk
    sent = 0
    while not until():
        assert sent < cap, "the transport never buffered anything"
        tr.write(data)
        sent += len(data)
        await asyncio.sleep(0)
    return sent


def shrink_sndbuf(tr):
    tr.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUF)


class FlowRecorder(Recorder):
    def pause_writing(self):
        self.events.append(("pause_writing", self.transport.get_write_buffer_size()))

    def resume_writing(self):
        self.events.append(("resume_writing", self.transport.get_write_buffer_size()))

    def count(self, name):
        return sum(1 for e in self.events if isinstance(e, tuple) and e[0] == name)


async def connect_pair(loop, socks, factory=Recorder, family=socket.AF_INET, rcvbuf=None):
    """(transport, protocol, peer): a shardloop/asyncio transport from
    create_connection and the raw socket accepted on the other end."""
    lst = socks.listener(family, rcvbuf=rcvbuf)
    tr, proto = await loop.create_connection(factory, *lst.getsockname()[:2])
    peer = await accept(loop, lst, socks)
    return tr, proto, peer


async def connect_small_buffers(loop, socks, factory=Recorder):
    """connect_pair with small kernel buffers on both ends: what the peer
    does not read soon stays in the transport."""
    tr, proto, peer = await connect_pair(loop, socks, factory, rcvbuf=SMALL_BUF)
    shrink_sndbuf(tr)
    return tr, proto, peer


@contextlib.asynccontextmanager
async def stream_client(handler=echo_handler, host="127.0.0.1"):
    """(reader, writer) of a connection to ``asyncio.start_server(handler)``;
    the writer, then the server, are closed afterwards."""
    server = await asyncio.start_server(handler, host, 0)
    try:
        reader, writer = await asyncio.open_connection(host, server.sockets[0].getsockname()[1])
        try:
            yield reader, writer
        finally:
            writer.close()
            await writer.wait_closed()
    finally:
        await close_server(server)


# ============================================================ asyncio streams


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


# ============================================================ Protocol API


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


def test_buffered_protocol_no_calls_while_paused(loop, socks):
    """pause_reading() from buffer_updated(): no get_buffer/buffer_updated
    until resume_reading(), even with more data already received."""
    payload = pattern(1000, seed=13)

    class Pauser(BufRecorder):
        def buffer_updated(self, nbytes):
            super().buffer_updated(nbytes)
            if self.updates == 1:
                self.transport.pause_reading()

    async def main():
        tr, proto, peer = await connect_pair(loop, socks, lambda: Pauser(size=16))
        tr.pause_reading()
        await loop.sock_sendall(peer, payload)  # all of it queued in the kernel
        await spin()
        tr.resume_reading()
        await wait_until(lambda: proto.updates >= 1)
        await spin()
        assert not tr.is_reading()
        assert proto.updates == 1, "buffer_updated() called %d times while paused" % (proto.updates - 1)
        assert len(proto.data) == 16
        tr.resume_reading()
        await wait_until(lambda: len(proto.data) == len(payload))
        assert_same_bytes(proto.data, payload)
        tr.close()

    run(loop, main())


def test_resume_reading_does_not_call_the_protocol_synchronously(loop, socks):
    """asyncio calls data_received/buffer_updated from the event loop only,
    never from inside transport.resume_reading(): code after resume_reading()
    runs before the next delivery."""
    payload = pattern(1000, seed=15)

    class Pauser(BufRecorder):
        inside_resume = False

        def buffer_updated(self, nbytes):
            super().buffer_updated(nbytes)
            self.events.append(("inside resume_reading", self.inside_resume))
            self.transport.pause_reading()  # one buffer per resume

    async def main():
        tr, proto, peer = await connect_pair(loop, socks, lambda: Pauser(size=100))
        tr.pause_reading()
        await loop.sock_sendall(peer, payload)  # all of it queued in the kernel
        await spin()
        for _ in range(len(payload) // 100):
            proto.inside_resume = True
            tr.resume_reading()
            proto.inside_resume = False
            await wait_until(lambda: not tr.is_reading())
        assert_same_bytes(proto.data, payload)
        assert ("inside resume_reading", True) not in proto.events
        tr.close()

    run(loop, main())


def test_buffered_protocol_resume_then_pause_before_the_loop_runs(loop, socks):
    """resume_reading() immediately followed by pause_reading(): the loop
    never got to read, so the protocol hears nothing."""
    payload = pattern(1000, seed=16)

    class Pauser(BufRecorder):
        def buffer_updated(self, nbytes):
            super().buffer_updated(nbytes)
            self.transport.pause_reading()

    async def main():
        tr, proto, peer = await connect_pair(loop, socks, lambda: Pauser(size=100))
        tr.pause_reading()
        await loop.sock_sendall(peer, payload)
        await spin()
        tr.resume_reading()
        await wait_until(lambda: proto.updates == 1)
        await spin()
        tr.resume_reading()
        tr.pause_reading()
        await spin()
        assert not tr.is_reading()
        assert proto.updates == 1, "buffer_updated() called while paused"
        tr.resume_reading()
        await wait_until(lambda: proto.updates == 2)
        await spin()
        assert proto.updates == 2
        tr.close()

    run(loop, main())


def test_plain_protocol_pausing_in_data_received(loop, socks):
    """pause_reading() from data_received() with more data waiting in the
    kernel: nothing more until resume_reading(), then everything in order."""
    payload = pattern(3 * 1024 * 1024, seed=17)

    class Pauser(Recorder):
        deliveries = 0

        def data_received(self, data):
            super().data_received(data)
            self.deliveries += 1
            self.transport.pause_reading()

    async def main():
        tr, proto, peer = await connect_pair(loop, socks, Pauser)
        sender = asyncio.ensure_future(loop.sock_sendall(peer, payload))
        resumes = 0
        while len(proto.data) < len(payload):
            await wait_until(lambda: proto.deliveries == resumes + 1, timeout=BIG)
            await spin(5)
            assert proto.deliveries == resumes + 1, "data_received() called while paused"
            assert not tr.is_reading()
            resumes += 1
            tr.resume_reading()
        await sender
        assert_same_bytes(proto.data, payload)
        tr.close()

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


# ============================================================ Transport API


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


def test_pause_and_resume_reading(loop, socks):
    async def main():
        tr, proto, peer = await connect_pair(loop, socks)
        assert tr.is_reading()
        tr.pause_reading()
        assert not tr.is_reading()
        tr.pause_reading()  # again: nothing
        await loop.sock_sendall(peer, b"sent while paused")
        await spin()
        assert proto.data == b""
        assert proto.events == ["made"]
        tr.resume_reading()
        assert tr.is_reading()
        tr.resume_reading()  # again: nothing
        await wait_until(lambda: proto.data == b"sent while paused")
        # pausing from data_received stops the next delivery
        tr.pause_reading()
        await loop.sock_sendall(peer, b"second")
        peer.shutdown(socket.SHUT_WR)
        await spin()
        assert proto.data == b"sent while paused"
        assert proto.events == ["made", "data"]  # no EOF either while paused
        tr.resume_reading()
        await proto.lost
        assert proto.data == b"sent while paused" + b"second"
        assert proto.events == ["made", "data", "eof", ("lost", None)]
        assert not tr.is_reading()
        tr.pause_reading()  # on a closed transport: nothing
        tr.resume_reading()
        assert not tr.is_reading()

    run(loop, main())


def test_pause_reading_in_connection_made(loop, socks):
    class PauseAtOnce(Recorder):
        def connection_made(self, transport):
            super().connection_made(transport)
            transport.pause_reading()

    async def main():
        tr, proto, peer = await connect_pair(loop, socks, PauseAtOnce)
        await loop.sock_sendall(peer, b"early")
        await spin()
        assert proto.data == b""
        assert not tr.is_reading()
        tr.resume_reading()
        await wait_until(lambda: proto.data == b"early")
        tr.close()

    run(loop, main())


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


def test_write_buffer_limits(loop, socks):
    async def main():
        tr, proto, peer = await connect_pair(loop, socks)
        assert tr.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
        assert tr.get_write_buffer_size() == 0
        tr.set_write_buffer_limits(high=1000)
        assert tr.get_write_buffer_limits() == (250, 1000)
        tr.set_write_buffer_limits(low=100)
        assert tr.get_write_buffer_limits() == (100, 400)
        tr.set_write_buffer_limits(high=300, low=300)
        assert tr.get_write_buffer_limits() == (300, 300)
        tr.set_write_buffer_limits(0, 0)
        assert tr.get_write_buffer_limits() == (0, 0)
        tr.set_write_buffer_limits()
        assert tr.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
        with pytest.raises(ValueError, match=r"high \(10\) must be >= low \(20\) must be >= 0"):
            tr.set_write_buffer_limits(high=10, low=20)
        with pytest.raises(ValueError):
            tr.set_write_buffer_limits(high=-4)
        assert tr.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
        tr.close()
        await proto.lost

    run(loop, main())


def test_pause_and_resume_writing_at_the_water_marks(loop, socks):
    low, high = 16 * 1024, 64 * 1024

    async def main():
        tr, proto, peer = await connect_small_buffers(loop, socks, FlowRecorder)
        tr.set_write_buffer_limits(high=high, low=low)
        sent = await fill_transport(tr, chunk=16 * 1024, until=lambda: proto.count("pause_writing"))
        (name, size), = [e for e in proto.events if isinstance(e, tuple)]
        assert name == "pause_writing" and size > high
        assert tr.get_write_buffer_size() > high
        for _ in range(3):  # already paused: no second call
            tr.write(b"p" * 16 * 1024)
            sent += 16 * 1024
        await spin()
        assert proto.count("pause_writing") == 1
        assert proto.count("resume_writing") == 0
        # the peer reads everything: resume_writing once, at or below low
        received = await recv_all(loop, peer, limit=sent)
        assert len(received) == sent
        await wait_until(lambda: proto.count("resume_writing"))
        await spin()
        assert proto.count("resume_writing") == 1
        (_, resume_size), = [e for e in proto.events if isinstance(e, tuple) and e[0] == "resume_writing"]
        assert resume_size <= low
        assert tr.get_write_buffer_size() == 0
        tr.close()
        await proto.lost

    run(loop, main(), BIG)


def test_lowering_the_high_water_mark_pauses_at_once(loop, socks):
    async def main():
        tr, proto, peer = await connect_small_buffers(loop, socks, FlowRecorder)
        await fill_transport(tr, chunk=4096)
        size = tr.get_write_buffer_size()
        assert proto.count("pause_writing") == 0 and 0 < size <= 64 * 1024
        tr.set_write_buffer_limits(high=0)
        assert proto.count("pause_writing") == 1
        await recv_all(loop, peer, limit=1)  # starts reading...
        peer.setblocking(False)
        while proto.count("resume_writing") == 0:
            try:
                await loop.sock_recv(peer, 1 << 20)
            except BlockingIOError:  # pragma: no cover
                pass
        assert tr.get_write_buffer_size() == 0
        tr.close()
        await proto.lost

    run(loop, main(), BIG)


def test_flow_control_callback_raising_is_reported(loop, socks):
    async def main():
        contexts = record_exceptions(loop)

        class Bad(Recorder):
            def pause_writing(self):
                raise ZeroDivisionError("pause")

        tr, proto, peer = await connect_small_buffers(loop, socks, Bad)
        tr.set_write_buffer_limits(high=0)
        await fill_transport(tr)
        assert [c["message"] for c in contexts] == ["protocol.pause_writing() failed"]
        assert contexts[0]["transport"] is tr and contexts[0]["protocol"] is proto
        assert not tr.is_closing()
        tr.abort()
        await proto.lost

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


# ============================================================ create_connection


@pytest.mark.parametrize("family", FAMILIES)
def test_create_connection_host_port(loop, socks, family):
    async def main():
        lst = socks.listener(family)
        host, port = lst.getsockname()[:2]
        tr, proto = await loop.create_connection(Recorder, host, port)
        peer = await accept(loop, lst, socks)
        assert tr.get_extra_info("peername")[:2] == (host, port)
        assert tr.get_extra_info("socket").family == family
        tr.write(b"hi")
        assert await recv_all(loop, peer, limit=2) == b"hi"
        tr.close()
        await proto.lost

    run(loop, main())


def test_create_connection_with_port_as_string(loop, socks):
    async def main():
        lst = socks.listener()
        host, port = lst.getsockname()
        tr, proto = await loop.create_connection(Recorder, host, str(port))
        assert tr.get_extra_info("peername") == (host, port)
        tr.close()
        await proto.lost

    run(loop, main())


def test_create_connection_sock(loop, socks):
    async def main():
        lst = socks.listener()
        sock = socks.add(socket.socket())
        sock.connect(lst.getsockname())  # blocking: create_connection makes it non-blocking
        peer = await accept(loop, lst, socks)
        tr, proto = await loop.create_connection(Recorder, sock=sock)
        assert sock.gettimeout() == 0
        assert tr.get_extra_info("socket").fileno() == sock.fileno()
        assert tr.get_extra_info("peername") == lst.getsockname()
        await loop.sock_sendall(peer, b"via sock=")
        await wait_until(lambda: proto.data == b"via sock=")
        tr.close()
        await proto.lost
        assert sock.fileno() == -1  # the transport owned it

    run(loop, main())


def test_create_connection_local_addr(loop, socks):
    async def main():
        lst = socks.listener()
        tr, proto = await loop.create_connection(Recorder, *lst.getsockname(), local_addr=("127.0.0.1", 0))
        peer = await accept(loop, lst, socks)
        sockname = tr.get_extra_info("sockname")
        assert sockname[0] == "127.0.0.1" and sockname[1] != 0
        assert peer.getpeername() == sockname
        tr.close()
        await proto.lost

    run(loop, main())


def test_create_connection_local_addr_in_use(loop):
    async def scenario(lp):
        with Sockets() as s:
            lst = s.listener()
            busy = s.listener()  # local_addr: a port that is taken
            with pytest.raises(OSError) as info:
                await lp.create_connection(Recorder, *lst.getsockname(), local_addr=busy.getsockname())
            port = str(busy.getsockname()[1])
            return type(info.value).__name__, info.value.errno, str(info.value).replace(port, "PORT")

    name, code, message = same_as_asyncio(loop, scenario)
    assert code == errno.EADDRINUSE
    assert "error while attempting to bind on address ('127.0.0.1', PORT)" in message


@requires_ipv6
def test_create_connection_local_addr_of_another_family(loop):
    async def scenario(lp):
        with Sockets() as s:
            lst = s.listener(socket.AF_INET6)
            with pytest.raises(OSError) as info:
                await lp.create_connection(Recorder, *lst.getsockname()[:2], local_addr=("127.0.0.1", 0))
            return type(info.value).__name__, str(info.value)

    same_as_asyncio(loop, scenario)


def _closed_port(family=socket.AF_INET):
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK[family], 0))
        return s.getsockname()[1]  # nothing listens there once closed


@pytest.mark.parametrize("family", FAMILIES)
def test_create_connection_refused(loop, family):
    port = _closed_port(family)

    async def scenario(lp):
        with pytest.raises(ConnectionRefusedError) as info:
            await lp.create_connection(Recorder, LOOPBACK[family], port)
        return info.value.errno, str(info.value)

    code, _ = same_as_asyncio(loop, scenario)
    assert code == errno.ECONNREFUSED


def test_create_connection_refused_on_every_address(loop):
    """'localhost' may resolve to several addresses: the error is then one
    exception or 'Multiple exceptions: ...' -- compare with asyncio."""
    port = _closed_port()
    if HAVE_IPV6:
        try:
            with socket.socket(socket.AF_INET6) as s6:
                s6.bind(("::1", port))
        except OSError:
            pytest.skip("port taken on ::1")

    async def scenario(lp):
        with pytest.raises(OSError) as info:
            await lp.create_connection(Recorder, "localhost", port)
        return type(info.value).__name__, str(info.value)

    same_as_asyncio(loop, scenario)


def test_create_connection_unknown_host(loop):
    async def main():
        with pytest.raises(socket.gaierror):
            await loop.create_connection(Recorder, "no-such-host.invalid", 80)

    run(loop, main(), 20)


def test_create_connection_value_errors(loop):
    async def scenario(lp):
        with Sockets() as s:
            lst = s.listener()
            host, port = lst.getsockname()
            sock = s.add(socket.socket())
            udp = s.add(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            calls = [
                dict(host=host, port=port, sock=sock),
                dict(sock=sock, port=port),
                dict(),
                dict(host=host, port=port, server_hostname="example.com"),
                dict(host=host, port=port, ssl_handshake_timeout=1.0),
                dict(host=host, port=port, ssl_shutdown_timeout=1.0),
                dict(sock=udp),
            ]
            results = []
            for kwargs in calls:
                try:
                    await lp.create_connection(Recorder, **kwargs)
                except ValueError as exc:
                    msg = str(exc)
                    results.append(msg.split(",")[0] if "Socket was expected" in msg else msg)
                else:  # pragma: no cover
                    results.append("no error")
            return results

    results = same_as_asyncio(loop, scenario)
    assert results[:4] == [
        "host/port and sock can not be specified at the same time",
        "host/port and sock can not be specified at the same time",
        "host and port was not specified and no sock specified",
        "server_hostname is only meaningful with ssl",
    ]


@requires_py312
def test_create_connection_all_errors(loop):
    port = _closed_port()

    async def scenario(lp):
        with pytest.raises(ExceptionGroup) as info:
            await lp.create_connection(Recorder, "127.0.0.1", port, all_errors=True)
        group = info.value
        return group.message, [(type(e).__name__, e.errno) for e in group.exceptions]

    message, errors = same_as_asyncio(loop, scenario)
    assert errors == [("ConnectionRefusedError", errno.ECONNREFUSED)]


def test_create_connection_family(loop, socks):
    async def main():
        lst = socks.listener(socket.AF_INET)
        port = lst.getsockname()[1]
        tr, proto = await loop.create_connection(Recorder, "localhost", port, family=socket.AF_INET)
        assert tr.get_extra_info("socket").family == socket.AF_INET
        assert tr.get_extra_info("peername") == ("127.0.0.1", port)
        tr.close()
        await proto.lost

    run(loop, main(), 20)


def test_create_connection_cancelled_while_connecting(loop):
    """Cancelling create_connection leaves nothing behind (no transport,
    no protocol call)."""

    async def main():
        made = []

        class P(Recorder):
            def connection_made(self, transport):
                made.append(transport)

        lst = socket.socket()
        lst.bind(("127.0.0.1", 0))
        lst.listen(1)
        try:
            task = asyncio.ensure_future(loop.create_connection(P, *lst.getsockname()))
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await spin()
            assert made == []
        finally:
            lst.close()

    run(loop, main())


@pytest.mark.parametrize("name", ["create_connection", "create_server", "connect_accepted_socket"])
def test_signature_matches_asyncio(sl, name):
    """Same parameters and defaults as this Python's asyncio (a keyword
    asyncio does not have yet is a TypeError there)."""
    import inspect

    def params(func):
        return [(p.name, p.kind, p.default) for p in inspect.signature(func).parameters.values()]

    assert params(getattr(sl.Loop, name)) == params(getattr(asyncio.BaseEventLoop, name))


# ============================================================ create_server


def _families_and_hosts(server):
    return sorted((s.family, s.getsockname()[0]) for s in server.sockets)


@pytest.mark.parametrize("host", [None, ""], ids=["None", "empty"])
def test_create_server_on_all_interfaces(loop, host):
    async def scenario(lp):
        server = await lp.create_server(Recorder, host, 0)
        try:
            shape = _families_and_hosts(server)
            v4 = [s for s in server.sockets if s.family == socket.AF_INET]
            tr, proto = await lp.create_connection(Recorder, "127.0.0.1", v4[0].getsockname()[1])
            tr.close()
            await proto.lost
            return shape
        finally:
            await close_server(server)

    shape = same_as_asyncio(loop, scenario)
    assert (socket.AF_INET, "0.0.0.0") in shape


def test_create_server_host_list(loop):
    hosts = ["127.0.0.1", "::1"] if HAVE_IPV6 else ["127.0.0.1"]

    async def main():
        server = await loop.create_server(Recorder, hosts, 0)
        try:
            assert sorted(s.getsockname()[0] for s in server.sockets) == sorted(hosts)
            for s in server.sockets:
                tr, proto = await loop.create_connection(Recorder, *s.getsockname()[:2])
                tr.close()
                await proto.lost
        finally:
            await close_server(server)

    run(loop, main())


def test_create_server_with_an_address_not_on_this_host(loop):
    """An address the host does not have (EADDNOTAVAIL) in the host list:
    3.13 skips it, earlier versions raise -- compare with asyncio."""

    async def scenario(lp):
        try:
            server = await lp.create_server(Recorder, ["127.0.0.1", "192.0.2.1"], 0)
        except OSError as exc:
            return "error", exc.errno, str(exc).split(":")[0]
        try:
            return "served", [s.getsockname()[0] for s in server.sockets]
        finally:
            await close_server(server)

    same_as_asyncio(loop, scenario)


def test_create_server_port_zero_and_str_host(loop):
    async def main():
        server = await loop.create_server(Recorder, "127.0.0.1", 0)
        try:
            (sock,) = server.sockets
            host, port = sock.getsockname()
            assert host == "127.0.0.1" and port != 0
            assert sock.family == socket.AF_INET and sock.type == socket.SOCK_STREAM
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) != 0
            assert server.get_loop() is loop
            assert server.is_serving()
        finally:
            await close_server(server)

    run(loop, main())


def test_create_server_sock(loop):
    async def main():
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        server = await loop.create_server(Echo, sock=sock, backlog=5)
        try:
            assert [s.fileno() for s in server.sockets] == [sock.fileno()]
            assert sock.gettimeout() == 0
            reader, writer = await asyncio.open_connection(*sock.getsockname())
            writer.write(b"echo")
            assert await reader.readexactly(4) == b"echo"
            writer.close()
            await writer.wait_closed()
        finally:
            await close_server(server)
        assert sock.fileno() == -1  # the server closed it

    run(loop, main())


def test_create_server_value_errors(loop):
    async def scenario(lp):
        results = []
        sock = socket.socket()
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            for kwargs in (dict(host="127.0.0.1", port=0, sock=sock), dict(), dict(sock=udp),
                           dict(host="127.0.0.1", port=0, ssl_handshake_timeout=1.0),
                           dict(host="127.0.0.1", port=0, ssl=True)):
                try:
                    server = await lp.create_server(Recorder, **kwargs)
                except (ValueError, TypeError) as exc:
                    msg = str(exc)
                    results.append((type(exc).__name__,
                                    msg.split(",")[0] if "Socket was expected" in msg else msg))
                else:  # pragma: no cover
                    await close_server(server)
                    results.append("no error")
        finally:
            sock.close()
            udp.close()
        return results

    same_as_asyncio(loop, scenario)


def test_create_server_backlog(loop):
    async def main():
        server = await loop.create_server(Echo, "127.0.0.1", 0, backlog=1)
        try:
            port = server.sockets[0].getsockname()[1]
            clients = [await asyncio.open_connection("127.0.0.1", port) for _ in range(5)]
            for i, (reader, writer) in enumerate(clients):
                writer.write(b"%d" % i)
                assert await reader.readexactly(1) == b"%d" % i
            for reader, writer in clients:
                writer.close()
                await writer.wait_closed()
        finally:
            await close_server(server)

    run(loop, main())


def test_create_server_reuse_port(loop):
    if not hasattr(socket, "SO_REUSEPORT"):
        pytest.skip("no SO_REUSEPORT")

    async def main():
        s1 = await loop.create_server(Echo, "127.0.0.1", 0, reuse_port=True)
        port = s1.sockets[0].getsockname()[1]
        s2 = await loop.create_server(Echo, "127.0.0.1", port, reuse_port=True)
        try:
            assert s2.sockets[0].getsockname() == ("127.0.0.1", port)
            for s in (s1, s2):
                assert s.sockets[0].getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) != 0
            for i in range(10):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"r%d" % i)
                assert await reader.readexactly(2) == b"r%d" % i
                writer.close()
                await writer.wait_closed()
            s1.close()
            await s1.wait_closed()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)  # s2 alone
            writer.write(b"s2")
            assert await reader.readexactly(2) == b"s2"
            writer.close()
            await writer.wait_closed()
        finally:
            await close_server(s1)
            await close_server(s2)

    run(loop, main())


def test_create_server_port_in_use(loop):
    async def scenario(lp):
        first = await lp.create_server(Recorder, "127.0.0.1", 0)
        port = first.sockets[0].getsockname()[1]
        try:
            with pytest.raises(OSError) as info:
                await lp.create_server(Recorder, "127.0.0.1", port)
            return type(info.value).__name__, info.value.errno, str(info.value).replace(str(port), "PORT")
        finally:
            await close_server(first)

    name, code, message = same_as_asyncio(loop, scenario)
    assert code == errno.EADDRINUSE
    assert "error while attempting to bind on address ('127.0.0.1', PORT)" in message


def test_create_server_start_serving_false(loop):
    async def scenario(lp):
        server = await lp.create_server(Echo, "127.0.0.1", 0, start_serving=False)
        try:
            port = server.sockets[0].getsockname()[1]
            steps = [server.is_serving()]
            try:
                await lp.create_connection(Recorder, "127.0.0.1", port)
            except ConnectionRefusedError:
                steps.append("refused")  # bound, not listening
            await server.start_serving()
            steps.append(server.is_serving())
            await server.start_serving()  # again: nothing
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"on")
            steps.append(await reader.readexactly(2))
            writer.close()
            await writer.wait_closed()
            return steps
        finally:
            await close_server(server)

    steps = same_as_asyncio(loop, scenario)
    assert steps == [False, "refused", True, b"on"]


def test_server_close_and_introspection(loop):
    async def main():
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        assert server.get_loop() is loop
        assert server.is_serving()
        assert len(server.sockets) == 1
        assert server.sockets[0].getsockname() == ("127.0.0.1", port)
        server.close()
        assert not server.is_serving()
        assert server.sockets == ()
        await server.wait_closed()
        server.close()  # again: nothing
        with pytest.raises(ConnectionRefusedError):
            await loop.create_connection(Recorder, "127.0.0.1", port)

    run(loop, main())


def test_server_serve_forever_cancelled(loop):
    async def main():
        server = await loop.create_server(Echo, "127.0.0.1", 0, start_serving=False)
        port = server.sockets[0].getsockname()[1]
        task = asyncio.ensure_future(server.serve_forever())
        await spin()
        assert server.is_serving()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"ok")
        assert await reader.readexactly(2) == b"ok"
        writer.close()
        await writer.wait_closed()
        with pytest.raises(RuntimeError):
            await server.serve_forever()  # already serving forever
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not server.is_serving()
        assert server.sockets == ()
        with pytest.raises(ConnectionRefusedError):
            await loop.create_connection(Recorder, "127.0.0.1", port)

    run(loop, main())


def test_server_async_with(loop):
    async def main():
        async with await loop.create_server(Echo, "127.0.0.1", 0) as server:
            assert server.is_serving()
            port = server.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"ctx")
            assert await reader.readexactly(3) == b"ctx"
            writer.close()
            await writer.wait_closed()
        assert not server.is_serving()
        with pytest.raises(ConnectionRefusedError):
            await loop.create_connection(Recorder, "127.0.0.1", port)

    run(loop, main())


@requires_py313
@pytest.mark.parametrize("how", ["close_clients", "abort_clients"])
def test_server_close_clients(loop, socks, how):
    async def main():
        factory, protos = collecting_factory()
        server = await loop.create_server(factory, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        clients = []
        for _ in range(3):
            c = socks.add(socket.create_connection(("127.0.0.1", port)))
            c.setblocking(False)
            clients.append(c)
        await wait_until(lambda: len(protos) == 3 and all(p.transport for p in protos))
        server.close()
        waiter = asyncio.ensure_future(server.wait_closed())
        await spin()
        assert not waiter.done()  # connections still open
        getattr(server, how)()
        for c in clients:
            await recv_until_eof_or_reset(loop, c)
        await waiter
        for p in protos:
            await p.lost
        assert [p.events for p in protos] == [["made", ("lost", None)]] * 3

    run(loop, main())


# ============================================================ connect_accepted_socket


def test_connect_accepted_socket(loop, socks):
    async def main():
        lst = socks.listener()
        lst.setblocking(True)
        client = socks.add(socket.create_connection(lst.getsockname()))
        conn, _ = lst.accept()
        tr, proto = await loop.connect_accepted_socket(Echo, conn)
        assert isinstance(proto, Echo)
        assert conn.gettimeout() == 0
        assert tr.get_extra_info("peername") == client.getsockname()
        assert tr.get_extra_info("socket").fileno() == conn.fileno()
        client.setblocking(False)
        await loop.sock_sendall(client, b"accepted by hand")
        assert await recv_all(loop, client, limit=16) == b"accepted by hand"
        client.shutdown(socket.SHUT_WR)
        await proto.lost
        assert proto.events == ["made", "data", "eof", ("lost", None)]

    run(loop, main())


def test_connect_accepted_socket_value_errors(loop):
    async def scenario(lp):
        results = []
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tcp = socket.socket()
        try:
            for sock, kwargs in ((udp, {}), (tcp, dict(ssl_handshake_timeout=1.0))):
                try:
                    await lp.connect_accepted_socket(Recorder, sock, **kwargs)
                except ValueError as exc:
                    results.append(str(exc).split(",")[0])
        finally:
            udp.close()
            tcp.close()
        return results

    same_as_asyncio(loop, scenario)


# ============================================================ EMFILE on accept


CHILD_PRELUDE = "import errno, json, resource\n"


# The child exhausts its descriptors (RLIMIT_NOFILE lowered to what it has
# open plus a few, the rest filled with /dev/null), then a client -- made
# beforehand, it needs no new fd -- connects: the server's accept() fails
# with EMFILE.  PHASE runs while descriptors are still exhausted.  Then
# everything is freed and the limit restored; the client must be served.
EMFILE_CHILD = """
reports = []
phase = [0]
loop.set_exception_handler(lambda lp, ctx: reports.append(
    (phase[0], ctx["message"], getattr(ctx.get("exception"), "errno", None))))
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
dummies = []

def exhaust():
    while True:
        try:
            dummies.append(os.open(os.devnull, os.O_RDONLY))
        except OSError as exc:
            assert exc.errno == errno.EMFILE, exc
            return

def release(keep=0):
    while len(dummies) > keep:
        os.close(dummies.pop())

def peek(sock):
    try:
        return sock.recv(4, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return b""

async def wait_for(pred, timeout):
    deadline = loop.time() + timeout
    while not pred():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True

async def handle(reader, writer):
    data = await reader.readexactly(4)
    writer.write(data.upper())
    await writer.drain()
    writer.close()

async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    # One connection served first: the server is warm (and so are the
    # sanitizers' caches, whose misses need a pipe, i.e. descriptors).
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(b"warm")
    assert await r.readexactly(4) == b"WARM"
    assert await r.read() == b""
    w.close()
    await w.wait_closed()
    client = socket.socket()
    nfds = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (nfds + 16, hard))
    served_while_exhausted = None
    try:
        exhaust()
        client.connect(("127.0.0.1", port))  # completed by the kernel (backlog)
        client.send(b"ping")                  # waits in the server's socket
        assert await wait_for(lambda: reports, 20), "accept() never failed"
        PHASE
    finally:
        release()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    client.setblocking(False)
    reply = b""
    async def got_reply():
        nonlocal reply
        try:
            chunk = client.recv(100)
        except BlockingIOError:
            return False
        reply += chunk
        return not chunk or len(reply) >= 4
    deadline = loop.time() + 10
    while not await got_reply() and loop.time() < deadline:
        await asyncio.sleep(0.01)
    client.close()
    serving = server.is_serving()
    server.close()
    await server.wait_closed()
    print(json.dumps({
        "reply": reply.decode(),
        "served_while_exhausted": served_while_exhausted,
        "messages": sorted({m for _, m, _ in reports}),
        "errnos": sorted({e for _, _, e in reports if e is not None}),
        "serving": serving,
    }))

loop.run_until_complete(main())
loop.close()
"""


def _emfile_child(loop, phase):
    body = EMFILE_CHILD.replace("PHASE", textwrap.indent(textwrap.dedent(phase), " " * 8).strip())
    proc = run_child(loop, body, 90, CHILD_PRELUDE)
    assert proc.returncode == 0, child_report(proc)
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc


def assert_accept_failed_with_emfile_then_served(result, proc):
    report = child_report(proc)
    assert result["messages"] == ["socket.accept() out of system resource"], report
    assert result["errnos"] == [errno.EMFILE], report
    assert result["reply"] == "PING", report
    assert result["serving"] is True, report


@linux_only
def test_accept_emfile_is_reported_and_the_server_recovers(loop):
    result, proc = _emfile_child(loop, "pass")
    assert_accept_failed_with_emfile_then_served(result, proc)


@linux_only
def test_accept_emfile_lasting_past_the_retry(loop):
    """Descriptors stay exhausted past the server's retry (1 s): the retry
    fails like the first attempt, and the server still recovers once
    descriptors are free."""
    result, proc = _emfile_child(loop, """
        phase[0] = 1
        await asyncio.sleep(0)
        exhaust()  # whatever the failed attempt freed is taken again
        assert await wait_for(lambda: any(p == 1 for p, _, _ in reports), 20), "no retry"
        """)
    assert_accept_failed_with_emfile_then_served(result, proc)


@linux_only
def test_accept_with_one_descriptor_to_spare(loop):
    """After EMFILE, one descriptor becomes free: the server's next attempt
    accepts the connection and serves it (it needs no other descriptor)."""
    result, proc = _emfile_child(loop, """
        phase[0] = 1
        await asyncio.sleep(0)
        exhaust()
        os.close(dummies.pop())  # exactly one free descriptor
        served_while_exhausted = await wait_for(lambda: len(peek(client)) == 4, 10)
        """)
    report = child_report(proc)
    assert result["served_while_exhausted"] is True, report
    assert result["reply"] == "PING", report


@linux_only
def test_loop_closed_with_open_transports(loop):
    """Closing the loop under open transports, then using and dropping them:
    errors are fine, crashes and double closes are not."""
    proc = run_child(loop, """
        import gc
        class P(asyncio.Protocol):
            def connection_made(self, transport):
                self.transport = transport
        protos = []
        def factory():
            protos.append(P())
            return protos[-1]
        async def main():
            server = await loop.create_server(factory, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            tr, proto = await loop.create_connection(P, "127.0.0.1", port)
            tr.write(b"x" * (8 << 20))  # data still queued
            while len(protos) < 1:
                await asyncio.sleep(0)
            return server, tr
        server, tr = loop.run_until_complete(main())
        before = sorted(os.listdir("/proc/self/fd"))
        loop.close()
        for t in (tr, protos[0].transport):
            for call in (lambda: t.write(b"late"), t.pause_reading, t.resume_reading, t.write_eof,
                         t.get_write_buffer_size, t.is_closing, t.close, t.abort):
                try:
                    call()
                except Exception:
                    pass
        del tr, t, protos[:]
        server = None
        gc.collect()
        gc.collect()
        probe = [os.open(os.devnull, os.O_RDONLY) for _ in range(20)]
        for fd in probe:
            os.close(fd)
        print("done")
        """, 90)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("done"), child_report(proc)


def test_2000_connections_open_at_once(loop):
    """2,000 client connections (4,000 sockets in this process) all open at
    the same time, then each echoes its own message."""
    import resource

    n = 2000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2 * n + 200:
        if hard != resource.RLIM_INFINITY and hard < 2 * n + 200:
            pytest.skip(f"needs {2 * n + 200} descriptors, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (2 * n + 200, hard))

    async def main():
        server = await asyncio.start_server(echo_handler, "127.0.0.1", 0, backlog=n)
        try:
            port = server.sockets[0].getsockname()[1]
            limit = asyncio.Semaphore(200)  # connect in waves, keep them all open

            async def connect():
                async with limit:
                    return await asyncio.open_connection("127.0.0.1", port)

            pairs = await asyncio.gather(*(connect() for _ in range(n)))
            for i, (_, writer) in enumerate(pairs):
                writer.write(b"<%d>" % i)
                writer.write_eof()
            replies = await asyncio.gather(*(reader.read() for reader, _ in pairs))
            for _, writer in pairs:
                writer.close()
            return replies
        finally:
            await close_server(server)

    try:
        replies = run(loop, main(), BIG)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert replies == [b"<%d>" % i for i in range(n)]

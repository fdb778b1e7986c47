"""The native read half of asyncio's streams (bindings/stream_reader_feed.cpp):
bytes read for an asyncio.StreamReaderProtocol go straight into its
StreamReader, as data_received -> feed_data would put them.

Each scenario returns what user code can observe (bytes, reader state, the
errors the loop reported) and runs on asyncio's own loop too
(``same_as_asyncio``): the native path must be indistinguishable from
asyncio's Python one, including where it hands over to it (a StreamReader
subclass, a patched class, a reader at EOF) and where a step fails.
"""

import asyncio
import gc
import socket
import sys
from unittest import mock

from _support import is_shardloop, run, same_as_asyncio, spin, wait_until


def _errors(loop):
    """The loop's exception handler calls, as (message, exception type name)."""
    seen = []
    loop.set_exception_handler(lambda lp, ctx: seen.append(
        (ctx.get("message"), type(ctx.get("exception")).__name__)))
    return seen


async def _connected(loop, **kwargs):
    """(reader, writer, peer): streams on one end of a socketpair, a plain
    socket on the other (the peer writes with sendall)."""
    a, b = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=a, **kwargs)
    return reader, writer, b


def test_bytes_arrive_in_order_and_pause_at_twice_the_limit(loop):
    payload = bytes(range(256)) * 256  # 64 KiB

    async def scenario(lp):
        reader, writer, peer = await _connected(lp, limit=1024)
        peer.sendall(payload)
        await wait_until(lambda: len(reader._buffer) > 2 * 1024)
        paused = (reader._paused, writer.transport.is_reading())
        got = await reader.readexactly(len(payload))
        writer.close()
        peer.close()
        return paused, got == payload

    assert same_as_asyncio(loop, scenario) == ((True, False), True)


def test_a_subclass_gets_its_own_feed_data(loop):
    class CountingReader(asyncio.StreamReader):
        fed = 0

        def feed_data(self, data):
            self.fed += len(data)
            super().feed_data(data)

    async def scenario(lp):
        a, peer = socket.socketpair()
        reader = CountingReader()
        transport, _ = await lp.create_connection(lambda: asyncio.StreamReaderProtocol(reader), sock=a)
        peer.sendall(b"abc")
        got = await reader.readexactly(3)
        transport.close()
        peer.close()
        return reader.fed, got

    assert same_as_asyncio(loop, scenario) == (3, b"abc")


def test_a_patched_class_is_seen_while_connected(loop):
    async def scenario(lp):
        reader, writer, peer = await _connected(lp)
        peer.sendall(b"one")
        first = await reader.readexactly(3)
        calls = []
        original = asyncio.StreamReader.feed_data

        def spy(self, data):
            calls.append(bytes(data))
            original(self, data)

        with mock.patch.object(asyncio.StreamReader, "feed_data", spy):
            peer.sendall(b"two")
            second = await reader.readexactly(3)
        peer.sendall(b"three")  # asyncio's own again
        third = await reader.readexactly(5)
        writer.close()
        peer.close()
        return first, second, third, calls

    assert same_as_asyncio(loop, scenario) == (b"one", b"two", b"three", [b"two"])


def test_a_cancelled_read_leaves_the_bytes_for_the_next(loop):
    async def scenario(lp):
        errors = _errors(lp)
        reader, writer, peer = await _connected(lp)
        pending = asyncio.ensure_future(reader.read(10))
        await spin(3)
        pending.cancel()
        peer.sendall(b"later")
        await spin(10)
        got = await reader.read(10)
        writer.close()
        peer.close()
        return pending.cancelled(), got, errors

    assert same_as_asyncio(loop, scenario) == (True, b"later", [])


def test_a_buffer_that_cannot_grow_fails_as_data_received(loop):
    async def scenario(lp):
        errors = _errors(lp)
        reader, writer, peer = await _connected(lp)
        view = memoryview(reader._buffer)  # an export: the bytearray cannot be resized
        peer.sendall(b"data")
        await wait_until(lambda: writer.transport.is_closing())
        view.release()
        await spin(5)
        peer.close()
        return errors, bytes(reader._buffer)

    errors, buffered = same_as_asyncio(loop, scenario)
    assert errors == [("Fatal error: protocol.data_received() call failed.", "BufferError")]
    assert buffered == b""


def test_bytes_after_feed_eof_fail_as_asyncio_does(loop):
    async def scenario(lp):
        errors = _errors(lp)
        reader, writer, peer = await _connected(lp)
        reader.feed_eof()
        peer.sendall(b"late")
        await wait_until(lambda: writer.transport.is_closing())
        await spin(5)
        peer.close()
        return errors

    # asyncio's feed_data asserts (under -O it would take the bytes; the
    # native path hands this case to it, so both behave as asyncio does).
    assert same_as_asyncio(loop, scenario) == [("Fatal error: protocol.data_received() call failed.",
                                                "AssertionError")]


def test_bytes_for_a_reader_gone_are_dropped(loop):
    async def scenario(lp):
        errors = _errors(lp)
        a, peer = socket.socketpair()
        protocol = asyncio.StreamReaderProtocol(asyncio.StreamReader())  # only the protocol's weak reference
        gc.collect()
        transport, _ = await lp.create_connection(lambda: protocol, sock=a)
        peer.sendall(b"nobody reads this")
        await spin(10)
        open_after = not transport.is_closing()
        transport.close()
        peer.close()
        return protocol._stream_reader, open_after, errors

    assert same_as_asyncio(loop, scenario) == (None, True, [])


def test_is_closing_follows_close_not_write_eof(loop):
    async def scenario(lp):
        reader, writer, peer = await _connected(lp)
        states = [writer.transport.is_closing()]
        writer.write_eof()
        states.append(writer.transport.is_closing())
        writer.close()
        states.append(writer.transport.is_closing())
        await writer.wait_closed()
        states.append(writer.transport.is_closing())
        peer.close()
        return states

    assert same_as_asyncio(loop, scenario) == [False, False, True, True]


def test_shardloop_feeds_without_python_frames(loop):
    """The point of the native path: no data_received / feed_data frames
    (asyncio's loop runs both for every read)."""
    frames = []

    def profile(frame, event, arg):
        if event == "call" and frame.f_code.co_name in ("data_received", "feed_data", "_wakeup_waiter"):
            frames.append(frame.f_code.co_name)

    async def scenario(lp):
        reader, writer, peer = await _connected(lp)
        sys.setprofile(profile)
        try:
            for chunk in (b"a", b"bc", b"def"):
                peer.sendall(chunk)
                await reader.readexactly(len(chunk))
        finally:
            sys.setprofile(None)
        writer.close()
        peer.close()

    run(loop, scenario(loop))
    if is_shardloop(loop):
        assert frames == []
    else:
        assert frames.count("feed_data") == 3

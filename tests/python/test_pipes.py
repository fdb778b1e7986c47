"""connect_read_pipe / connect_write_pipe over real pipes and socket pairs.

Every test runs on asyncio's own loop (the reference) and on shardloop.
"The writer has buffered data" is reached by writing until the transport
says so, never by assuming how much a kernel pipe holds; "X does not
happen" is checked by letting the loop go round a fixed number of
iterations (``spin``).
"""

import asyncio
import errno
import gc
import os
import socket
import tty

import pytest

from _support import is_shardloop, run


async def spin(n=20):
    for _ in range(n):
        await asyncio.sleep(0)


class Recorder(asyncio.Protocol):
    """Records every protocol call; ``lost`` resolves at connection_lost."""

    def __init__(self):
        self.calls = []
        self.data = bytearray()
        self.transport = None
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport
        self.calls.append("made")

    def data_received(self, data):
        assert isinstance(data, bytes)
        self.data += data
        if self.calls[-1] != "data":
            self.calls.append("data")

    def eof_received(self):
        self.calls.append("eof")

    def pause_writing(self):
        self.calls.append("pause")

    def resume_writing(self):
        self.calls.append("resume")

    def connection_lost(self, exc):
        self.calls.append("lost")
        self.lost.set_result(exc)


def pipe_files():
    r, w = os.pipe()
    return os.fdopen(r, "rb", buffering=0), os.fdopen(w, "wb", buffering=0)


# ---------------------------------------------------------------- read pipes


def test_read_pipe_data_then_eof(loop):
    async def main():
        rfile, wfile = pipe_files()
        transport, proto = await loop.connect_read_pipe(Recorder, rfile)
        assert proto.calls == ["made"]
        assert transport.get_extra_info("pipe") is rfile
        assert not os.get_blocking(rfile.fileno())
        payload = os.urandom(300_000)
        wfile.write(payload[:1000])
        await asyncio.sleep(0.01)
        # The pipe holds less than that: a thread writes while the loop reads.
        await loop.run_in_executor(None, wfile.write, payload[1000:])
        wfile.close()
        assert await asyncio.wait_for(proto.lost, 5) is None
        assert bytes(proto.data) == payload
        assert proto.calls == ["made", "data", "eof", "lost"]
        assert rfile.closed  # the transport owned the pipe object
        assert transport.is_closing()

    run(loop, main())


def test_read_pipe_pause_stops_reading(loop):
    async def main():
        rfile, wfile = pipe_files()
        transport, proto = await loop.connect_read_pipe(Recorder, rfile)
        wfile.write(b"a" * 1000)
        await asyncio.wait_for(_until(lambda: len(proto.data) == 1000), 5)
        transport.pause_reading()
        transport.pause_reading()  # twice is harmless
        wfile.write(b"b" * 1000)
        await spin()
        assert len(proto.data) == 1000
        transport.resume_reading()
        await asyncio.wait_for(_until(lambda: len(proto.data) == 2000), 5)
        wfile.close()
        await asyncio.wait_for(proto.lost, 5)

    run(loop, main())


def test_read_pipe_close(loop):
    async def main():
        rfile, wfile = pipe_files()
        transport, proto = await loop.connect_read_pipe(Recorder, rfile)
        transport.close()
        assert transport.is_closing()
        wfile.write(b"late")
        assert await asyncio.wait_for(proto.lost, 5) is None
        assert proto.calls == ["made", "lost"]
        assert rfile.closed
        transport.close()  # again: nothing happens
        wfile.close()

    run(loop, main())


def test_read_pipe_over_socketpair(loop):
    async def main():
        a, b = socket.socketpair()
        transport, proto = await loop.connect_read_pipe(Recorder, a)
        b.sendall(b"hello")
        b.close()
        assert await asyncio.wait_for(proto.lost, 5) is None
        assert proto.data == b"hello"

    run(loop, main())


def test_is_reading_on_shardloop(loop):
    if not is_shardloop(loop):
        pytest.skip("asyncio's pipe transport leaves is_reading() unimplemented")

    async def main():
        rfile, wfile = pipe_files()
        transport, proto = await loop.connect_read_pipe(Recorder, rfile)
        assert transport.is_reading()
        transport.pause_reading()
        assert not transport.is_reading()
        transport.resume_reading()
        assert transport.is_reading()
        transport.close()
        assert not transport.is_reading()
        await proto.lost
        wfile.close()

    run(loop, main())


@pytest.mark.parametrize("connect", ["connect_read_pipe", "connect_write_pipe"])
def test_regular_file_rejected(loop, connect, tmp_path):
    messages = {
        "connect_read_pipe": "Pipe transport is for pipes/sockets only.",
        "connect_write_pipe": "Pipe transport is only for pipes, sockets and character devices",
    }

    async def main():
        with open(tmp_path / "f", "wb+") as f:
            made = []
            with pytest.raises(ValueError) as info:
                await getattr(loop, connect)(lambda: made.append(1) or asyncio.Protocol(), f)
            assert str(info.value) == messages[connect]
            assert made == [1]  # the factory ran first, as in asyncio
            assert not f.closed

    run(loop, main())


def test_read_pipe_on_a_pty(loop):
    async def main():
        master, slave = os.openpty()
        tty.setraw(slave)
        transport, proto = await loop.connect_read_pipe(Recorder, os.fdopen(master, "rb", buffering=0))
        os.write(slave, b"from the tty")
        await asyncio.wait_for(_until(lambda: proto.data == b"from the tty"), 5)
        os.close(slave)
        # A pty master reads EIO once the slave is gone: reported, not raised.
        exc = await asyncio.wait_for(proto.lost, 5)
        assert isinstance(exc, OSError) and exc.errno == errno.EIO
        assert "eof" not in proto.calls

    run(loop, main())


def test_read_pipe_on_unpollable_device(loop):
    async def main():
        errors = []
        loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))
        transport, proto = await loop.connect_read_pipe(Recorder, open(os.devnull, "rb", buffering=0))
        # epoll refuses /dev/null: both loops report it from the callback
        # that starts reading, and the transport stays open.
        await asyncio.wait_for(_until(lambda: errors), 5)
        assert isinstance(errors[0]["exception"], PermissionError)
        assert not transport.is_closing()
        transport.close()
        assert await asyncio.wait_for(proto.lost, 5) is None

    run(loop, main())


def test_data_received_error_goes_to_handler(loop):
    class Failing(Recorder):
        def data_received(self, data):
            super().data_received(data)
            raise ZeroDivisionError

    async def main():
        errors = []
        loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))
        rfile, wfile = pipe_files()
        transport, proto = await loop.connect_read_pipe(Failing, rfile)
        wfile.write(b"x")
        await asyncio.wait_for(_until(lambda: errors), 5)
        assert isinstance(errors[0]["exception"], ZeroDivisionError)
        wfile.write(b"y")  # still reading, as asyncio
        await asyncio.wait_for(_until(lambda: proto.data == b"xy"), 5)
        wfile.close()
        assert await asyncio.wait_for(proto.lost, 5) is None

    run(loop, main())


# ---------------------------------------------------------------- write pipes


def test_write_pipe_data_then_close(loop):
    async def main():
        rfile, wfile = pipe_files()
        transport, proto = await loop.connect_write_pipe(Recorder, wfile)
        assert transport.get_extra_info("pipe") is wfile
        assert transport.can_write_eof()
        assert transport.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
        transport.write(b"abc")
        transport.writelines([b"de", bytearray(b"f"), memoryview(b"gh")])
        transport.write(b"")
        transport.close()
        assert transport.is_closing()
        transport.write(b"ignored")  # after close: dropped, no error
        assert await asyncio.wait_for(proto.lost, 5) is None
        assert wfile.closed
        assert os.read(rfile.fileno(), 100) == b"abcdefgh"
        assert os.read(rfile.fileno(), 100) == b""  # every write end is closed
        rfile.close()

    run(loop, main())


def test_write_eof_flushes_then_closes(loop):
    async def main():
        rfile, wfile = pipe_files()
        transport, proto = await connect_buffered_writer(loop, wfile)
        total = transport.get_write_buffer_size()
        transport.write_eof()
        transport.write_eof()
        read = await loop.run_in_executor(None, _read_all, rfile)
        assert len(read) >= total
        assert await asyncio.wait_for(proto.lost, 10) is None
        assert proto.calls == ["made", "lost"]

    run(loop, main())


def test_write_flow_control(loop):
    async def main():
        rfile, wfile = pipe_files()
        transport, proto = await loop.connect_write_pipe(Recorder, wfile)
        transport.set_write_buffer_limits(high=4096, low=1024)
        assert transport.get_write_buffer_limits() == (1024, 4096)
        n = 0
        while "pause" not in proto.calls:
            transport.write(b"x" * 1000)
            n += 1000
            assert n < 100 * 1024 * 1024
        assert transport.get_write_buffer_size() > 4096
        # A slow reader: small reads until the writer has caught up.
        got = 0
        while "resume" not in proto.calls:
            got += len(os.read(rfile.fileno(), 4096))
            await asyncio.sleep(0)
        assert transport.get_write_buffer_size() <= 1024
        transport.close()
        rest = loop.run_in_executor(None, _read_all, rfile)
        assert await asyncio.wait_for(proto.lost, 5) is None
        got += len(await rest)
        assert got == n

    run(loop, main())


def test_write_bad_type(loop):
    async def main():
        rfile, wfile = pipe_files()
        transport, proto = await loop.connect_write_pipe(Recorder, wfile)
        with pytest.raises(AssertionError):
            transport.write("text")
        transport.close()
        await proto.lost
        rfile.close()

    run(loop, main())


def test_reader_closed_while_data_queued_is_broken_pipe(loop):
    async def main():
        rfile, wfile = pipe_files()
        transport, proto = await connect_buffered_writer(loop, wfile)
        rfile.close()
        exc = await asyncio.wait_for(proto.lost, 5)
        assert isinstance(exc, BrokenPipeError)
        assert transport.get_write_buffer_size() == 0
        transport.write(b"more")  # dropped quietly
        assert wfile.closed

    run(loop, main())


def test_reader_closed_while_idle(loop):
    async def main():
        rfile, wfile = pipe_files()
        transport, proto = await loop.connect_write_pipe(Recorder, wfile)
        await spin()
        rfile.close()
        # Nothing was lost: the peer going away is a plain close.
        assert await asyncio.wait_for(proto.lost, 5) is None
        assert transport.is_closing()

    run(loop, main())


def test_abort_drops_queued_data(loop):
    async def main():
        rfile, wfile = pipe_files()
        transport, proto = await connect_buffered_writer(loop, wfile)
        written = proto.written
        transport.abort()
        assert await asyncio.wait_for(proto.lost, 5) is None
        assert transport.get_write_buffer_size() == 0
        assert len(await loop.run_in_executor(None, _read_all, rfile)) < written

    run(loop, main())


def test_write_pipe_to_character_device(loop):
    async def main():
        devnull = open(os.devnull, "wb", buffering=0)
        transport, proto = await loop.connect_write_pipe(Recorder, devnull)
        transport.write(b"x" * 100_000)
        assert transport.get_write_buffer_size() == 0
        transport.close()
        assert await asyncio.wait_for(proto.lost, 5) is None
        assert devnull.closed

    run(loop, main())


def test_unclosed_transport_warns(loop_factory):
    loop = loop_factory()
    rfile, wfile = pipe_files()
    loop.run_until_complete(loop.connect_read_pipe(asyncio.Protocol, rfile))
    with pytest.warns(ResourceWarning, match="unclosed transport"):
        loop.close()  # drops the loop's hold on the transport
        for _ in range(3):
            gc.collect()
    assert rfile.closed
    wfile.close()


# ---------------------------------------------------------------- helpers


async def connect_buffered_writer(loop, wfile):
    """A write pipe nobody reads, written to until the transport holds data
    the kernel would not take (never paused: the high-water mark is huge)."""
    transport, proto = await loop.connect_write_pipe(Recorder, wfile)
    transport.set_write_buffer_limits(high=1 << 30)
    chunk = os.urandom(64 * 1024)
    proto.written = 0
    while transport.get_write_buffer_size() == 0:
        transport.write(chunk)
        proto.written += len(chunk)
    return transport, proto


async def _until(predicate):
    while not predicate():
        await asyncio.sleep(0.001)


def _read_all(rfile):
    os.set_blocking(rfile.fileno(), True)
    chunks = []
    while True:
        chunk = os.read(rfile.fileno(), 1 << 20)
        if not chunk:
            rfile.close()
            return b"".join(chunks)
        chunks.append(chunk)

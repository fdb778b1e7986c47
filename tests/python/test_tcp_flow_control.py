"""TCP flow control: pause/resume_reading (plain and buffered protocols) and
the write buffer's water marks.

Every test runs on asyncio's own loop (the reference) and on shardloop and
expects the same results; see _tcp_support.py for the conventions (no
timing assertions, ``spin``, small buffers for peers that must not read).
"""

import asyncio
import socket

import pytest

from _support import (BIG, BufRecorder, Recorder, assert_same_bytes, pattern, record_exceptions, recv_all,
                      run, spin, wait_until)
from _tcp_support import FlowRecorder, connect_pair, connect_small_buffers, fill_transport


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

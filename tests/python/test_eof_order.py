"""When a stream transport reports EOF, relative to the loop's iterations.

asyncio reads once per readiness event, so EOF needs a recv() of its own:
eof_received() comes at least one iteration after the data_received() before
it, and connection_lost() one more after that. libuv reports both from one
poll when the peer of a Unix socket has gone (EPOLLHUP), which shardloop once
passed straight on: test_events' test_create_ssl_unix_connection then found
its transport closed when run_until_complete() returned (about 1 run in 3).

Both ends of a socketpair are ready before the loop reads: the bytes and the
closed peer wait in the kernel, which makes the order deterministic.
"""

import asyncio
import socket

import pytest

from _support import run


class Order(asyncio.Protocol):
    """Records protocol calls and what a callback queued from
    data_received() does in the next iteration (*action*)."""

    def __init__(self, loop, action):
        self.loop, self.action = loop, action
        self.events = []
        self.lost = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.events.append(("data", data))
        self.loop.call_soon(self.next_iteration)

    def next_iteration(self):
        self.events.append("next iteration")
        if self.action == "pause":
            self.transport.pause_reading()
            self.loop.call_soon(self.resume)
        elif self.action == "close":
            self.transport.close()

    def resume(self):
        self.events.append("resume")
        self.transport.resume_reading()

    def eof_received(self):
        self.events.append("eof")

    def connection_lost(self, exc):
        self.events.append(("lost", exc))
        self.lost.set_result(None)


@pytest.mark.parametrize("action, expected", [
    # The EOF is not seen in the iteration that delivered the data.
    ("nothing", ["next iteration", "eof"]),
    # pause_reading() before it is seen holds it back until resume_reading().
    ("pause", ["next iteration", "resume", "eof"]),
    # close() before it is seen: connection_lost() without eof_received().
    ("close", ["next iteration"]),
])
def test_eof_after_the_data_from_a_closed_unix_peer(loop, action, expected):
    async def scenario():
        ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with peer:
            peer.sendall(b"last words")
        ours.setblocking(False)
        transport, proto = await loop.create_unix_connection(lambda: Order(loop, action), sock=ours)
        await proto.lost
        assert transport.is_closing()
        return proto.events

    events = run(loop, scenario())
    assert events == [("data", b"last words")] + expected + [("lost", None)]


def test_connection_lost_after_run_until_complete_returns(loop):
    # The shape of test_create_ssl_unix_connection: the future is done in the
    # iteration whose poll finds the peer's last bytes and its EOF, so
    # run_until_complete() returns one iteration later, before the
    # connection_lost() that the EOF leads to.
    ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setblocking(False)
    transport, proto = run(loop, loop.create_unix_connection(lambda: Order(loop, "nothing"), sock=ours))
    with peer:
        peer.sendall(b"bye")
    done = loop.create_future()
    loop.call_soon(done.set_result, None)
    loop.run_until_complete(done)
    assert proto.events == [("data", b"bye"), "next iteration", "eof"]
    assert not proto.lost.done()
    run(loop, proto.lost)
    assert proto.events[-1] == ("lost", None)

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


class Ticks:
    """Counts loop iterations: one call_soon per iteration, again and again."""

    def __init__(self, loop):
        self.loop, self.n, self.on = loop, 0, True
        loop.call_soon(self.tick)

    def tick(self):
        self.n += 1
        if self.on:
            self.loop.call_soon(self.tick)


def test_a_fin_alone_is_seen_in_the_iteration_whose_poll_finds_it(loop):
    # Only an EOF that came with bytes waits an iteration: a peer that closes
    # with nothing unread is seen by the next poll's recv(), as in asyncio.
    from _support import same_as_asyncio

    async def scenario(lp):
        ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        ours.setblocking(False)
        events = []
        eof = lp.create_future()

        class P(asyncio.Protocol):
            def data_received(self, data):
                events.append(data)

            def eof_received(self):
                eof.set_result(ticks.n)

        transport, _ = await lp.create_unix_connection(P, sock=ours)
        peer.sendall(b"x")
        while not events:
            await asyncio.sleep(0)
        ticks = Ticks(lp)
        await asyncio.sleep(0)
        start = ticks.n
        peer.close()
        seen = await eof - start
        ticks.on = False
        transport.close()
        return seen

    same_as_asyncio(loop, scenario)


def test_a_streams_handler_ends_before_the_runner_does(loop_factory):
    # The client closes and waits; the server's handler sees the EOF and ends
    # before asyncio.run() cancels what is left (3.11's start_server logs a
    # handler that was cancelled: the FIN must not wait an extra iteration).
    outcome = []
    errors = []

    async def main():
        asyncio.get_running_loop().set_exception_handler(lambda lp, ctx: errors.append(ctx["message"]))

        async def handler(reader, writer):
            try:
                while data := await reader.read(1000):
                    writer.write(data)
                    await writer.drain()
                outcome.append("eof")
            except asyncio.CancelledError:
                outcome.append("cancelled")
                raise
            writer.close()

        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
        writer.write(b"ping")
        await writer.drain()
        assert await reader.readexactly(4) == b"ping"
        writer.close()
        await writer.wait_closed()
        server.close()

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())
    assert (outcome, errors) == (["eof"], [])

"""Where add_reader/add_writer callbacks run within an iteration.

asyncio's _run_once polls, appends the handles of the ready fds to the ready
queue (each fd's reader, then its writer, once), then the due timers, and
runs exactly that many: a readiness callback runs after what was ready
before the poll and before the timers, and what it schedules runs in the
next iteration, before the next poll can report the fd again.  anyio's
receive/send loops rely on that (issue 16, cause 2).
"""

import asyncio
import socket

import pytest

from _support import record_exceptions, run, same_as_asyncio


def readable_pair():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.send(b"x")  # never read: `a` stays readable (level-triggered)
    return a, b


@pytest.mark.parametrize("add, remove", [("add_reader", "remove_reader"), ("add_writer", "remove_writer")])
def test_future_resolved_by_a_watch_is_not_resolved_twice(loop, add, remove):
    # anyio's pattern: the reader (or writer) resolves a future whose
    # done-callback removes it.  A second run before that callback would
    # find the future done (InvalidStateError).
    errors = record_exceptions(loop)
    a, b = readable_pair()  # readable and writable

    async def main():
        for _ in range(5):
            fut = loop.create_future()
            fut.add_done_callback(lambda f: getattr(loop, remove)(a))
            getattr(loop, add)(a, fut.set_result, None)
            await fut

    try:
        run(loop, main())
    finally:
        a.close()
        b.close()
    assert errors == []


async def interleaving(loop):
    """The order of a chain of call_soon ticks, a due timer and a reader
    that schedules a callback of its own each time it runs."""
    a, b = readable_pair()
    log = []
    done = loop.create_future()

    def reader():
        log.append("reader")
        loop.call_soon(log.append, "scheduled by reader")
        if log.count("reader") == 3:
            loop.remove_reader(a)
            done.set_result(None)

    def tick(n):
        log.append("tick%d" % n)
        if n < 5:
            loop.call_soon(tick, n + 1)

    loop.call_later(0, log.append, "timer")
    loop.add_reader(a, reader)
    loop.call_soon(tick, 0)
    try:
        await done
        await asyncio.sleep(0)
        await asyncio.sleep(0)
    finally:
        a.close()
        b.close()
    return log


def test_reader_runs_between_ready_callbacks_and_timers(loop):
    log = same_as_asyncio(loop, interleaving)
    # Spelled out for the reader of this test (same_as_asyncio compares the rest).
    assert log[:3] == ["tick0", "reader", "timer"]
    assert log[3:6] == ["tick1", "scheduled by reader", "reader"]


def stream_interleaving(loop):
    """A stream transport's data, a callback queued the iteration before and
    a due timer: asyncio runs the transport's read handler after what was
    ready before the poll and before the timers."""
    async def scenario():
        a, b = socket.socketpair()
        log = []

        class Proto(asyncio.Protocol):
            def data_received(self, data):
                log.append(("data", data))

            def eof_received(self):
                log.append("eof")

        transport, _ = await loop.connect_accepted_socket(Proto, a)
        await asyncio.sleep(0.01)
        done = loop.create_future()

        def step(data, shut):
            b.send(data)
            if shut:
                b.shutdown(socket.SHUT_WR)
            loop.call_later(0, log.append, "timer")
            loop.call_soon(log.append, "queued before")

        loop.call_soon(step, b"x", False)
        loop.call_later(0.05, step, b"y", True)
        loop.call_later(0.1, done.set_result, None)
        await done
        transport.close()
        b.close()
        return log

    return scenario()


def test_stream_data_runs_after_the_callbacks_ready_before_the_poll(loop):
    # shardloop ran data_received inside libuv's poll, before the callbacks
    # queued in the previous iteration (issue 16, cause 6: websockets'
    # keepalive tests rely on asyncio's order).
    log = same_as_asyncio(loop, stream_interleaving)
    # (asyncio's transport reads the EOF on its next read handler run.)
    assert log == ["queued before", ("data", b"x"), "timer",
                   "queued before", ("data", b"y"), "timer", "eof"]

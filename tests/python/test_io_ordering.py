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

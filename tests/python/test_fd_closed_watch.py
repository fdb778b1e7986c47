"""remove_reader/remove_writer given a socket its owner closed while it was
watched (anyio closes UNIX sockets during a receive or send this way).

asyncio's selector finds the watch by the socket object itself (its key's
fileobj), so the removal works and returns True; a socket that was never
watched still gets "Invalid file descriptor: -1".  shardloop must do the
same and must not keep the private duplicate it watched.
"""

import os
import socket

import pytest

from _support import is_shardloop, run, spin

linux_only = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc (Linux)")

SIDES = [pytest.param(("add_reader", "remove_reader"), id="reader"),
         pytest.param(("add_writer", "remove_writer"), id="writer")]
INVALID = "Invalid file descriptor: -1"


def open_fds():
    return len(os.listdir("/proc/self/fd"))


def socketpair(socks):
    a, b = socket.socketpair()
    socks.add(a)
    socks.add(b)
    return a, b


@linux_only
@pytest.mark.parametrize("side", SIDES)
def test_remove_finds_the_watch_of_a_closed_socket(loop, socks, side):
    add, remove = side

    async def main():
        # Counted with the loop running: it opens its own fds on first run.
        before = open_fds()
        a, b = socketpair(socks)
        getattr(loop, add)(a, lambda: None)
        await spin(2)  # the watch is polled before the close
        a.close()
        assert getattr(loop, remove)(a) is True
        # Found once: like asyncio, a second removal no longer knows the socket.
        with pytest.raises(ValueError, match=INVALID):
            getattr(loop, remove)(a)
        b.close()
        assert open_fds() == before, "a descriptor of the watch leaked"

    run(loop, main())


@linux_only
def test_both_sides_of_a_closed_socket_are_removed(request, loop, socks):
    if not is_shardloop(loop):
        # Narrowing the epoll registration of a closed fd fails there.
        request.applymarker(pytest.mark.xfail(strict=True, raises=OSError,
                                              reason="asyncio's selector raises EBADF"))
    before = open_fds()
    a, b = socketpair(socks)
    loop.add_reader(a, lambda: None)
    loop.add_writer(a, lambda: None)
    a.close()
    assert loop.remove_reader(a) is True
    assert loop.remove_writer(a) is True
    b.close()
    assert open_fds() == before, "a descriptor of the watch leaked"


def test_a_closed_socket_can_be_watched_again_by_the_object(loop, socks):
    # asyncio modifies the key it finds by the object: the replaced
    # callback is cancelled and the new one is what gets removed.
    a, _ = socketpair(socks)
    first = []
    loop.add_reader(a, first.append, 1)
    a.close()
    loop.add_reader(a, first.append, 2)
    assert loop.remove_reader(a) is True
    with pytest.raises(ValueError, match=INVALID):
        loop.remove_reader(a)


@pytest.mark.parametrize("side", SIDES)
def test_a_closed_socket_never_watched_is_invalid(loop, socks, side):
    a, _ = socketpair(socks)
    a.close()
    with pytest.raises(ValueError, match=INVALID):
        getattr(loop, side[1])(a)

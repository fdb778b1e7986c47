"""Readiness-based I/O: add_reader/remove_reader/add_writer/remove_writer and
the low-level sock_* coroutines, on real fds (pipes, socketpairs, TCP and UDP
on loopback).

Every test runs on asyncio's own loop (the reference) and on shardloop and
expects the same results and exceptions.  Tests never assert on elapsed
time: "X does not happen" is checked by letting the loop go round a fixed
number of iterations (``spin``) after the fd's readiness is already settled
in the kernel, and "X happens" by waiting for it with a generous bound.

Scenarios that may kill the interpreter (a crash in the native layer) run
in a child process, so that one failure cannot take the whole run with it.
"""

import asyncio
import contextvars
import errno
import fcntl
import gc
import os
import random
import socket
import threading
import weakref

import pytest

from _support import (HAVE_IPV6, LOOPBACK, PY311, child_report, is_shardloop, reset, run, run_child, spin,
                      wait_until)

linux_only = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc (Linux)")
requires_py311 = pytest.mark.skipif(not PY311, reason="sock_recvfrom/_into/sock_sendto are 3.11+")


FAMILIES = [
    pytest.param(socket.AF_INET, id="ipv4"),
    pytest.param(socket.AF_INET6, id="ipv6",
                 marks=pytest.mark.skipif(not HAVE_IPV6, reason="no IPv6 loopback")),
]
NOT_NONBLOCKING = "the socket must be non-blocking"


# ---------------------------------------------------------------- helpers


@pytest.fixture
def res(loop):
    """A list of sockets / fds to close after the test.

    The loop is closed first, so no fd is ever closed under a live watcher
    by the teardown itself."""
    objs = []
    try:
        yield objs
    finally:
        if not loop.is_closed() and not loop.is_running():
            loop.close()
        for obj in reversed(objs):
            try:
                if isinstance(obj, int):
                    os.close(obj)
                else:
                    obj.close()
            except OSError:
                pass


def make_pipe(res):
    r, w = os.pipe()
    res.extend([r, w])
    return r, w


def make_socketpair(res, blocking=False):
    a, b = socket.socketpair()
    res.extend([a, b])
    a.setblocking(blocking)
    b.setblocking(blocking)
    return a, b


def make_bound(res, family, kind, blocking=False):
    """A socket of *kind* bound to the loopback address of *family*."""
    s = socket.socket(family, kind)
    res.append(s)
    s.bind((LOOPBACK[family], 0))
    if kind == socket.SOCK_STREAM:
        s.listen(128)
    s.setblocking(blocking)
    return s


def make_listener(res, family, blocking=False):
    return make_bound(res, family, socket.SOCK_STREAM, blocking)


def make_tcp_pair(res, family):
    """A connected TCP pair (server side, client side), both non-blocking."""
    lst = make_listener(res, family, blocking=True)
    client = socket.socket(family, socket.SOCK_STREAM)
    res.append(client)
    client.connect(lst.getsockname())
    server, _ = lst.accept()
    res.append(server)
    server.setblocking(False)
    client.setblocking(False)
    return server, client


def make_udp(res, family, blocking=False):
    return make_bound(res, family, socket.SOCK_DGRAM, blocking)


def fill(sock):
    """Send until the kernel buffer is full; returns the bytes sent."""
    total = 0
    chunk = b"\0" * 65536
    while True:
        try:
            total += sock.send(chunk)
        except BlockingIOError:
            return total


def drain(sock):
    total = 0
    while True:
        try:
            data = sock.recv(1 << 20)
        except BlockingIOError:
            return total
        if not data:
            return total
        total += len(data)


def open_fds():
    return len(os.listdir("/proc/self/fd"))


CHILD_PRELUDE = """
async def spin(n=10):
    for _ in range(n):
        await asyncio.sleep(0)
"""


# ------------------------------------------------- add_reader / add_writer


def test_add_reader_is_level_triggered_and_stops_after_remove(loop, res):
    r, w = make_pipe(res)
    calls = []

    def on_readable():
        calls.append(os.read(r, 1))  # one byte per call: the rest stays ready

    async def main():
        assert loop.add_reader(r, on_readable) is None
        await spin()
        assert calls == []  # nothing written yet
        os.write(w, b"abc")
        await wait_until(lambda: len(calls) == 3)
        await spin()
        assert calls == [b"a", b"b", b"c"]  # fired once per byte, then quiet
        os.write(w, b"d")
        await wait_until(lambda: len(calls) == 4)
        assert loop.remove_reader(r) is True
        os.write(w, b"e")
        await spin()
        assert calls == [b"a", b"b", b"c", b"d"]
        assert os.read(r, 10) == b"e"

    run(loop, main())


def test_remove_reader_true_once_then_false(loop, res):
    r, w = make_pipe(res)
    assert loop.remove_reader(r) is False  # never registered
    loop.add_reader(r, lambda: None)
    assert loop.remove_writer(r) is False  # only a reader is set
    assert loop.remove_reader(r) is True
    assert loop.remove_reader(r) is False
    loop.add_writer(w, lambda: None)
    assert loop.remove_reader(w) is False
    assert loop.remove_writer(w) is True
    assert loop.remove_writer(w) is False


def test_remove_writer_leaves_reader_working(loop, res):
    r, w = make_pipe(res)
    calls = []
    loop.add_reader(r, lambda: calls.append(os.read(r, 100)))
    assert loop.remove_writer(r) is False

    async def main():
        os.write(w, b"x")
        await wait_until(lambda: calls == [b"x"])

    run(loop, main())
    assert loop.remove_reader(r) is True


def test_add_reader_with_file_object_and_int(loop, res):
    a, b = make_socketpair(res)
    r, w = make_pipe(res)
    f = os.fdopen(r, "rb", buffering=0, closefd=False)
    res.append(f)
    got = []

    async def main():
        loop.add_reader(a, lambda: got.append(("sock", a.recv(100))))  # socket object
        loop.add_reader(f, lambda: got.append(("file", f.read(100))))  # file object
        b.send(b"s")
        os.write(w, b"f")
        await wait_until(lambda: len(got) == 2)
        assert sorted(got) == [("file", b"f"), ("sock", b"s")]
        # The int names the same watch as the object.
        assert loop.remove_reader(a.fileno()) is True
        assert loop.remove_reader(a) is False
        assert loop.remove_reader(f) is True
        assert loop.remove_reader(r) is False

        loop.add_reader(a.fileno(), lambda: got.append(("int", a.recv(100))))
        b.send(b"i")
        await wait_until(lambda: len(got) == 3)
        assert got[-1] == ("int", b"i")
        assert loop.remove_reader(a) is True

    run(loop, main())


def test_replacing_reader_cancels_old_one(loop, res):
    r, w = make_pipe(res)
    calls = []

    def old():
        calls.append("old")

    def new():
        calls.append(("new", os.read(r, 100)))

    async def main():
        loop.add_reader(r, old)
        loop.add_reader(r, new)
        os.write(w, b"x")
        await wait_until(lambda: calls)
        await spin()
        assert calls == [("new", b"x")]
        assert loop.remove_reader(r) is True
        assert loop.remove_reader(r) is False  # one watch, not two

    run(loop, main())


def test_reader_replaced_from_its_own_callback(loop, res):
    r, w = make_pipe(res)
    calls = []

    def first():
        calls.append("first")  # reads nothing: the fd stays readable
        loop.add_reader(r, second)

    def second():
        calls.append(("second", os.read(r, 100)))
        loop.remove_reader(r)

    async def main():
        loop.add_reader(r, first)
        os.write(w, b"x")
        await wait_until(lambda: len(calls) == 2)
        await spin()
        assert calls == ["first", ("second", b"x")]

    run(loop, main())


def test_replacing_writer_cancels_old_one(loop, res):
    a, _ = make_socketpair(res)
    calls = []

    def new():
        calls.append("new")
        loop.remove_writer(a)

    async def main():
        loop.add_writer(a, lambda: calls.append("old"))
        loop.add_writer(a, new)
        await wait_until(lambda: calls)
        await spin()
        assert calls == ["new"]

    run(loop, main())


def test_reader_removed_by_a_callback_of_the_same_iteration_does_not_run(loop, res):
    """Both pipes are readable at the same poll; whichever callback runs
    first removes the other reader, whose queued callback must not run."""
    r1, w1 = make_pipe(res)
    r2, w2 = make_pipe(res)
    calls = []

    def cb(name):
        calls.append(name)
        loop.remove_reader(r1)
        loop.remove_reader(r2)

    os.write(w1, b"x")
    os.write(w2, b"x")
    loop.add_reader(r1, cb, "r1")
    loop.add_reader(r2, cb, "r2")

    async def main():
        await wait_until(lambda: calls)
        await spin()
        assert len(calls) == 1, calls

    run(loop, main())


def test_add_writer_fires_when_writable(loop, res):
    a, b = make_socketpair(res)
    calls = []

    def on_writable():
        calls.append(True)
        loop.remove_writer(a)

    async def main():
        fill(a)  # not writable any more
        loop.add_writer(a, on_writable)
        await spin()
        assert calls == []
        drain(b)  # room again
        await wait_until(lambda: calls)
        await spin()
        assert calls == [True]
        assert loop.remove_writer(a) is False

    run(loop, main())


def test_writer_is_level_triggered_until_removed(loop, res):
    a, _ = make_socketpair(res)
    calls = []

    async def main():
        loop.add_writer(a, calls.append, "w")
        await wait_until(lambda: len(calls) >= 3)  # fires each iteration
        assert loop.remove_writer(a) is True
        n = len(calls)
        await spin()
        assert len(calls) == n

    run(loop, main())


def test_reader_and_writer_on_same_fd(loop, res):
    a, b = make_socketpair(res)
    reads, writes = [], []

    def on_readable():
        reads.append(a.recv(100))

    async def main():
        loop.add_reader(a, on_readable)
        loop.add_writer(a, writes.append, 1)
        b.send(b"x")
        await wait_until(lambda: reads and len(writes) >= 2)
        assert reads == [b"x"]

        # Removing the writer keeps the reader.
        assert loop.remove_writer(a) is True
        n = len(writes)
        b.send(b"y")
        await wait_until(lambda: len(reads) == 2)
        await spin()
        assert reads == [b"x", b"y"]
        assert len(writes) == n

        # Removing the reader keeps the writer.
        loop.add_writer(a, writes.append, 2)
        assert loop.remove_reader(a) is True
        await wait_until(lambda: writes.count(2) >= 3)
        b.send(b"z")
        await spin()
        assert reads == [b"x", b"y"]
        assert a.recv(100) == b"z"
        assert loop.remove_writer(a) is True
        assert loop.remove_reader(a) is False
        assert loop.remove_writer(a) is False

    run(loop, main())


def test_callback_receives_args(loop, res):
    r, w = make_pipe(res)
    a, _ = make_socketpair(res)
    marker = object()
    got = []

    def on_readable(*args):
        got.append(("r",) + args)
        os.read(r, 100)
        loop.remove_reader(r)

    def on_writable(*args):
        got.append(("w",) + args)
        loop.remove_writer(a)

    async def main():
        loop.add_reader(r, on_readable, 1, "two", marker)
        loop.add_writer(a, on_writable, None, marker)
        os.write(w, b"x")
        await wait_until(lambda: len(got) == 2)

    run(loop, main())
    assert sorted(got, key=lambda t: t[0]) == [("r", 1, "two", marker), ("w", None, marker)]


def test_callback_runs_inside_the_loop(loop, res):
    r, w = make_pipe(res)
    var = contextvars.ContextVar("var", default="unset")
    seen = {}

    async def child():
        seen["task_ran"] = asyncio.current_task() is not None

    def on_readable():
        os.read(r, 100)
        loop.remove_reader(r)
        seen["running_loop"] = asyncio.get_running_loop() is loop
        seen["thread"] = threading.get_ident()
        seen["current_task"] = asyncio.current_task()
        seen["var"] = var.get()
        var.set("changed-in-callback")
        loop.call_soon(seen.__setitem__, "call_soon", True)
        seen["task"] = loop.create_task(child())

    async def main():
        var.set("set-before-add_reader")
        loop.add_reader(r, on_readable)
        os.write(w, b"x")
        await wait_until(lambda: "call_soon" in seen and "task_ran" in seen)
        await seen["task"]
        assert var.get() == "set-before-add_reader"  # the callback ran in a copy

    run(loop, main())
    assert seen["running_loop"] is True
    assert seen["thread"] == threading.get_ident()
    assert seen["current_task"] is None
    assert seen["var"] == "set-before-add_reader"
    assert seen["task_ran"] is True


def test_callback_exception_goes_to_handler_and_loop_goes_on(loop, res):
    r, w = make_pipe(res)
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))

    def on_readable():
        os.read(r, 100)
        raise ZeroDivisionError("boom")

    async def main():
        loop.add_reader(r, on_readable)
        os.write(w, b"1")
        await wait_until(lambda: len(contexts) == 1)
        # The reader is still registered and the loop still runs.
        os.write(w, b"2")
        await wait_until(lambda: len(contexts) == 2)
        assert loop.remove_reader(r) is True

    run(loop, main())
    for ctx in contexts:
        assert isinstance(ctx["exception"], ZeroDivisionError)
        assert ctx["message"].startswith("Exception in callback")
        assert "handle" in ctx


@pytest.mark.parametrize("method", ["add_reader", "add_writer", "remove_reader", "remove_writer"])
def test_invalid_fd_raises_value_error(loop, res, method):
    closed = socket.socket()
    closed.close()  # fileno() == -1
    args = (lambda: None,) if method.startswith("add") else ()
    for bad in (-1, object(), "3", closed):
        with pytest.raises(ValueError):
            getattr(loop, method)(bad, *args)


def test_add_reader_on_closed_fd_number_raises_ebadf(loop, res):
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    for add in (loop.add_reader, loop.add_writer):
        with pytest.raises(OSError) as info:
            add(r, lambda: None)
        assert info.value.errno == errno.EBADF
    assert loop.remove_reader(r) is False
    assert loop.remove_writer(r) is False


def test_closed_loop(loop, res):
    r, w = make_pipe(res)
    loop.add_reader(r, lambda: None)
    loop.add_writer(w, lambda: None)
    loop.close()
    assert loop.remove_reader(r) is False
    assert loop.remove_writer(w) is False
    assert loop.remove_reader(w) is False
    with pytest.raises(RuntimeError):
        loop.add_reader(r, lambda: None)
    with pytest.raises(RuntimeError):
        loop.add_writer(w, lambda: None)


def test_invalid_fd_on_closed_loop(loop, res):
    """Documented divergence (corner case): asyncio checks "closed" before
    validating a negative fd (add_* -> RuntimeError, remove_* -> False);
    shardloop validates the fd first (ValueError).  Objects without
    fileno() are ValueError on both."""
    loop.close()
    for method in ("add_reader", "add_writer", "remove_reader", "remove_writer"):
        args = (lambda: None,) if method.startswith("add") else ()
        with pytest.raises(ValueError):
            getattr(loop, method)(object(), *args)
        if is_shardloop(loop):
            with pytest.raises(ValueError):
                getattr(loop, method)(-1, *args)
        elif method.startswith("add"):
            with pytest.raises(RuntimeError):
                getattr(loop, method)(-1, *args)
        else:
            assert getattr(loop, method)(-1) is False


@linux_only
def test_closing_loop_with_watchers_leaks_no_fd_and_no_callback(loop_factory):
    class Callback:
        def __call__(self):
            pass

    def cycle():
        lp = loop_factory()
        fds = []
        sockets = []
        cb = Callback()
        ref = weakref.ref(cb)
        try:
            for _ in range(4):
                r, w = os.pipe()
                fds += [r, w]
                os.write(w, b"x")  # readable: its reader is queued each iteration
                lp.add_reader(r, cb)
                lp.add_writer(w, cb)
            a, b = socket.socketpair()
            sockets += [a, b]
            a.setblocking(False)
            lp.add_reader(a, cb)
            lp.add_writer(a, cb)
            del cb
            lp.run_until_complete(spin(5))  # watchers really polled
            lp.call_soon(lambda: None)
            lp.close()  # with everything still registered
        finally:
            for fd in fds:
                os.close(fd)
            for s in sockets:
                s.close()
        del lp
        gc.collect()
        return ref

    cycle()  # warm-up: anything created once per process
    gc.collect()
    before = open_fds()
    refs = [cycle() for _ in range(3)]
    gc.collect()
    assert open_fds() == before
    assert all(ref() is None for ref in refs), "a callback outlived its closed loop"


def test_regular_file_is_rejected_like_epoll(loop, res, tmp_path):
    """asyncio's epoll selector refuses regular files with EPERM."""
    path = tmp_path / "data.bin"
    path.write_bytes(b"hello")
    f = open(path, "rb")
    res.append(f)
    for add in (loop.add_reader, loop.add_writer):
        with pytest.raises(PermissionError):
            add(f, lambda: None)
    assert loop.remove_reader(f) is False
    assert loop.remove_writer(f) is False
    assert os.get_blocking(f.fileno()) is True


def test_add_reader_leaves_blocking_mode_alone(loop, res):
    """add_reader/add_writer must not change the fd's O_NONBLOCK flag: the
    fd may be shared (stdin, a blocking socket read in the callback)."""
    r, w = make_pipe(res)
    a, _ = make_socketpair(res, blocking=True)
    assert os.get_blocking(r) and os.get_blocking(w) and os.get_blocking(a.fileno())
    loop.add_reader(r, lambda: None)
    loop.add_writer(w, lambda: None)
    loop.add_reader(a, lambda: None)
    assert os.get_blocking(r) is True
    assert os.get_blocking(w) is True
    assert os.get_blocking(a.fileno()) is True
    assert a.gettimeout() is None
    loop.remove_reader(r)
    loop.remove_writer(w)
    loop.remove_reader(a)
    assert os.get_blocking(r) is True
    assert os.get_blocking(w) is True
    assert os.get_blocking(a.fileno()) is True


def test_add_reader_non_callable(loop, res):
    """Documented divergence: asyncio accepts any object (the error comes
    when it would be called); shardloop refuses it up front."""
    r, _ = make_pipe(res)
    if is_shardloop(loop):
        with pytest.raises(TypeError):
            loop.add_reader(r, None)
        assert loop.remove_reader(r) is False
    else:
        loop.add_reader(r, None)
        assert loop.remove_reader(r) is True


def test_writer_keeps_firing_on_error_condition(loop, res):
    """A pipe whose read end is closed is in error (EPOLLERR): a selector
    reports it as writable on every iteration until the writer is removed."""
    r, w = os.pipe()
    res.append(w)
    os.close(r)
    calls = []

    def on_writable():
        calls.append(True)
        if len(calls) == 3:
            loop.remove_writer(w)

    async def main():
        loop.add_writer(w, on_writable)
        await wait_until(lambda: len(calls) == 3, timeout=3)
        await spin()
        assert len(calls) == 3

    run(loop, main())


def test_reader_keeps_working_after_a_socket_error(loop, res):
    """A connected UDP socket gets ICMP port-unreachable (EPOLLERR); the
    reader sees ConnectionRefusedError from recv(), stays registered, and
    still sees the next datagram."""
    gone = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    gone.bind(("127.0.0.1", 0))
    port = gone.getsockname()[1]
    gone.close()  # nobody listens on `port` now
    a = make_udp(res, socket.AF_INET)
    a.connect(("127.0.0.1", port))
    got = []

    def on_readable():
        try:
            got.append(a.recv(100))
        except OSError as exc:
            got.append(type(exc))

    async def main():
        loop.add_reader(a, on_readable)
        a.send(b"ping")
        await wait_until(lambda: got)
        assert got == [ConnectionRefusedError]
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        res.append(peer)
        peer.bind(("127.0.0.1", port))
        peer.sendto(b"pong", a.getsockname())
        await wait_until(lambda: len(got) == 2, timeout=3)
        assert got == [ConnectionRefusedError, b"pong"]
        assert loop.remove_reader(a) is True

    run(loop, main())


# Closing a watched fd without removing the watch first.  With epoll the
# kernel drops the registration when the last fd for the file goes, so on
# asyncio's loop the file really closes and its callbacks stop; a watch must
# not keep the file alive or report for it after its owner closed it.


# shardloop watches a private duplicate of each fd, so an fd its owner closes
# while a watch is still set cannot make libuv abort (it aborts when asked to
# register a closed fd, or to modify one whose number was reused). The price:
# the open file stays open until remove_reader/remove_writer, where asyncio's
# selector loses the registration and the file closes at once. These tests
# show asyncio's behaviour; on shardloop they are expected to fail (strict, so
# they report when that changes).
def _dup_watch_divergence(request, loop):
    if is_shardloop(loop):
        request.applymarker(pytest.mark.xfail(
            strict=True, reason="shardloop watches a dup: a closed-but-watched fd stays open until removed"))


def test_closing_a_watched_socket_closes_the_connection(request, loop, res):
    _dup_watch_divergence(request, loop)
    a, b = make_socketpair(res)
    c, d = make_socketpair(res)

    async def main():
        loop.add_reader(a, lambda: None)
        a.close()  # no remove_reader first
        await _wait_eof(loop, b)

        task = asyncio.ensure_future(loop.sock_recv(c, 100))
        await spin(3)
        assert not task.done()
        c.close()  # closing the socket to abandon a pending sock_recv
        await _wait_eof(loop, d)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert loop.remove_reader(a_fd) is True

    a_fd = a.fileno()
    run(loop, main())


def _at_eof(sock):
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False


async def _wait_eof(loop, sock, timeout=3):
    """Wait until *sock* (which gets no data) reads EOF.  Event-driven, with
    one long timeout rather than polling on 1 ms sleeps, so that the wait
    does not depend on short timers waking an otherwise idle loop."""
    fut = loop.create_future()

    def on_readable():
        if _at_eof(sock) and not fut.done():
            fut.set_result(None)

    loop.add_reader(sock, on_readable)
    try:
        await asyncio.wait_for(fut, timeout)
    finally:
        loop.remove_reader(sock)


def test_no_callback_for_an_fd_closed_by_its_owner(request, loop, res):
    _dup_watch_divergence(request, loop)
    r, w = make_pipe(res)
    res.remove(r)
    os.write(w, b"pending data")
    calls = []
    loop.add_reader(r, calls.append, "r")
    os.close(r)  # readable, but closed before the loop ever polled it

    async def main():
        await spin()
        assert calls == []
        assert loop.remove_reader(r) is True

    run(loop, main())


def test_reader_on_a_reused_fd_number_is_not_driven_by_the_closed_file(request, loop, res):
    """The owner closes a watched pipe without remove_reader; the next pipe
    gets the same fd number and a reader.  While the new pipe is empty its
    reader must not be called (asyncio's never is: the closed file left
    epoll).  Readiness of the dead pipe (at EOF: readable forever) must not
    be reported for the new one."""
    _dup_watch_divergence(request, loop)
    r1, w1 = os.pipe()
    loop.add_reader(r1, lambda: None)
    os.close(r1)
    os.close(w1)
    r2, w2 = os.pipe()
    if r2 != r1:
        # A lower number was free (a socket of an earlier test collected
        # meanwhile, say): move the new read end to r1's number, as the
        # kernel would have given it.
        try:
            fcntl.fcntl(r1, fcntl.F_GETFD)
            in_use = True
        except OSError:
            in_use = False
        if in_use:  # taken by another thread in between: nothing to test
            os.close(r2)
            os.close(w2)
            pytest.skip("fd %d was taken by someone else" % r1)
        os.dup2(r2, r1)
        os.close(r2)
        r2 = r1
    res.extend([r2, w2])
    os.set_blocking(r2, False)
    calls = []

    def on_readable():
        try:
            calls.append(os.read(r2, 100))
        except BlockingIOError:
            calls.append("spurious: nothing to read")

    async def main():
        loop.add_reader(r2, on_readable)
        await spin()
        assert calls == []
        loop.remove_reader(r2)

    run(loop, main())


# The three scenarios below close an fd while a watch on it is still set and
# has not been polled yet.  asyncio's selector shrugs that off (the kernel
# drops a closed fd from epoll; unregister ignores EBADF).  They run in a
# child process because a native loop may abort() on it.


def test_fd_closed_under_a_fresh_reader_while_running(loop):
    proc = run_child(loop, """
        async def main():
            await asyncio.sleep(0)
            r, w = os.pipe()
            loop.add_reader(r, lambda: None)
            os.close(r)  # before the loop polled the new watch
            await spin()
            print(loop.remove_reader(r))
            os.close(w)
        loop.run_until_complete(main())
        loop.close()
        print("done")
        """, prelude=CHILD_PRELUDE)
    assert (proc.returncode, proc.stdout) == (0, "True\ndone\n"), child_report(proc)


def test_socket_closed_while_sock_recv_waits(loop):
    proc = run_child(loop, """
        async def main():
            a, b = socket.socketpair()
            a.setblocking(False)
            task = asyncio.ensure_future(loop.sock_recv(a, 100))
            await asyncio.sleep(0)  # the task registers its reader...
            a.close()               # ...and the socket goes before any poll
            await spin()
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                print("cancelled")
            b.close()
        loop.run_until_complete(main())
        loop.close()
        print("done")
        """, prelude=CHILD_PRELUDE)
    assert (proc.returncode, proc.stdout) == (0, "cancelled\ndone\n"), child_report(proc)


def test_fd_closed_under_a_reader_before_the_loop_runs(loop):
    proc = run_child(loop, """
        r, w = os.pipe()
        loop.add_reader(r, lambda: None)
        os.close(r)
        loop.run_until_complete(spin())
        print(loop.remove_reader(r))
        os.close(w)
        loop.close()
        print("done")
        """, prelude=CHILD_PRELUDE)
    assert (proc.returncode, proc.stdout) == (0, "True\ndone\n"), child_report(proc)


@linux_only
@pytest.mark.skipif(bool(os.environ.get("SHARDLOOP_SANITIZED")),
                    reason="UBSan's vptr check probes memory through pipe(): with no free fd "
                           "it reports a false 'invalid vptr'")
def test_watches_work_with_no_free_fd(loop):
    """At the RLIMIT_NOFILE limit (no descriptor left) add_reader/add_writer
    and sock_recv still work: epoll registration needs no new fd.  Child
    process: the limit and the fillers must not leak into this one."""
    proc = run_child(loop, """
        import resource
        r, w = os.pipe()
        a, b = socket.socketpair()
        a.setblocking(False)
        loop.run_until_complete(spin(2))  # whatever a first run opens
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 8, hard))
        fillers = []
        try:
            while True:
                fillers.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            pass
        got = []
        def on_readable():
            got.append(os.read(r, 10))
            loop.remove_reader(r)
        def on_writable():
            got.append("w")
            loop.remove_writer(w)
        async def main():
            loop.add_reader(r, on_readable)
            loop.add_writer(w, on_writable)
            os.write(w, b"x")
            task = asyncio.ensure_future(loop.sock_recv(a, 10))
            await spin(2)
            b.send(b"y")
            got.append(await task)
            while len(got) < 3:
                await asyncio.sleep(0)
        loop.run_until_complete(main())
        print(*sorted(map(repr, got)))
        print(loop.remove_reader(r), loop.remove_writer(w), loop.remove_reader(a))
        for fd in fillers:
            os.close(fd)
        loop.close()
        print("done")
        """, prelude=CHILD_PRELUDE)
    assert (proc.returncode, proc.stdout) == (
        0, "'w' b'x' b'y'\nFalse False False\ndone\n"), child_report(proc)


# ---------------------------------------------------------------- sock_*


def test_sock_recv_waits_for_data(loop, res):
    a, b = make_socketpair(res)

    async def main():
        task = asyncio.ensure_future(loop.sock_recv(a, 100))
        await spin(3)
        assert not task.done()
        b.send(b"hello")
        assert await task == b"hello"
        b.send(b"ready")  # already there: no wait
        assert await loop.sock_recv(a, 100) == b"ready"
        assert loop.remove_reader(a) is False  # nothing left behind

    run(loop, main())


def test_sock_recv_respects_size(loop, res):
    a, b = make_socketpair(res)

    async def main():
        b.send(b"abcdef")
        assert await loop.sock_recv(a, 4) == b"abcd"
        assert await loop.sock_recv(a, 4) == b"ef"

    run(loop, main())


def test_sock_recv_into(loop, res):
    a, b = make_socketpair(res)
    buf = bytearray(8)

    async def main():
        task = asyncio.ensure_future(loop.sock_recv_into(a, buf))
        await spin(3)
        assert not task.done()
        b.send(b"hey")
        assert await task == 3
        assert bytes(buf[:3]) == b"hey"
        b.send(b"0123456789")
        view = memoryview(buf)[2:6]
        assert await loop.sock_recv_into(a, view) == 4
        assert bytes(buf) == b"he0123\0\0"
        assert loop.remove_reader(a) is False

    run(loop, main())


@pytest.mark.parametrize("family", FAMILIES)
def test_sock_sendall_large_payload(loop, res, family):
    server, client = make_tcp_pair(res, family)
    payload = random.Random(1234).randbytes(8 * 1024 * 1024)

    async def reader():
        chunks = []
        size = 0
        while size < len(payload):
            data = await loop.sock_recv(server, 256 * 1024)
            assert data, "EOF after %d bytes" % size
            chunks.append(data)
            size += len(data)
        return b"".join(chunks)

    async def main():
        recv_task = asyncio.ensure_future(reader())
        assert await loop.sock_sendall(client, payload) is None
        received = await recv_task
        assert len(received) == len(payload)
        assert received == payload
        assert loop.remove_writer(client) is False
        assert loop.remove_reader(server) is False

    run(loop, main(), timeout=60)


def test_sock_sendall_bytearray_and_memoryview(loop, res):
    a, b = make_socketpair(res)

    async def main():
        await loop.sock_sendall(a, bytearray(b"ab"))
        await loop.sock_sendall(a, memoryview(b"xcdx")[1:3])
        await loop.sock_sendall(a, b"")
        assert await loop.sock_recv(b, 100) == b"abcd"

    run(loop, main())


@pytest.mark.parametrize("family", FAMILIES)
def test_sock_sendall_to_reset_peer_raises(loop, res, family):
    server, client = make_tcp_pair(res, family)

    async def main():
        task = asyncio.ensure_future(loop.sock_sendall(client, b"x" * (32 * 1024 * 1024)))
        await spin(3)
        reset(server)  # RST while (most likely) the send is waiting for room
        with pytest.raises((ConnectionResetError, BrokenPipeError)):
            await task
        assert loop.remove_writer(client) is False

    run(loop, main())


@pytest.mark.parametrize("family", FAMILIES)
def test_sock_accept_and_connect(loop, res, family):
    lst = make_listener(res, family)
    client = socket.socket(family, socket.SOCK_STREAM)
    res.append(client)
    client.setblocking(False)

    async def main():
        accept_task = asyncio.ensure_future(loop.sock_accept(lst))
        await spin(3)
        assert not accept_task.done()
        assert await loop.sock_connect(client, lst.getsockname()) is None
        conn, peer = await accept_task
        res.append(conn)
        assert isinstance(conn, socket.socket)
        assert conn.gettimeout() == 0
        assert os.get_blocking(conn.fileno()) is False
        assert peer == client.getsockname()
        assert client.getpeername() == conn.getsockname()
        await loop.sock_sendall(client, b"ping")
        assert await loop.sock_recv(conn, 100) == b"ping"
        await loop.sock_sendall(conn, b"pong")
        assert await loop.sock_recv(client, 100) == b"pong"
        assert loop.remove_reader(lst) is False
        assert loop.remove_writer(client) is False

    run(loop, main())


def test_sock_accept_connection_already_pending(loop, res):
    lst = make_listener(res, socket.AF_INET)
    client = socket.create_connection(lst.getsockname())
    res.append(client)

    async def main():
        conn, peer = await loop.sock_accept(lst)
        res.append(conn)
        assert conn.gettimeout() == 0
        assert peer == client.getsockname()

    run(loop, main())


@pytest.mark.parametrize("family", FAMILIES)
def test_sock_connect_refused(loop, res, family):
    # A bound but not listening TCP socket answers SYN with RST.
    closed_port = socket.socket(family, socket.SOCK_STREAM)
    res.append(closed_port)
    closed_port.bind((LOOPBACK[family], 0))
    client = socket.socket(family, socket.SOCK_STREAM)
    res.append(client)
    client.setblocking(False)

    async def main():
        with pytest.raises(ConnectionRefusedError):
            await loop.sock_connect(client, closed_port.getsockname())
        assert loop.remove_writer(client) is False

    run(loop, main())


def test_sock_connect_resolves_localhost(loop, res):
    try:
        infos = socket.getaddrinfo("localhost", 0, socket.AF_INET, socket.SOCK_STREAM)
    except socket.gaierror:
        pytest.skip("'localhost' does not resolve")
    host = infos[0][4][0]
    lst = make_listener(res, socket.AF_INET)
    if host != lst.getsockname()[0]:
        pytest.skip("'localhost' resolves to %s" % host)
    port = lst.getsockname()[1]
    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    res.append(client)
    client.setblocking(False)

    async def main():
        await loop.sock_connect(client, ("localhost", port))
        assert client.getpeername() == ("127.0.0.1", port)
        conn, _ = await loop.sock_accept(lst)
        res.append(conn)

    run(loop, main(), timeout=30)


def test_sock_connect_unix_socketpath(loop, res, tmp_path):
    path = str(tmp_path / "sock")
    lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    res.append(lst)
    lst.bind(path)
    lst.listen()
    lst.setblocking(False)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    res.append(client)
    client.setblocking(False)

    async def main():
        await loop.sock_connect(client, path)
        conn, _ = await loop.sock_accept(lst)
        res.append(conn)
        await loop.sock_sendall(client, b"unix")
        assert await loop.sock_recv(conn, 100) == b"unix"

    run(loop, main())


@requires_py311
@pytest.mark.parametrize("family", FAMILIES)
def test_sock_sendto_and_recvfrom(loop, res, family):
    a = make_udp(res, family)
    b = make_udp(res, family)

    async def main():
        task = asyncio.ensure_future(loop.sock_recvfrom(a, 100))
        await spin(3)
        assert not task.done()
        assert await loop.sock_sendto(b, b"datagram", a.getsockname()) == 8
        data, addr = await task
        assert data == b"datagram"
        assert addr == b.getsockname()
        # A datagram bigger than bufsize is truncated.
        await loop.sock_sendto(b, b"0123456789", a.getsockname())
        assert await loop.sock_recvfrom(a, 4) == (b"0123", b.getsockname())
        assert loop.remove_reader(a) is False
        assert loop.remove_writer(b) is False

    run(loop, main())


@requires_py311
@pytest.mark.parametrize("family", FAMILIES)
def test_sock_recvfrom_into(loop, res, family):
    a = make_udp(res, family)
    b = make_udp(res, family)
    buf = bytearray(16)

    async def main():
        task = asyncio.ensure_future(loop.sock_recvfrom_into(a, buf))
        await spin(3)
        assert not task.done()
        await loop.sock_sendto(b, b"hello", a.getsockname())
        assert await task == (5, b.getsockname())
        assert bytes(buf[:5]) == b"hello"
        await loop.sock_sendto(b, b"abcdefgh", a.getsockname())
        assert await loop.sock_recvfrom_into(a, buf, 3) == (3, b.getsockname())
        assert bytes(buf[:5]) == b"abclo"
        with pytest.raises(ValueError):
            await loop.sock_recvfrom_into(a, buf, 100)  # nbytes > len(buf)
        assert loop.remove_reader(a) is False

    run(loop, main())


def _blocking_calls(res):
    """(name, coroutine factory) for every sock_* method, each given a
    blocking socket that would otherwise succeed or wait."""
    a, b = make_socketpair(res, blocking=True)
    lst = make_listener(res, socket.AF_INET, blocking=True)
    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    res.append(client)
    calls = [
        ("sock_recv", lambda lp: lp.sock_recv(a, 10)),
        ("sock_recv_into", lambda lp: lp.sock_recv_into(a, bytearray(10))),
        ("sock_sendall", lambda lp: lp.sock_sendall(a, b"x")),
        ("sock_accept", lambda lp: lp.sock_accept(lst)),
        ("sock_connect", lambda lp: lp.sock_connect(client, lst.getsockname())),
    ]
    if PY311:
        u = make_udp(res, socket.AF_INET, blocking=True)
        calls += [
            ("sock_recvfrom", lambda lp: lp.sock_recvfrom(u, 10)),
            ("sock_recvfrom_into", lambda lp: lp.sock_recvfrom_into(u, bytearray(10))),
            ("sock_sendto", lambda lp: lp.sock_sendto(u, b"x", u.getsockname())),
        ]
    return calls, [a, lst, client] + ([u] if PY311 else [])


def test_blocking_socket_rejected_in_debug_mode(loop, res):
    """asyncio checks for a non-blocking socket in debug mode."""
    loop.set_debug(True)
    calls, socks = _blocking_calls(res)

    async def main():
        for name, call in calls:
            with pytest.raises(ValueError, match="^%s$" % NOT_NONBLOCKING):
                await call(loop)
        for s in socks:
            assert loop.remove_reader(s) is False
            assert loop.remove_writer(s) is False
            assert s.gettimeout() is None  # left as it was

    run(loop, main())


def test_blocking_socket_without_debug_mode(loop, res):
    """Documented divergence: without debug mode asyncio does not check and
    simply does the (here: non-waiting) blocking call; shardloop always
    raises the ValueError."""
    assert not loop.get_debug()
    a, b = make_socketpair(res, blocking=True)
    b.send(b"x")

    async def main():
        if is_shardloop(loop):
            with pytest.raises(ValueError, match=NOT_NONBLOCKING):
                await loop.sock_recv(a, 10)
        else:
            assert await loop.sock_recv(a, 10) == b"x"

    run(loop, main())


def test_sock_recv_cancelled_leaves_no_reader(loop, res):
    a, b = make_socketpair(res)

    async def main():
        task = asyncio.ensure_future(loop.sock_recv(a, 100))
        await spin(3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await spin(3)
        assert loop.remove_reader(a) is False  # the cancelled call cleaned up
        b.send(b"after")
        assert await loop.sock_recv(a, 100) == b"after"
        assert loop.remove_reader(a) is False

    run(loop, main())


def test_sock_recv_cancelled_then_new_recv_in_same_step(loop, res):
    """A new sock_recv issued before the cancelled one's clean-up ran: the
    clean-up must not remove the new call's reader."""
    a, b = make_socketpair(res)

    async def main():
        first = asyncio.ensure_future(loop.sock_recv(a, 100))
        await spin(3)
        first.cancel()
        second = asyncio.ensure_future(loop.sock_recv(a, 100))
        await spin(3)  # first's clean-up runs, second registers
        assert first.cancelled()
        assert not second.done()
        b.send(b"data")
        assert await second == b"data"
        assert loop.remove_reader(a) is False

    run(loop, main())


def test_sock_accept_cancelled_leaves_no_reader(loop, res):
    lst = make_listener(res, socket.AF_INET)

    async def main():
        task = asyncio.ensure_future(loop.sock_accept(lst))
        await spin(3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await spin(3)
        assert loop.remove_reader(lst) is False
        client = socket.create_connection(lst.getsockname())
        res.append(client)
        conn, peer = await loop.sock_accept(lst)
        res.append(conn)
        assert peer == client.getsockname()

    run(loop, main())


def test_sock_sendall_cancelled_leaves_no_writer(loop, res):
    a, b = make_socketpair(res)

    async def main():
        task = asyncio.ensure_future(loop.sock_sendall(a, b"x" * (16 * 1024 * 1024)))
        await spin(3)
        assert not task.done()  # the buffer is full: it waits
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await spin(3)
        assert loop.remove_writer(a) is False

    run(loop, main())


def test_sock_recv_eof(loop, res):
    a, b = make_socketpair(res)
    c, d = make_socketpair(res)

    async def main():
        task = asyncio.ensure_future(loop.sock_recv(a, 100))
        await spin(3)
        b.shutdown(socket.SHUT_WR)
        assert await task == b""
        assert await loop.sock_recv(a, 100) == b""  # stays at EOF
        d.close()
        assert await loop.sock_recv(c, 100) == b""
        assert await loop.sock_recv_into(c, bytearray(4)) == 0
        assert loop.remove_reader(a) is False

    run(loop, main())


@pytest.mark.parametrize("family", FAMILIES)
def test_sock_recv_peer_reset(loop, res, family):
    server, client = make_tcp_pair(res, family)
    server2, client2 = make_tcp_pair(res, family)

    async def main():
        task = asyncio.ensure_future(loop.sock_recv(server, 100))
        await spin(3)
        assert not task.done()
        reset(client)
        with pytest.raises(ConnectionResetError):
            await task
        assert loop.remove_reader(server) is False
        reset(client2)
        with pytest.raises(ConnectionResetError):
            await loop.sock_recv_into(server2, bytearray(10))

    run(loop, main())


def test_sock_recv_on_closed_socket(loop, res):
    a, _ = make_socketpair(res)
    a.close()

    async def main():
        with pytest.raises(OSError):
            await loop.sock_recv(a, 10)

    run(loop, main())


def test_many_concurrent_sock_recv(loop, res):
    pairs = [make_socketpair(res) for _ in range(200)]

    async def main():
        tasks = [asyncio.ensure_future(loop.sock_recv(a, 100)) for a, _ in pairs]
        await spin(3)
        assert not any(t.done() for t in tasks)
        for i, (_, b) in reversed(list(enumerate(pairs))):
            b.send(b"msg-%d" % i)
        results = await asyncio.gather(*tasks)
        assert results == [b"msg-%d" % i for i in range(len(pairs))]
        for a, _ in pairs:
            assert loop.remove_reader(a) is False

    run(loop, main(), timeout=30)


# ------------------------------------------------- fds owned by transports


def _owned_message(fd, transport):
    return "File descriptor %r is used by transport %r" % (fd, transport)


async def _client_transport(loop, res):
    lst = make_listener(res, socket.AF_INET)
    tr, proto = await loop.create_connection(asyncio.Protocol, *lst.getsockname())
    conn, _ = await loop.sock_accept(lst)
    res.append(conn)
    return tr, conn


def test_watchers_on_a_transport_fd_raise(loop, res):
    """asyncio refuses add_/remove_reader/writer on the fd of a live
    transport (given as a number or as the transport's socket)."""

    async def main():
        tr, _ = await _client_transport(loop, res)
        tsock = tr.get_extra_info("socket")
        fd = tsock.fileno()
        for key in (fd, tsock):
            for call in (lambda: loop.add_reader(key, lambda: None),
                         lambda: loop.add_writer(key, lambda: None),
                         lambda: loop.remove_reader(key),
                         lambda: loop.remove_writer(key)):
                with pytest.raises(RuntimeError) as info:
                    call()
                assert str(info.value) == _owned_message(key, tr)
        tr.close()
        # A closing transport no longer owns its fd.
        loop.add_reader(fd, lambda: None)
        assert loop.remove_reader(fd) is True
        assert loop.remove_writer(fd) is False

    run(loop, main())


def test_sock_calls_that_must_wait_on_a_transport_fd_raise(loop, res):
    async def main():
        tr, _ = await _client_transport(loop, res)
        fd = tr.get_extra_info("socket").fileno()
        alias = socket.socket(fileno=fd)  # the transport's descriptor itself
        alias.setblocking(False)
        try:
            with pytest.raises(RuntimeError) as info:
                await loop.sock_recv(alias, 10)  # nothing to read: it would wait
            assert str(info.value) == _owned_message(fd, tr)
            with pytest.raises(RuntimeError) as info:
                await loop.sock_recv_into(alias, bytearray(10))
            assert str(info.value) == _owned_message(fd, tr)
        finally:
            alias.detach()
        tr.close()

    run(loop, main())


def test_server_side_transport_fd_is_owned(loop, res):
    async def main():
        made = loop.create_future()

        class Proto(asyncio.Protocol):
            def connection_made(self, transport):
                made.set_result(transport)

        server = await loop.create_server(Proto, "127.0.0.1", 0)
        client = socket.socket()
        res.append(client)
        client.setblocking(False)
        await loop.sock_connect(client, server.sockets[0].getsockname())
        tr = await made
        fd = tr.get_extra_info("socket").fileno()
        with pytest.raises(RuntimeError) as info:
            loop.add_reader(fd, lambda: None)
        assert str(info.value) == _owned_message(fd, tr)
        # The client's own socket is no transport's: watching it is fine.
        loop.add_reader(client, lambda: None)
        assert loop.remove_reader(client) is True
        tr.close()
        server.close()
        await server.wait_closed()

    run(loop, main())

"""Helpers shared by the shardloop test modules (imported by conftest.py)."""

import asyncio
import os
import random
import socket
import struct
import subprocess
import sys
import textwrap

import pytest

try:
    import shardloop

    SHARDLOOP_IMPORT_ERROR = None
except Exception as exc:  # depends on whether the extension is built
    shardloop = None
    SHARDLOOP_IMPORT_ERROR = exc

HAVE_SHARDLOOP = shardloop is not None
SKIP_REASON = "shardloop is not importable: %r" % (SHARDLOOP_IMPORT_ERROR,)

PY311 = sys.version_info >= (3, 11)
PY312 = sys.version_info >= (3, 12)
PY313 = sys.version_info >= (3, 13)

requires_shardloop = pytest.mark.skipif(not HAVE_SHARDLOOP, reason=SKIP_REASON)


def shardloop_new_event_loop():
    return shardloop.new_event_loop()


def factory_params():
    """pytest params for the two loop factories (ids asyncio / shardloop)."""
    return [
        pytest.param(asyncio.new_event_loop, id="asyncio"),
        pytest.param(shardloop_new_event_loop, id="shardloop", marks=requires_shardloop),
    ]


def is_shardloop(loop):
    """True if *loop* is a shardloop loop (False for asyncio's own loop)."""
    return HAVE_SHARDLOOP and isinstance(loop, shardloop.Loop)


def run(loop, coro, timeout=5.0):
    """Run *coro* on *loop*, failing with TimeoutError after *timeout* s."""
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))


def run_forever_bounded(loop, timeout=5.0):
    """``loop.run_forever()`` that fails instead of hanging.

    A guard timer stops the loop after *timeout* seconds; if it fires, the
    test's own stop condition never happened and the test fails.
    """
    fired = []

    def guard():
        fired.append(True)
        loop.stop()

    h = loop.call_later(timeout, guard)
    try:
        loop.run_forever()
    finally:
        h.cancel()
    assert not fired, "run_forever() was only stopped by the %ss guard timer" % timeout


async def wait_until(predicate, timeout=5.0, interval=0.001):
    """Poll *predicate* from a coroutine until it is true (bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached within %ss" % timeout)
        await asyncio.sleep(interval)


def _ipv6_loopback_works():
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


# Shared by the network tests.
HAVE_IPV6 = _ipv6_loopback_works()
LOOPBACK = {socket.AF_INET: "127.0.0.1", socket.AF_INET6: "::1"}


BIG = 30.0  # run() bound for tests moving megabytes (ASan is slow)


# ---------------------------------------------------------------- loop driving


async def spin(n=20):
    """Let the loop go round *n* iterations (each one polls for I/O)."""
    for _ in range(n):
        await asyncio.sleep(0)


def same_as_asyncio(loop, scenario, timeout=10.0):
    """Run ``scenario(loop)`` on *loop*; on shardloop, run it on a fresh
    asyncio loop too and require the same result.  Returns the result."""
    got = run(loop, scenario(loop), timeout)
    if is_shardloop(loop):
        ref = asyncio.new_event_loop()
        try:
            expected = run(ref, scenario(ref), timeout)
        finally:
            ref.close()
            asyncio.set_event_loop(None)
        assert got == expected, "shardloop gave %r, asyncio gives %r" % (got, expected)
    return got


def record_exceptions(loop):
    """The list the contexts given to *loop*'s exception handler go to."""
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))
    return contexts


async def sleep_until_cancelled(record, mark=True):
    """Sleep (10 s); if cancelled, append *mark* to *record* and re-raise."""
    try:
        await asyncio.sleep(10)
    except asyncio.CancelledError:
        record.append(mark)
        raise


async def two_step_agen(finalized):
    """Yields 1 and 2; appends True to *finalized* when it is finalized."""
    try:
        yield 1
        yield 2
    finally:
        finalized.append(True)


# ---------------------------------------------------------------- bytes


def pattern(n, seed=0):
    """n pseudo-random bytes (deterministic)."""
    return random.Random(seed).randbytes(n)


def first_difference(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b)) if len(a) != len(b) else None


def assert_same_bytes(got, expected):
    got = bytes(got)
    if got != expected:
        i = first_difference(got, expected)
        raise AssertionError("got %d bytes, expected %d; first difference at offset %s"
                             % (len(got), len(expected), i))


# ---------------------------------------------------------------- sockets


def reset(sock):
    """Close *sock* with SO_LINGER 0: the peer gets a RST."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class Sockets:
    """Raw sockets made by a test, closed at the end (after the loop); also
    a context manager for scenarios that run on a second loop."""

    def __init__(self):
        self.objs = []

    def add(self, s):
        self.objs.append(s)
        return s

    def listener(self, family=socket.AF_INET, rcvbuf=None):
        lst = self.add(socket.socket(family, socket.SOCK_STREAM))
        if rcvbuf is not None:  # inherited by the accepted sockets
            lst.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        lst.bind((LOOPBACK[family], 0))
        lst.listen(128)
        lst.setblocking(False)
        return lst

    def close(self):
        for s in reversed(self.objs):
            s.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


async def recv_all(loop, sock, limit=None):
    """Read *sock* until EOF (or until *limit* bytes)."""
    data = bytearray()
    while limit is None or len(data) < limit:
        chunk = await loop.sock_recv(sock, 1 << 20)
        if not chunk:
            break
        data += chunk
    return bytes(data)


# ---------------------------------------------------------------- protocols


class _CallLog:
    """What both recorders note: the calls in order (consecutive deliveries
    are one 'data'), the bytes, the transport and the exception at the end."""

    def __init__(self):
        self.loop = asyncio.get_running_loop()
        self.events = []
        self.data = bytearray()
        self.transport = None
        self.exc = None
        self.lost = self.loop.create_future()

    def connection_made(self, transport):
        self.transport = transport
        self.events.append("made")

    def _delivered(self, data):
        self.data += data
        if self.events[-1:] != ["data"]:
            self.events.append("data")

    def connection_lost(self, exc):
        self.events.append(("lost", type(exc).__name__ if exc is not None else None))
        self.exc = exc
        if not self.lost.done():
            self.lost.set_result(exc)


class Recorder(_CallLog, asyncio.Protocol):
    """Records the protocol calls; eof_received returns *eof_result*."""

    def __init__(self, eof_result=None):
        super().__init__()
        self.eof_result = eof_result

    def data_received(self, data):
        assert type(data) is bytes
        self._delivered(data)

    def eof_received(self):
        self.events.append("eof")
        return self.eof_result


class Echo(Recorder):
    def data_received(self, data):
        super().data_received(data)
        self.transport.write(data)


class BufRecorder(_CallLog, asyncio.BufferedProtocol):
    """Records the calls of a BufferedProtocol reading into *size* bytes;
    counts the updates and keeps the size hints."""

    def __init__(self, size=7):
        super().__init__()
        self.buf = bytearray(size)
        self.updates = 0
        self.hints = []

    def get_buffer(self, sizehint):
        self.hints.append(sizehint)
        return self.buf

    def buffer_updated(self, nbytes):
        assert 0 < nbytes <= len(self.buf)
        self.updates += 1
        self._delivered(self.buf[:nbytes])

    def eof_received(self):
        self.events.append("eof")


def collecting_factory(cls=Recorder, **kwargs):
    """(factory, list of the protocols it made)."""
    made = []

    def factory():
        made.append(cls(**kwargs))
        return made[-1]

    return factory, made


# ---------------------------------------------------------------- streams


async def echo_handler(reader, writer):
    try:
        while True:
            data = await reader.read(1 << 16)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def close_server(server):
    server.close()
    await server.wait_closed()


async def echo_in_chunks(reader, writer, payload, step=100_003):
    """Send *payload* in drained chunks of *step* bytes (not a power of two:
    chunk edges move around), then EOF, while reading to EOF; returns what
    was read."""

    async def send():
        view = memoryview(payload)
        for i in range(0, len(view), step):
            writer.write(view[i:i + step])
            await writer.drain()
        writer.write_eof()

    sender = asyncio.ensure_future(send())
    received = await reader.read()  # until EOF
    await sender
    return received


# ---------------------------------------------------------------- child interpreters


def run_child(loop, body, timeout=60, prelude=""):
    """Run *body* in a child interpreter against the same kind of loop as
    *loop* (bound to ``loop`` there, after *prelude*).  Returns the
    CompletedProcess."""
    kind = "shardloop" if is_shardloop(loop) else "asyncio"
    code = textwrap.dedent("""\
        import asyncio, os, socket, sys
        if sys.argv[1] == "shardloop":
            import shardloop
            loop = shardloop.new_event_loop()
        else:
            loop = asyncio.new_event_loop()
        """) + textwrap.dedent(prelude) + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code, kind], capture_output=True, text=True,
                          timeout=timeout, cwd=os.path.dirname(os.path.abspath(__file__)))


def child_report(proc):
    return "rc=%s\nstdout:\n%s\nstderr (tail):\n%s" % (proc.returncode, proc.stdout, proc.stderr[-3000:])

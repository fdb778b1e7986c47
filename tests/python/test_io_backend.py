"""Choosing the I/O backend (epoll or io_uring): the keyword, the environment
variable, what loop.io_backend says, that transports really run on the ring,
and the fallback when the process may not have one (a seccomp filter that
refuses io_uring_setup, as container runtimes' default profiles do)."""

import asyncio
import errno
import os
import socket
import struct
import subprocess
import sys
import textwrap

import pytest

shardloop = pytest.importorskip("shardloop")


def test_keyword_chooses_the_backend():
    for flag, expected in ((True, "io_uring"), (False, "epoll")):
        loop = shardloop.new_event_loop(io_uring=flag)
        try:
            assert loop.io_backend == expected
        finally:
            loop.close()


@pytest.mark.parametrize("value, expected", [("1", "io_uring"), ("auto", "io_uring"), ("0", "epoll"), ("", "epoll")])
def test_environment_sets_the_default(monkeypatch, value, expected):
    monkeypatch.setenv("SHARDLOOP_IO_URING", value)
    loop = shardloop.new_event_loop()
    try:
        assert loop.io_backend == expected
    finally:
        loop.close()


def test_bad_values(monkeypatch):
    with pytest.raises(TypeError):
        shardloop.new_event_loop(io_uring="yes")
    with pytest.raises(TypeError):
        shardloop.EventLoopPolicy(io_uring=1)
    monkeypatch.setenv("SHARDLOOP_IO_URING", "maybe")
    with pytest.raises(ValueError, match="SHARDLOOP_IO_URING"):
        shardloop.new_event_loop()
    coro = asyncio.sleep(0)
    with pytest.raises(ValueError):
        shardloop.run(coro, loop_factory=asyncio.new_event_loop, io_uring=True)
    coro.close()


def test_backend_is_fixed_once_running():
    async def main():
        with pytest.raises(RuntimeError):
            asyncio.get_running_loop()._set_io_backend(0)
    shardloop.run(main(), io_uring=True)


async def _echo(reader, writer):
    while data := await reader.read(1 << 16):
        writer.write(data)
        await writer.drain()
    writer.close()


async def _echo_roundtrip(payload: bytes) -> tuple[bytes, bool, bool]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    client_ring = writer.transport._stream.uses_ring
    writer.write(payload)
    writer.write_eof()
    got = await reader.read()
    writer.close()
    server.close()
    await server.wait_closed()
    return got, client_ring, asyncio.get_running_loop().io_backend == "io_uring"


@pytest.mark.parametrize("io_uring", [False, True], ids=["epoll", "io_uring"])
def test_streams_run_on_the_chosen_backend(io_uring):
    payload = os.urandom(3 << 20)
    got, on_ring, loop_ring = shardloop.run(_echo_roundtrip(payload), io_uring=io_uring)
    assert got == payload
    assert on_ring == io_uring and loop_ring == io_uring


def test_every_shard_gets_the_backend():
    async def main():
        backends = []
        for shard in range(shardloop.shard_count()):
            backends.append(await shardloop.submit_to(shard, lambda: asyncio.get_running_loop().io_backend))
        return backends

    assert shardloop.run(main(), shards=2, io_uring=True) == ["io_uring", "io_uring"]


# A child that installs a seccomp filter refusing io_uring_setup with EPERM
# (x86-64 and aarch64 share the syscall number), then asks for io_uring.
_NO_URING_CHILD = textwrap.dedent("""
    import ctypes, errno, logging, os, struct, sys
    libc = ctypes.CDLL(None, use_errno=True)
    def stmt(code, k): return struct.pack("HBBI", code, 0, 0, k)
    def jump(code, k, jt, jf): return struct.pack("HBBI", code, jt, jf, k)
    BPF_LD_W_ABS, BPF_JEQ_K, BPF_RET_K = 0x20, 0x15, 0x06
    prog = (stmt(BPF_LD_W_ABS, 0) + jump(BPF_JEQ_K, 425, 0, 1)
            + stmt(BPF_RET_K, 0x00050000 | errno.EPERM) + stmt(BPF_RET_K, 0x7fff0000))
    buf = ctypes.create_string_buffer(prog)
    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
    fprog = Prog(len(prog) // 8, ctypes.addressof(buf))
    assert libc.prctl(38, 1, 0, 0, 0) == 0          # PR_SET_NO_NEW_PRIVS
    assert libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) == 0  # PR_SET_SECCOMP, FILTER
    import shardloop
    try:
        shardloop.new_event_loop(io_uring=True)
    except OSError as exc:
        print("strict", exc.errno == errno.EPERM, "io_uring_setup" in str(exc))
    logging.basicConfig(level=logging.DEBUG, stream=sys.stdout, format="%(name)s %(message)s")
    os.environ["SHARDLOOP_IO_URING"] = "auto"
    loop = shardloop.new_event_loop()
    print("auto", loop.io_backend)
    async def main():
        return 42
    print("runs", loop.run_until_complete(main()))
    loop.close()
""")


def test_fallback_when_rings_are_refused():
    out = subprocess.run([sys.executable, "-c", _NO_URING_CHILD], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "strict True True" in lines
    assert "auto epoll" in lines
    assert "runs 42" in lines
    assert any(line.startswith("shardloop io_uring unavailable") for line in lines), lines


def test_fork_child_leaves_the_parents_ring_alone():
    """A child forked while a connection runs on the parent's ring closes
    its copy of the loop (and the connection) without submitting to that
    ring, which it shares with the parent; the parent's echo goes on, and a
    new loop in the child works."""

    async def main():
        loop = asyncio.get_running_loop()

        server = await asyncio.start_server(_echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert writer.transport._stream.uses_ring
        writer.write(b"before")
        assert await reader.readexactly(6) == b"before"
        pid = os.fork()
        if pid == 0:  # never returns: the child's verdict is its exit status
            code = 1
            try:
                writer.transport.abort()
                server.close()
                code = 0 if shardloop.run(asyncio.sleep(0, "ok"), io_uring=True) == "ok" else 3
            finally:
                os._exit(code)
        _, status = await loop.run_in_executor(None, os.waitpid, pid, 0)
        writer.write(b"after")
        got = await reader.readexactly(5)
        writer.close()
        server.close()
        await server.wait_closed()
        return os.waitstatus_to_exitcode(status), got

    assert shardloop.run(main(), io_uring=True) == (0, b"after")


def test_ring_loop_stays_on_the_thread_that_first_ran_it():
    """Its ring accepts submissions from one thread (SINGLE_ISSUER): a later
    run from another thread is refused, and the loop still runs at home."""
    import threading

    loop = shardloop.new_event_loop(io_uring=True)
    try:
        assert loop.run_until_complete(asyncio.sleep(0, "home")) == "home"
        errors = []

        def elsewhere():
            coro = asyncio.sleep(0)
            try:
                loop.run_until_complete(coro)
            except RuntimeError as exc:
                errors.append(str(exc))
            finally:
                coro.close()

        thread = threading.Thread(target=elsewhere)
        thread.start()
        thread.join()
        assert errors and "thread that first ran it" in errors[0]
        assert loop.run_until_complete(asyncio.sleep(0, "again")) == "again"
    finally:
        loop.close()


@pytest.mark.parametrize("make_loop", [
    asyncio.new_event_loop,
    lambda: shardloop.new_event_loop(io_uring=False),
    lambda: shardloop.new_event_loop(io_uring=True),
], ids=["asyncio", "epoll", "io_uring"])
def test_write_eof_sends_the_fin_at_once(make_loop):
    # asyncio's write_eof() calls shutdown() when nothing is queued, so the
    # peer can read EOF before the loop runs again. The io_uring backend
    # sent IORING_OP_SHUTDOWN instead, which waited for the next poll and
    # then for an io-wq worker: the differential fuzzer saw the FIN arrive
    # after events the peer caused later. The loop is not run between
    # write_eof() and the peer's (bounded, blocking) read.
    loop = make_loop()
    lst = socket.create_server(("127.0.0.1", 0))
    try:
        client = socket.create_connection(lst.getsockname())
        peer, _ = lst.accept()
        with peer:
            client.setblocking(False)
            transport, _ = loop.run_until_complete(loop.create_connection(asyncio.Protocol, sock=client))
            loop.run_until_complete(asyncio.sleep(0.01))
            transport.write(b"last")
            transport.write_eof()
            peer.settimeout(5)
            got = b""
            while chunk := peer.recv(100):
                got += chunk
            assert got == b"last"
            transport.close()
            loop.run_until_complete(asyncio.sleep(0))
    finally:
        lst.close()
        loop.close()


@pytest.mark.parametrize("make_loop", [
    asyncio.new_event_loop,
    lambda: shardloop.new_event_loop(io_uring=False),
    lambda: shardloop.new_event_loop(io_uring=True),
], ids=["asyncio", "epoll", "io_uring"])
def test_write_eof_after_a_reset_raises(make_loop):
    # asyncio's write_eof() raises what shutdown() raises: after the peer's
    # RST (unseen by a transport not reading), ENOTCONN. shardloop used to
    # swallow it (the differential fuzzer's scenario: pause_reading, peer
    # reset, write_eof). The transport is at EOF either way.
    loop = make_loop()
    lst = socket.create_server(("127.0.0.1", 0))
    try:
        client = socket.create_connection(lst.getsockname())
        peer, _ = lst.accept()
        client.setblocking(False)
        transport, _ = loop.run_until_complete(loop.create_connection(asyncio.Protocol, sock=client))
        transport.pause_reading()
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()
        loop.run_until_complete(asyncio.sleep(0.05))
        with pytest.raises(OSError) as info:
            transport.write_eof()
        assert info.value.errno == errno.ENOTCONN
        assert str(info.value) == "[Errno %d] %s" % (errno.ENOTCONN, os.strerror(errno.ENOTCONN))
        transport.write_eof()  # once at EOF, a no-op
        with pytest.raises(RuntimeError, match="Cannot call write"):
            transport.write(b"x")
        transport.close()
        loop.run_until_complete(asyncio.sleep(0))
    finally:
        lst.close()
        loop.close()

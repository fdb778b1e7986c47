"""sock_connect (and create_connection, which connects through it) on
asyncio's loop and on shardloop with each I/O backend: connected, refused,
cancelled while the kernel still tries, the socket closed while it
connects, and a writer taking over the fd.

On io_uring a TCP socket's connect is one IORING_OP_CONNECT on the loop's
ring (``_io_stats()["connect_sqes"]`` counts them); the results must be
asyncio's all the same. A connect that stays in progress comes from a
listener whose accept queue is full: the kernel drops further SYNs, so the
client sits in SYN_SENT (retrying) until the test ends it. /proc/net/tcp
then says whether the kernel still holds such a socket.
"""

import asyncio
import errno
import os
import socket

import pytest

from _support import LOOPBACK, is_shardloop, run, same_as_asyncio, shardloop, spin
from _tcp_support import FAMILIES, linux_only


def _io_uring_loop():
    try:
        return shardloop.new_event_loop(io_uring=True)
    except OSError as exc:  # pragma: no cover - a process without io_uring
        pytest.skip(f"no io_uring here: {exc}")


@pytest.fixture
def ring_loop():
    """A shardloop loop on io_uring, whatever SHARDLOOP_IO_URING says."""
    if shardloop is None:  # pragma: no cover
        pytest.skip("shardloop not importable")
    lp = _io_uring_loop()
    yield lp
    lp.close()
    asyncio.set_event_loop(None)


@pytest.fixture(params=["asyncio", "shardloop", "shardloop-io_uring"])
def cloop(request, loop_factory_for):
    lp = loop_factory_for(request.param)
    yield lp
    if not lp.is_closed():
        lp.close()
    asyncio.set_event_loop(None)


@pytest.fixture
def loop_factory_for():
    def make(name):
        if name == "asyncio":
            return asyncio.new_event_loop()
        if shardloop is None:  # pragma: no cover
            pytest.skip("shardloop not importable")
        if name == "shardloop":
            return shardloop.new_event_loop()
        if os.environ.get("SHARDLOOP_IO_URING", "0").strip() == "1":
            pytest.skip("the 'shardloop' case already runs on io_uring")
        return _io_uring_loop()

    return make


def _on_ring(loop):
    return is_shardloop(loop) and loop.io_backend == "io_uring"


def _ring_connects(loop):
    return loop._io_stats()["connect_sqes"] if _on_ring(loop) else 0


def _syn_sent(port, remote):
    """How many IPv4 sockets of this network namespace are in SYN_SENT
    (state 02 of /proc/net/tcp) with local port *port*, or remote port
    *port* when *remote*."""
    want = ":%04X" % port
    n = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if fields[3] == "02" and fields[2 if remote else 1].endswith(want):
                n += 1
    return n


def _syn_sent_from(local_port):
    return _syn_sent(local_port, remote=False)


def _syn_sent_to(port):
    return _syn_sent(port, remote=True)


class FullListener:
    """A loopback listener whose accept queue is full (backlog 0 holds one
    connection, made here and never accepted): SYNs to it are dropped."""

    def __init__(self):
        self.lst = socket.socket()
        self.lst.bind(("127.0.0.1", 0))
        self.lst.listen(0)
        self.address = self.lst.getsockname()
        self.queued = socket.create_connection(self.address)

    def make_room(self):
        """Accepts the queued connection: the next SYN retry gets in."""
        conn, _ = self.lst.accept()
        conn.close()

    def close(self):
        self.queued.close()
        self.lst.close()


@pytest.fixture
def full():
    f = FullListener()
    yield f
    f.close()


def _client(family=socket.AF_INET):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setblocking(False)
    return s


@pytest.mark.parametrize("family", FAMILIES)
def test_connects(cloop, family):
    lst = socket.socket(family, socket.SOCK_STREAM)
    lst.bind((LOOPBACK[family], 0))
    lst.listen(8)
    client = _client(family)

    async def main():
        before = _ring_connects(cloop)
        assert await cloop.sock_connect(client, lst.getsockname()) is None
        assert _ring_connects(cloop) == before + (1 if _on_ring(cloop) else 0)
        conn, peer = lst.accept()
        with conn:
            assert peer == client.getsockname()
            assert client.getpeername() == conn.getsockname()
            await cloop.sock_sendall(client, b"ping")
            assert conn.recv(4) == b"ping"
        # The connect left nothing watching the fd.
        assert cloop.remove_writer(client) is False

    try:
        run(cloop, main())
    finally:
        client.close()
        lst.close()


def test_the_syn_is_sent_before_the_next_iteration(cloop):
    # connect(2) sends the SYN before it returns, so a peer can accept after
    # one sleep(0) (CPython's test_sock_client_racing does, on a blocking
    # listener). A ring connect left in the iteration's batch hung there.
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(1)
    lst.settimeout(5)  # a hang fails the test instead of stopping the suite
    client = _client(socket.AF_INET)

    async def main():
        task = asyncio.ensure_future(cloop.sock_connect(client, lst.getsockname()))
        await asyncio.sleep(0)
        conn, _ = lst.accept()
        conn.close()
        await task

    try:
        run(cloop, main())
    finally:
        client.close()
        lst.close()


@pytest.mark.parametrize("family", FAMILIES)
def test_refused_same_as_asyncio(cloop, family):
    """The same exception class, errno and message as asyncio's
    ("Connect call failed (host, port)": the error came after the wait)."""
    closed_port = socket.socket(family, socket.SOCK_STREAM)
    closed_port.bind((LOOPBACK[family], 0))  # bound, not listening: RST
    port = closed_port.getsockname()[1]

    async def scenario(lp):
        before = _ring_connects(lp)
        client = _client(family)
        try:
            with pytest.raises(OSError) as info:
                await lp.sock_connect(client, closed_port.getsockname())
        finally:
            client.close()
        assert _ring_connects(lp) == before + (1 if _on_ring(lp) else 0)
        exc = info.value
        return type(exc).__name__, exc.errno, str(exc).replace(str(port), "PORT")

    try:
        name, code, message = same_as_asyncio(cloop, scenario)
    finally:
        closed_port.close()
    assert (name, code) == ("ConnectionRefusedError", errno.ECONNREFUSED)
    assert "Connect call failed" in message


def test_create_connection_refused_same_as_asyncio(cloop):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def scenario(lp):
        with pytest.raises(OSError) as info:
            await lp.create_connection(asyncio.Protocol, "127.0.0.1", port)
        return type(info.value).__name__, info.value.errno, str(info.value).replace(str(port), "PORT")

    name, code, _ = same_as_asyncio(cloop, scenario)
    assert code == errno.ECONNREFUSED


async def _cancel_mid_connect(loop, client, address):
    """Starts sock_connect(client, address), lets the loop go round, then
    cancels it (CancelledError) and closes the socket. Returns the
    socket's local port, or None if the kernel was no longer connecting
    (SYN_SENT) when the call was cancelled."""
    task = asyncio.ensure_future(loop.sock_connect(client, address))
    await spin(5)
    local_port = client.getsockname()[1]
    in_progress = _syn_sent_from(local_port) == 1
    task.cancel()
    if in_progress:
        with pytest.raises(asyncio.CancelledError):
            await task
    else:
        await asyncio.gather(task, return_exceptions=True)
    assert loop.remove_writer(client) is False
    client.close()
    return local_port if in_progress else None


@linux_only
def test_cancel_mid_connect_releases_the_socket(cloop, full):
    """sock_connect cancelled while the kernel still tries: CancelledError;
    the socket stays the caller's (still connecting, as on asyncio's loop),
    and once closed it is gone: the ring let go of it when the call was
    cancelled."""
    client = _client()
    try:
        local_port = run(cloop, _cancel_mid_connect(cloop, client, full.address))
    finally:
        client.close()
    assert local_port is not None
    assert _syn_sent_from(local_port) == 0


@linux_only
def test_create_connection_timeout_mid_connect(cloop, full):
    """create_connection under wait_for, timing out while the kernel still
    tries: TimeoutError, no transport, the socket closed at once and no fd
    left behind."""
    made = []

    class P(asyncio.Protocol):
        def connection_made(self, transport):
            made.append(transport)

    async def main():
        fds = len(os.listdir("/proc/self/fd"))
        task = asyncio.ensure_future(asyncio.wait_for(cloop.create_connection(P, *full.address), 0.05))
        await spin(3)
        assert _syn_sent_to(full.address[1]) == 1
        with pytest.raises(asyncio.TimeoutError):
            await task
        # Nothing still connecting, and no descriptor kept.
        assert _syn_sent_to(full.address[1]) == 0
        assert len(os.listdir("/proc/self/fd")) == fds
        await spin(3)
        assert made == []

    run(cloop, main())


def test_cancel_connect_to_unroutable_address(cloop):
    """The usual way to meet a connect that hangs: an address nobody
    answers (10.255.255.1). Cancelled, the call raises CancelledError and
    the socket, closed, is gone. Skipped where that address fails at once
    (no route) or answers (a proxy in the sandbox's network)."""
    client = _client()
    probe = _client()
    try:
        probe.connect(("10.255.255.1", 9))
    except BlockingIOError:
        pass
    except OSError as exc:
        probe.close()
        client.close()
        pytest.skip(f"10.255.255.1 fails at once here: {exc}")
    probe.close()

    try:
        local_port = run(cloop, _cancel_mid_connect(cloop, client, ("10.255.255.1", 9)))
    finally:
        client.close()
    if local_port is None:
        pytest.skip("10.255.255.1 answered here (a proxy in this network)")
    assert _syn_sent_from(local_port) == 0


@linux_only
def test_socket_closed_while_connecting(cloop, full):
    """The socket closed under a waiting sock_connect: as on asyncio's loop,
    the call waits on (nothing will say the closed socket is writable);
    cancelling it then ends it, and nothing keeps the socket alive."""
    client = _client()

    async def main():
        task = asyncio.ensure_future(cloop.sock_connect(client, full.address))
        await spin(5)
        local_port = client.getsockname()[1]
        client.close()
        await spin(5)
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return local_port

    local_port = run(cloop, main())
    assert _syn_sent_from(local_port) == 0


@linux_only
def test_ring_socket_closed_then_connect_completes(ring_loop, full):
    """io_uring only: the kernel holds the socket of a connect in flight, so
    a connect whose socket the caller closed can still finish (here: the
    full listener makes room, and the next SYN retry, a second later, gets
    in). The call then answers as the closed socket's own methods do
    (OSError EBADF), which is what the epoll path says when its fd number
    turns up ready again; asyncio's loop would have waited on forever."""
    client = _client()

    async def main():
        task = asyncio.ensure_future(ring_loop.sock_connect(client, full.address))
        await spin(5)
        client.close()
        full.make_room()
        with pytest.raises(OSError) as info:
            await task
        return info.value.errno

    assert run(ring_loop, main(), 15) == errno.EBADF


@linux_only
def test_add_writer_takes_over_from_a_waiting_connect(cloop, full):
    """As asyncio's selector replaces the connect's writer handle: the call
    stays pending, the new writer is the fd's, and remove_writer removes it."""
    async def scenario(lp):
        c = _client()
        try:
            task = asyncio.ensure_future(lp.sock_connect(c, full.address))
            await spin(5)
            lp.add_writer(c, lambda: None)
            await spin(5)
            pending = not task.done()
            removed = lp.remove_writer(c)
            again = lp.remove_writer(c)
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            return pending, removed, again
        finally:
            c.close()

    assert same_as_asyncio(cloop, scenario) == (True, True, False)


def test_unix_and_udp_connect_stay_off_the_ring(ring_loop, tmp_path):
    """A Unix-domain connect completes (or fails) inside connect(2) and a
    UDP one only sets the peer: both are made at once, not on the ring."""
    path = str(tmp_path / "s")
    lst = socket.socket(socket.AF_UNIX)
    lst.bind(path)
    lst.listen(1)
    unix = socket.socket(socket.AF_UNIX)
    unix.setblocking(False)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.setblocking(False)

    async def main():
        await ring_loop.sock_connect(unix, path)
        await ring_loop.sock_connect(udp, ("127.0.0.1", 9))
        assert udp.getpeername() == ("127.0.0.1", 9)
        return ring_loop._io_stats()["connect_sqes"]

    try:
        assert run(ring_loop, main()) == 0
    finally:
        for s in (unix, udp, lst):
            s.close()


def test_subclass_connect_is_called(ring_loop):
    """A socket class with its own connect() gets it called, as asyncio
    calls sock.connect(): the ring is only for plain socket.socket."""
    calls = []

    class Sock(socket.socket):
        def connect(self, address):
            calls.append(address)
            return super().connect(address)

    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(1)
    client = Sock()
    client.setblocking(False)

    async def main():
        await ring_loop.sock_connect(client, lst.getsockname())
        return ring_loop._io_stats()["connect_sqes"]

    try:
        assert run(ring_loop, main()) == 0
        assert calls == [lst.getsockname()]
    finally:
        client.close()
        lst.close()


def test_many_concurrent_connects(cloop):
    """200 connects at once, half to a listener and half refused: each call
    gets its own outcome."""
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(256)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        refused_port = s.getsockname()[1]
    clients = [_client() for _ in range(200)]

    async def one(i, c):
        try:
            await cloop.sock_connect(c, lst.getsockname() if i % 2 == 0 else ("127.0.0.1", refused_port))
            return "ok"
        except ConnectionRefusedError:
            return "refused"

    async def main():
        return await asyncio.gather(*(one(i, c) for i, c in enumerate(clients)))

    try:
        results = run(cloop, main(), 20)
    finally:
        for c in clients:
            c.close()
        lst.close()
    assert results == ["ok" if i % 2 == 0 else "refused" for i in range(200)]

"""TCP clients: loop.create_connection -- addresses, local_addr, errors,
cancellation, and its signature.

Every test runs on asyncio's own loop (the reference) and on shardloop and
expects the same results; see _tcp_support.py for the conventions (no
timing assertions, ``spin``, small buffers for peers that must not read).
"""

import asyncio
import errno
import socket

import pytest

from _support import HAVE_IPV6, LOOPBACK, Recorder, Sockets, recv_all, run, same_as_asyncio, spin, wait_until
from _tcp_support import FAMILIES, accept, requires_ipv6, requires_py312


@pytest.mark.parametrize("family", FAMILIES)
def test_create_connection_host_port(loop, socks, family):
    async def main():
        lst = socks.listener(family)
        host, port = lst.getsockname()[:2]
        tr, proto = await loop.create_connection(Recorder, host, port)
        peer = await accept(loop, lst, socks)
        assert tr.get_extra_info("peername")[:2] == (host, port)
        assert tr.get_extra_info("socket").family == family
        tr.write(b"hi")
        assert await recv_all(loop, peer, limit=2) == b"hi"
        tr.close()
        await proto.lost

    run(loop, main())


def test_create_connection_with_port_as_string(loop, socks):
    async def main():
        lst = socks.listener()
        host, port = lst.getsockname()
        tr, proto = await loop.create_connection(Recorder, host, str(port))
        assert tr.get_extra_info("peername") == (host, port)
        tr.close()
        await proto.lost

    run(loop, main())


def test_create_connection_sock(loop, socks):
    async def main():
        lst = socks.listener()
        sock = socks.add(socket.socket())
        sock.connect(lst.getsockname())  # blocking: create_connection makes it non-blocking
        peer = await accept(loop, lst, socks)
        tr, proto = await loop.create_connection(Recorder, sock=sock)
        assert sock.gettimeout() == 0
        assert tr.get_extra_info("socket").fileno() == sock.fileno()
        assert tr.get_extra_info("peername") == lst.getsockname()
        await loop.sock_sendall(peer, b"via sock=")
        await wait_until(lambda: proto.data == b"via sock=")
        tr.close()
        await proto.lost
        assert sock.fileno() == -1  # the transport owned it

    run(loop, main())


def test_create_connection_local_addr(loop, socks):
    async def main():
        lst = socks.listener()
        tr, proto = await loop.create_connection(Recorder, *lst.getsockname(), local_addr=("127.0.0.1", 0))
        peer = await accept(loop, lst, socks)
        sockname = tr.get_extra_info("sockname")
        assert sockname[0] == "127.0.0.1" and sockname[1] != 0
        assert peer.getpeername() == sockname
        tr.close()
        await proto.lost

    run(loop, main())


def test_create_connection_local_addr_in_use(loop):
    async def scenario(lp):
        with Sockets() as s:
            lst = s.listener()
            busy = s.listener()  # local_addr: a port that is taken
            with pytest.raises(OSError) as info:
                await lp.create_connection(Recorder, *lst.getsockname(), local_addr=busy.getsockname())
            port = str(busy.getsockname()[1])
            return type(info.value).__name__, info.value.errno, str(info.value).replace(port, "PORT")

    name, code, message = same_as_asyncio(loop, scenario)
    assert code == errno.EADDRINUSE
    assert "error while attempting to bind on address ('127.0.0.1', PORT)" in message


@requires_ipv6
def test_create_connection_local_addr_of_another_family(loop):
    async def scenario(lp):
        with Sockets() as s:
            lst = s.listener(socket.AF_INET6)
            with pytest.raises(OSError) as info:
                await lp.create_connection(Recorder, *lst.getsockname()[:2], local_addr=("127.0.0.1", 0))
            return type(info.value).__name__, str(info.value)

    same_as_asyncio(loop, scenario)


def _closed_port(family=socket.AF_INET):
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK[family], 0))
        return s.getsockname()[1]  # nothing listens there once closed


@pytest.mark.parametrize("family", FAMILIES)
def test_create_connection_refused(loop, family):
    port = _closed_port(family)

    async def scenario(lp):
        with pytest.raises(ConnectionRefusedError) as info:
            await lp.create_connection(Recorder, LOOPBACK[family], port)
        return info.value.errno, str(info.value)

    code, _ = same_as_asyncio(loop, scenario)
    assert code == errno.ECONNREFUSED


def test_create_connection_refused_on_every_address(loop):
    """'localhost' may resolve to several addresses: the error is then one
    exception or 'Multiple exceptions: ...' -- compare with asyncio."""
    port = _closed_port()
    if HAVE_IPV6:
        try:
            with socket.socket(socket.AF_INET6) as s6:
                s6.bind(("::1", port))
        except OSError:
            pytest.skip("port taken on ::1")

    async def scenario(lp):
        with pytest.raises(OSError) as info:
            await lp.create_connection(Recorder, "localhost", port)
        return type(info.value).__name__, str(info.value)

    same_as_asyncio(loop, scenario)


def test_create_connection_unknown_host(loop):
    async def main():
        with pytest.raises(socket.gaierror):
            await loop.create_connection(Recorder, "no-such-host.invalid", 80)

    run(loop, main(), 20)


def test_create_connection_value_errors(loop):
    async def scenario(lp):
        with Sockets() as s:
            lst = s.listener()
            host, port = lst.getsockname()
            sock = s.add(socket.socket())
            udp = s.add(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            calls = [
                dict(host=host, port=port, sock=sock),
                dict(sock=sock, port=port),
                dict(),
                dict(host=host, port=port, server_hostname="example.com"),
                dict(host=host, port=port, ssl_handshake_timeout=1.0),
                dict(host=host, port=port, ssl_shutdown_timeout=1.0),
                dict(sock=udp),
            ]
            results = []
            for kwargs in calls:
                try:
                    await lp.create_connection(Recorder, **kwargs)
                except ValueError as exc:
                    msg = str(exc)
                    results.append(msg.split(",")[0] if "Socket was expected" in msg else msg)
                else:  # pragma: no cover
                    results.append("no error")
            return results

    results = same_as_asyncio(loop, scenario)
    assert results[:4] == [
        "host/port and sock can not be specified at the same time",
        "host/port and sock can not be specified at the same time",
        "host and port was not specified and no sock specified",
        "server_hostname is only meaningful with ssl",
    ]


@requires_py312
def test_create_connection_all_errors(loop):
    port = _closed_port()

    async def scenario(lp):
        with pytest.raises(ExceptionGroup) as info:
            await lp.create_connection(Recorder, "127.0.0.1", port, all_errors=True)
        group = info.value
        return group.message, [(type(e).__name__, e.errno) for e in group.exceptions]

    message, errors = same_as_asyncio(loop, scenario)
    assert errors == [("ConnectionRefusedError", errno.ECONNREFUSED)]


def test_create_connection_family(loop, socks):
    async def main():
        lst = socks.listener(socket.AF_INET)
        port = lst.getsockname()[1]
        tr, proto = await loop.create_connection(Recorder, "localhost", port, family=socket.AF_INET)
        assert tr.get_extra_info("socket").family == socket.AF_INET
        assert tr.get_extra_info("peername") == ("127.0.0.1", port)
        tr.close()
        await proto.lost

    run(loop, main(), 20)


def test_create_connection_cancelled_while_connecting(loop):
    """Cancelling create_connection leaves nothing behind (no transport,
    no protocol call)."""

    async def main():
        made = []

        class P(Recorder):
            def connection_made(self, transport):
                made.append(transport)

        lst = socket.socket()
        lst.bind(("127.0.0.1", 0))
        lst.listen(1)
        try:
            task = asyncio.ensure_future(loop.create_connection(P, *lst.getsockname()))
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await spin()
            assert made == []
        finally:
            lst.close()

    run(loop, main())


@pytest.mark.parametrize("name", ["create_connection", "create_server", "connect_accepted_socket"])
def test_signature_matches_asyncio(sl, name):
    """Same parameters and defaults as this Python's asyncio (a keyword
    asyncio does not have yet is a TypeError there)."""
    import inspect

    def params(func):
        return [(p.name, p.kind, p.default) for p in inspect.signature(func).parameters.values()]

    assert params(getattr(sl.Loop, name)) == params(getattr(asyncio.BaseEventLoop, name))

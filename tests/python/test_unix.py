"""Unix-domain stream sockets: create_unix_connection / create_unix_server,
asyncio.open_unix_connection / start_unix_server, the socket file's life
(stale files, 3.13's cleanup_socket), the abstract namespace, TLS over a
Unix socket and every argument error -- on real sockets in short temporary
directories (sun_path holds 108 bytes, so pytest's tmp_path may not fit).

Every test runs on asyncio's own loop (the reference) and on shardloop;
where the exact answer is asyncio's business (error types and messages,
protocol call order) the scenario runs on a fresh asyncio loop as well and
the results are compared (``same_as_asyncio``).
"""

import asyncio
import errno
import os
import pathlib
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import uuid

import pytest

from _support import (BIG, PY313, BufRecorder, Echo, Recorder, assert_same_bytes, close_server,
                      collecting_factory, echo_handler, echo_in_chunks, is_shardloop, pattern,
                      record_exceptions, run, same_as_asyncio, spin, wait_until)

requires_py313 = pytest.mark.skipif(not PY313, reason="cleanup_socket is asyncio 3.13+")
before_py313 = pytest.mark.skipif(PY313, reason="asyncio 3.13 knows cleanup_socket")
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="abstract namespace is Linux")


@pytest.fixture
def sockdir():
    d = tempfile.mkdtemp(prefix="slu")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def abstract_name(kind=str):
    name = "\0shardloop-test-%d-%s" % (os.getpid(), uuid.uuid4().hex)
    return name if kind is str else name.encode()


def outcome(exc):
    return type(exc).__name__, getattr(exc, "errno", None), str(exc)


async def raises(call):
    try:
        result = await call()  # asyncio checks keywords before the coroutine starts
    except Exception as exc:  # noqa: BLE001 -- the exception is the result
        return outcome(exc)
    raise AssertionError("no exception; got %r" % (result,))


# ============================================================ streams


def test_streams_echo_multi_mib(loop, sockdir):
    payload = pattern(3 * 1024 * 1024 + 7, seed=7)
    path = os.path.join(sockdir, "echo")

    async def main():
        server = await asyncio.start_unix_server(echo_handler, path)
        try:
            reader, writer = await asyncio.open_unix_connection(path)
            assert_same_bytes(await echo_in_chunks(reader, writer, payload), payload)
            writer.close()
            await writer.wait_closed()
        finally:
            await close_server(server)

    run(loop, main(), BIG)


def test_many_concurrent_connections(loop, sockdir):
    n = 200
    path = os.path.join(sockdir, "many")

    class Client(Recorder):
        def __init__(self, msg):
            super().__init__()
            self.msg = msg

        def connection_made(self, transport):
            super().connection_made(transport)
            transport.write(self.msg)
            transport.write_eof()

    async def main():
        server = await loop.create_unix_server(Echo, path, backlog=n)
        try:
            msgs = [(b"client %d;" % i) * (i % 50 + 1) for i in range(n)]
            pairs = await asyncio.gather(*(loop.create_unix_connection(lambda m=m: Client(m), path)
                                           for m in msgs))
            await asyncio.gather(*(proto.lost for _, proto in pairs))
            assert [bytes(proto.data) for _, proto in pairs] == msgs
            assert {tuple(proto.events) for _, proto in pairs} == {("made", "data", "eof", ("lost", None))}
        finally:
            await close_server(server)

    run(loop, main(), BIG)


@pytest.mark.parametrize("kind", ["str", "bytes", "pathlike"])
def test_streams_path_types(loop, sockdir, kind):
    name = os.path.join(sockdir, "p")
    path = {"str": name, "bytes": os.fsencode(name), "pathlike": pathlib.Path(name)}[kind]

    async def main():
        server = await asyncio.start_unix_server(echo_handler, path)
        try:
            assert server.sockets[0].getsockname() == name
            reader, writer = await asyncio.open_unix_connection(path)
            writer.write(b"ping")
            assert await reader.readexactly(4) == b"ping"
            assert writer.get_extra_info("peername") == name
            writer.close()
            await writer.wait_closed()
        finally:
            await close_server(server)

    run(loop, main())


# ============================================================ protocols


def test_half_close_with_write_eof(loop, sockdir):
    path = os.path.join(sockdir, "half")

    class Answer(Recorder):
        def eof_received(self):
            super().eof_received()
            self.transport.write(b"answer to " + bytes(self.data))
            self.transport.close()
            return True

    async def scenario(lp):
        factory, served = collecting_factory(Answer)
        server = await lp.create_unix_server(factory, path)
        try:
            tr, proto = await lp.create_unix_connection(Recorder, path)
            assert tr.can_write_eof()
            tr.write(b"question")
            tr.write_eof()
            with pytest.raises(RuntimeError):
                tr.write(b"more")
            await proto.lost
            await served[0].lost
            return bytes(proto.data), proto.events, served[0].events
        finally:
            await close_server(server)

    data, client, server = same_as_asyncio(loop, scenario)
    assert data == b"answer to question"
    assert client == ["made", "data", "eof", ("lost", None)]
    assert server == ["made", "data", "eof", ("lost", None)]


def test_buffered_protocol(loop, sockdir):
    path = os.path.join(sockdir, "buf")
    payload = pattern(200_000, seed=3)

    async def main():
        factory, served = collecting_factory(BufRecorder, size=4096)
        server = await loop.create_unix_server(factory, path)
        try:
            tr, proto = await loop.create_unix_connection(Recorder, path)
            tr.write(payload)
            tr.write_eof()
            await wait_until(lambda: served)
            await served[0].lost
            assert_same_bytes(served[0].data, payload)
            assert served[0].events == ["made", "data", "eof", ("lost", None)]
            await proto.lost
        finally:
            await close_server(server)

    run(loop, main())


def test_connection_lost_once_on_peer_reset(loop, sockdir):
    """A Unix socket closed with unread data resets its peer (ECONNRESET)."""
    path = os.path.join(sockdir, "reset")

    async def scenario(lp):
        contexts = record_exceptions(lp)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as lst:
            lst.bind(path)
            lst.listen()
            lst.setblocking(False)
            try:
                tr, proto = await lp.create_unix_connection(Recorder, path)
                peer, _ = await lp.sock_accept(lst)
                with peer:
                    await lp.sock_sendall(peer, b"before reset")
                    await wait_until(lambda: len(proto.data) == 12)
                    tr.write(b"never read by the peer")
                    await wait_until(lambda: tr.get_write_buffer_size() == 0)
                await proto.lost
                await spin()
                tr.write(b"after")  # dropped, nothing raised
                return proto.events, [c["message"] for c in contexts]
            finally:
                os.unlink(path)

    events, messages = same_as_asyncio(loop, scenario)
    assert events == ["made", "data", ("lost", "ConnectionResetError")]
    assert messages == []


def test_get_extra_info(loop, sockdir):
    path = os.path.join(sockdir, "extra")

    async def scenario(lp):
        factory, served = collecting_factory()
        server = await lp.create_unix_server(factory, path)
        try:
            tr, proto = await lp.create_unix_connection(Recorder, path)
            await wait_until(lambda: served and served[0].transport)
            result = []
            for t in (tr, served[0].transport):
                sock = t.get_extra_info("socket")
                assert sock.family == socket.AF_UNIX and sock.type == socket.SOCK_STREAM
                assert sock.fileno() >= 0
                assert sock.getsockname() == t.get_extra_info("sockname")
                result.append((t.get_extra_info("sockname"), t.get_extra_info("peername")))
            tr.close()
            await served[0].lost
            return result
        finally:
            await close_server(server)

    client, server_side = same_as_asyncio(loop, scenario)
    assert client == ("", path)
    assert server_side == (path, "")


def test_protocol_errors_go_to_the_exception_handler(loop, sockdir):
    path = os.path.join(sockdir, "err")

    class Broken(Recorder):
        def data_received(self, data):
            raise ZeroDivisionError("boom")

    async def scenario(lp):
        contexts = record_exceptions(lp)
        factory, served = collecting_factory(Broken)
        server = await lp.create_unix_server(factory, path)
        try:
            tr, proto = await lp.create_unix_connection(Recorder, path)
            tr.write(b"x")
            await wait_until(lambda: served)
            await served[0].lost
            await proto.lost
            return [(c["message"], type(c["exception"]).__name__) for c in contexts], proto.events
        finally:
            await close_server(server)

    contexts, events = same_as_asyncio(loop, scenario)
    assert contexts == [("Fatal error: protocol.data_received() call failed.", "ZeroDivisionError")]
    assert events == ["made", "eof", ("lost", None)]


# ============================================================ servers


def test_server_lifecycle(loop, sockdir):
    path = os.path.join(sockdir, "life")

    async def main():
        server = await loop.create_unix_server(Echo, path, start_serving=False)
        assert not server.is_serving()
        assert server.get_loop() is loop
        [lsock] = server.sockets
        assert lsock.family == socket.AF_UNIX and lsock.getsockname() == path
        with pytest.raises(ConnectionRefusedError):  # bound, not listening yet
            await loop.create_unix_connection(Recorder, path)
        await server.start_serving()
        assert server.is_serving()
        tr, proto = await loop.create_unix_connection(Recorder, path)
        tr.write(b"echo")
        await wait_until(lambda: proto.data == b"echo")
        tr.close()
        await proto.lost
        server.close()
        assert not server.is_serving()
        await server.wait_closed()
        assert server.sockets == ()

    run(loop, main())


def test_server_serve_forever_and_async_with(loop, sockdir):
    path = os.path.join(sockdir, "forever")

    async def main():
        async with await loop.create_unix_server(Echo, path) as server:
            task = asyncio.ensure_future(server.serve_forever())
            await spin()
            reader, writer = await asyncio.open_unix_connection(path)
            writer.write(b"hi")
            assert await reader.readexactly(2) == b"hi"
            writer.close()
            await writer.wait_closed()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert not server.is_serving()
        await server.wait_closed()
        server2 = await loop.create_unix_server(Echo, path)  # the stale file goes
        async with server2:
            assert server2.is_serving()
        assert not server2.is_serving()

    run(loop, main())


def test_server_and_connection_on_given_sockets(loop, sockdir):
    path = os.path.join(sockdir, "given")

    async def main():
        lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        lst.bind(path)
        server = await loop.create_unix_server(Echo, sock=lst)
        try:
            assert server.sockets[0].fileno() == lst.fileno()
            csock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            csock.connect(path)
            tr, proto = await loop.create_unix_connection(Recorder, sock=csock)
            assert tr.get_extra_info("socket").fileno() == csock.fileno()
            tr.write(b"over a given socket")
            await wait_until(lambda: proto.data == b"over a given socket")
            tr.close()
            await proto.lost
        finally:
            await close_server(server)
        assert lst.fileno() == -1  # the server closed it

    run(loop, main())


def test_stale_socket_file_is_replaced(loop, sockdir):
    path = os.path.join(sockdir, "stale")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as old:
        old.bind(path)  # the file stays after close: a stale socket
    os.link(path, path + ".old")  # keeps its inode from being reused
    stale_inode = os.stat(path).st_ino

    async def main():
        server = await loop.create_unix_server(Echo, path)
        try:
            assert os.stat(path).st_ino != stale_inode
            reader, writer = await asyncio.open_unix_connection(path)
            writer.write(b"fresh")
            assert await reader.readexactly(5) == b"fresh"
            writer.close()
            await writer.wait_closed()
        finally:
            await close_server(server)

    run(loop, main())


@pytest.mark.parametrize("kind", ["regular file", "live server"])
def test_address_in_use(loop, sockdir, kind):
    path = os.path.join(sockdir, "busy")

    async def scenario(lp):
        if os.path.lexists(path):
            os.unlink(path)
        if kind == "regular file":
            with open(path, "w") as f:  # not a socket: never removed
                f.write("keep me")
            result = await raises(lambda: lp.create_unix_server(Echo, path))
            with open(path) as f:
                return result, f.read()
        # A live server's file is a socket too, so it is replaced, like asyncio.
        first = await lp.create_unix_server(Echo, path)
        try:
            second = await lp.create_unix_server(Echo, path)
            await close_server(second)
            return "replaced", None
        finally:
            await close_server(first)

    result = same_as_asyncio(loop, scenario)
    if kind == "regular file":
        assert result == (("OSError", errno.EADDRINUSE,
                           "[Errno %d] Address %r is already in use" % (errno.EADDRINUSE, path)),
                          "keep me")


@linux_only
@pytest.mark.parametrize("kind", [str, bytes], ids=["str", "bytes"])
def test_abstract_namespace(loop, kind):
    name = abstract_name(kind)

    async def main():
        server = await loop.create_unix_server(Echo, name)
        try:
            bound = server.sockets[0].getsockname()
            assert bound == os.fsencode(name)  # Python gives abstract names as bytes
            tr, proto = await loop.create_unix_connection(Recorder, name)
            assert tr.get_extra_info("peername") == bound
            tr.write(b"abstract")
            await wait_until(lambda: proto.data == b"abstract")
            tr.close()
            await proto.lost
            with pytest.raises(OSError) as info:
                await loop.create_unix_server(Echo, name)
            assert info.value.errno == errno.EADDRINUSE
            assert str(info.value) == "[Errno %d] Address %r is already in use" % (errno.EADDRINUSE, name)
        finally:
            await close_server(server)
        with pytest.raises(ConnectionRefusedError):
            await loop.create_unix_connection(Recorder, name)

    run(loop, main())


# ============================================================ cleanup_socket


@requires_py313
@pytest.mark.parametrize("cleanup", [None, True, False])
def test_cleanup_socket(loop, sockdir, cleanup):
    path = os.path.join(sockdir, "clean")
    kwargs = {} if cleanup is None else {"cleanup_socket": cleanup}

    async def main():
        server = await loop.create_unix_server(Echo, path, **kwargs)
        assert os.path.exists(path)
        await close_server(server)
        assert os.path.exists(path) == (cleanup is False)

    run(loop, main())


@requires_py313
def test_cleanup_socket_spares_a_replaced_file(loop, sockdir):
    path = os.path.join(sockdir, "moved")

    async def main():
        server = await loop.create_unix_server(Echo, path)
        os.unlink(path)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other:
            other.bind(path)  # someone else's socket now lives at the path
            inode = os.stat(path).st_ino
            await close_server(server)
            assert os.stat(path).st_ino == inode

    run(loop, main())


@requires_py313
def test_cleanup_socket_with_given_and_abstract_sockets(loop, sockdir):
    path = os.path.join(sockdir, "given")

    async def main():
        lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        lst.bind(path)
        server = await loop.create_unix_server(Echo, sock=lst)
        await close_server(server)
        assert not os.path.exists(path)  # like asyncio: the given socket's file too
        server = await loop.create_unix_server(Echo, abstract_name())
        await close_server(server)

    run(loop, main())


@before_py313
def test_cleanup_socket_is_unknown_before_3_13(loop, sockdir):
    path = os.path.join(sockdir, "kept")

    async def main():
        with pytest.raises(TypeError, match="unexpected keyword argument 'cleanup_socket'"):
            await loop.create_unix_server(Echo, path, cleanup_socket=True)
        server = await loop.create_unix_server(Echo, path)
        await close_server(server)
        assert os.path.exists(path)  # nothing removes it before 3.13

    run(loop, main())


# ============================================================ argument errors


def _make_sock(kind):
    family, type_ = {"inet": (socket.AF_INET, socket.SOCK_STREAM),
                     "unix dgram": (socket.AF_UNIX, socket.SOCK_DGRAM)}[kind]
    return socket.socket(family, type_)


# case -> (arguments, the exception asyncio raises)
CONNECTION_ERRORS = {
    "nothing": (dict(), "ValueError"),
    "path and sock": (dict(path="PATH", sock="unix dgram"), "ValueError"),
    "inet sock": (dict(sock="inet"), "ValueError"),
    "dgram sock": (dict(sock="unix dgram"), "ValueError"),
    "server_hostname without ssl": (dict(path="PATH", server_hostname="h"), "ValueError"),
    "handshake timeout without ssl": (dict(path="PATH", ssl_handshake_timeout=1.0), "ValueError"),
    "shutdown timeout without ssl": (dict(path="PATH", ssl_shutdown_timeout=1.0), "ValueError"),
    "ssl without server_hostname": (dict(path="PATH", ssl=True), "ValueError"),
    "ssl check before path and sock": (dict(path="PATH", sock="inet", server_hostname="h"), "ValueError"),
    "no such file": (dict(path="MISSING"), "FileNotFoundError"),
    "not a socket": (dict(path="REGULAR"), "ConnectionRefusedError"),
    "nobody listening": (dict(path="STALE"), "ConnectionRefusedError"),
    "path of a wrong type": (dict(path=42), "TypeError"),
    "unknown keyword": (dict(path="PATH", family=socket.AF_UNIX), "TypeError"),
}

SERVER_ERRORS = {
    "nothing": (dict(), "ValueError"),
    "path and sock": (dict(path="PATH", sock="inet"), "ValueError"),
    "inet sock": (dict(sock="inet"), "ValueError"),
    "dgram sock": (dict(sock="unix dgram"), "ValueError"),
    "ssl=True": (dict(path="PATH", ssl=True), "TypeError"),
    "ssl=False": (dict(path="PATH", ssl=False), "TypeError"),
    "handshake timeout without ssl": (dict(path="PATH", ssl_handshake_timeout=1.0), "ValueError"),
    "shutdown timeout without ssl": (dict(path="PATH", ssl_shutdown_timeout=1.0), "ValueError"),
    "ssl check before path and sock": (dict(ssl=True), "TypeError"),
    "directory missing": (dict(path="NODIR"), "FileNotFoundError"),
    "path too long": (dict(path="LONG"), "OSError"),
    "path of a wrong type": (dict(path=42), "TypeError"),
    "unknown keyword": (dict(path="PATH", reuse_port=True), "TypeError"),
}


def _resolve(kwargs, sockdir, made):
    paths = {"PATH": os.path.join(sockdir, "x"), "MISSING": os.path.join(sockdir, "missing"),
             "REGULAR": os.path.join(sockdir, "regular"), "STALE": os.path.join(sockdir, "stale"),
             "NODIR": os.path.join(sockdir, "no", "such", "dir"), "LONG": os.path.join(sockdir, "l" * 120)}
    out = {}
    for key, value in kwargs.items():
        if key == "sock":
            value = _make_sock(value)
            made.append(value)
        elif key == "path" and isinstance(value, str):
            value = paths[value]
        out[key] = value
    return out


def _prepare_files(sockdir):
    with open(os.path.join(sockdir, "regular"), "w"):
        pass
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(os.path.join(sockdir, "stale"))


def _normalise(result, made):
    # a socket's repr names its fd, which differs between the two runs
    name, err, message = result
    for i, s in enumerate(made):
        message = message.replace(repr(s), "<sock %d>" % i)
    if name == "TypeError" and "unexpected keyword argument" in message:
        message = message[message.index("unexpected"):]  # asyncio adds the class name
    return name, err, message


ARGUMENT_ERRORS = [pytest.param(method, table, case, id="%s-%s" % (method[len("create_unix_"):], case))
                   for method, table in (("create_unix_connection", CONNECTION_ERRORS),
                                         ("create_unix_server", SERVER_ERRORS))
                   for case in table]


@pytest.mark.parametrize("method, table, case", ARGUMENT_ERRORS)
def test_argument_errors(loop, sockdir, method, table, case):
    _prepare_files(sockdir)
    arguments, expected = table[case]

    async def scenario(lp):
        made = []
        try:
            kwargs = _resolve(arguments, sockdir, made)
            result = await raises(lambda: getattr(lp, method)(Echo, **kwargs))
            return _normalise(result, made)
        finally:
            for s in made:
                s.close()

    name, _, _ = same_as_asyncio(loop, scenario)
    assert name == expected
    assert not os.path.exists(os.path.join(sockdir, "x"))  # nothing was bound there


def test_failed_connect_closes_its_socket(loop, sockdir):
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc")

    async def main():
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(5):
            with pytest.raises(FileNotFoundError):
                await loop.create_unix_connection(Recorder, os.path.join(sockdir, "none"))
        assert len(os.listdir("/proc/self/fd")) == before

    run(loop, main())


# ============================================================ TLS


@pytest.fixture(scope="module")
def tls_files():
    if shutil.which("openssl") is None:
        pytest.skip("no openssl command to make a certificate")
    d = tempfile.mkdtemp(prefix="slutls")
    cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                    "-days", "2", "-keyout", key, "-out", cert],
                   check=True, capture_output=True)
    try:
        yield cert, key
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_tls_over_a_unix_socket(loop, sockdir, tls_files):
    cert, key = tls_files
    path = os.path.join(sockdir, "tls")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cert)
    payload = pattern(300_000, seed=9)

    async def main():
        server = await asyncio.start_unix_server(echo_handler, path, ssl=server_ctx,
                                                 ssl_handshake_timeout=10.0)
        try:
            reader, writer = await asyncio.open_unix_connection(path, ssl=client_ctx,
                                                                server_hostname="localhost")
            assert writer.get_extra_info("peercert")["subject"] == ((("commonName", "localhost"),),)
            writer.write(payload)
            await writer.drain()
            assert_same_bytes(await reader.readexactly(len(payload)), payload)
            writer.close()
            await writer.wait_closed()
            with pytest.raises(ssl.SSLCertVerificationError):
                await asyncio.open_unix_connection(path, ssl=client_ctx, server_hostname="not-localhost")
        finally:
            await close_server(server)

    run(loop, main(), BIG)


def test_shardloop_uses_unix_transports(loop, sockdir):
    """Guards against a silent fallback: on shardloop the Unix transport is
    the native stream one."""
    if not is_shardloop(loop):
        pytest.skip("shardloop only")
    path = os.path.join(sockdir, "native")

    async def main():
        server = await loop.create_unix_server(Echo, path)
        try:
            tr, proto = await loop.create_unix_connection(Recorder, path)
            assert type(tr).__module__ == "shardloop._transport"
            tr.close()
            await proto.lost
        finally:
            await close_server(server)

    run(loop, main())

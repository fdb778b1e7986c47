"""TLS: ssl= on create_connection / create_server / connect_accepted_socket,
loop.start_tls and StreamWriter.start_tls, the SSL transport's extra info,
flow control through the SSL layer, and the faults (bad certificate,
hostname mismatch, handshake timeout, a peer leaving mid-handshake,
close_notify versus abort) -- on real loopback sockets, against real peers:
the loop itself, blocking Python ssl sockets in a thread, and
``openssl s_client``.

Certificates (a CA and a server certificate for localhost/127.0.0.1) are
made once per session with the ``openssl`` command; the tests skip without
it.  Each test runs on asyncio's own loop (the reference) and on shardloop;
where the exact outcome is asyncio's business (error types and messages),
the shardloop run is compared with a fresh asyncio run (``same_as_asyncio``).
No test asserts on elapsed time: timeouts only bound waits.
"""

import asyncio
import builtins
import gc
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading

import pytest

import _support
from _support import shardloop
from _support import (close_server, collecting_factory, echo_handler, pattern, record_exceptions, run,
                      same_as_asyncio)

HAVE_OPENSSL = shutil.which("openssl") is not None
requires_openssl = pytest.mark.skipif(not HAVE_OPENSSL, reason="no openssl command")
linux_only = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc (Linux)")

pytestmark = requires_openssl


def _tls_mode(native):
    def make():
        shardloop._tls.NATIVE = native
        return shardloop.new_event_loop()
    return make


@pytest.fixture(params=[
    pytest.param(asyncio.new_event_loop, id="asyncio"),
    pytest.param("native", id="shardloop", marks=_support.requires_shardloop),
    pytest.param("python", id="shardloop-pysslproto", marks=_support.requires_shardloop),
])
def loop_factory(request):
    """asyncio's loop, and shardloop with each TLS layer: the native data
    path (the default) and the SSLProtocol in Python (SHARDLOOP_TLS=python)."""
    if callable(request.param):
        yield request.param
        return
    saved = shardloop._tls.NATIVE
    try:
        yield _tls_mode(request.param == "native")
    finally:
        shardloop._tls.NATIVE = saved

MIB = 1 << 20
PEER_TIMEOUT = 10.0  # blocking peers give up after this long, so no thread outlives a test


# ---------------------------------------------------------------- certificates


class Certs:
    def __init__(self, directory):
        self.ca = os.path.join(directory, "ca.pem")
        self.cert = os.path.join(directory, "server.pem")
        self.key = os.path.join(directory, "server.key")

    def server_context(self):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert, self.key)
        return ctx

    def client_context(self):
        return ssl.create_default_context(cafile=self.ca)


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE)


@pytest.fixture(scope="session")
def certs(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("tls"))
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    with open(os.path.join(d, "ext.cnf"), "w") as f:
        # Python 3.13's default context checks X.509 strictly: the key usages
        # and key identifiers below are what it insists on.
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n"
                "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
                "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n")
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=shardloop test CA", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    _openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost", cwd=d)
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf", cwd=d)
    return Certs(d)


# ---------------------------------------------------------------- helpers


def listener():
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(16)
    return lst


def blocking(sock):
    sock.setblocking(True)
    sock.settimeout(PEER_TIMEOUT)
    return sock


def recv_exactly(sock, n):
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)


async def in_thread(fn, *args):
    """Run a blocking peer in the loop's executor and wait for its result."""
    loop = asyncio.get_running_loop()
    return await asyncio.wait_for(loop.run_in_executor(None, fn, *args), PEER_TIMEOUT + 5)


class Recorder(_support.Recorder):
    """The shared recorder without 'data' events (TLS records arrive in any
    number of pieces); pause/resume_writing noted, and a wait for N bytes."""

    def __init__(self):
        super().__init__()
        self.got = None  # (future, size): resolved once `size` bytes are in

    def data_received(self, data):
        self.data += data
        if self.got is not None and len(self.data) >= self.got[1] and not self.got[0].done():
            self.got[0].set_result(None)

    def wait_for_bytes(self, size):
        self.got = (self.loop.create_future(), size)
        if len(self.data) >= size:
            self.got[0].set_result(None)
        return self.got[0]

    def pause_writing(self):
        self.events.append("pause_writing")

    def resume_writing(self):
        self.events.append("resume_writing")


class Echo(Recorder):
    def data_received(self, data):
        super().data_received(data)
        self.transport.write(data)


class Greeter(Recorder):
    """Says hello and closes: the peer gets the data, then close_notify."""

    def connection_made(self, transport):
        super().connection_made(transport)
        transport.write(b"hello from the server\n")
        transport.close()


def port_of(server):
    return server.sockets[0].getsockname()[1]


async def connected(lp, certs, server_cls, client_cls=Recorder):
    """(server, client transport, client protocol, server protocols): a TLS
    server making server_cls protocols on lp, and one client connected."""
    factory, servers = collecting_factory(server_cls)
    server = await lp.create_server(factory, "127.0.0.1", 0, ssl=certs.server_context())
    try:
        tr, client = await lp.create_connection(client_cls, "localhost", port_of(server),
                                                ssl=certs.client_context())
    except BaseException:
        await close_server(server)
        raise
    return server, tr, client, servers


# ============================================================ data through TLS


def test_streams_echo_1_mib(loop, certs):
    payload = pattern(MIB)

    async def main():
        server = await asyncio.start_server(echo_handler, "127.0.0.1", 0, ssl=certs.server_context())
        try:
            reader, writer = await asyncio.open_connection("localhost", port_of(server),
                                                           ssl=certs.client_context())
            echoed = asyncio.ensure_future(reader.readexactly(len(payload)))
            for i in range(0, len(payload), 100_000):  # uneven chunks, each drained
                writer.write(payload[i:i + 100_000])
                await writer.drain()
            got = await echoed
            writer.close()
            await writer.wait_closed()
            return got
        finally:
            await close_server(server)

    assert run(loop, main(), 30) == payload


def test_flow_control_through_the_ssl_layer(loop, certs):
    """A server that does not read makes the client's SSL transport pause
    the writer; once the server reads, every byte arrives in order and the
    writer is resumed."""
    async def main():
        factory, servers = collecting_factory(Recorder)
        server = await loop.create_server(factory, "127.0.0.1", 0, ssl=certs.server_context())
        try:
            tr, client = await loop.create_connection(Recorder, "localhost", port_of(server),
                                                      ssl=certs.client_context())
            while not servers or servers[0].transport is None:
                await asyncio.sleep(0.001)
            peer = servers[0]
            peer.transport.pause_reading()
            assert not peer.transport.is_reading()
            sent = bytearray()
            seed = 0
            while "pause_writing" not in client.events:
                assert len(sent) < 256 * MIB, "the SSL transport never paused its writer"
                chunk = pattern(64 * 1024, seed)
                seed += 1
                tr.write(chunk)
                sent += chunk
                await asyncio.sleep(0)
            assert tr.get_write_buffer_size() > 0
            peer.transport.resume_reading()
            await asyncio.wait_for(peer.wait_for_bytes(len(sent)), 20)
            while "resume_writing" not in client.events:
                await asyncio.sleep(0.001)
            tr.close()
            await client.lost
            await peer.lost
            return bytes(peer.data) == bytes(sent), client.events, peer.events
        finally:
            await close_server(server)

    same, client_events, server_events = run(loop, main(), 40)
    assert same
    assert client_events == ["made", "pause_writing", "resume_writing", "eof", ("lost", None)]
    assert server_events == ["made", "eof", ("lost", None)]


def test_extra_info_on_both_sides(loop, certs):
    async def main():
        ctx_s, ctx_c = certs.server_context(), certs.client_context()
        factory, servers = collecting_factory(Echo)
        server = await loop.create_server(factory, "127.0.0.1", 0, ssl=ctx_s)
        try:
            tr, client = await loop.create_connection(Recorder, "127.0.0.1", port_of(server), ssl=ctx_c)
            tr.write(b"ping")
            await client.wait_for_bytes(4)
            seen = []
            for t, ctx in ((tr, ctx_c), (servers[0].transport, ctx_s)):
                sock = t.get_extra_info("socket")
                seen.append((
                    isinstance(t.get_extra_info("ssl_object"), ssl.SSLObject),
                    t.get_extra_info("sslcontext") is ctx,
                    t.get_extra_info("cipher")[1],
                    t.get_extra_info("compression"),
                    t.get_extra_info("peername") == sock.getpeername(),
                    t.get_extra_info("sockname") == sock.getsockname(),
                    t.get_extra_info("no such thing", "dflt"),
                ))
            peercert = tr.get_extra_info("peercert")
            assert dict(x[0] for x in peercert["subject"]) == {"commonName": "localhost"}
            assert servers[0].transport.get_extra_info("peercert") is None  # no client cert asked
            assert tr.get_extra_info("ssl_object").server_hostname == "127.0.0.1"
            tr.close()
            await client.lost
            return seen
        finally:
            await close_server(server)

    seen = run(loop, main())
    version = seen[0][2]
    assert version.startswith("TLSv1.")
    assert seen == [(True, True, version, None, True, True, "dflt")] * 2


# ============================================================ real peers


def test_client_against_a_blocking_ssl_server(loop, certs):
    """The client's close() sends close_notify: the blocking server reads a
    clean b'' (ragged EOFs are errors for it) and its unwrap() completes."""
    payload = pattern(200_000, 1)

    def server(lst):
        conn, _ = lst.accept()
        with certs.server_context().wrap_socket(blocking(conn), server_side=True,
                                                suppress_ragged_eofs=False) as s:
            data = recv_exactly(s, len(payload))
            s.sendall(data[::-1])
            tail = s.recv(65536)
            s.unwrap()
            return data == payload, tail

    async def main():
        with listener() as lst:
            peer = asyncio.ensure_future(in_thread(server, lst))
            tr, proto = await loop.create_connection(Recorder, "localhost", lst.getsockname()[1],
                                                     ssl=certs.client_context())
            tr.write(payload)
            await proto.wait_for_bytes(len(payload))
            tr.close()
            assert tr.is_closing()
            result = await peer
            await proto.lost
            return result, bytes(proto.data) == payload[::-1], proto.events

    (same, tail), echoed, events = run(loop, main(), 20)
    assert same and echoed and tail == b""
    assert events == ["made", "eof", ("lost", None)]


@pytest.mark.parametrize("how", ["close", "abort"])
def test_close_sends_close_notify_and_abort_does_not(loop, certs, how):
    def server(lst):
        conn, _ = lst.accept()
        with certs.server_context().wrap_socket(blocking(conn), server_side=True,
                                                suppress_ragged_eofs=False) as s:
            s.sendall(b"ready")
            try:
                return s.recv(100)
            except (ssl.SSLEOFError, ConnectionResetError) as exc:
                return type(exc).__name__

    async def main():
        with listener() as lst:
            peer = asyncio.ensure_future(in_thread(server, lst))
            tr, proto = await loop.create_connection(Recorder, "localhost", lst.getsockname()[1],
                                                     ssl=certs.client_context())
            await proto.wait_for_bytes(5)
            getattr(tr, how)()
            seen = await peer
            await proto.lost
            return seen

    seen = run(loop, main())
    if how == "close":
        assert seen == b""
    else:
        assert seen in ("SSLEOFError", "ConnectionResetError")


def test_server_against_a_blocking_ssl_client(loop, certs):
    """The client's unwrap() sends close_notify and waits for the server's:
    the server's stream sees EOF, closes, and answers with close_notify."""
    payload = pattern(300_000, 2)

    def client(port):
        raw = socket.create_connection(("127.0.0.1", port), timeout=PEER_TIMEOUT)
        with certs.client_context().wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(payload)
            data = recv_exactly(s, len(payload))
            plain = s.unwrap()  # the same socket object, plaintext again
            return data == payload, plain.recv(10)

    async def main():
        server = await asyncio.start_server(echo_handler, "127.0.0.1", 0, ssl=certs.server_context())
        try:
            return await in_thread(client, port_of(server))
        finally:
            await close_server(server)

    assert run(loop, main(), 20) == (True, b"")


def test_openssl_s_client_against_the_server(loop, certs):
    async def main():
        server = await loop.create_server(Greeter, "127.0.0.1", 0, ssl=certs.server_context())
        try:
            cmd = ["openssl", "s_client", "-connect", "127.0.0.1:%d" % port_of(server),
                   "-servername", "localhost", "-verify_hostname", "localhost",
                   "-CAfile", certs.ca, "-verify_return_error", "-ign_eof"]
            return await in_thread(lambda: subprocess.run(
                cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=PEER_TIMEOUT))
        finally:
            await close_server(server)

    done = run(loop, main(), 20)
    out = done.stdout.decode(errors="replace")
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert "hello from the server" in out
    assert "Verify return code: 0 (ok)" in out


def test_connect_accepted_socket_with_ssl(loop, certs):
    async def main():
        with listener() as lst:
            lst.setblocking(False)
            accepted = asyncio.ensure_future(loop.sock_accept(lst))
            connecting = asyncio.ensure_future(loop.create_connection(
                Recorder, "localhost", lst.getsockname()[1], ssl=certs.client_context()))
            conn, _ = await accepted
            str_, sproto = await loop.connect_accepted_socket(Echo, conn, ssl=certs.server_context(),
                                                              ssl_handshake_timeout=5.0)
            tr, proto = await connecting
            tr.write(b"over an accepted socket")
            await proto.wait_for_bytes(23)
            tr.close()
            await sproto.lost
            return bytes(proto.data), sproto.events, isinstance(str_.get_extra_info("ssl_object"),
                                                                ssl.SSLObject)

    assert run(loop, main()) == (b"over an accepted socket", ["made", "eof", ("lost", None)], True)


# ============================================================ start_tls


def test_streams_starttls_both_sides(loop, certs):
    """A plaintext STARTTLS exchange, then both ends upgrade with
    StreamWriter.start_tls (server side and client side of loop.start_tls)."""
    async def handler(reader, writer):
        try:
            assert await reader.readline() == b"STARTTLS\r\n"
            writer.write(b"GO\r\n")
            await writer.drain()
            await writer.start_tls(certs.server_context())
            line = await reader.readline()
            writer.write(line.upper() + (b"TLS\r\n" if writer.get_extra_info("ssl_object") else b"PLAIN\r\n"))
            await writer.drain()
        finally:
            writer.close()

    async def main():
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
            writer.write(b"STARTTLS\r\n")
            assert await reader.readline() == b"GO\r\n"
            assert writer.get_extra_info("ssl_object") is None
            await writer.start_tls(certs.client_context(), server_hostname="localhost")
            writer.write(b"secret\r\n")
            lines = [await reader.readline(), await reader.readline(), await reader.read()]
            version = writer.get_extra_info("ssl_object").version()
            writer.close()
            await writer.wait_closed()
            return lines, version
        finally:
            await close_server(server)

    lines, version = run(loop, main())
    assert lines == [b"SECRET\r\n", b"TLS\r\n", b""]
    assert version.startswith("TLSv1.")


def test_start_tls_against_a_blocking_peer(loop, certs):
    """loop.start_tls on a plain transport, the peer a blocking socket that
    wraps itself after the plaintext part; bytes the peer sent before the
    upgrade stay with the old protocol."""
    def server(lst):
        conn, _ = lst.accept()
        conn = blocking(conn)
        conn.sendall(b"plain part")
        assert recv_exactly(conn, 7) == b"UPGRADE"  # the ClientHello follows at once
        with certs.server_context().wrap_socket(conn, server_side=True) as s:
            s.sendall(b"tls part")
            return s.recv(100)

    async def main():
        with listener() as lst:
            peer = asyncio.ensure_future(in_thread(server, lst))
            tr, plain = await loop.create_connection(Recorder, "127.0.0.1", lst.getsockname()[1])
            await plain.wait_for_bytes(10)
            tr.write(b"UPGRADE")
            secure = Recorder()
            tls = await loop.start_tls(tr, secure, certs.client_context(), server_hostname="localhost")
            assert tls is not tr and tr.get_protocol() is not plain
            await secure.wait_for_bytes(8)
            tls.write(b"thanks")
            got = await peer
            tls.close()
            await secure.lost
            return bytes(plain.data), bytes(secure.data), got, plain.events, secure.events

    # start_tls does not call the new protocol's connection_made(), as in asyncio.
    assert run(loop, main()) == (b"plain part", b"tls part", b"thanks", ["made"],
                                 ["eof", ("lost", None)])


def test_start_tls_type_errors(loop, certs):
    async def scenario(lp):
        out = []
        with listener() as lst:
            tr, _ = await lp.create_connection(Recorder, *lst.getsockname())
            try:
                for args in ((tr, Recorder(), None), (tr, Recorder(), "ctx"),
                             (asyncio.Transport(), Recorder(), certs.client_context())):
                    try:
                        await lp.start_tls(*args)
                    except TypeError as exc:
                        out.append(str(exc).split("<")[0])
                    assert not tr.is_closing()
            finally:
                tr.close()
        return out

    assert same_as_asyncio(loop, scenario) == [
        "sslcontext is expected to be an instance of ssl.SSLContext, got None",
        "sslcontext is expected to be an instance of ssl.SSLContext, got 'ctx'",
        "transport ",
    ]


# ============================================================ faults


def _verify_failure(exc):
    return type(exc).__name__, exc.verify_code, exc.verify_message


@pytest.mark.parametrize("case", ["unknown_ca", "ssl_true_default_context", "hostname_mismatch"])
def test_certificate_verification_failures(loop, certs, case):
    async def scenario(lp):
        contexts = record_exceptions(lp)
        factory, servers = collecting_factory(Recorder)
        server = await lp.create_server(factory, "127.0.0.1", 0, ssl=certs.server_context())
        kwargs = {
            "unknown_ca": dict(ssl=ssl.create_default_context()),
            "ssl_true_default_context": dict(ssl=True),
            "hostname_mismatch": dict(ssl=certs.client_context(), server_hostname="wrong.example"),
        }[case]
        try:
            with pytest.raises(ssl.SSLCertVerificationError) as info:
                await lp.create_connection(Recorder, "127.0.0.1", port_of(server), **kwargs)
            while len(servers) < 1:
                await asyncio.sleep(0.001)
            # The server's handshake fails too; the app protocol never hears of it.
            for _ in range(50):
                await asyncio.sleep(0.001)
            return _verify_failure(info.value), servers[0].events, contexts
        finally:
            await close_server(server)

    failure, server_events, contexts = same_as_asyncio(loop, scenario)
    assert failure[0] == "SSLCertVerificationError"
    assert server_events == []
    assert contexts == []
    if case == "hostname_mismatch":
        assert "Hostname mismatch" in failure[2]


def test_failed_server_handshake_is_reported_in_debug_mode(loop, certs):
    async def scenario(lp):
        lp.set_debug(True)
        contexts = record_exceptions(lp)
        server = await lp.create_server(Recorder, "127.0.0.1", 0, ssl=certs.server_context())
        try:
            with pytest.raises(ssl.SSLCertVerificationError):
                await lp.create_connection(Recorder, "127.0.0.1", port_of(server),
                                           ssl=ssl.create_default_context())
            while not contexts:
                await asyncio.sleep(0.001)
            ctx = contexts[0]
            return (ctx["message"], type(ctx["exception"]).__name__,
                    isinstance(ctx["protocol"], Recorder), sorted(ctx))
        finally:
            await close_server(server)

    message, exc_type, protocol_given, keys = same_as_asyncio(loop, scenario)
    assert message == "Error on transport creation for incoming connection"
    assert issubclass(getattr(builtins, exc_type, ssl.SSLError), OSError)
    assert protocol_given and keys == ["exception", "message", "protocol", "transport"]


def test_client_handshake_timeout(loop, certs):
    """The peer accepts and never speaks."""
    async def scenario(lp):
        with listener() as lst:
            try:
                await lp.create_connection(Recorder, "localhost", lst.getsockname()[1],
                                           ssl=certs.client_context(), ssl_handshake_timeout=0.2)
            except Exception as exc:
                return type(exc).__name__, str(exc)

    assert same_as_asyncio(loop, scenario) == (
        "ConnectionAbortedError",
        "SSL handshake is taking longer than 0.2 seconds: aborting the connection")


def test_server_handshake_timeout(loop, certs):
    """A client connects and never speaks: the server drops it and the
    protocol never sees a connection."""
    async def scenario(lp):
        factory, protos = collecting_factory(Recorder)
        server = await lp.create_server(factory, "127.0.0.1", 0, ssl=certs.server_context(),
                                        ssl_handshake_timeout=0.2)
        try:
            with socket.create_connection(("127.0.0.1", port_of(server))) as raw:
                raw.setblocking(False)
                try:
                    got = await asyncio.wait_for(lp.sock_recv(raw, 100), 5)
                except ConnectionResetError:
                    got = "reset"
            return got, [p.events for p in protos]
        finally:
            await close_server(server)

    assert same_as_asyncio(loop, scenario) == (b"", [[]])


@pytest.mark.parametrize("paused", [False, True], ids=["reading", "reading_paused"])
def test_shutdown_timeout(loop, certs, paused):
    """The peer never answers close_notify: the connection is dropped after
    ssl_shutdown_timeout and the protocol hears why, also when the app had
    paused reading before it closed."""
    def server(lst, done):
        conn, _ = lst.accept()
        with certs.server_context().wrap_socket(blocking(conn), server_side=True) as s:
            s.sendall(b"hi")
            done.wait(PEER_TIMEOUT)  # reads nothing, so never answers

    async def scenario(lp):
        done = threading.Event()
        with listener() as lst:
            peer = asyncio.ensure_future(in_thread(server, lst, done))
            try:
                tr, proto = await lp.create_connection(Recorder, "localhost", lst.getsockname()[1],
                                                       ssl=certs.client_context(), ssl_shutdown_timeout=0.2)
                await proto.wait_for_bytes(2)
                if paused:
                    tr.pause_reading()
                tr.close()
                exc = await proto.lost
            finally:
                done.set()
            await peer
            return type(exc).__name__, str(exc), proto.events[-1]

    assert same_as_asyncio(loop, scenario) == ("TimeoutError", "SSL shutdown timed out",
                                               ("lost", "TimeoutError"))


def test_peer_leaving_mid_handshake_client_side(loop, certs):
    def server(lst):
        conn, _ = lst.accept()
        with blocking(conn):
            return len(conn.recv(5))  # the ClientHello record header, then go away

    async def scenario(lp):
        with listener() as lst:
            peer = asyncio.ensure_future(in_thread(server, lst))
            try:
                await lp.create_connection(Recorder, "localhost", lst.getsockname()[1],
                                           ssl=certs.client_context())
            except Exception as exc:
                return type(exc).__name__, await peer

    assert same_as_asyncio(loop, scenario) == ("ConnectionResetError", 5)


def test_peer_leaving_mid_handshake_server_side(loop, certs):
    async def scenario(lp):
        contexts = record_exceptions(lp)
        factory, protos = collecting_factory(Recorder)
        server = await lp.create_server(factory, "127.0.0.1", 0, ssl=certs.server_context())
        try:
            with socket.create_connection(("127.0.0.1", port_of(server))) as raw:
                raw.sendall(b"\x16\x03\x01")  # the start of a handshake record
            while not protos:
                await asyncio.sleep(0.001)
            # A second client is served normally afterwards.
            tr, proto = await lp.create_connection(Recorder, "localhost", port_of(server),
                                                   ssl=certs.client_context())
            tr.close()
            await proto.lost
            while len(protos) < 2 or not protos[1].lost.done():
                await asyncio.sleep(0.001)
            return [p.events for p in protos], contexts
        finally:
            await close_server(server)

    assert same_as_asyncio(loop, scenario) == ([[], ["made", "eof", ("lost", None)]], [])


def test_ssl_argument_errors(loop, certs):
    async def scenario(lp):
        out = []
        lst = listener()
        conn = socket.create_connection(lst.getsockname())
        wrapped = certs.client_context().wrap_socket(socket.socket(), server_hostname="localhost",
                                                     do_handshake_on_connect=False)
        try:
            host, port = lst.getsockname()
            calls = [
                lambda: lp.create_connection(Recorder, sock=conn, ssl=certs.client_context()),
                lambda: lp.create_connection(Recorder, port=port, ssl=True),
                lambda: lp.create_connection(Recorder, sock=conn, ssl=certs.client_context(),
                                             server_hostname="localhost", ssl_handshake_timeout=0),
                lambda: lp.create_connection(Recorder, sock=conn, ssl=certs.client_context(),
                                             server_hostname="localhost", ssl_shutdown_timeout=-1),
                lambda: lp.create_connection(Recorder, sock=wrapped, ssl=certs.client_context(),
                                             server_hostname="localhost"),
                lambda: lp.connect_accepted_socket(Recorder, conn, ssl=True),
                lambda: lp.connect_accepted_socket(Recorder, conn, ssl_shutdown_timeout=1),
                lambda: lp.connect_accepted_socket(Recorder, wrapped, ssl=certs.server_context()),
                lambda: lp.create_server(Recorder, host, 0, ssl=False),
                lambda: lp.create_server(Recorder, host, 0, ssl_shutdown_timeout=1.0),
            ]
            for call in calls:
                try:
                    await call()
                except (ValueError, TypeError) as exc:
                    out.append((type(exc).__name__, str(exc)))
                else:  # pragma: no cover
                    out.append("no error")
        finally:
            wrapped.close()
            conn.close()
            lst.close()
        return out

    results = same_as_asyncio(loop, scenario)
    assert results[:6] == [
        ("ValueError", "You must set server_hostname when using ssl without a host"),
        ("ValueError", "You must set server_hostname when using ssl without a host"),
        ("ValueError", "ssl_handshake_timeout should be a positive number, got 0"),
        ("ValueError", "ssl_shutdown_timeout should be a positive number, got -1"),
        ("TypeError", "Socket cannot be of type SSLSocket"),
        ("ValueError", "Server side SSL needs a valid SSLContext"),
    ]


# ============================================================ resources


def _open_fds():
    return len(os.listdir("/proc/self/fd"))


@linux_only
def test_sequential_connections_do_not_leak_fds(loop, certs):
    async def one(port, ctx):
        tr, proto = await loop.create_connection(Recorder, "localhost", port, ssl=ctx)
        tr.write(b"x" * 100)
        await proto.wait_for_bytes(100)
        tr.close()
        await proto.lost

    async def main():
        factory, served = collecting_factory(Echo)
        server = await loop.create_server(factory, "127.0.0.1", 0, ssl=certs.server_context())
        ctx = certs.client_context()
        try:
            for _ in range(5):  # warm-up: executor threads, caches
                await one(port_of(server), ctx)
            while not all(p.lost.done() for p in served):
                await asyncio.sleep(0.001)
            served.clear()
            gc.collect()
            before = _open_fds()
            for _ in range(200):
                await one(port_of(server), ctx)
            while not all(p.lost.done() for p in served):
                await asyncio.sleep(0.001)
            gc.collect()
            return before, _open_fds(), len(served)
        finally:
            await close_server(server)

    before, after, count = run(loop, main(), 60)
    assert count == 200
    assert after == before


def test_client_against_openssl_s_server(loop, certs):
    """Debian's openssl s_server as the peer: it serves its status page
    over TLS to an HTTP GET, after verifying nothing on its side."""
    with listener() as probe:
        port = probe.getsockname()[1]
    proc = subprocess.Popen(["openssl", "s_server", "-accept", "127.0.0.1:%d" % port, "-cert", certs.cert,
                             "-key", certs.key, "-www", "-naccept", "1"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        for line in proc.stdout:  # after "Using default temp DH parameters" and the like
            if line.strip() == b"ACCEPT":
                break

        async def main():
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=certs.client_context(),
                                                           server_hostname="localhost")
            writer.write(b"GET / HTTP/1.0\r\n\r\n")
            page = await reader.read()
            version = writer.get_extra_info("ssl_object").version()
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, ssl.SSLError):
                pass  # s_server does not wait for our close_notify
            return page, version

        page, version = run(loop, main(), 20)
    finally:
        proc.kill()
        proc.wait()
    assert page.startswith(b"HTTP/1.0 200 ok")
    assert b"s_server" in page and version.startswith("TLS")


def test_ssl_objects_do_not_accumulate_over_many_connections(sl, certs):
    """Every connection's SSLObject and SSLProtocol go away with it (uvloop
    has reports of exactly this leaking): 10,000 TLS connections, 50 at a
    time, then no more live SSL objects than before."""
    total = 1_000 if os.environ.get("SHARDLOOP_SANITIZED") else 10_000
    loop = sl.new_event_loop()

    def live_ssl_objects():
        gc.collect()
        return sum(1 for o in gc.get_objects()
                   if isinstance(o, (ssl.SSLObject, asyncio.sslproto.SSLProtocol)))

    async def one(port, ctx, limit):
        async with limit:
            tr, proto = await loop.create_connection(Recorder, "127.0.0.1", port, ssl=ctx,
                                                     server_hostname="localhost")
            tr.write(b"ping")
            await proto.wait_for_bytes(4)
            tr.close()
            await proto.lost

    async def main():
        server = await loop.create_server(Echo, "127.0.0.1", 0, ssl=certs.server_context())
        ctx = certs.client_context()
        limit = asyncio.Semaphore(50)
        try:
            await one(port_of(server), ctx, limit)
            await asyncio.sleep(0.05)
            before = live_ssl_objects()
            await asyncio.gather(*(one(port_of(server), ctx, limit) for _ in range(total)))
            await asyncio.sleep(0.05)
            return before, live_ssl_objects()
        finally:
            await close_server(server)

    try:
        before, after = run(loop, main(), 240)
    finally:
        loop.close()
    assert after <= before


# ============================================================ the native data path


def _sslproto_calls(monkeypatch):
    """Counts the calls of asyncio's SSLProtocol data-path methods."""
    calls = {}
    for name in ("buffer_updated", "_do_read", "_do_write", "_process_outgoing", "_write_appdata"):
        original = getattr(asyncio.sslproto.SSLProtocol, name)

        def counting(self, *args, _name=name, _original=original):
            calls[_name] = calls.get(_name, 0) + 1
            return _original(self, *args)
        monkeypatch.setattr(asyncio.sslproto.SSLProtocol, name, counting)
    return calls


class BufferedEcho(asyncio.BufferedProtocol):
    """An echoing BufferedProtocol whose buffer holds a whole request (a
    full buffer makes SSLProtocol read the rest in a later _do_read(), as
    BufferedPausingEcho's does)."""

    def __init__(self):
        self.buf = bytearray(64 * 1024)

    def connection_made(self, transport):
        self.transport = transport

    def get_buffer(self, sizehint):
        # A memoryview: asyncio's SSLProtocol fills the rest of the buffer
        # through buf[offset:], which on a bytearray would be a copy.
        return memoryview(self.buf)

    def buffer_updated(self, nbytes):
        self.transport.write(bytes(self.buf[:nbytes]))


@pytest.mark.parametrize("server_kind", [Echo, BufferedEcho], ids=["protocol", "buffered"])
@pytest.mark.parametrize("native", [True, False], ids=["native", "pysslproto"])
def test_steady_state_runs_without_sslprotocol_frames(sl, certs, monkeypatch, native, server_kind):
    """After the handshake, 200 echo round trips go through
    _core.TlsProtocol on both ends (the server's app a Protocol or a
    BufferedProtocol): none of SSLProtocol's data-path methods runs. With
    SHARDLOOP_TLS=python every round trip goes through them, which is what
    makes this test able to fail."""
    monkeypatch.setattr(sl._tls, "NATIVE", native)
    loop = sl.new_event_loop()

    async def main():
        server, tr, client, servers = await connected(loop, certs, server_kind)
        try:
            tr.write(b"warm-up")
            await client.wait_for_bytes(7)
            calls = _sslproto_calls(monkeypatch)
            cores = [t._ssl_protocol._shardloop_core for t in (tr, servers[0].transport)] if native else []
            flags = [(c.fast_read, c.fast_write) for c in cores]
            for i in range(200):
                tr.write(b"%04d" % i + bytes(1020))
                await client.wait_for_bytes(7 + 1024 * (i + 1))
            steady = dict(calls)
            tr.close()
            await client.lost
            return flags, steady, bytes(client.data[7:])
        finally:
            await close_server(server)

    try:
        flags, steady, echoed = run(loop, main(), 30)
    finally:
        loop.close()
    assert echoed == b"".join(b"%04d" % i + bytes(1020) for i in range(200))
    if native:
        assert flags == [(True, True)] * 2
        assert steady == {}
    else:
        assert steady["_do_read"] >= 400 and steady["_write_appdata"] >= 400


class PausingEcho(Recorder):
    """Echoes; pauses its own reading for a moment every `every` bytes."""

    every = 300_000

    def __init__(self):
        super().__init__()
        self.next_pause = self.every

    def data_received(self, data):
        super().data_received(data)
        self.transport.write(data)
        if len(self.data) >= self.next_pause:
            self.next_pause += self.every
            self.transport.pause_reading()
            self.loop.call_later(0.01, self.transport.resume_reading)


class BufferedPausingEcho(asyncio.BufferedProtocol):
    """The same as a BufferedProtocol reading into a 1000-byte buffer."""

    every = 300_000

    def __init__(self):
        self.loop = asyncio.get_running_loop()
        self.buf = bytearray(1000)
        self.data = bytearray()
        self.next_pause = self.every
        self.lost = self.loop.create_future()

    def connection_made(self, transport):
        self.transport = transport

    def get_buffer(self, sizehint):
        # A memoryview: asyncio's SSLProtocol fills the rest of the buffer
        # through buf[offset:], which on a bytearray would be a copy.
        return memoryview(self.buf)

    def buffer_updated(self, nbytes):
        chunk = bytes(self.buf[:nbytes])
        self.data += chunk
        self.transport.write(chunk)
        if len(self.data) >= self.next_pause:
            self.next_pause += self.every
            self.transport.pause_reading()
            self.loop.call_later(0.01, self.transport.resume_reading)

    def eof_received(self):
        return None

    def connection_lost(self, exc):
        self.lost.set_result(exc)


@pytest.mark.parametrize("server_kind", [PausingEcho, BufferedPausingEcho], ids=["protocol", "buffered"])
def test_large_transfers_both_ways_with_pauses(loop, certs, server_kind):
    """3 MiB each way through an echoing server that pauses its reading now
    and then, a client that pauses its own reading too and writes in
    uneven chunks under the SSL transport's write flow control: every byte
    comes back, in order, and both sides see a clean close."""
    payload = pattern(3 * MIB, 7)

    class Client(Recorder):
        every = 500_000
        next_pause = every
        paused_writing = None

        def data_received(self, data):
            super().data_received(data)
            if len(self.data) >= self.next_pause:
                self.next_pause += self.every
                self.transport.pause_reading()
                self.loop.call_later(0.01, self.transport.resume_reading)

        def pause_writing(self):
            super().pause_writing()
            self.paused_writing = self.loop.create_future()

        def resume_writing(self):
            super().resume_writing()
            self.paused_writing.set_result(None)

    async def main():
        server, tr, client, servers = await connected(loop, certs, server_kind, Client)
        try:
            tr.set_write_buffer_limits(high=256 * 1024)
            i = 0
            step = 70_001
            while i < len(payload):
                if client.paused_writing is not None:
                    await client.paused_writing
                    client.paused_writing = None
                tr.write(payload[i:i + step])
                i += step
                step = 70_001 if step != 70_001 else 33_333
                await asyncio.sleep(0)
            await asyncio.wait_for(client.wait_for_bytes(len(payload)), 30)
            tr.close()
            await client.lost
            await servers[0].lost
            return bytes(client.data) == payload, bytes(servers[0].data) == payload, client.events[-1]
        finally:
            await close_server(server)

    assert run(loop, main(), 60) == (True, True, ("lost", None))


def test_app_error_in_data_received_is_fatal(loop, certs):
    """data_received raising closes the connection and reaches the exception
    handler with asyncio's message, on whichever path delivered it."""
    class Failing(Recorder):
        def data_received(self, data):
            super().data_received(data)
            raise ZeroDivisionError("app bug")

    async def scenario(lp):
        contexts = record_exceptions(lp)
        server, tr, client, servers = await connected(lp, certs, Failing)
        try:
            tr.write(b"boom")
            await servers[0].lost
            await client.lost
            return ([(c["message"], type(c["exception"]).__name__) for c in contexts],
                    servers[0].events[-1], bytes(servers[0].data))
        finally:
            await close_server(server)

    assert same_as_asyncio(loop, scenario) == (
        [("Fatal error on SSL protocol", "ZeroDivisionError")], ("lost", "ZeroDivisionError"), b"boom")


def test_write_and_close_inside_data_received(loop, certs):
    """The app answers and closes from data_received (the state leaves
    WRAPPED in the middle of the native read): the client gets the answer,
    then EOF, then a clean close; later writes are dropped as asyncio drops
    them."""
    class AnswerAndClose(Recorder):
        def data_received(self, data):
            super().data_received(data)
            self.transport.write(b"answer:" + data)
            self.transport.close()
            self.transport.write(b"dropped")

    async def scenario(lp):
        server, tr, client, servers = await connected(lp, certs, AnswerAndClose)
        try:
            tr.write(b"question")
            await client.lost
            await servers[0].lost
            return bytes(client.data), client.events, servers[0].events
        finally:
            await close_server(server)

    assert same_as_asyncio(loop, scenario) == (
        b"answer:question", ["made", "eof", ("lost", None)], ["made", "eof", ("lost", None)])


def test_abort_mid_stream(loop, certs):
    """The client aborts while the server streams: the client hears
    connection_lost(None) at once, the server loses its connection too,
    and nothing is written after the abort."""
    class Streamer(Recorder):
        def connection_made(self, transport):
            super().connection_made(transport)
            self.push()

        def push(self):
            if self.transport.is_closing():
                return
            self.transport.write(bytes(64 * 1024))
            self.loop.call_later(0.001, self.push)

    async def scenario(lp):
        server, tr, client, servers = await connected(lp, certs, Streamer)
        try:
            await client.wait_for_bytes(256 * 1024)
            tr.abort()
            tr.write(b"after abort")  # dropped, as asyncio drops it
            exc = await client.lost
            await servers[0].lost
            return exc, client.events[-1], tr.is_closing(), servers[0].events[0]
        finally:
            await close_server(server)

    assert same_as_asyncio(loop, scenario, 20) == (None, ("lost", None), True, "made")


def test_close_after_eof_with_reading_paused_is_bounded(loop, certs):
    """The peer sends data and a bare TCP EOF (no close_notify) while the app
    has reading paused, then stays silent; the app closes. asyncio's
    SSLProtocol starts no shutdown timer on that path and waits until the app
    resumes reading, which it never does: shardloop's drops the connection
    after ssl_shutdown_timeout."""
    if not _support.is_shardloop(loop):
        pytest.skip("asyncio's SSLProtocol waits here without a timeout")

    def server(lst, done):
        conn, _ = lst.accept()
        s = certs.server_context().wrap_socket(blocking(conn), server_side=True)
        try:
            s.sendall(b"hi")
            done.wait(PEER_TIMEOUT)  # the client has paused reading
            s.sendall(b"more")
            s.shutdown(socket.SHUT_WR)  # drops the TLS layer first: a bare TCP EOF
            done.wait(PEER_TIMEOUT)
        finally:
            s.close()

    async def main():
        paused, done = threading.Event(), threading.Event()
        with listener() as lst:
            peer = asyncio.ensure_future(in_thread(server, lst, paused))
            try:
                tr, proto = await loop.create_connection(Recorder, "localhost", lst.getsockname()[1],
                                                         ssl=certs.client_context(), ssl_shutdown_timeout=0.2)
                await proto.wait_for_bytes(2)
                tr.pause_reading()
                paused.set()
                ssl_proto = tr._ssl_protocol
                while ssl_proto._state is not asyncio.sslproto.SSLProtocolState.FLUSHING:
                    await asyncio.sleep(0.005)  # eof_received() has run
                tr.close()
                exc = await asyncio.wait_for(proto.lost, 5)
            finally:
                done.set()
                paused.set()
            await peer
            return type(exc).__name__, str(exc)

    assert run(loop, main(), 15) == ("TimeoutError", "SSL shutdown timed out")


def test_stream_readers_fed_natively_through_tls(loop, certs):
    """Plaintext for an asyncio.StreamReaderProtocol goes into its reader
    without data_received/feed_data frames on the native TLS path (the
    Python SSLProtocol and asyncio's loop run both)."""
    frames = []

    def profile(frame, event, arg):
        if event == "call" and frame.f_code.co_name in ("data_received", "feed_data"):
            frames.append(frame.f_code.co_name)

    async def main():
        server = await asyncio.start_server(echo_handler, "127.0.0.1", 0, ssl=certs.server_context())
        try:
            reader, writer = await asyncio.open_connection("localhost", port_of(server),
                                                           ssl=certs.client_context())
            got = []
            sys.setprofile(profile)
            try:
                for chunk in (b"one", b"two" * 1000, b"three" * 10000):
                    writer.write(chunk)
                    got.append(await reader.readexactly(len(chunk)) == chunk)
            finally:
                sys.setprofile(None)
            writer.close()
            await writer.wait_closed()
            return got
        finally:
            await close_server(server)

    assert run(loop, main(), 30) == [True, True, True]
    # Each chunk is read at least once on each side: 6 feeds in Python. The
    # native path leaves at most the server's first, when it came with the
    # handshake's last flight (SSLProtocol._on_handshake_complete reads it).
    if _support.is_shardloop(loop) and shardloop._tls.NATIVE:
        assert frames.count("feed_data") <= 1, frames
    else:
        assert frames.count("feed_data") >= 6, frames

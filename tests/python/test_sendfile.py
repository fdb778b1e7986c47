"""loop.sock_sendfile() and loop.sendfile(): zero-copy transfers of real
files over real loopback TCP connections, the read-and-send fallbacks, the
file position afterwards, and asyncio's argument checks and errors.

Every test runs on asyncio's own loop (the reference) and on shardloop and
expects the same results.  Received bytes are compared by SHA-256 (and by
length), so a 50 MiB transfer is checked byte for byte without keeping a
second copy.  No test asserts on elapsed time: a transfer that must stay
in progress is held back by a peer that does not read.
"""

import asyncio
import hashlib
import io
import os
import socket
import ssl

import pytest

from _support import is_shardloop, run, spin, wait_until

BIG_SIZE = 50 * 1024 * 1024
BIG = 60.0  # run() bound for the 50 MiB transfers (ASan is slow)
SMALL_BUF = 32 * 1024  # SO_RCVBUF / SO_SNDBUF for peers that must not read


# ---------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def big_file(tmp_path_factory):
    """(path, sha256) of a 50 MiB file of random bytes."""
    path = tmp_path_factory.mktemp("sendfile") / "big.bin"
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        for _ in range(BIG_SIZE // (1 << 20)):
            block = os.urandom(1 << 20)
            digest.update(block)
            f.write(block)
    return path, digest.hexdigest()


@pytest.fixture
def small_data():
    return os.urandom(300_000)


@pytest.fixture
def small_file(tmp_path, small_data):
    path = tmp_path / "small.bin"
    path.write_bytes(small_data)
    return path


async def tcp_pair(loop, socks, rcvbuf=None):
    """(client, server) non-blocking TCP sockets connected over loopback."""
    lst = socks.listener(rcvbuf=rcvbuf)
    client = socks.add(socket.socket())
    client.setblocking(False)
    await loop.sock_connect(client, lst.getsockname())
    server, _ = await loop.sock_accept(lst)
    return client, socks.add(server)


async def receive_digest(loop, sock, limit=None, prefix=b""):
    """(byte count, sha256) of *prefix* and what *sock* receives until EOF
    (or *limit*)."""
    digest = hashlib.sha256(prefix)
    n = len(prefix)
    while limit is None or n < limit:
        chunk = await loop.sock_recv(sock, 1 << 20 if limit is None else min(1 << 20, limit - n))
        if not chunk:
            break
        digest.update(chunk)
        n += len(chunk)
    return n, digest.hexdigest()


async def receive_all(loop, sock):
    data = bytearray()
    while True:
        chunk = await loop.sock_recv(sock, 1 << 20)
        if not chunk:
            return bytes(data)
        data += chunk


async def in_progress(transfer):
    """Start *transfer* (to a peer that does not read): still running after
    the loop went round, so it is waiting for the peer."""
    task = asyncio.ensure_future(transfer)
    await spin()
    assert not task.done()
    return task


class Recorder(asyncio.Protocol):
    def __init__(self):
        self.data = bytearray()
        self.lost = asyncio.get_running_loop().create_future()
        self.paused = 0

    def data_received(self, data):
        self.data += data

    def pause_writing(self):
        self.paused += 1

    def connection_lost(self, exc):
        if not self.lost.done():
            self.lost.set_result(exc)


async def transport_pair(loop, socks, rcvbuf=None):
    """(transport, protocol, peer): a create_connection transport and the
    raw socket accepted on the other end."""
    lst = socks.listener(rcvbuf=rcvbuf)
    tr, proto = await loop.create_connection(Recorder, *lst.getsockname())
    peer, _ = await loop.sock_accept(lst)
    return tr, proto, socks.add(peer)


# ============================================================ sock_sendfile


def test_sock_sendfile_50_mib_byte_exact(loop, socks, big_file):
    path, digest = big_file

    async def main():
        client, server = await tcp_pair(loop, socks)
        with open(path, "rb") as f:
            receiver = asyncio.ensure_future(receive_digest(loop, server))
            sent = await loop.sock_sendfile(client, f)
            client.shutdown(socket.SHUT_WR)
            assert sent == BIG_SIZE
            assert f.tell() == BIG_SIZE  # the position follows what was sent
            assert await receiver == (BIG_SIZE, digest)
        assert loop.remove_writer(client) is False  # no watcher left behind

    run(loop, main(), BIG)


@pytest.mark.parametrize("offset, count", [
    (1000, 5000),
    (12345, None),
    (0, 1),
    (299_000, 10_000),  # count past the end: what is there is sent
    (300_000, None),  # offset at the end: nothing to send
    (400_000, 10),  # offset past the end
])
def test_sock_sendfile_offset_and_count(loop, socks, small_file, small_data, offset, count):
    async def main():
        client, server = await tcp_pair(loop, socks)
        with open(small_file, "rb") as f:
            f.seek(7)  # ignored: offset says where to start
            sent = await loop.sock_sendfile(client, f, offset, count)
            expected = small_data[offset:offset + count if count else None]
            assert sent == len(expected)
            # asyncio moves the position only when something was sent.
            assert f.tell() == (offset + sent if sent else 7)
        client.shutdown(socket.SHUT_WR)
        assert await receive_all(loop, server) == expected

    run(loop, main())


def test_sock_sendfile_empty_file(loop, socks, tmp_path):
    path = tmp_path / "empty.bin"
    path.write_bytes(b"")

    async def main():
        client, server = await tcp_pair(loop, socks)
        with open(path, "rb") as f:
            assert await loop.sock_sendfile(client, f) == 0
            assert f.tell() == 0
        client.shutdown(socket.SHUT_WR)
        assert await receive_all(loop, server) == b""

    run(loop, main())


@pytest.mark.parametrize("offset, count", [(0, None), (1000, 5000), (250_000, None)])
def test_sock_sendfile_falls_back_for_a_file_without_fileno(loop, socks, small_data, offset, count):
    async def main():
        client, server = await tcp_pair(loop, socks)
        f = io.BytesIO(small_data)
        receiver = asyncio.ensure_future(receive_all(loop, server))
        sent = await loop.sock_sendfile(client, f, offset, count)
        client.shutdown(socket.SHUT_WR)
        expected = small_data[offset:offset + count if count else None]
        assert sent == len(expected)
        assert f.tell() == offset + sent
        assert await receiver == expected

    run(loop, main())


def test_sock_sendfile_without_fallback_raises_for_a_file_without_fileno(loop, socks, small_data):
    async def main():
        client, server = await tcp_pair(loop, socks)
        f = io.BytesIO(small_data)
        with pytest.raises(asyncio.SendfileNotAvailableError, match="^not a regular file$"):
            await loop.sock_sendfile(client, f, fallback=False)
        assert f.tell() == 0

    run(loop, main())


def test_sock_sendfile_native_failure_without_fallback(loop, socks):
    """A pipe has a descriptor, but os.sendfile() cannot read from it: the
    native attempt fails before anything is sent."""
    r, w = os.pipe()
    f = socks.add(os.fdopen(r, "rb", buffering=0))
    socks.add(os.fdopen(w, "wb", buffering=0)).write(b"x" * 1000)

    async def main():
        client, server = await tcp_pair(loop, socks)
        with pytest.raises(asyncio.SendfileNotAvailableError, match="^os.sendfile call failed$"):
            await loop.sock_sendfile(client, f, 0, 1000, fallback=False)
        assert f.read(1000) == b"x" * 1000  # nothing was consumed

    run(loop, main())


def test_sock_sendfile_argument_errors(loop, socks, small_file, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("hello")

    async def main():
        client, server = await tcp_pair(loop, socks)
        udp = socks.add(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        udp.setblocking(False)
        with open(small_file, "rb") as f, open(text, "r") as t:
            cases = [
                ((client, t), ValueError, "file should be opened in binary mode"),
                ((udp, f), ValueError, "only SOCK_STREAM type sockets are supported"),
                ((client, f, 0, 0), ValueError, "count must be a positive integer (got 0)"),
                ((client, f, 0, -5), ValueError, "count must be a positive integer (got -5)"),
                ((client, f, 0, 2.5), TypeError, "count must be a positive integer (got 2.5)"),
                ((client, f, -1), ValueError, "offset must be a non-negative integer (got -1)"),
                ((client, f, "0"), TypeError, "offset must be a non-negative integer (got '0')"),
            ]
            for args, exc_type, message in cases:
                with pytest.raises(exc_type) as info:
                    await loop.sock_sendfile(*args)
                assert str(info.value) == message
                assert f.tell() == 0
        client.shutdown(socket.SHUT_WR)
        assert await receive_all(loop, server) == b""  # nothing went out

    run(loop, main())


def test_sock_sendfile_rejects_ssl_and_blocking_sockets(loop, socks, small_file):
    loop.set_debug(True)  # asyncio checks for a non-blocking socket in debug mode only
    ctx = ssl.create_default_context()
    tls = socks.add(ctx.wrap_socket(socket.socket(), server_hostname="example.com",
                                  do_handshake_on_connect=False))
    tls.setblocking(False)
    blocking = socks.add(socket.socket())

    async def main():
        with open(small_file, "rb") as f:
            with pytest.raises(TypeError, match="^Socket cannot be of type SSLSocket$"):
                await loop.sock_sendfile(tls, f)
            with pytest.raises(ValueError, match="^the socket must be non-blocking$"):
                await loop.sock_sendfile(blocking, f)

    run(loop, main())


def test_sock_sendfile_cancelled(loop, socks, big_file):
    """Deliberate divergence: asyncio's native path leaves the file position
    where it was when cancelled (only its other exits move it), although
    its documentation says the position is always updated; shardloop moves
    it after what was sent, so tell() says how much the peer gets."""
    path, _ = big_file

    async def main():
        client, server = await tcp_pair(loop, socks, rcvbuf=SMALL_BUF)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUF)
        with open(path, "rb") as f:
            expected = f.read(8 << 20)
            f.seek(0)
            task = await in_progress(loop.sock_sendfile(client, f))
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            position = f.tell()
            assert loop.remove_writer(client) is False  # no watcher left behind
            client.shutdown(socket.SHUT_WR)
            got = await receive_all(loop, server)
            assert 0 < len(got) < len(expected)
            assert got == expected[:len(got)]
            assert position == (len(got) if is_shardloop(loop) else 0)

    run(loop, main(), BIG)


def test_sock_sendfile_peer_gone(loop, socks, big_file):
    path, _ = big_file

    async def main():
        client, server = await tcp_pair(loop, socks, rcvbuf=SMALL_BUF)
        with open(path, "rb") as f:
            task = await in_progress(loop.sock_sendfile(client, f))
            server.close()  # unread data: the peer resets the connection
            with pytest.raises(OSError) as info:
                await task
            assert isinstance(info.value, (ConnectionError, BrokenPipeError))
            assert 0 < f.tell() < BIG_SIZE

    run(loop, main(), BIG)


# ============================================================ loop.sendfile


def test_sendfile_50_mib_between_writes_byte_exact(loop, socks, big_file):
    """Bytes written before sendfile() go out first (even when the transport
    still holds them), bytes written after go out last; reading resumes."""
    path, digest_of_file = big_file

    async def main():
        tr, proto, peer = await transport_pair(loop, socks, rcvbuf=SMALL_BUF)
        head = os.urandom(64 * 1024)
        before = bytearray()
        while tr.get_write_buffer_size() == 0:  # the peer is not reading yet
            tr.write(head)
            before += head
            await asyncio.sleep(0)
        tail = os.urandom(100_000)
        # Make room in the kernel without letting the transport flush: a
        # sendfile that did not wait for the transport's queue would now
        # overtake it.
        early = bytearray()
        while len(early) < 4 * SMALL_BUF:
            try:
                early += peer.recv(SMALL_BUF)
            except BlockingIOError:
                break
        assert early and tr.get_write_buffer_size() > 0
        receiver = asyncio.ensure_future(receive_digest(loop, peer, prefix=early))
        with open(path, "rb") as f:
            sent = await loop.sendfile(tr, f)
            assert sent == BIG_SIZE
            assert f.tell() == BIG_SIZE
        tr.write(tail)
        assert tr.is_reading()
        await loop.sock_sendall(peer, b"after sendfile")
        await wait_until(lambda: bytes(proto.data) == b"after sendfile", BIG)
        tr.close()
        n, digest = await receiver
        expected = hashlib.sha256(bytes(before))
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                expected.update(block)
        expected.update(tail)
        assert n == len(before) + BIG_SIZE + len(tail)
        assert digest == expected.hexdigest()
        await proto.lost

    run(loop, main(), BIG)


@pytest.mark.parametrize("offset, count", [(1000, 5000), (123_456, None)])
def test_sendfile_offset_and_count(loop, socks, small_file, small_data, offset, count):
    async def main():
        tr, proto, peer = await transport_pair(loop, socks)
        with open(small_file, "rb") as f:
            tr.write(b"<")
            sent = await loop.sendfile(tr, f, offset, count)
            tr.write(b">")
            # The transport owns its fd again once sendfile() is done.
            with pytest.raises(RuntimeError, match="is used by transport"):
                loop.add_reader(tr.get_extra_info("socket").fileno(), lambda: None)
            expected = small_data[offset:offset + count if count else None]
            assert sent == len(expected)
            assert f.tell() == offset + sent
        tr.close()
        assert await receive_all(loop, peer) == b"<" + expected + b">"
        await proto.lost

    run(loop, main())


def test_sendfile_fallback_for_a_file_without_fileno(loop, socks, small_data):
    async def main():
        tr, proto, peer = await transport_pair(loop, socks)
        f = io.BytesIO(small_data)
        receiver = asyncio.ensure_future(receive_all(loop, peer))
        tr.write(b"head")
        sent = await loop.sendfile(tr, f, 100)
        tr.write(b"tail")
        assert sent == len(small_data) - 100
        assert f.tell() == len(small_data)
        assert tr.get_protocol() is proto  # the stand-in protocol is gone
        assert tr.is_reading()
        tr.close()
        assert await receiver == b"head" + small_data[100:] + b"tail"
        await proto.lost

        tr, proto, peer = await transport_pair(loop, socks)
        with pytest.raises(asyncio.SendfileNotAvailableError):
            await loop.sendfile(tr, io.BytesIO(small_data), fallback=False)
        tr.close()
        await proto.lost

    run(loop, main())


def test_sendfile_write_during_transfer_raises(loop, socks, big_file):
    path, digest = big_file

    async def main():
        tr, proto, peer = await transport_pair(loop, socks, rcvbuf=SMALL_BUF)
        with open(path, "rb") as f:
            task = await in_progress(loop.sendfile(tr, f))
            with pytest.raises(RuntimeError, match="^unable to write; sendfile is in progress$"):
                tr.write(b"x")
            assert await asyncio.gather(task, receive_digest(loop, peer, BIG_SIZE)) == [
                BIG_SIZE, (BIG_SIZE, digest)]
        tr.write(b"ok")  # allowed again
        tr.close()
        assert await receive_all(loop, peer) == b"ok"

    run(loop, main(), BIG)


def test_sendfile_on_a_closing_transport(loop, socks, small_file):
    async def main():
        tr, proto, peer = await transport_pair(loop, socks)
        tr.close()
        with open(small_file, "rb") as f:
            with pytest.raises(RuntimeError, match="^Transport is closing$"):
                await loop.sendfile(tr, f)
            assert f.tell() == 0
        await proto.lost

    run(loop, main())


def test_sendfile_argument_errors_come_from_sock_sendfile(loop, socks, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("hello")

    async def main():
        tr, proto, peer = await transport_pair(loop, socks)
        with open(text, "r") as t:
            with pytest.raises(ValueError, match="^file should be opened in binary mode$"):
                await loop.sendfile(tr, t)
        tr.write(b"still usable")  # the transport is released again
        tr.close()
        assert await receive_all(loop, peer) == b"still usable"

    run(loop, main())


class _FakeTransport(asyncio.Transport):
    def is_closing(self):
        return False


class _FallbackOnlyTransport(_FakeTransport):
    _sendfile_compatible = asyncio.constants._SendfileMode.FALLBACK


@pytest.mark.parametrize("transport, fallback, message", [
    (_FakeTransport(), True, "sendfile is not supported for transport "),
    (_FallbackOnlyTransport(), False,
     "fallback is disabled and native sendfile is not supported for transport "),
])
def test_sendfile_unsupported_transports(loop, small_file, transport, fallback, message):
    async def main():
        with open(small_file, "rb") as f:
            with pytest.raises(RuntimeError) as info:
                await loop.sendfile(transport, f, fallback=fallback)
        assert str(info.value) == message + repr(transport)

    run(loop, main())


def test_sendfile_peer_closing_mid_transfer(loop, socks, big_file):
    path, _ = big_file

    async def main():
        tr, proto, peer = await transport_pair(loop, socks, rcvbuf=SMALL_BUF)
        with open(path, "rb") as f:
            task = await in_progress(loop.sendfile(tr, f))
            peer.close()  # unread data: the connection is reset
            with pytest.raises(OSError):
                await task
        tr.close()
        await proto.lost

    run(loop, main(), BIG)

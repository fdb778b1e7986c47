"""The contextvars context of protocol callbacks.

shardloop runs every callback of a transport's protocol in the context the
transport was created in, for every transport kind, as uvloop does (its
tests/test_context.py); README lists it under "Deliberate differences".
asyncio's loop agrees for the callbacks its selector drives (connection_made,
data_received, eof_received, and connection_lost after the peer closed) and
differs where the callback follows a call made elsewhere: close() or a
write() from another context, and a child's exit.  Those tests are marked
xfail (strict) on asyncio's loop.
"""

import asyncio
import contextvars
import os
import socket
import ssl
import sys

import pytest

from _support import is_shardloop, run
from test_tls import certs, requires_openssl  # noqa: F401  (the fixture)

cvar = contextvars.ContextVar("cvar", default="outer")


def asyncio_differs(request, loop, why):
    if not is_shardloop(loop):
        request.applymarker(pytest.mark.xfail(strict=True, reason="asyncio's loop: " + why))


class Recorder(asyncio.Protocol):
    """Records cvar's value in each callback (the first call of each)."""

    def __init__(self):
        loop = asyncio.get_running_loop()
        self.seen = {}
        self.made = loop.create_future()
        self.data = loop.create_future()
        self.eof = loop.create_future()
        self.paused = loop.create_future()
        self.lost = loop.create_future()

    def _note(self, name, fut=None):
        self.seen.setdefault(name, cvar.get())
        if fut is not None and not fut.done():
            fut.set_result(None)

    def connection_made(self, transport):
        self.transport = transport
        self._note("connection_made", self.made)

    def data_received(self, data):
        self._note("data_received", self.data)

    def datagram_received(self, data, addr):
        self._note("datagram_received", self.data)

    def eof_received(self):
        self._note("eof_received", self.eof)

    def pause_writing(self):
        self._note("pause_writing", self.paused)

    def resume_writing(self):
        self._note("resume_writing")

    def connection_lost(self, exc):
        self._note("connection_lost", self.lost)


async def exchange(proto, peer):
    """Bytes and then EOF from the (blocking) peer socket; the peer closes."""
    await proto.made
    peer.sendall(b"data")
    await proto.data
    peer.shutdown(socket.SHUT_WR)
    await proto.eof
    peer.close()
    await proto.lost


def all_inner(proto, names=("connection_made", "data_received", "eof_received", "connection_lost")):
    assert {name: proto.seen.get(name) for name in names} == dict.fromkeys(names, "inner")


FAMILIES = [pytest.param(socket.AF_INET, id="tcp"), pytest.param(socket.AF_UNIX, id="unix")]


async def serve(loop, family, factory, tmp_path, **kwargs):
    if family == socket.AF_UNIX:
        path = str(tmp_path / "s.sock")
        server = await loop.create_unix_server(factory, path, **kwargs)
        return server, path
    server = await loop.create_server(factory, "127.0.0.1", 0, **kwargs)
    return server, server.sockets[0].getsockname()


@pytest.mark.parametrize("family", FAMILIES)
def test_create_server_protocol(loop, family, tmp_path):
    async def main():
        cvar.set("inner")
        protos = []
        server, address = await serve(loop, family, lambda: protos.append(Recorder()) or protos[-1], tmp_path)
        peer = socket.socket(family)
        await loop.run_in_executor(None, peer.connect, address)
        await asyncio.sleep(0)
        while not protos:
            await asyncio.sleep(0)
        cvar.set("elsewhere")  # the task moves on: the transport keeps its own
        await exchange(protos[0], peer)
        server.close()
        await server.wait_closed()
        return protos[0]

    all_inner(run(loop, main()))


@pytest.mark.parametrize("family", FAMILIES)
def test_connect_accepted_socket_protocol(loop, family):
    async def main():
        a, b = socket.socketpair(family) if family == socket.AF_UNIX else _tcp_pair()
        cvar.set("inner")
        _, proto = await loop.connect_accepted_socket(Recorder, a)
        cvar.set("elsewhere")
        await exchange(proto, b)
        return proto

    all_inner(run(loop, main()))


def _tcp_pair():
    with socket.create_server(("127.0.0.1", 0)) as lst:
        b = socket.create_connection(lst.getsockname())
        a, _ = lst.accept()
    return a, b


def test_create_connection_protocol(loop):
    async def main():
        with socket.create_server(("127.0.0.1", 0)) as lst:
            cvar.set("inner")
            _, proto = await loop.create_connection(Recorder, *lst.getsockname())
            cvar.set("elsewhere")
            peer, _ = await loop.run_in_executor(None, lst.accept)
        await exchange(proto, peer)
        return proto

    all_inner(run(loop, main()))


def test_connection_lost_after_close_from_another_context(request, loop):
    asyncio_differs(request, loop, "close() schedules connection_lost in the caller's context")

    async def main():
        tr, proto, b = await accepted_in_inner(loop)
        loop.call_soon(_close_in, tr, "closing")
        await proto.lost
        b.close()
        return proto

    all_inner(run(loop, main()), ("connection_lost",))


async def accepted_in_inner(loop):
    """A connected transport made with cvar set to 'inner', and its peer."""
    a, b = socket.socketpair()
    cvar.set("inner")
    tr, proto = await loop.connect_accepted_socket(Recorder, a)
    await proto.made
    return tr, proto, b


def _close_in(transport, value):
    cvar.set(value)
    transport.close()


def test_pause_writing_after_a_write_from_another_context(request, loop):
    asyncio_differs(request, loop, "write() calls pause_writing() in the writer's context")

    async def main():
        tr, proto, b = await accepted_in_inner(loop)
        tr.set_write_buffer_limits(high=1024)
        ctx = contextvars.copy_context()
        ctx.run(cvar.set, "writer")
        while not proto.paused.done():
            ctx.run(tr.write, b"x" * 65536)
            await asyncio.sleep(0)
        tr.abort()
        b.close()
        return proto

    all_inner(run(loop, main()), ("pause_writing",))


def test_datagram_protocol(request, loop):
    asyncio_differs(request, loop, "close() schedules connection_lost in the caller's context")

    async def main():
        cvar.set("inner")
        tr, proto = await loop.create_datagram_endpoint(Recorder, local_addr=("127.0.0.1", 0))
        cvar.set("elsewhere")
        await proto.made
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"data", tr.get_extra_info("sockname"))
            await proto.data
        loop.call_soon(_close_in, tr, "closing")
        await proto.lost
        return proto

    all_inner(run(loop, main()), ("connection_made", "datagram_received", "connection_lost"))


def test_read_pipe_protocol(loop):
    async def main():
        r, w = os.pipe()
        cvar.set("inner")
        _, proto = await loop.connect_read_pipe(Recorder, os.fdopen(r, "rb", 0))
        cvar.set("elsewhere")
        await proto.made
        os.write(w, b"data")
        await proto.data
        os.close(w)
        await proto.lost
        return proto

    all_inner(run(loop, main()))


class ChildRecorder(asyncio.SubprocessProtocol):
    def __init__(self):
        self.seen = {}
        self.lost = asyncio.get_running_loop().create_future()

    def _note(self, name):
        self.seen.setdefault(name, cvar.get())

    def connection_made(self, transport):
        self._note("connection_made")

    def pipe_data_received(self, fd, data):
        self._note("pipe_data_received")

    def pipe_connection_lost(self, fd, exc):
        self._note("pipe_connection_lost")

    def process_exited(self):
        self._note("process_exited")

    def connection_lost(self, exc):
        self._note("connection_lost")
        self.lost.set_result(None)


def test_subprocess_protocol(request, loop):
    asyncio_differs(request, loop, "process_exited() and connection_lost() follow the child watcher")

    async def main():
        cvar.set("inner")
        tr, proto = await loop.subprocess_exec(ChildRecorder, sys.executable, "-c", "print('data')",
                                               stdin=None, stderr=None)
        cvar.set("elsewhere")
        await proto.lost
        tr.close()
        return proto

    all_inner(run(loop, main(), 30), ("connection_made", "pipe_data_received", "pipe_connection_lost",
                                      "process_exited", "connection_lost"))


@requires_openssl
def test_tls_server_protocol(loop, certs, tmp_path):  # noqa: F811
    async def main():
        cvar.set("inner")
        protos = []
        server, address = await serve(loop, socket.AF_INET, lambda: protos.append(Recorder()) or protos[-1],
                                      tmp_path, ssl=certs.server_context())
        cvar.set("elsewhere")
        client = certs.client_context()
        reader, writer = await asyncio.open_connection(*address, ssl=client, server_hostname="localhost")
        writer.write(b"data")
        await writer.drain()
        while not protos:
            await asyncio.sleep(0)
        await protos[0].data
        writer.close()
        await protos[0].lost
        server.close()
        await server.wait_closed()
        return protos[0]

    all_inner(run(loop, main(), 20), ("connection_made", "data_received", "connection_lost"))

"""Helpers and conventions shared by the test_tcp_*.py modules.

Every test runs on asyncio's own loop (the reference) and on shardloop and
expects the same results.  Where asyncio's behaviour depends on the Python
version, the test runs the same scenario on a fresh asyncio loop as well
and compares (``same_as_asyncio``) instead of hard-coding one version's
answer.

No test asserts on elapsed time.  "X does not happen" is checked by letting
the loop go round a fixed number of iterations after the kernel state is
settled (``spin``); "X happens" by waiting for it with a generous bound.
Peers that must not read get a small receive buffer, and "the transport
has buffered data" is reached by writing until the transport says so, so
no test depends on how much the kernel happens to buffer.

Scenarios that change process-wide state (RLIMIT_NOFILE) run in a child
interpreter.
"""

import asyncio
import contextlib
import os
import socket

import pytest

from _support import HAVE_IPV6, PY312, PY313, Recorder, close_server, echo_handler


requires_ipv6 = pytest.mark.skipif(not HAVE_IPV6, reason="no IPv6 loopback")
requires_py312 = pytest.mark.skipif(not PY312, reason="asyncio 3.12+ API")
requires_py313 = pytest.mark.skipif(not PY313, reason="asyncio 3.13+ API")
linux_only = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc (Linux)")

FAMILIES = [
    pytest.param(socket.AF_INET, id="ipv4"),
    pytest.param(socket.AF_INET6, id="ipv6", marks=requires_ipv6),
]

SMALL_BUF = 32 * 1024  # SO_RCVBUF / SO_SNDBUF for peers that must not read


async def accept(loop, lst, socks):
    conn, _ = await loop.sock_accept(lst)
    return socks.add(conn)


async def recv_until_eof_or_reset(loop, sock):
    data = bytearray()
    while True:
        try:
            chunk = await loop.sock_recv(sock, 1 << 20)
        except ConnectionResetError:
            return bytes(data), "reset"
        if not chunk:
            return bytes(data), "eof"
        data += chunk


async def fill_transport(tr, chunk=64 * 1024, until=None, cap=256 << 20):
    """Write *chunk*s to *tr* until ``until()`` is true (default: the
    transport holds data the kernel would not take).  Returns bytes written."""
    if until is None:
        until = lambda: tr.get_write_buffer_size() > 0  # noqa: E731
    data = b"w" * chunk
    sent = 0
    while not until():
        assert sent < cap, "the transport never buffered anything"
        tr.write(data)
        sent += len(data)
        await asyncio.sleep(0)
    return sent


def shrink_sndbuf(tr):
    tr.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUF)


class FlowRecorder(Recorder):
    def pause_writing(self):
        self.events.append(("pause_writing", self.transport.get_write_buffer_size()))

    def resume_writing(self):
        self.events.append(("resume_writing", self.transport.get_write_buffer_size()))

    def count(self, name):
        return sum(1 for e in self.events if isinstance(e, tuple) and e[0] == name)


async def connect_pair(loop, socks, factory=Recorder, family=socket.AF_INET, rcvbuf=None):
    """(transport, protocol, peer): a shardloop/asyncio transport from
    create_connection and the raw socket accepted on the other end."""
    lst = socks.listener(family, rcvbuf=rcvbuf)
    tr, proto = await loop.create_connection(factory, *lst.getsockname()[:2])
    peer = await accept(loop, lst, socks)
    return tr, proto, peer


async def connect_small_buffers(loop, socks, factory=Recorder):
    """connect_pair with small kernel buffers on both ends: what the peer
    does not read soon stays in the transport."""
    tr, proto, peer = await connect_pair(loop, socks, factory, rcvbuf=SMALL_BUF)
    shrink_sndbuf(tr)
    return tr, proto, peer


@contextlib.asynccontextmanager
async def stream_client(handler=echo_handler, host="127.0.0.1"):
    """(reader, writer) of a connection to ``asyncio.start_server(handler)``;
    the writer, then the server, are closed afterwards."""
    server = await asyncio.start_server(handler, host, 0)
    try:
        reader, writer = await asyncio.open_connection(host, server.sockets[0].getsockname()[1])
        try:
            yield reader, writer
        finally:
            writer.close()
            await writer.wait_closed()
    finally:
        await close_server(server)

"""Whether a transport calls its socket object's Python methods.

asyncio's selector transports call sock.recv()/sock.send(), so a socket
subclass overriding them sees the traffic (websockets' legacy
test_explicit_socket relies on it).  shardloop's transports, like uvloop's,
move the bytes in libuv on the descriptor itself: a deliberate difference
(README, "Deliberate differences").  The sock_* methods call the socket's
methods on both loops.
"""

import asyncio
import socket

from _support import is_shardloop, run


class TrackedSocket(socket.socket):
    calls = None

    def recv(self, *args):
        self.calls.append("recv")
        return super().recv(*args)

    def send(self, *args):
        self.calls.append("send")
        return super().send(*args)


def tracked_pair():
    a, b = socket.socketpair()
    tracked = TrackedSocket(a.family, a.type, a.proto, fileno=a.detach())
    tracked.calls = []
    tracked.setblocking(False)
    return tracked, b


def test_a_transport_and_the_socket_s_own_methods(loop):
    async def main():
        sock, peer = tracked_pair()
        reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(b"ping")
        await writer.drain()
        assert peer.recv(4) == b"ping"
        peer.sendall(b"pong")
        assert await reader.readexactly(4) == b"pong"
        writer.close()
        await writer.wait_closed()
        peer.close()
        return sock.calls

    calls = run(loop, main())
    if is_shardloop(loop):
        assert calls == []  # the deliberate difference
    else:
        assert "recv" in calls and "send" in calls


def test_sock_methods_call_the_socket_s_own_methods(loop):
    async def main():
        sock, peer = tracked_pair()
        try:
            peer.sendall(b"x")
            assert await loop.sock_recv(sock, 1) == b"x"
            return sock.calls
        finally:
            sock.close()
            peer.close()

    assert run(loop, main()) == ["recv"]

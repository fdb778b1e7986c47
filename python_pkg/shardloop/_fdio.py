"""Readiness-based I/O of shardloop.Loop: add_reader/add_writer (native
uv_poll watchers) and the low-level sock_* coroutines built on them, with
the semantics of asyncio's selector loop."""

from __future__ import annotations

import asyncio
import functools
import socket
from typing import Any, Callable

try:
    import ssl
except ImportError:  # pragma: no cover - Python built without ssl
    ssl = None  # type: ignore[assignment]


def _fileobj_to_fd(fileobj: Any) -> int:
    if isinstance(fileobj, int):
        fd = fileobj
    else:
        try:
            fd = int(fileobj.fileno())
        except (AttributeError, TypeError, ValueError):
            raise ValueError(f"Invalid file object: {fileobj!r}") from None
    if fd < 0:
        raise ValueError(f"Invalid file descriptor: {fd}")
    return fd


def _check_socket(sock: Any) -> None:
    if ssl is not None and isinstance(sock, ssl.SSLSocket):
        raise TypeError("Socket cannot be of type SSLSocket")
    if sock.gettimeout() != 0:
        raise ValueError("the socket must be non-blocking")


def _accept_nonblocking(sock: socket.socket) -> tuple:
    conn, address = sock.accept()
    conn.setblocking(False)
    return conn, address


def _connect_result(sock: socket.socket, address: Any) -> None:
    # Writable after a non-blocking connect: SO_ERROR says how it ended.
    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err != 0:
        raise OSError(err, f"Connect call failed {address}")


class FdIOMixin:
    """Mixed into shardloop.Loop; relies on its native _add_reader & co."""

    _add_reader: Callable[..., Any]
    _add_writer: Callable[..., Any]
    _remove_reader: Callable[[int], bool]
    _remove_writer: Callable[[int], bool]
    create_future: Callable[[], asyncio.Future]

    def add_reader(self, fd: Any, callback: Callable[..., object], *args: Any) -> None:
        self._add_reader(_fileobj_to_fd(fd), callback, *args)

    def remove_reader(self, fd: Any) -> bool:
        return self._remove_reader(_fileobj_to_fd(fd))

    def add_writer(self, fd: Any, callback: Callable[..., object], *args: Any) -> None:
        self._add_writer(_fileobj_to_fd(fd), callback, *args)

    def remove_writer(self, fd: Any) -> bool:
        return self._remove_writer(_fileobj_to_fd(fd))

    # -- sock_*: try at once; if the kernel says "later", wait for readiness.

    async def _sock_io(self, sock: socket.socket, readable: bool, op: Callable[..., Any], *args: Any) -> Any:
        _check_socket(sock)
        try:
            return op(*args)
        except (BlockingIOError, InterruptedError):
            pass
        return await self._retry_when_ready(sock.fileno(), readable, op, args)

    async def _retry_when_ready(self, fd: int, readable: bool, op: Callable[..., Any], args: tuple) -> Any:
        fut = self.create_future()
        add = self._add_reader if readable else self._add_writer
        handle = add(fd, self._sock_io_ready, fut, op, args)
        fut.add_done_callback(functools.partial(self._sock_io_done, fd, readable, handle))
        try:
            return await fut
        finally:
            fut = None  # type: ignore[assignment]  # no cycle through the traceback

    @staticmethod
    def _sock_io_ready(fut: asyncio.Future, op: Callable[..., Any], args: tuple) -> None:
        if fut.done():  # cancelled while the readiness callback was queued
            return
        try:
            result = op(*args)
        except (BlockingIOError, InterruptedError):
            return
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            fut.set_exception(exc)
        else:
            fut.set_result(result)

    def _sock_io_done(self, fd: int, readable: bool, handle: Any, fut: asyncio.Future) -> None:
        # A handle replaced by a later add_reader/add_writer is cancelled:
        # the watch belongs to someone else now.
        if not handle.cancelled():
            (self._remove_reader if readable else self._remove_writer)(fd)

    async def sock_recv(self, sock: socket.socket, n: int) -> bytes:
        return await self._sock_io(sock, True, sock.recv, n)

    async def sock_recv_into(self, sock: socket.socket, buf: Any) -> int:
        return await self._sock_io(sock, True, sock.recv_into, buf)

    async def sock_recvfrom(self, sock: socket.socket, bufsize: int) -> tuple:
        return await self._sock_io(sock, True, sock.recvfrom, bufsize)

    async def sock_recvfrom_into(self, sock: socket.socket, buf: Any, nbytes: int = 0) -> tuple:
        return await self._sock_io(sock, True, sock.recvfrom_into, buf, nbytes)

    async def sock_sendto(self, sock: socket.socket, data: Any, address: Any) -> int:
        return await self._sock_io(sock, False, sock.sendto, data, address)

    async def sock_accept(self, sock: socket.socket) -> tuple:
        return await self._sock_io(sock, True, _accept_nonblocking, sock)

    async def sock_sendall(self, sock: socket.socket, data: Any) -> None:
        _check_socket(sock)
        view = memoryview(data).cast("B")
        try:
            sent = sock.send(view)
        except (BlockingIOError, InterruptedError):
            sent = 0
        if sent == len(view):
            return
        fut = self.create_future()
        fd = sock.fileno()
        progress = [sent]
        handle = self._add_writer(fd, self._sock_sendall_ready, fut, sock, view, progress)
        fut.add_done_callback(functools.partial(self._sock_io_done, fd, False, handle))
        await fut

    @staticmethod
    def _sock_sendall_ready(fut: asyncio.Future, sock: socket.socket, view: memoryview, progress: list) -> None:
        if fut.done():
            return
        try:
            progress[0] += sock.send(view[progress[0]:])
        except (BlockingIOError, InterruptedError):
            return
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            fut.set_exception(exc)
            return
        if progress[0] == len(view):
            fut.set_result(None)

    async def sock_connect(self, sock: socket.socket, address: Any) -> None:
        _check_socket(sock)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            address = await self._resolve_for(sock, address)
        try:
            sock.connect(address)
            return
        except (BlockingIOError, InterruptedError):
            pass
        await self._retry_when_ready(sock.fileno(), False, _connect_result, (sock, address))

    async def _resolve_for(self, sock: socket.socket, address: Any) -> Any:
        host, port = address[:2]
        try:
            # Numeric hosts resolve without a lookup (and without a thread).
            infos = socket.getaddrinfo(host, port, sock.family, sock.type, sock.proto, socket.AI_NUMERICHOST)
        except socket.gaierror:
            infos = await self.getaddrinfo(host, port, family=sock.family, type=sock.type, proto=sock.proto)
        else:
            if len(address) > 2:  # IPv6 flowinfo/scope id given: keep them
                return address
        return infos[0][4]

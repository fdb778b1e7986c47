"""Readiness-based I/O of shardloop.Loop: add_reader/add_writer (native
uv_poll watchers) and the low-level sock_* coroutines built on them
(sock_sendfile included), with the semantics of asyncio's selector loop."""

from __future__ import annotations

import asyncio
import errno
import functools
import io
import os
import socket
import weakref
from asyncio import base_events, futures
from asyncio.exceptions import SendfileNotAvailableError
from typing import Any, Callable

try:
    import ssl
except ImportError:  # pragma: no cover - Python built without ssl
    ssl = None  # type: ignore[assignment]


# What create_future() makes (shardloop._core._set_asyncio_types): a native
# sock_* call returns one only when it has to wait.
_Future = futures.Future


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


class _SendfileJob:
    """One sock_sendfile: os.sendfile from `offset` on, one call per
    writability event, the way asyncio's unix loop drives it."""

    def __init__(self, sock_fd: int, file_fd: int, offset: int, count: int | None, blocksize: int) -> None:
        self.sock_fd = sock_fd
        self.file_fd = file_fd
        self.offset = offset
        self.count = count
        self.blocksize = blocksize
        self.total = 0
        self.waited = False

    def step(self) -> bool:
        """Send one chunk; True once the count is reached or the file ends."""
        if self.count:
            self.blocksize = self.count - self.total
            if self.blocksize <= 0:
                return True
        try:
            sent = os.sendfile(self.sock_fd, self.file_fd, self.offset, self.blocksize)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            if self.total == 0:
                # Nothing sent yet (e.g. a file sendfile cannot map): the
                # caller may still fall back to read + send.
                raise SendfileNotAvailableError("os.sendfile call failed") from exc
            if self.waited and exc.errno == errno.ENOTCONN and type(exc) is not ConnectionError:
                # The peer went away mid-transfer: the same error on every POSIX system.
                raise ConnectionError("socket is not connected", errno.ENOTCONN) from exc
            raise
        if sent == 0:
            return True
        self.offset += sent
        self.total += sent
        return False

    def advance(self) -> int:
        """step() for _retry_when_ready: the total once done, else "later"."""
        if not self.step():
            raise BlockingIOError
        return self.total

    def update_file_position(self) -> None:
        if self.total > 0:
            os.lseek(self.file_fd, self.offset, os.SEEK_SET)


class FdIOMixin:
    """Mixed into shardloop.Loop; relies on its native _add_reader & co."""

    _add_reader: Callable[..., Any]
    _add_writer: Callable[..., Any]
    _remove_reader: Callable[[int], bool]
    _remove_writer: Callable[[int], bool]
    _note_fileobj: Callable[[int, Any], None]
    _watched_fd: Callable[[Any], int | None]
    create_future: Callable[[], asyncio.Future]

    # -- fds owned by transports: asyncio refuses watchers on them. The dict
    # is the native loop's (its sock_* waits check it), {fd: weakref}.

    _fd_transports: dict[int, weakref.ref]

    def _own_fd(self, fd: int, transport: Any) -> None:
        self._fd_transports[fd] = weakref.ref(transport)

    def _disown_fd(self, fd: int, transport: Any) -> None:
        ref = self._fd_transports.get(fd)
        if ref is not None and ref() in (transport, None):
            del self._fd_transports[fd]

    def _ensure_fd_no_transport(self, fd: Any, fileno: int) -> None:
        ref = self._fd_transports.get(fileno)
        transport = ref() if ref is not None else None
        if transport is not None and not transport.is_closing():
            raise RuntimeError(f"File descriptor {fd!r} is used by transport {transport!r}")

    def _unowned_fileno(self, fd: Any) -> int:
        fileno = _fileobj_to_fd(fd)
        self._ensure_fd_no_transport(fd, fileno)
        return fileno

    def _watched_fileno(self, fd: Any) -> int:
        """The fd a watch on `fd` uses. A file object closed while watched
        has fileno() -1: its watch is found by the object, as asyncio's
        selector finds its key, else the ValueError stands."""
        try:
            return self._unowned_fileno(fd)
        except ValueError:
            fileno = None if isinstance(fd, int) else self._watched_fd(fd)
            if fileno is None:
                raise
            return fileno

    def add_reader(self, fd: Any, callback: Callable[..., object], *args: Any) -> None:
        fileno = self._watched_fileno(fd)
        self._add_reader(fileno, callback, *args)
        if fd is not fileno:
            self._note_fileobj(fileno, fd)

    def remove_reader(self, fd: Any) -> bool:
        return self._remove_reader(self._watched_fileno(fd))

    def add_writer(self, fd: Any, callback: Callable[..., object], *args: Any) -> None:
        fileno = self._watched_fileno(fd)
        self._add_writer(fileno, callback, *args)
        if fd is not fileno:
            self._note_fileobj(fileno, fd)

    def remove_writer(self, fd: Any) -> bool:
        return self._remove_writer(self._watched_fileno(fd))

    # -- sock_*: native (bindings/sock_ops.cpp). Each _sock_* call tries the
    # system call at once and returns its result; only when the kernel says
    # "later" does it return a future, which the engine completes when the
    # socket is ready; _sock_wait awaits it and forgets a cancelled wait at
    # once (else at the socket's next event). A call that completes at once
    # costs no second coroutine. The callers hold _sock_wait's coroutine, not
    # the future, while they wait: a failed call's error then reaches the
    # caller without a reference cycle through its traceback's frames.

    _sock_recv: Callable[..., Any]
    _sock_recv_into: Callable[..., Any]
    _sock_recvfrom: Callable[..., Any]
    _sock_recvfrom_into: Callable[..., Any]
    _sock_sendto: Callable[..., Any]
    _sock_sendall: Callable[..., Any]
    _sock_accept: Callable[..., Any]
    _sock_connect: Callable[..., Any]
    _sock_forget: Callable[[Any, Any], None]

    async def _sock_wait(self, sock: socket.socket, fut: asyncio.Future) -> Any:
        try:
            return await fut
        except BaseException:
            self._sock_forget(sock, fut)
            fut = None  # type: ignore[assignment]  # no cycle through the traceback
            raise

    async def sock_recv(self, sock: socket.socket, n: int) -> bytes:
        r = self._sock_recv(sock, n)
        if r.__class__ is _Future:
            r = self._sock_wait(sock, r)  # from here the future is only in its frame
            r = await r
        return r

    async def sock_recv_into(self, sock: socket.socket, buf: Any) -> int:
        r = self._sock_recv_into(sock, buf)
        if r.__class__ is _Future:
            r = self._sock_wait(sock, r)  # from here the future is only in its frame
            r = await r
        return r

    async def sock_recvfrom(self, sock: socket.socket, bufsize: int) -> tuple:
        r = self._sock_recvfrom(sock, bufsize)
        if r.__class__ is _Future:
            r = self._sock_wait(sock, r)  # from here the future is only in its frame
            r = await r
        return r

    async def sock_recvfrom_into(self, sock: socket.socket, buf: Any, nbytes: int = 0) -> tuple:
        r = self._sock_recvfrom_into(sock, buf, nbytes)
        if r.__class__ is _Future:
            r = self._sock_wait(sock, r)  # from here the future is only in its frame
            r = await r
        return r

    async def sock_sendto(self, sock: socket.socket, data: Any, address: Any) -> int:
        r = self._sock_sendto(sock, data, address)
        if r.__class__ is _Future:
            r = self._sock_wait(sock, r)  # from here the future is only in its frame
            r = await r
        return r

    async def sock_accept(self, sock: socket.socket) -> tuple:
        r = self._sock_accept(sock)
        if r.__class__ is _Future:
            r = self._sock_wait(sock, r)  # from here the future is only in its frame
            r = await r
        return r

    async def sock_sendall(self, sock: socket.socket, data: Any) -> None:
        r = self._sock_sendall(sock, data)
        if r.__class__ is _Future:
            r = self._sock_wait(sock, r)
            await r

    async def sock_connect(self, sock: socket.socket, address: Any) -> None:
        _check_socket(sock)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            address = await self._resolve_for(sock, address)
        r = self._sock_connect(sock, address)
        if r.__class__ is _Future:
            r = self._sock_wait(sock, r)
            await r

    # -- sock_sendfile waits for writability the asyncio way (add_writer).

    async def _retry_when_ready(self, fd: int, readable: bool, op: Callable[..., Any], args: tuple) -> Any:
        self._ensure_fd_no_transport(fd, fd)
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
        finally:
            fut = None  # type: ignore[assignment]  # the error's traceback holds this frame: no cycle

    def _sock_io_done(self, fd: int, readable: bool, handle: Any, fut: asyncio.Future) -> None:
        # A handle replaced by a later add_reader/add_writer is cancelled:
        # the watch belongs to someone else now.
        if not handle.cancelled():
            (self._remove_reader if readable else self._remove_writer)(fd)

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

    # -- sock_sendfile: zero-copy os.sendfile, else read + sock_sendall.

    async def sock_sendfile(self, sock: socket.socket, file: Any, offset: int = 0,
                            count: int | None = None, *, fallback: bool = True) -> int:
        _check_socket(sock)
        # asyncio's own argument checks and read+send fallback, run on this loop.
        base_events.BaseEventLoop._check_sendfile_params(self, sock, file, offset, count)
        try:
            return await self._sock_sendfile_native(sock, file, offset, count)
        except SendfileNotAvailableError:
            if not fallback:
                raise
        return await base_events.BaseEventLoop._sock_sendfile_fallback(self, sock, file, offset, count)

    async def _sock_sendfile_native(self, sock: socket.socket, file: Any, offset: int,
                                    count: int | None) -> int:
        if not hasattr(os, "sendfile"):
            raise SendfileNotAvailableError("os.sendfile() is not available")
        try:
            file_fd = file.fileno()
        except (AttributeError, io.UnsupportedOperation):
            raise SendfileNotAvailableError("not a regular file") from None
        try:
            size = os.fstat(file_fd).st_size
        except OSError:
            raise SendfileNotAvailableError("not a regular file") from None
        blocksize = count if count else size
        if not blocksize:
            return 0  # empty file
        job = _SendfileJob(sock.fileno(), file_fd, offset, count, blocksize)
        try:
            if job.step():
                return job.total
            job.waited = True
            return await self._retry_when_ready(job.sock_fd, False, job.advance, ())
        finally:
            # Sent or not, the file position ends after what went out.
            job.update_file_position()

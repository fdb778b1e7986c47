"""Pipes: connect_read_pipe / connect_write_pipe.

The bytes move through the native stream on libuv's uv_pipe_t
(``_core.Stream(..., pipe=True)``): reads and queued writes stay in C.
libuv owns the descriptor it is given, so it gets a duplicate and the pipe
object stays the caller's, closed when the transport is done, as asyncio
does. A write pipe also watches its own fd for readability (asyncio's trick):
a pipe's write end polls ready once the reader has gone, which a stream with
nothing queued would otherwise never notice."""

from __future__ import annotations

import asyncio
import contextvars
import errno
import logging
import os
import select
import stat
from asyncio import transports
from typing import Any

from . import _core
from ._transport_rules import PausableReads, TransportBase

logger = logging.getLogger("asyncio")

# asyncio warns after this many writes to a lost pipe.


def _set_result_unless_cancelled(fut: asyncio.Future, result: Any) -> None:
    if not fut.cancelled():
        fut.set_result(result)


def _pollable(fd: int) -> bool:
    # Pipes and sockets always are; some character devices (/dev/null) are
    # refused by epoll, and libuv aborts the process if one reaches it.
    ep = select.epoll()
    try:
        ep.register(fd, select.EPOLLIN)
    except PermissionError:
        return False
    finally:
        ep.close()
    return True


def _no_op(*args: Any) -> None:
    pass


class _PipeTransport(TransportBase):
    """What both directions share: the kind check, the native stream and
    the order of closing."""

    _protocol: Any
    _pipe: Any = None  # set once the pipe is accepted: __del__ relies on it
    _stream: Any = None

    def _open(self, loop: Any, pipe: Any, protocol: Any, message: str) -> int:
        fileno = pipe.fileno()
        mode = os.fstat(fileno).st_mode
        if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)):
            raise ValueError(message)
        os.set_blocking(fileno, False)
        self._unpollable = stat.S_ISCHR(mode) and not _pollable(fileno)
        # Every protocol callback runs in the context the transport was made
        # in, as uvloop does (README: Deliberate differences).
        self._context = contextvars.copy_context()
        if not self._unpollable:
            fd = os.dup(fileno)
            try:
                self._stream = _core.Stream(loop, fd, self._on_read, self._on_write, _no_op, pipe=True,
                                            context=self._context)
            except BaseException:
                os.close(fd)
                raise
        self._loop = loop
        self._pipe = pipe
        self._fileno = fileno
        self._protocol = protocol
        self._extra["pipe"] = pipe  # type: ignore[attr-defined]
        self._closing = False
        self._lost = False
        return mode

    def _on_read(self, data: Any) -> None:
        raise NotImplementedError

    def _on_write(self, error: OSError | None, queued: int) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        info = [type(self).__name__]
        if self._pipe is None:
            info.append("closed")
        elif self._closing:
            info.append("closing")
        info.append(f"fd={getattr(self, '_fileno', None)}")
        if self._pipe is not None:
            info.append(self._state())
        return "<{}>".format(" ".join(info))

    def _state(self) -> str:
        return "open"

    def _owns_resource(self) -> bool:
        return self._pipe is not None

    def _release(self) -> None:
        if self._stream is not None:
            # Dropping it also breaks the stream <-> transport cycle now.
            stream, self._stream = self._stream, None
            stream.close()
        if self._pipe is not None:
            self._pipe.close()
            self._pipe = None

    def _schedule_connection_lost(self, exc: BaseException | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._loop.call_soon(self._call_connection_lost, exc, context=self._context)

    def _call_connection_lost(self, exc: BaseException | None) -> None:
        self._lost = True
        try:
            self._protocol.connection_lost(exc)
        finally:
            self._release()
            self._protocol = None
            self._loop = None

    def _report(self, exc: BaseException, message: str) -> None:
        self._loop.call_exception_handler({
            "message": message,
            "exception": exc,
            "transport": self,
            "protocol": self._protocol,
        })


class ReadPipeTransport(_PipeTransport, PausableReads, transports.ReadTransport):
    def __init__(self, loop: Any, pipe: Any, protocol: asyncio.BaseProtocol,
                 waiter: asyncio.Future | None = None, extra: dict | None = None) -> None:
        super().__init__(extra)
        self._open(loop, pipe, protocol, "Pipe transport is for pipes/sockets only.")
        self._paused = False
        loop.call_soon(protocol.connection_made, self, context=self._context)
        # Reading starts only once connection_made() has run.
        loop.call_soon(self._start_reading)
        if waiter is not None:
            loop.call_soon(_set_result_unless_cancelled, waiter, None)

    def _start_reading(self) -> None:
        if self._closing or self._paused:
            return
        if self._unpollable:
            # What registering the fd with epoll raises, as asyncio's loop
            # reports it from the same callback.
            raise PermissionError(errno.EPERM, os.strerror(errno.EPERM))
        self._stream.read_start()

    def _on_read(self, data: Any) -> None:
        if data.__class__ is not bytes:
            self._fatal_error(data, "Fatal read error on pipe transport")
        elif data:
            try:
                self._protocol.data_received(data)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                # asyncio's loop reports it as a failed callback and the
                # pipe keeps reading.
                self._report(exc, f"Exception in callback {type(self).__name__}.data_received()")
        else:
            if self._loop.get_debug():
                logger.info("%r was closed by peer", self)
            self._closing = True
            self._stream.read_stop()
            self._loop.call_soon(self._protocol.eof_received, context=self._context)
            self._schedule_connection_lost(None)

    def _stop_reading(self) -> None:
        if self._stream is not None:
            self._stream.read_stop()

    def _state(self) -> str:
        if self._loop.is_closed():
            return "open"  # asyncio's wording once its selector is gone
        return "polling" if self._stream is not None and self.is_reading() else "idle"

    def close(self) -> None:
        if not self._closing:
            self._close(None)

    def _fatal_error(self, exc: BaseException, message: str = "Fatal error on pipe transport") -> None:
        if isinstance(exc, OSError) and exc.errno == errno.EIO:
            if self._loop.get_debug():
                logger.debug("%r: %s", self, message, exc_info=True)
        else:
            self._report(exc, message)
        self._close(exc)

    def _close(self, exc: BaseException | None) -> None:
        self._closing = True
        if self._stream is not None and not self._stream.closed:
            self._stream.read_stop()
        self._schedule_connection_lost(exc)


class WritePipeTransport(_PipeTransport, transports._FlowControlMixin, transports.WriteTransport):
    def __init__(self, loop: Any, pipe: Any, protocol: asyncio.BaseProtocol,
                 waiter: asyncio.Future | None = None, extra: dict | None = None) -> None:
        super().__init__(extra, loop)
        mode = self._open(loop, pipe, protocol, "Pipe transport is only for pipes, sockets and character devices")
        self._conn_lost = 0
        self._watching = False
        loop.call_soon(protocol.connection_made, self, context=self._context)
        if stat.S_ISSOCK(mode) or stat.S_ISFIFO(mode):
            loop.call_soon(self._watch_peer)
        if waiter is not None:
            loop.call_soon(_set_result_unless_cancelled, waiter, None)

    def _state(self) -> str:
        return f"open bufsize={self.get_write_buffer_size()}"

    # pause_writing()/resume_writing() too run in the transport's context,
    # whoever wrote.
    def _maybe_pause_protocol(self) -> None:
        _core._run_in_context(self._context, super()._maybe_pause_protocol)

    def _maybe_resume_protocol(self) -> None:
        _core._run_in_context(self._context, super()._maybe_resume_protocol)

    def _watch_peer(self) -> None:
        if not self._closing and self._pipe is not None:
            self._loop._add_reader(self._fileno, _core._run_in_context, self._context, self._peer_closed)
            self._watching = True

    def _unwatch_peer(self) -> None:
        if self._watching:
            self._watching = False
            self._loop._remove_reader(self._fileno)

    def _peer_closed(self) -> None:
        if self._loop.get_debug():
            logger.info("%r was closed by peer", self)
        # Like asyncio: only data that can no longer arrive makes it an error.
        self._close(BrokenPipeError() if self.get_write_buffer_size() else None)

    def get_write_buffer_size(self) -> int:
        return self._stream.queued if self._stream is not None else 0

    def write(self, data: Any) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            # asyncio asserts the type: the same exception, with -O too.
            raise AssertionError(repr(data))
        if not data:
            return
        if self._conn_lost or self._closing:
            self._drop_write_after_lost("pipe closed by peer or os.write(pipe, data) raised exception.")
            return
        try:
            if self._unpollable:
                self._write_unpollable(data)
                return
            queued = self._stream.write(data)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._conn_lost += 1
            self._fatal_error(exc, "Fatal write error on pipe transport")
            return
        if queued:
            self._stream.notify_writes = True
            self._maybe_pause_protocol()

    def _write_unpollable(self, data: Any) -> None:
        # A device epoll refuses (/dev/null) is always ready: asyncio writes
        # it at once and only registers a writer, which fails, if it is not.
        view = memoryview(data).cast("B")
        while view:
            try:
                n = os.write(self._fileno, view)
            except (BlockingIOError, InterruptedError):
                raise PermissionError(errno.EPERM, os.strerror(errno.EPERM)) from None
            view = view[n:]

    def _on_write(self, error: OSError | None, queued: int) -> None:
        if error is not None:
            self._conn_lost += 1
            self._fatal_error(error, "Fatal write error on pipe transport")
            return
        if queued:
            self._maybe_resume_protocol()
            return
        self._stream.notify_writes = False
        self._maybe_resume_protocol()  # the protocol may write again here
        if self._closing and not self.get_write_buffer_size():
            self._unwatch_peer()
            if not self._lost:
                self._call_connection_lost(None)

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        if self._closing:
            return
        self._closing = True
        if not self.get_write_buffer_size():
            self._unwatch_peer()
            self._schedule_connection_lost(None)
        # else _on_write finishes once libuv has written the rest

    def close(self) -> None:
        if self._pipe is not None and not self._closing:
            self.write_eof()

    def abort(self) -> None:
        self._close(None)

    def _fatal_error(self, exc: BaseException, message: str = "Fatal error on pipe transport") -> None:
        if isinstance(exc, OSError):
            if self._loop.get_debug():
                logger.debug("%r: %s", self, message, exc_info=True)
        else:
            self._report(exc, message)
        self._close(exc)

    def _close(self, exc: BaseException | None = None) -> None:
        if self._lost:
            return
        self._closing = True
        if self._stream is not None:
            self._stream.close()  # drops whatever is still queued
        self._unwatch_peer()
        self._schedule_connection_lost(exc)


class PipeMixin:
    def _make_read_pipe_transport(self, pipe: Any, protocol: asyncio.BaseProtocol,
                                  waiter: asyncio.Future | None = None,
                                  extra: dict | None = None) -> ReadPipeTransport:
        return ReadPipeTransport(self, pipe, protocol, waiter, extra)

    def _make_write_pipe_transport(self, pipe: Any, protocol: asyncio.BaseProtocol,
                                   waiter: asyncio.Future | None = None,
                                   extra: dict | None = None) -> WritePipeTransport:
        return WritePipeTransport(self, pipe, protocol, waiter, extra)

    async def connect_read_pipe(self, protocol_factory: Any, pipe: Any) -> tuple:
        return await self._connect_pipe(self._make_read_pipe_transport, protocol_factory, pipe, "Read")

    async def connect_write_pipe(self, protocol_factory: Any, pipe: Any) -> tuple:
        return await self._connect_pipe(self._make_write_pipe_transport, protocol_factory, pipe, "Write")

    async def _connect_pipe(self, make: Any, protocol_factory: Any, pipe: Any, kind: str) -> tuple:
        protocol = protocol_factory()
        waiter = self.create_future()  # type: ignore[attr-defined]
        transport = make(pipe, protocol, waiter)
        try:
            await waiter
        except BaseException:
            transport.close()
            raise
        if self.get_debug():  # type: ignore[attr-defined]
            logger.debug("%s pipe %r connected: (%r, %r)", kind, pipe.fileno(), transport, protocol)
        return transport, protocol

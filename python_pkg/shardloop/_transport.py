"""The TCP transport: asyncio's Transport contract over the native
_core.Stream (the engine moves the bytes; this class keeps asyncio's rules for
protocol calls, flow control and the order of closing)."""

from __future__ import annotations

import asyncio
import contextvars
import errno
import logging
import os
import socket
import sys
from asyncio import constants, trsock
from typing import Any

from . import _core
from ._transport_rules import TransportBase, fatal_error

logger = logging.getLogger("asyncio")

# asyncio warns after this many writes to a lost connection.


def engine_fd(sock: socket.socket) -> tuple[int, bool]:
    """The descriptor an engine object (Stream, Datagram) takes over, and
    whether it is the socket's own.

    The engine gets a duplicate: the socket object keeps its own descriptor,
    so get_extra_info('socket') stays a real socket and each side closes
    exactly what it owns. With no descriptor to spare, the engine takes the
    socket's own, and the socket object lets go of it (detach) instead of
    closing it."""
    try:
        return os.dup(sock.fileno()), False
    except OSError as exc:
        if exc.errno not in (errno.EMFILE, errno.ENFILE):
            raise
        return sock.fileno(), True


def _set_result_unless_cancelled(fut: asyncio.Future, result: Any) -> None:
    if not fut.cancelled():
        fut.set_result(result)


class TcpTransport(TransportBase, asyncio.Transport):
    _start_tls_compatible = True  # loop.start_tls() accepts it
    _sendfile_compatible = constants._SendfileMode.TRY_NATIVE  # loop.sendfile(): os.sendfile

    # transport.write is the native stream's write_fast while nothing below
    # stands in its way; these four, when set, hand writes to _write (the
    # full rules) and so are properties that keep the native flag current.
    def _fast_state(name: str) -> property:  # type: ignore[misc]
        slot = "_" + name + "_"

        def get(self: Any) -> Any:
            return getattr(self, slot)

        def set_(self: Any, value: Any) -> None:
            setattr(self, slot, value)
            stream = self.__dict__.get("_stream")
            if stream is not None:
                stream.fast_write = not (self._closing_ or self._eof_ or self._conn_lost_
                                         or self._empty_waiter_ is not None)
                stream.closing = self._closing_
        return property(get, set_)

    _closing = _fast_state("closing")
    _eof = _fast_state("eof")
    _conn_lost = _fast_state("conn_lost")
    _empty_waiter = _fast_state("empty_waiter")  # set while loop.sendfile() owns the socket
    _closing_ = _eof_ = False
    _conn_lost_ = 0
    _empty_waiter_: asyncio.Future | None = None
    del _fast_state

    def __init__(self, loop: Any, sock: socket.socket, protocol: asyncio.BaseProtocol,
                 waiter: asyncio.Future | None = None, extra: dict | None = None,
                 server: Any = None) -> None:
        super().__init__(extra)
        # Every protocol callback runs in the context the transport was made
        # in, as uvloop does (README: Deliberate differences).
        self._context = contextvars.copy_context()
        self._extra["socket"] = trsock.TransportSocket(sock)
        for key, getter in (("sockname", sock.getsockname), ("peername", sock.getpeername)):
            if key not in self._extra:
                try:
                    self._extra[key] = getter()
                except OSError:
                    self._extra[key] = None
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._loop = loop
        self._sock: socket.socket | None = sock
        fd, self._shares_fd = engine_fd(sock)
        try:
            self._stream = _core.Stream(loop, fd, self._on_read, self._on_write, self._on_shutdown,
                                        pipe=sock.family == socket.AF_UNIX, context=self._context)
        except BaseException:
            if not self._shares_fd:
                os.close(fd)
            raise
        loop._own_fd(sock.fileno(), self)
        self.write = self._stream.write_fast  # falls back to _write
        self.is_closing = self._stream.is_closing  # StreamWriter.drain() asks on every call
        self._stream.fast_write = True
        self._protocol: Any = None
        self._closing = False
        self._conn_lost = 0
        self._eof = False
        self.set_protocol(protocol)
        self._paused = False
        self._held: Any = None  # bytes read but not yet taken by the protocol
        self._eof_held = False  # EOF read but not yet passed on
        self._protocol_paused = False
        self._high_water = 64 * 1024
        self._low_water = 16 * 1024
        self._server = server
        if server is not None:
            _server_attach(server, self)
        loop.call_soon(self._protocol.connection_made, self, context=self._context)
        if waiter is None:
            loop.call_soon(self._start_reading)
        else:
            # libuv runs read callbacks in its poll phase, ahead of the ready
            # queue: reading starts one iteration after the waiter's task has
            # resumed, so create_connection()'s caller has its transport
            # before the first data_received, as with asyncio.
            loop.call_soon(_set_result_unless_cancelled, waiter, None)
            loop.call_soon(loop.call_soon, self._start_reading)

    def __repr__(self) -> str:
        state = "closed" if self._sock is None else ("closing" if self._closing else "open")
        return f"<TcpTransport {state} fd={self._sock.fileno() if self._sock else -1}>"

    def _owns_resource(self) -> bool:
        return self._sock is not None

    def _release(self) -> None:
        self._release_socket()

    # -- protocol ----------------------------------------------------------

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        super().set_protocol(protocol)
        self._buffered = isinstance(protocol, asyncio.BufferedProtocol)
        # Plain protocols get their bytes from the native read callback, and
        # so does shardloop's TLS protocol (its native feed takes what
        # get_buffer/buffer_updated would).
        fast_read = getattr(protocol, "_shardloop_feed", None)
        if fast_read is None and not self._buffered:
            fast_read = getattr(protocol, "data_received", None)
        # An asyncio.StreamReaderProtocol's reads go straight into its
        # StreamReader (the native path checks it is asyncio's own class).
        self._stream.set_fast_paths(fast_read, self._data_received_failed, self._write, self._pause_protocol,
                                    protocol)

    # -- reading -----------------------------------------------------------

    def _start_reading(self) -> None:
        if not self._closing and not self._paused:
            self._stream.read_start()

    def is_reading(self) -> bool:
        return not self._paused and not self._closing

    def pause_reading(self) -> None:
        if self._closing or self._paused:
            return
        self._paused = True
        self._stream.read_stop()

    def resume_reading(self) -> None:
        if self._closing or not self._paused:
            return
        self._paused = False
        if self._held is not None:
            # Like asyncio, the protocol hears of it from the loop, not from
            # inside resume_reading().
            self._loop.call_soon(self._deliver_held, context=self._context)
        elif self._eof_held:
            self._loop.call_soon(self._on_eof, context=self._context)
        else:
            self._stream.read_start()

    def _deliver_held(self) -> None:
        if self._paused:  # paused again before the loop got here
            return
        held, self._held = self._held, None
        if held is not None and not self._closing:
            self._deliver(held)
        if not self._paused and not self._closing and self._held is None:
            self._stream.read_start()

    def _on_read(self, data: Any) -> None:
        if data.__class__ is not bytes:
            self._fatal_error(data, "Fatal read error on socket transport")
            return
        if not data:
            self._stream.read_stop()
            self._eof_held = True
            if not self._stream.read_this_iteration:
                # A FIN alone: asyncio's recv() finds it in this iteration too.
                self._on_eof()
                return
            # libuv reports EOF from the same poll as the bytes before it;
            # asyncio's recv() finds it an iteration later. Going through the
            # ready queue keeps that iteration: otherwise connection_lost()
            # could follow the last data_received() in the same iteration, and
            # a run_until_complete() ending there would find the transport
            # closed (test_events' test_create_ssl_unix_connection).
            self._loop.call_soon(self._on_eof, context=self._context)
            return
        self._deliver(memoryview(data) if self._buffered else data)

    def _deliver(self, data: Any) -> None:
        # libuv has already read the bytes; whatever the protocol cannot
        # take now (paused, or switched protocols midway) waits in
        # _held for resume_reading().
        while data:
            if self._buffered:
                try:
                    buf = memoryview(self._protocol.get_buffer(len(data))).cast("B")
                    if not len(buf):
                        raise RuntimeError("get_buffer() returned an empty buffer")
                except (SystemExit, KeyboardInterrupt):
                    raise
                except BaseException as exc:
                    self._fatal_error(exc, "Fatal error: protocol.get_buffer() call failed.")
                    return
                n = min(len(buf), len(data))
                buf[:n] = data[:n]
                data = data[n:]
                try:
                    self._protocol.buffer_updated(n)
                except (SystemExit, KeyboardInterrupt):
                    raise
                except BaseException as exc:
                    self._fatal_error(exc, "Fatal error: protocol.buffer_updated() call failed.")
                    return
            else:
                try:
                    self._protocol.data_received(bytes(data) if data.__class__ is memoryview else data)
                except (SystemExit, KeyboardInterrupt):
                    raise
                except BaseException as exc:
                    self._fatal_error(exc, "Fatal error: protocol.data_received() call failed.")
                    return
                data = b""
            if data and (self._paused or self._closing):
                self._held = data
                return

    def _on_eof(self) -> None:
        # close() or pause_reading() since the EOF was read hold it back, as
        # they would have stopped asyncio's reader before its recv() saw it.
        if self._closing or self._paused or not self._eof_held:
            return
        self._eof_held = False
        try:
            keep_open = self._protocol.eof_received()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal error: protocol.eof_received() call failed.")
            return
        if not keep_open:
            self.close()

    # -- writing -----------------------------------------------------------

    def write(self, data: Any) -> None:  # each instance uses _stream.write_fast instead
        self._write(data)

    def _data_received_failed(self, exc: BaseException) -> None:
        # A TLS protocol's native feed stands for get_buffer/buffer_updated.
        call = "buffer_updated" if self._buffered else "data_received"
        self._fatal_error(exc, f"Fatal error: protocol.{call}() call failed.")

    def _write(self, data: Any) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data argument must be a bytes-like object, not {type(data).__name__!r}")
        if self._eof:
            raise RuntimeError("Cannot call write() after write_eof()")
        if self._empty_waiter is not None:
            raise RuntimeError("unable to write; sendfile is in progress")
        if not data:
            return
        if self._conn_lost:
            self._drop_write_after_lost("socket.send() raised exception.")
            return
        try:
            queued = self._stream.write(data)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:  # e.g. a non-contiguous buffer, as asyncio's send() sees it
            self._fatal_error(exc, "Fatal write error on socket transport")
            return
        if queued > self._high_water:
            self._pause_protocol()

    def writelines(self, list_of_data: Any) -> None:
        if sys.version_info >= (3, 12):
            # 3.12's selector transport checks these itself, with its own words.
            if self._eof:
                raise RuntimeError("Cannot call writelines() after write_eof()")
            if self._empty_waiter is not None:
                raise RuntimeError("unable to writelines; sendfile is in progress")
            if not list_of_data:
                return
        self.write(b"".join(list_of_data))

    # Called for write errors, and for completed writes only while
    # _stream.notify_writes is set (protocol paused, or closing).
    def _on_write(self, error: OSError | None, queued: int) -> None:
        if error is not None:
            self._fatal_error(error, "Fatal write error on socket transport")
            self._settle_empty_waiter(error)
            return
        if self._protocol_paused and queued <= self._low_water:
            self._resume_protocol()
        if queued == 0 and self._closing and not self._conn_lost:
            self._conn_lost += 1
            self._loop.call_soon(self._call_connection_lost, None, context=self._context)
        if queued == 0:
            self._settle_empty_waiter(None)
        self._stream.notify_writes = self._protocol_paused or self._closing or self._empty_waiter is not None

    def write_eof(self) -> None:
        if self._closing or self._eof:
            return
        self._eof = True
        self._stream.shutdown()  # libuv sends the FIN after what is queued

    def _on_shutdown(self, error: OSError | None) -> None:
        pass  # a peer that already went away is reported by the read side

    def can_write_eof(self) -> bool:
        return True

    def get_write_buffer_size(self) -> int:
        return self._stream.queued

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (self._low_water, self._high_water)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = 64 * 1024 if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high_water, self._low_water = high, low
        self._stream.high_water = high
        if self.get_write_buffer_size() > high:
            self._pause_protocol()

    def _pause_protocol(self) -> None:
        if self._protocol_paused:
            return
        self._protocol_paused = True
        self._stream.notify_writes = True
        self._call_flow_control("pause_writing")

    def _resume_protocol(self) -> None:
        self._protocol_paused = False
        self._call_flow_control("resume_writing")

    def _call_flow_control(self, name: str) -> None:
        try:
            _core._run_in_context(self._context, getattr(self._protocol, name))
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._loop.call_exception_handler({
                "message": f"protocol.{name}() failed",
                "exception": exc,
                "transport": self,
                "protocol": self._protocol,
            })

    # -- closing -----------------------------------------------------------

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._held = None
        self._stream.read_stop()
        if self._stream.queued == 0:
            self._conn_lost += 1
            self._loop.call_soon(self._call_connection_lost, None, context=self._context)
        else:  # _on_write calls connection_lost once the queue has drained
            self._stream.notify_writes = True

    def abort(self) -> None:
        self._force_close(None)

    def _force_close(self, exc: BaseException | None) -> None:
        if self._conn_lost:
            return
        self._closing = True
        # Queued data is dropped now, not after connection_lost is called:
        # closing the native stream cancels its pending writes.
        self._stream.close()
        self._conn_lost += 1
        self._loop.call_soon(self._call_connection_lost, exc, context=self._context)

    def _release_socket(self) -> None:
        if self._sock is not None:
            self._loop._disown_fd(self._sock.fileno(), self)
        if self._sock is not None and self._shares_fd:
            self._sock.detach()  # the stream closes the descriptor
        self._stream.close()
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _fatal_error(self, exc: BaseException, message: str) -> None:
        fatal_error(self, exc, message)

    # -- loop.sendfile(): the native path waits for the queue to drain.

    def _make_empty_waiter(self) -> asyncio.Future:
        if self._empty_waiter is not None:
            raise RuntimeError("Empty waiter is already set")
        self._empty_waiter = self._loop.create_future()
        if self._stream.queued == 0:
            self._empty_waiter.set_result(None)
        else:
            self._stream.notify_writes = True
        return self._empty_waiter

    def _reset_empty_waiter(self) -> None:
        self._empty_waiter = None

    def _settle_empty_waiter(self, exc: BaseException | None) -> None:
        waiter = self._empty_waiter
        if waiter is None or waiter.done():
            return
        if exc is None:
            waiter.set_result(None)
        else:
            waiter.set_exception(exc)

    def _call_connection_lost(self, exc: BaseException | None) -> None:
        try:
            self._protocol.connection_lost(exc)
        finally:
            self._settle_empty_waiter(ConnectionError("Connection is closed by peer"))
            self._release_socket()
            self._protocol = None
            server, self._server = self._server, None
            if server is not None:
                _server_detach(server, self)


def _server_attach(server: Any, transport: Any) -> None:
    # asyncio.Server tracks its transports from 3.13 on, counts them before.
    try:
        server._attach(transport)
    except TypeError:
        server._attach()


def _server_detach(server: Any, transport: Any) -> None:
    try:
        server._detach(transport)
    except TypeError:
        server._detach()

"""loop.sendfile(): os.sendfile straight from the file to a TcpTransport's
socket once the transport's queue has drained, else asyncio's fallback of
reading the file and writing it through the transport."""

from __future__ import annotations

import asyncio
from asyncio.constants import _SendfileMode
from asyncio.exceptions import SendfileNotAvailableError
from typing import Any

from ._transport import TcpTransport

# asyncio's fallback reads the file in blocks of this size.
_FALLBACK_BLOCK = 16384


async def sendfile(loop: Any, transport: Any, file: Any, offset: int, count: int | None,
                   fallback: bool) -> int:
    if transport.is_closing():
        raise RuntimeError("Transport is closing")
    mode = getattr(transport, "_sendfile_compatible", _SendfileMode.UNSUPPORTED)
    if mode is _SendfileMode.UNSUPPORTED:
        raise RuntimeError(f"sendfile is not supported for transport {transport!r}")
    if mode is _SendfileMode.TRY_NATIVE:
        try:
            return await _send_native(loop, transport, file, offset, count)
        except SendfileNotAvailableError:
            if not fallback:
                raise
    if not fallback:
        raise RuntimeError(f"fallback is disabled and native sendfile is not supported "
                           f"for transport {transport!r}")
    return await _send_through_transport(loop, transport, file, offset, count)


async def _send_native(loop: Any, transport: Any, file: Any, offset: int, count: int | None) -> int:
    sock = getattr(transport, "_sock", None)
    if not isinstance(transport, TcpTransport) or sock is None:
        raise SendfileNotAvailableError("sendfile syscall is not supported")
    empty = transport._make_empty_waiter()  # write() raises from here on
    fd = sock.fileno()
    # For the transfer the socket is sock_sendfile's to watch, and the
    # protocol hears nothing (reading resumes afterwards).
    loop._disown_fd(fd, transport)
    resume_reading = transport.is_reading()
    transport.pause_reading()
    try:
        await empty
        return await loop.sock_sendfile(sock, file, offset, count, fallback=False)
    finally:
        transport._reset_empty_waiter()
        if resume_reading:
            transport.resume_reading()
        if transport._sock is sock:
            loop._own_fd(fd, transport)


async def _send_through_transport(loop: Any, transport: Any, file: Any, offset: int,
                                  count: int | None) -> int:
    if offset:
        file.seek(offset)
    blocksize = min(count, _FALLBACK_BLOCK) if count else _FALLBACK_BLOCK
    buf = bytearray(blocksize)
    total = 0
    stand_in = _FlowProtocol(loop, transport)
    try:
        while True:
            if count:
                blocksize = min(count - total, blocksize)
                if blocksize <= 0:
                    return total
            view = memoryview(buf)[:blocksize]
            read = await loop.run_in_executor(None, file.readinto, view)
            if not read:
                return total
            await stand_in.drain()
            transport.write(view[:read])  # the transport copies what it queues
            total += read
    finally:
        if total > 0 and hasattr(file, "seek"):
            file.seek(offset + total)
        stand_in.restore()


class _FlowProtocol(asyncio.Protocol):
    """Takes the transport's protocol slot while the fallback writes, so
    that pause_writing/resume_writing pace the copy; connection_lost still
    reaches the real protocol."""

    def __init__(self, loop: Any, transport: Any) -> None:
        self._loop = loop
        self._transport = transport
        self._protocol = transport.get_protocol()
        self._resume_reading = transport.is_reading()
        self._resume_writing = bool(getattr(transport, "_protocol_paused", False))
        transport.pause_reading()
        transport.set_protocol(self)
        self._writable: asyncio.Future | None = loop.create_future() if self._resume_writing else None

    async def drain(self) -> None:
        if self._transport.is_closing():
            raise ConnectionError("Connection closed by peer")
        if self._writable is not None:
            await self._writable

    def connection_made(self, transport: Any) -> None:
        raise RuntimeError("Invalid state: connection should have been established already.")

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._writable is not None and not self._writable.done():
            # Lost before the whole file went out: an error even on a clean close.
            self._writable.set_exception(exc if exc is not None
                                         else ConnectionError("Connection is closed by peer"))
        self._protocol.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._writable is not None:
            if not self._writable.done():
                self._writable.set_result(False)
            self._writable = None

    def data_received(self, data: bytes) -> None:
        raise RuntimeError("Invalid state: reading should be paused")

    def eof_received(self) -> bool | None:
        raise RuntimeError("Invalid state: reading should be paused")

    def restore(self) -> None:
        self._transport.set_protocol(self._protocol)
        if self._resume_reading:
            self._transport.resume_reading()
        if self._writable is not None:
            self._writable.cancel()  # nobody awaits it any more
        if self._resume_writing:
            self._protocol.resume_writing()

"""UDP: create_datagram_endpoint and its DatagramTransport.

Datagram sockets are made, bound and connected here with asyncio's rules;
the transport keeps asyncio's semantics while the engine's Datagram
(_core.Datagram) moves the datagrams: recvmmsg batches, each datagram handed
to the protocol's datagram_received by the native code, and sends queued and
flushed by sendmmsg when the kernel refuses them for now."""

from __future__ import annotations

import asyncio
import contextvars
import errno
import logging
import os
import socket
import stat
import sys
from asyncio import transports, trsock
from typing import Any, Callable

from . import _core
from ._transport import _set_result_unless_cancelled, engine_fd
from ._transport_rules import PausableReads, TransportBase, fatal_error

logger = logging.getLogger("asyncio")

# 3.13 sends empty datagrams (3.11/3.12 drop them) and counts 8 bytes of
# UDP header per queued datagram in the write buffer size.
_SEND_EMPTY = sys.version_info >= (3, 13)
_HEADER_SIZE = 8 if sys.version_info >= (3, 13) else 0

# Largest datagram read at once, as asyncio's selector transports.
_MAX_SIZE = 256 * 1024


def _set_reuseport(sock: socket.socket) -> None:
    if not hasattr(socket, "SO_REUSEPORT"):
        raise ValueError("reuse_port not supported by socket module")
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    except OSError:
        raise ValueError("reuse_port not supported by socket module, "
                         "SO_REUSEPORT defined but not implemented.") from None


def _check_datagram_socket(sock: socket.socket) -> None:
    if sys.version_info >= (3, 13):
        if sock.type == socket.SOCK_STREAM:
            raise ValueError(f"A datagram socket was expected, got {sock!r}")
    elif sock.type != socket.SOCK_DGRAM:
        raise ValueError(f"A UDP Socket was expected, got {sock!r}")


def _remove_stale_unix_socket(path: str) -> None:
    if path[0] in (0, "\x00"):  # abstract namespace: nothing on disk
        return
    try:
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.remove(path)
    except FileNotFoundError:
        pass
    except OSError as err:
        # The directory may only let us create the socket; bind decides.
        logger.error("Unable to check or remove stale UNIX socket %r: %r", path, err)


class DatagramMixin:
    """Mixed into shardloop.Loop."""

    getaddrinfo: Callable[..., Any]
    sock_connect: Callable[..., Any]
    create_future: Callable[[], asyncio.Future]
    get_debug: Callable[[], bool]

    async def create_datagram_endpoint(self, protocol_factory: Callable[[], asyncio.BaseProtocol],
                                       local_addr: Any = None, remote_addr: Any = None, *,
                                       family: int = 0, proto: int = 0, flags: int = 0,
                                       reuse_port: Any = None, allow_broadcast: Any = None,
                                       sock: socket.socket | None = None) -> tuple:
        given = sock is not None
        if given:
            _check_datagram_socket(sock)
            options = dict(local_addr=local_addr, remote_addr=remote_addr, family=family,
                           proto=proto, flags=flags, reuse_port=reuse_port,
                           allow_broadcast=allow_broadcast)
            problems = ", ".join(f"{k}={v}" for k, v in options.items() if v)
            if problems:
                raise ValueError("socket modifier keyword arguments can not be used "
                                 f"when sock is specified. ({problems})")
            sock.setblocking(False)
            r_addr = None
        else:
            pairs = await self._datagram_address_pairs(local_addr, remote_addr, family, proto, flags)
            sock, r_addr = await self._open_datagram_socket(pairs, local_addr, remote_addr,
                                                            reuse_port, allow_broadcast)
        try:
            protocol = protocol_factory()
        except BaseException:
            if not given:  # a socket passed in stays the caller's, as with asyncio
                sock.close()
            raise
        waiter = self.create_future()
        transport = self._make_datagram_transport(sock, protocol, r_addr, waiter)
        if self.get_debug():
            if local_addr:
                logger.info("Datagram endpoint local_addr=%r remote_addr=%r created: (%r, %r)",
                            local_addr, remote_addr, transport, protocol)
            else:
                logger.debug("Datagram endpoint remote_addr=%r created: (%r, %r)",
                             remote_addr, transport, protocol)
        try:
            await waiter
        except BaseException:
            transport.close()
            raise
        return transport, protocol

    def _make_datagram_transport(self, sock: socket.socket, protocol: asyncio.BaseProtocol,
                                 address: Any = None, waiter: asyncio.Future | None = None,
                                 extra: dict | None = None) -> DatagramTransport:
        return DatagramTransport(self, sock, protocol, address, waiter, extra)

    async def _datagram_address_pairs(self, local_addr: Any, remote_addr: Any, family: int,
                                      proto: int, flags: int) -> list:
        """[((family, proto), (local address, remote address)), ...] to try in order."""
        if not (local_addr or remote_addr):
            if family == 0:
                raise ValueError("unexpected address family")
            return [((family, proto), (None, None))]
        if family == getattr(socket, "AF_UNIX", None):
            for addr in (local_addr, remote_addr):
                if addr is not None and not isinstance(addr, str):
                    raise TypeError("string is expected")
            if local_addr:
                _remove_stale_unix_socket(local_addr)
            return [((family, proto), (local_addr, remote_addr))]
        by_family: dict[tuple, list] = {}  # insertion order is the order to try
        for index, addr in ((0, local_addr), (1, remote_addr)):
            if addr is None:
                continue
            if not (isinstance(addr, tuple) and len(addr) == 2):
                raise TypeError("2-tuple is expected")
            infos = await self.getaddrinfo(addr[0], addr[1], family=family, type=socket.SOCK_DGRAM,
                                           proto=proto, flags=flags)
            if not infos:
                raise OSError("getaddrinfo() returned empty list")
            for fam, _, pro, _, address in infos:
                by_family.setdefault((fam, pro), [None, None])[index] = address
        # Each given address must resolve within the same (family, proto).
        pairs = [(key, pair) for key, pair in by_family.items()
                 if not ((local_addr and pair[0] is None) or (remote_addr and pair[1] is None))]
        if not pairs:
            raise ValueError("can not get address information")
        return pairs

    async def _open_datagram_socket(self, pairs: list, local_addr: Any, remote_addr: Any,
                                    reuse_port: Any, allow_broadcast: Any) -> tuple:
        exceptions: list[OSError] = []
        for (family, proto), (local_address, remote_address) in pairs:
            sock = None
            try:
                sock = socket.socket(family=family, type=socket.SOCK_DGRAM, proto=proto)
                if reuse_port:
                    _set_reuseport(sock)
                if allow_broadcast:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
                sock.setblocking(False)
                if local_addr:
                    sock.bind(local_address)
                r_addr = None
                if remote_addr:
                    # A broadcasting socket stays unconnected: it sends to
                    # the remote address with sendto().
                    if not allow_broadcast:
                        await self.sock_connect(sock, remote_address)
                    r_addr = remote_address
                return sock, r_addr
            except OSError as exc:
                if sock is not None:
                    sock.close()
                exceptions.append(exc)
            except BaseException:
                if sock is not None:
                    sock.close()
                raise
        try:
            raise exceptions[0]
        finally:
            exceptions = []  # no cycle through the traceback


class DatagramTransport(TransportBase, PausableReads, transports._FlowControlMixin, asyncio.DatagramTransport):
    """asyncio's datagram transport contract on the engine's Datagram."""

    max_size = _MAX_SIZE

    def __init__(self, loop: Any, sock: socket.socket, protocol: asyncio.BaseProtocol,
                 address: Any = None, waiter: asyncio.Future | None = None,
                 extra: dict | None = None) -> None:
        super().__init__(extra, loop)
        self._extra["socket"] = trsock.TransportSocket(sock)
        try:
            self._extra["sockname"] = sock.getsockname()
        except OSError:
            self._extra["sockname"] = None
        if "peername" not in self._extra:
            try:
                self._extra["peername"] = sock.getpeername()
            except OSError:
                self._extra["peername"] = None
        # A connected socket sends with send(); its peer may have no name
        # (a socketpair's is ''), so test for None rather than truth.
        self._connected = self._extra["peername"] is not None
        self._sock: socket.socket | None = sock
        self._sock_fd = sock.fileno()
        self._address = address
        self._conn_lost = 0  # set once connection_lost is scheduled
        self._closing = False
        self._paused = False
        self._reading = False
        # Every protocol callback runs in the context the transport was made
        # in, as uvloop does (README: Deliberate differences).
        self._context = contextvars.copy_context()
        fd, self._shares_fd = engine_fd(sock)
        try:
            self._dgram = _core.Datagram(loop, fd, sock.family, self._on_recv_error, self._on_write,
                                         self._on_callback_error, context=self._context)
        except BaseException:
            if not self._shares_fd:
                os.close(fd)
            raise
        self.set_protocol(protocol)
        # transport.sendto is the native sendto_fast while the transport is
        # open and has no fixed remote address it must check against (a
        # broadcasting endpoint's); the rest goes to _sendto, the full rules.
        self._dgram.set_fast_send(self._sendto, self._send_failed, self._maybe_pause_protocol,
                                  self._connected, _SEND_EMPTY)
        self._dgram.fast_send = self._connected or not self._address
        self.sendto = self._dgram.sendto_fast
        loop._own_fd(self._sock_fd, self)  # add_reader & co. refuse it, as asyncio's do
        loop.call_soon(protocol.connection_made, self, context=self._context)
        # Reading starts only after connection_made() has run.
        loop.call_soon(self._start_reading)
        if waiter is not None:
            loop.call_soon(_set_result_unless_cancelled, waiter, None)

    def __repr__(self) -> str:
        info = [type(self).__name__]
        if self._sock is None:
            info.append("closed")
        elif self._closing:
            info.append("closing")
        info.append(f"fd={self._sock_fd}")
        if self._sock is not None:
            info.append("read=polling" if self._reading else "read=idle")
            state = "polling" if self._dgram.queued else "idle"
            info.append(f"write=<{state}, bufsize={self.get_write_buffer_size()}>")
        return "<{}>".format(" ".join(info))

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol
        # Each datagram goes straight to the protocol's method; a protocol
        # without one fails per datagram, as on asyncio's loop.
        self._dgram.datagram_received = getattr(protocol, "datagram_received", None) or self._datagram_received

    def _datagram_received(self, data: bytes, addr: Any) -> None:
        self._protocol.datagram_received(data, addr)

    def _owns_resource(self) -> bool:
        return self._sock is not None

    def _release(self) -> None:
        self._release_socket()

    def _release_socket(self) -> None:
        if self._sock is None:
            return
        self._loop._disown_fd(self._sock_fd, self)
        if self._shares_fd:
            self._sock.detach()  # the engine closes the descriptor
        self._dgram.close()
        self._sock.close()
        self._sock = None

    # pause_writing()/resume_writing() too run in the transport's context,
    # whoever sent.
    def _maybe_pause_protocol(self) -> None:
        _core._run_in_context(self._context, super()._maybe_pause_protocol)

    def _maybe_resume_protocol(self) -> None:
        _core._run_in_context(self._context, super()._maybe_resume_protocol)

    # -- reading -----------------------------------------------------------

    def _start_reading(self) -> None:
        if self.is_reading() and not self._dgram.closed:
            self._dgram.read_start()
            self._reading = True

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._dgram.read_stop()

    def _on_recv_error(self, exc: OSError) -> None:
        # ICMP errors (port unreachable...) come back as a failed read.
        self._protocol.error_received(exc)

    def _on_callback_error(self, exc: BaseException) -> None:
        # A protocol callback raised: reported as asyncio reports its
        # failed reader/writer callback, and the transport goes on.
        self._loop.call_exception_handler({
            "message": f"Exception in callback {type(self).__name__}._read_ready()",
            "exception": exc,
            "transport": self,
            "protocol": self._protocol,
        })

    # -- writing -----------------------------------------------------------

    def get_write_buffer_size(self) -> int:
        dgram = self._dgram
        return dgram.queued_bytes + dgram.queued * _HEADER_SIZE

    def sendto(self, data: Any, addr: Any = None) -> None:  # each instance uses _dgram.sendto_fast
        self._sendto(data, addr)

    def _send_failed(self, exc: OSError) -> None:
        self._protocol.error_received(exc)  # the datagram is dropped, as with asyncio

    def _sendto(self, data: Any, addr: Any = None) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data argument must be a bytes-like object, not {type(data).__name__!r}")
        if not data and not _SEND_EMPTY:
            return
        if self._address:
            if addr not in (None, self._address):
                raise ValueError(f"Invalid address: must be None or {self._address}")
            addr = self._address
        if self._conn_lost:
            # asyncio only counts these on a connected transport and lets an
            # unconnected one fail on its closed socket; both just drop here.
            self._drop_write_after_lost("socket.send() raised exception.")
            return
        if self._connected:
            addr = None  # the engine sends to the peer
        elif addr is None:
            # Only the socket module's sendto gives asyncio's TypeError.
            self._sendto_slow(data, addr)
            return
        try:
            queued = self._dgram.sendto(data, addr)
        except OSError as exc:
            self._send_failed(exc)
            return
        if queued is NotImplemented:
            queued = self._sendto_slow(data, addr)
        if queued:
            self._maybe_pause_protocol()

    def _sendto_slow(self, data: Any, addr: Any) -> bool:
        """What the engine does not convert (host names, odd types): the
        socket module's own sendto, with its errors; if the kernel refuses it
        for now, the address it resolves to is queued. True when queued."""
        try:
            if addr is None or not self._dgram.queued:  # None: only the module's TypeError
                try:
                    self._sock.sendto(data, addr)  # type: ignore[union-attr]
                    return False
                except (BlockingIOError, InterruptedError):
                    pass
            queued = self._dgram.sendto(data, _resolve(self._sock.family, addr))  # type: ignore[union-attr]
            if queued is NotImplemented:
                raise OSError(errno.EAFNOSUPPORT, f"cannot queue a datagram for {addr!r}")
            return queued
        except OSError as exc:
            self._protocol.error_received(exc)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal write error on datagram transport")
        return False

    def _on_write(self, exc: OSError | None, queued: int) -> None:
        # Queued datagrams left, or the oldest failed (dropped, as asyncio
        # drops it).
        try:
            if exc is not None:
                self._protocol.error_received(exc)
        finally:
            self._maybe_resume_protocol()  # the protocol may send more here
            if not self._dgram.queued and self._closing and not self._conn_lost:
                self._conn_lost += 1  # later sends are dropped, not sent on a closed socket
                self._call_connection_lost(None)

    # -- closing -----------------------------------------------------------

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._dgram.fast_send = False
        self._stop_reading()
        if not self._dgram.queued:  # else _on_write finishes once it drains
            self._conn_lost += 1
            self._loop.call_soon(self._call_connection_lost, None, context=self._context)

    def abort(self) -> None:
        self._force_close(None)

    def _fatal_error(self, exc: BaseException, message: str = "Fatal error on transport") -> None:
        fatal_error(self, exc, message)

    def _force_close(self, exc: BaseException | None) -> None:
        if self._conn_lost:
            return
        self._closing = True
        self._dgram.fast_send = False
        self._stop_reading()
        # The queue is dropped now: closing the engine's socket discards it.
        self._dgram.close()
        self._conn_lost += 1
        self._loop.call_soon(self._call_connection_lost, exc, context=self._context)

    def _call_connection_lost(self, exc: BaseException | None) -> None:
        try:
            self._protocol.connection_lost(exc)
        finally:
            self._release_socket()
            self._protocol = None


def _resolve(family: int, addr: Any) -> Any:
    """A destination the socket module would resolve on each sendto, in the
    numeric form the engine queues (only reached once the kernel refused a
    datagram to it)."""
    if family not in (socket.AF_INET, socket.AF_INET6) or not isinstance(addr, tuple) or len(addr) < 2:
        return addr
    host, port = addr[0], addr[1]
    if host == "":
        host = "0.0.0.0" if family == socket.AF_INET else "::"
    elif host == "<broadcast>" and family == socket.AF_INET:
        host = "255.255.255.255"
    info = socket.getaddrinfo(host, port, family, socket.SOCK_DGRAM)
    resolved = info[0][4]
    if family == socket.AF_INET6 and len(addr) > 2:
        resolved = (resolved[0], resolved[1]) + tuple(addr[2:4])
    return resolved

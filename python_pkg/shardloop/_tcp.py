"""TCP servers and connections of shardloop.Loop: sockets are made, bound
and connected here with asyncio's rules (and asyncio's own Server class runs
them); each connection's bytes then flow through the native TcpTransport."""

from __future__ import annotations

import asyncio
import contextvars
import errno
import functools
import inspect
import itertools
import os
import socket
import sys
import weakref
from asyncio import base_events, staggered, trsock
from typing import Any, Callable

from . import _core, _sendfile

from ._tls import check_ssl_arguments, make_ssl_protocol, server_protocol_factory
from ._transport import TcpTransport

# Listening sockets a loop bound itself (create_server with host/port,
# create_unix_server with a path). Only those accept on the ring: a socket
# handed in (sock=) may be shared with other processes, uvicorn's and
# gunicorn's workers, and the kernel gives a connection to the first
# io_uring accept waiting on the socket (an exclusive wait), so one worker
# took every connection; readiness wakes every process and they share.
_bound_here: "weakref.WeakSet[socket.socket]" = weakref.WeakSet()


def bound_here(sock: socket.socket) -> socket.socket:
    _bound_here.add(sock)
    return sock

# asyncio pauses accepting this long when out of descriptors.
_ACCEPT_RETRY_DELAY = 1.0
_OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def _bind_error(err: OSError, address: Any) -> OSError:
    # The wording asyncio uses on the running Python (3.13 keeps "[errno N]").
    detail = str(err).lower() if sys.version_info >= (3, 13) else err.strerror.lower()
    return OSError(err.errno, f"error while attempting to bind on address {address!r}: {detail}")


def _bind_local(sock: socket.socket, family: int, local_infos: list, errors: list) -> None:
    # asyncio tries the local addresses of the socket's family in order; if
    # none binds, every failure is kept and the last one is raised.
    for lfamily, _, _, _, laddr in local_infos:
        if lfamily != family:
            continue
        try:
            sock.bind(laddr)
            return
        except OSError as exc:
            errors.append(_bind_error(exc, laddr))
    if errors:
        raise errors.pop()
    raise OSError(f"no matching local address with family={family!r} found")


def _check_stream_socket(sock: socket.socket) -> None:
    if sock.type != socket.SOCK_STREAM:
        raise ValueError(f"A Stream Socket was expected, got {sock!r}")


def _asyncio_signature(method: Callable[..., Any]) -> Callable[..., Any]:
    """Give `method` the signature asyncio has on the running Python: a
    keyword that asyncio does not know there (all_errors before 3.12,
    keep_alive before 3.13, cleanup_socket before 3.13) is a TypeError here
    too. The reference is asyncio's Unix loop, which has the Unix methods."""
    reference = inspect.signature(getattr(asyncio.SelectorEventLoop, method.__name__))
    known = set(reference.parameters)

    @functools.wraps(method)
    async def checked(self: Any, *args: Any, **kwargs: Any) -> Any:
        for name in kwargs:
            if name not in known:
                raise TypeError(f"{method.__name__}() got an unexpected keyword argument {name!r}")
        return await method(self, *args, **kwargs)

    checked.__signature__ = reference  # type: ignore[attr-defined]
    return checked


class TcpMixin:
    """Mixed into shardloop.Loop."""

    @_asyncio_signature
    async def create_connection(self, protocol_factory: Callable[[], asyncio.BaseProtocol],
                                host: Any = None, port: Any = None, *, ssl: Any = None,
                                family: int = 0, proto: int = 0, flags: int = 0,
                                sock: socket.socket | None = None, local_addr: Any = None,
                                server_hostname: Any = None, ssl_handshake_timeout: Any = None,
                                ssl_shutdown_timeout: Any = None, happy_eyeballs_delay: Any = None,
                                interleave: Any = None, all_errors: bool = False) -> tuple:
        if server_hostname is None and ssl:
            # The host is what the certificate is checked against; '' skips the check.
            if not host:
                raise ValueError("You must set server_hostname when using ssl without a host")
            server_hostname = host
        check_ssl_arguments(ssl, sock=sock, server_hostname=server_hostname,
                            ssl_handshake_timeout=ssl_handshake_timeout,
                            ssl_shutdown_timeout=ssl_shutdown_timeout)
        if host is not None or port is not None:
            if sock is not None:
                raise ValueError("host/port and sock can not be specified at the same time")
            sock = await self._connect_any(host, port, family, proto, flags, local_addr, all_errors,
                                           happy_eyeballs_delay, interleave)
        elif sock is None:
            raise ValueError("host and port was not specified and no sock specified")
        else:
            _check_stream_socket(sock)
        return await self._make_connection(sock, protocol_factory, ssl=ssl, server_hostname=server_hostname,
                                           ssl_handshake_timeout=ssl_handshake_timeout,
                                           ssl_shutdown_timeout=ssl_shutdown_timeout)

    async def _connect_any(self, host: Any, port: Any, family: int, proto: int, flags: int,
                           local_addr: Any, all_errors: bool, happy_eyeballs_delay: Any,
                           interleave: Any) -> socket.socket:
        infos = await self.getaddrinfo(host, port, family=family, type=socket.SOCK_STREAM,
                                       proto=proto, flags=flags)
        if not infos:
            raise OSError("getaddrinfo() returned empty list")
        local_infos = None
        if local_addr is not None:
            local_infos = await self.getaddrinfo(*local_addr, family=family, type=socket.SOCK_STREAM,
                                                 proto=proto, flags=flags)
            if not local_infos:
                raise OSError("getaddrinfo() returned empty list")
        if happy_eyeballs_delay is not None and interleave is None:
            interleave = 1  # happy eyeballs alternates address families by default
        if interleave:
            infos = base_events._interleave_addrinfos(infos, interleave)
        # One list per attempt: its failed binds, then its connect error.
        errors: list[list[OSError]] = []
        sock = None
        if happy_eyeballs_delay is None:
            for info in infos:
                try:
                    sock = await self._connect_one(errors, info, local_infos)
                    break
                except OSError:
                    continue
        else:
            # A new attempt every `delay` seconds (or as soon as the last one
            # fails); the first connected socket wins, the others are cancelled.
            sock, _, race_errors = await staggered.staggered_race(
                [functools.partial(self._connect_one, errors, info, local_infos) for info in infos],
                happy_eyeballs_delay, loop=self)
            # `errors` has them all. Some Pythons' staggered_race keep this
            # list in a closure that each error's traceback holds: a cycle.
            race_errors.clear()
            race_errors = None
        if sock is not None:
            return sock
        exceptions = [exc for attempt in errors for exc in attempt]
        try:
            if all_errors:
                raise ExceptionGroup("create_connection failed", exceptions)
            if len(exceptions) == 1 or len({str(e) for e in exceptions}) == 1:
                raise exceptions[0]
            raise OSError("Multiple exceptions: {}".format(", ".join(str(e) for e in exceptions)))
        finally:
            exceptions = errors = None  # type: ignore[assignment]  # no cycle through the traceback

    async def _connect_one(self, errors: list, info: tuple, local_infos: list | None) -> socket.socket:
        mine: list[OSError] = []
        errors.append(mine)
        family, type_, proto, _, address = info
        sock = None
        try:
            sock = socket.socket(family, type_, proto)
            sock.setblocking(False)
            if local_infos is not None:
                _bind_local(sock, family, local_infos, mine)
            await self.sock_connect(sock, address)
            return sock
        except OSError as exc:
            mine.append(exc)
            if sock is not None:
                sock.close()
            raise
        except BaseException:  # cancelled by happy eyeballs, among others
            if sock is not None:
                sock.close()
            raise
        finally:
            # The error's traceback holds this frame: no cycle through these lists.
            mine = errors = None  # type: ignore[assignment]

    async def sendfile(self, transport: asyncio.BaseTransport, file: Any, offset: int = 0,
                       count: int | None = None, *, fallback: bool = True) -> int:
        return await _sendfile.sendfile(self, transport, file, offset, count, fallback)

    async def _make_connection(self, sock: socket.socket, protocol_factory: Callable[[], Any],
                               server: Any = None, *, ssl: Any = None, server_hostname: Any = None,
                               server_side: bool = False, ssl_handshake_timeout: Any = None,
                               ssl_shutdown_timeout: Any = None) -> tuple:
        sock.setblocking(False)
        protocol = protocol_factory()
        waiter = self.create_future()
        if ssl:
            ssl_proto = make_ssl_protocol(self, protocol, ssl, waiter, server_side=server_side,
                                          server_hostname=server_hostname,
                                          ssl_handshake_timeout=ssl_handshake_timeout,
                                          ssl_shutdown_timeout=ssl_shutdown_timeout)
            TcpTransport(self, sock, ssl_proto, server=server)
            transport = ssl_proto._app_transport
        else:
            transport = TcpTransport(self, sock, protocol, waiter, server=server)
        try:
            await waiter
        except BaseException:
            transport.close()
            raise
        return transport, protocol

    async def connect_accepted_socket(self, protocol_factory: Callable[[], Any], sock: socket.socket, *,
                                      ssl: Any = None, ssl_handshake_timeout: Any = None,
                                      ssl_shutdown_timeout: Any = None) -> tuple:
        _check_stream_socket(sock)
        check_ssl_arguments(ssl, sock=sock, ssl_handshake_timeout=ssl_handshake_timeout,
                            ssl_shutdown_timeout=ssl_shutdown_timeout)
        return await self._make_connection(sock, protocol_factory, ssl=ssl, server_side=True,
                                           ssl_handshake_timeout=ssl_handshake_timeout,
                                           ssl_shutdown_timeout=ssl_shutdown_timeout)

    @_asyncio_signature
    async def create_server(self, protocol_factory: Callable[[], Any], host: Any = None, port: Any = None,
                            *, family: int = socket.AF_UNSPEC, flags: int = socket.AI_PASSIVE,
                            sock: socket.socket | None = None, backlog: int = 100, ssl: Any = None,
                            reuse_address: bool | None = None, reuse_port: bool | None = None,
                            keep_alive: bool | None = None, ssl_handshake_timeout: Any = None,
                            ssl_shutdown_timeout: Any = None, start_serving: bool = True) -> Any:
        check_ssl_arguments(ssl, sock=sock, ssl_handshake_timeout=ssl_handshake_timeout,
                            ssl_shutdown_timeout=ssl_shutdown_timeout, server=True)
        if host is not None or port is not None:
            if sock is not None:
                raise ValueError("host/port and sock can not be specified at the same time")
            sockets = await self._bind_all(host, port, family, flags, reuse_address, reuse_port, keep_alive)
        else:
            if sock is None:
                raise ValueError("Neither host/port nor sock were specified")
            _check_stream_socket(sock)
            sockets = [sock]
        for s in sockets:
            s.setblocking(False)
        server = base_events.Server(self, sockets, protocol_factory, ssl, backlog,
                                    ssl_handshake_timeout, ssl_shutdown_timeout)
        if start_serving:
            server._start_serving()
            await asyncio.sleep(0)  # let the listeners start, as asyncio does
        return server

    async def _bind_all(self, host: Any, port: Any, family: int, flags: int, reuse_address: Any,
                        reuse_port: Any, keep_alive: Any) -> list:
        hosts = [host] if host == "" or isinstance(host, str) or not hasattr(host, "__iter__") else host
        hosts = [None if h == "" else h for h in hosts]
        infos = set(itertools.chain.from_iterable(await asyncio.gather(*[
            self.getaddrinfo(h, port, family=family, type=socket.SOCK_STREAM, flags=flags) for h in hosts])))
        if reuse_address is None:
            reuse_address = True
        sockets: list[socket.socket] = []
        try:
            for af, type_, proto, _, address in infos:
                try:
                    s = socket.socket(af, type_, proto)
                except socket.error:
                    continue  # e.g. IPv6 not supported by the kernel
                sockets.append(s)
                if reuse_address:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, True)
                if reuse_port:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, True)
                if keep_alive:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, True)
                if af == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, True)
                try:
                    s.bind(address)
                except OSError as err:
                    if err.errno == errno.EADDRNOTAVAIL and sys.version_info >= (3, 13):
                        # 3.13 serves on the addresses it can and skips this one.
                        sockets.remove(s)
                        s.close()
                        continue
                    raise _bind_error(err, address) from None
        except BaseException:
            for s in sockets:
                s.close()
            raise
        if not sockets:
            raise OSError("could not bind on any address out of {!r}".format([i[4] for i in infos]))
        return [bound_here(s) for s in sockets]

    # asyncio.Server drives these two.
    def _start_serving(self, protocol_factory: Callable[[], Any], sock: socket.socket,
                       sslcontext: Any = None, server: Any = None, backlog: int = 100,
                       ssl_handshake_timeout: Any = None, ssl_shutdown_timeout: Any = None) -> None:
        if sslcontext:
            # Each accepted connection gets its SSLProtocol from the factory;
            # _resume_accepting passes this wrapped factory back with no context.
            protocol_factory = server_protocol_factory(self, protocol_factory, sslcontext,
                                                       ssl_handshake_timeout, ssl_shutdown_timeout)
        # An io_uring loop accepts with one multishot accept on its ring
        # (when the kernel has it): no wake-up, accept4 or final EAGAIN per
        # batch. The rules stay asyncio's (_ring_accepted).
        # In a copy of the context serving started in, as add_reader's
        # handle runs _accept_ready: the protocols' callbacks keep it.
        accepted = functools.partial(_core._run_in_context, contextvars.copy_context(), self._ring_accepted,
                                     protocol_factory, sock, server, backlog)
        if sock not in _bound_here or not self._ring_accept_start(sock.fileno(), accepted):
            self._add_listener(sock.fileno(), self._accept_ready, protocol_factory, sock, server, backlog)

    def _stop_serving(self, sock: socket.socket) -> None:
        # The ring lets go of the socket first, so that closing it stops
        # the listening (a socket the kernel still holds keeps its port).
        if not self._ring_accept_stop(sock.fileno()):
            self.remove_reader(sock.fileno())
        sock.close()
        self._unix_listener_closed(sock)  # UnixMixin: 3.13's cleanup_socket

    def _accept_ready(self, protocol_factory: Callable[[], Any], sock: socket.socket, server: Any,
                      backlog: int) -> None:
        # Up to `backlog` connections per readiness event, like asyncio.
        for _ in range(backlog):
            try:
                conn, address = sock.accept()
                conn.setblocking(False)
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno not in _OUT_OF_RESOURCES:
                    raise
                # Out of descriptors: report, stop accepting for a moment,
                # and keep the server alive.
                self.call_exception_handler({
                    "message": "socket.accept() out of system resource",
                    "exception": exc,
                    "socket": trsock.TransportSocket(sock),
                })
                self.remove_reader(sock.fileno())
                self.call_later(_ACCEPT_RETRY_DELAY, self._resume_accepting, protocol_factory, sock,
                                server, backlog)
                return
            self._serve_connection(protocol_factory, conn, address, server)

    def _ring_accepted(self, protocol_factory: Callable[[], Any], sock: socket.socket, server: Any,
                       backlog: int, fd: int) -> None:
        if fd < 0:
            exc = OSError(-fd, os.strerror(-fd))
            if exc.errno in _OUT_OF_RESOURCES:
                # As _accept_ready: report, pause a second (the ring's accept
                # has stopped, holding what the kernel had already taken),
                # keep the server.
                self.call_exception_handler({
                    "message": "socket.accept() out of system resource",
                    "exception": exc,
                    "socket": trsock.TransportSocket(sock),
                })
                self.call_later(_ACCEPT_RETRY_DELAY, self._ring_resume_accepting, sock, server)
            else:
                # What asyncio's accept callback would raise: its handle's
                # error report, and accepting goes on.
                self.call_exception_handler({
                    "message": f"Exception in callback {self._accept_ready!r}",
                    "exception": exc,
                    "socket": trsock.TransportSocket(sock),
                })
            return
        try:
            conn = socket.socket(sock.family, sock.type, sock.proto, fileno=fd)
        except BaseException:
            os.close(fd)
            raise
        try:
            conn.setblocking(False)
            # accept() would have said it; the ring's multishot accept has
            # one address buffer for all its connections, so it is asked.
            address = conn.getpeername()
        except OSError:
            address = None  # reset before it was asked: the transport hears it next
        self._serve_connection(protocol_factory, conn, address, server)

    def _ring_resume_accepting(self, sock: socket.socket, server: Any) -> None:
        if server is not None and server.is_serving() and sock.fileno() != -1:
            self._ring_accept_resume(sock.fileno())

    def _resume_accepting(self, protocol_factory: Callable[[], Any], sock: socket.socket, server: Any,
                          backlog: int) -> None:
        if server is not None and server.is_serving() and sock.fileno() != -1:
            self._start_serving(protocol_factory, sock, None, server, backlog)

    def _serve_connection(self, protocol_factory: Callable[[], Any], conn: socket.socket, address: Any,
                          server: Any) -> None:
        try:
            protocol = protocol_factory()
            TcpTransport(self, conn, protocol, extra={"peername": address}, server=server)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            conn.close()
            if self.get_debug():  # asyncio reports this in debug mode only
                self.call_exception_handler({
                    "message": "Error on transport creation for incoming connection",
                    "exception": exc,
                })

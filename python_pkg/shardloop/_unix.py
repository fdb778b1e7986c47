"""Unix-domain stream sockets of shardloop.Loop. The AF_UNIX socket is made,
bound or connected and checked here with asyncio's rules (unix_events); it
then goes through create_connection / create_server with sock=, so the
transport, the asyncio.Server and the ssl= handling are exactly TCP's."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import stat
import sys
from typing import Any, Callable

from ._tcp import _asyncio_signature, bound_here
from ._tls import check_ssl_arguments

logger = logging.getLogger("asyncio")

_CLEANUP_SOCKET = sys.version_info >= (3, 13)  # create_unix_server(cleanup_socket=...)


def _is_abstract(path: str | bytes) -> bool:
    # Linux abstract namespace: the name starts with NUL and has no file.
    return path[:1] in ("\0", b"\0")


def _check_unix_stream_socket(sock: socket.socket) -> None:
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        raise ValueError(f"A UNIX Domain Stream Socket was expected, got {sock!r}")


def _remove_stale_socket_file(path: str | bytes) -> None:
    # Only a socket left by an earlier server goes; any other file makes
    # bind() fail with EADDRINUSE, as with asyncio.
    try:
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.remove(path)
    except FileNotFoundError:
        pass
    except OSError as err:  # e.g. a directory we may create sockets in but not stat
        logger.error("Unable to check or remove stale UNIX socket %r: %r", path, err)


def _bind_unix(path: str | bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if not _is_abstract(path):
            _remove_stale_socket_file(path)
        sock.bind(path)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise OSError(errno.EADDRINUSE, f"Address {path!r} is already in use") from None
        raise
    except BaseException:
        sock.close()
        raise
    return bound_here(sock)


def _socket_file(sock: socket.socket) -> tuple[str | bytes, int] | None:
    """(path, inode) of the file a bound listener lives at, or None for an
    abstract or unbound one (3.13 removes that file when the server closes,
    if it is still the same inode)."""
    path = sock.getsockname()
    if not path or _is_abstract(path):
        return None
    try:
        return path, os.stat(path).st_ino
    except FileNotFoundError:
        return None


class UnixMixin:
    """Mixed into shardloop.Loop."""

    # listener socket -> (path, inode) to unlink when asyncio.Server stops it
    _unix_socket_files: dict[socket.socket, tuple[str | bytes, int]] | None = None

    @_asyncio_signature
    async def create_unix_connection(self, protocol_factory: Callable[[], asyncio.BaseProtocol],
                                     path: Any = None, *, ssl: Any = None,
                                     sock: socket.socket | None = None, server_hostname: Any = None,
                                     ssl_handshake_timeout: Any = None,
                                     ssl_shutdown_timeout: Any = None) -> tuple:
        if ssl and server_hostname is None:  # no host to fall back on, unlike TCP
            raise ValueError("you have to pass server_hostname when using ssl")
        check_ssl_arguments(ssl, server_hostname=server_hostname,
                            ssl_handshake_timeout=ssl_handshake_timeout,
                            ssl_shutdown_timeout=ssl_shutdown_timeout)
        if path is not None:
            if sock is not None:
                raise ValueError("path and sock can not be specified at the same time")
            path = os.fspath(path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0)
            try:
                sock.setblocking(False)
                await self.sock_connect(sock, path)
            except BaseException:
                sock.close()
                raise
        elif sock is None:
            raise ValueError("no path and sock were specified")
        else:
            _check_unix_stream_socket(sock)
        return await self.create_connection(  # type: ignore[attr-defined]
            protocol_factory, sock=sock, ssl=ssl, server_hostname=server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout, ssl_shutdown_timeout=ssl_shutdown_timeout)

    @_asyncio_signature
    async def create_unix_server(self, protocol_factory: Callable[[], asyncio.BaseProtocol],
                                 path: Any = None, *, sock: socket.socket | None = None,
                                 backlog: int = 100, ssl: Any = None, ssl_handshake_timeout: Any = None,
                                 ssl_shutdown_timeout: Any = None, start_serving: bool = True,
                                 cleanup_socket: bool = True) -> Any:
        check_ssl_arguments(ssl, ssl_handshake_timeout=ssl_handshake_timeout,
                            ssl_shutdown_timeout=ssl_shutdown_timeout, server=True)
        if path is not None:
            if sock is not None:
                raise ValueError("path and sock can not be specified at the same time")
            sock = _bind_unix(os.fspath(path))
        elif sock is None:
            raise ValueError("path was not specified, and no sock specified")
        else:
            _check_unix_stream_socket(sock)
        socket_file = _socket_file(sock) if cleanup_socket and _CLEANUP_SOCKET else None
        server = await self.create_server(  # type: ignore[attr-defined]
            protocol_factory, sock=sock, backlog=backlog, ssl=ssl,
            ssl_handshake_timeout=ssl_handshake_timeout, ssl_shutdown_timeout=ssl_shutdown_timeout,
            start_serving=start_serving)
        if socket_file is not None:
            if self._unix_socket_files is None:
                self._unix_socket_files = {}
            self._unix_socket_files[sock] = socket_file
        return server

    def _unix_listener_closed(self, sock: socket.socket) -> None:
        """Called by _stop_serving once a listener is closed."""
        if self._unix_socket_files:
            socket_file = self._unix_socket_files.pop(sock, None)
            if socket_file is not None:
                _unlink_if_same(*socket_file)


def _unlink_if_same(path: str | bytes, inode: int) -> None:
    # Another server may have taken the path since: its file stays.
    try:
        if os.stat(path).st_ino == inode:
            os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as err:
        logger.error("Unable to clean up listening UNIX socket %r: %r", path, err)

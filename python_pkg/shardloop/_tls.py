"""TLS for shardloop.Loop: asyncio's own `asyncio.sslproto.SSLProtocol`
(MemoryBIO + SSLObject) sits between the native stream transport and the
application's protocol, wired the way asyncio's loops wire it.

The hook every stream kind uses (TCP in _tcp.py, Unix sockets in _unix.py):

- `make_ssl_protocol(loop, app_protocol, ssl, waiter, ...)` returns the
  SSLProtocol to give the raw transport *instead of* `app_protocol`. The raw
  transport gets no waiter: the SSLProtocol resolves `waiter` when the
  handshake is done (with the handshake's error, or the connection's loss,
  if it fails), then the application talks to `ssl_proto._app_transport`,
  which is what create_connection & co. return.
- `server_protocol_factory(...)` wraps a server's protocol factory so that
  each accepted connection gets its own SSLProtocol (asyncio's
  `_accept_connection2` minus the task per connection).
- `check_ssl_arguments(...)` holds asyncio's ssl argument checks shared by
  create_connection, create_server, connect_accepted_socket and their Unix
  socket twins.

`TlsMixin.start_tls` upgrades an open transport in place.
"""

from __future__ import annotations

import functools
import ssl as sslmod
from asyncio import sslproto
from typing import Any, Callable


def check_ssl_arguments(ssl: Any, *, sock: Any = None, server_hostname: Any = None,
                        ssl_handshake_timeout: Any = None, ssl_shutdown_timeout: Any = None,
                        server: bool = False) -> None:
    if server and isinstance(ssl, bool):
        raise TypeError("ssl argument must be an SSLContext or None")
    if server_hostname is not None and not ssl:
        raise ValueError("server_hostname is only meaningful with ssl")
    if ssl_handshake_timeout is not None and not ssl:
        raise ValueError("ssl_handshake_timeout is only meaningful with ssl")
    if ssl_shutdown_timeout is not None and not ssl:
        raise ValueError("ssl_shutdown_timeout is only meaningful with ssl")
    if isinstance(sock, sslmod.SSLSocket):
        raise TypeError("Socket cannot be of type SSLSocket")


def make_ssl_protocol(loop: Any, app_protocol: Any, ssl: Any, waiter: Any, *,
                      server_side: bool = False, server_hostname: Any = None,
                      ssl_handshake_timeout: Any = None, ssl_shutdown_timeout: Any = None,
                      call_connection_made: bool = True) -> sslproto.SSLProtocol:
    # ssl=True means "a default context": SSLProtocol makes one from None
    # (and refuses None on the server side, with asyncio's message).
    context = None if isinstance(ssl, bool) else ssl
    return sslproto.SSLProtocol(loop, app_protocol, context, waiter, server_side, server_hostname,
                                call_connection_made=call_connection_made,
                                ssl_handshake_timeout=ssl_handshake_timeout,
                                ssl_shutdown_timeout=ssl_shutdown_timeout)


def server_protocol_factory(loop: Any, protocol_factory: Callable[[], Any], sslcontext: Any,
                            ssl_handshake_timeout: Any, ssl_shutdown_timeout: Any) -> Callable[[], Any]:
    def make() -> sslproto.SSLProtocol:
        app_protocol = protocol_factory()
        waiter = loop.create_future()
        ssl_proto = make_ssl_protocol(loop, app_protocol, sslcontext, waiter, server_side=True,
                                      ssl_handshake_timeout=ssl_handshake_timeout,
                                      ssl_shutdown_timeout=ssl_shutdown_timeout)
        waiter.add_done_callback(functools.partial(
            _handshake_done, loop, app_protocol, ssl_proto._app_transport))
        return ssl_proto
    return make


def _handshake_done(loop: Any, app_protocol: Any, app_transport: Any, waiter: Any) -> None:
    # A failed handshake has already closed the connection; like asyncio,
    # only debug mode hears about it.
    exc = None if waiter.cancelled() else waiter.exception()
    if exc is None:
        return
    app_transport.close()
    if loop.get_debug():
        loop.call_exception_handler({
            "message": "Error on transport creation for incoming connection",
            "exception": exc,
            "protocol": app_protocol,
            "transport": app_transport,
        })


class TlsMixin:
    """Mixed into shardloop.Loop."""

    async def start_tls(self, transport: Any, protocol: Any, sslcontext: Any, *,
                        server_side: bool = False, server_hostname: Any = None,
                        ssl_handshake_timeout: Any = None, ssl_shutdown_timeout: Any = None) -> Any:
        if not isinstance(sslcontext, sslmod.SSLContext):
            raise TypeError("sslcontext is expected to be an instance of ssl.SSLContext, "
                            f"got {sslcontext!r}")
        if not getattr(transport, "_start_tls_compatible", False):
            raise TypeError(f"transport {transport!r} is not supported by start_tls()")
        waiter = self.create_future()  # type: ignore[attr-defined]
        ssl_proto = make_ssl_protocol(self, protocol, sslcontext, waiter, server_side=server_side,
                                      server_hostname=server_hostname,
                                      ssl_handshake_timeout=ssl_handshake_timeout,
                                      ssl_shutdown_timeout=ssl_shutdown_timeout,
                                      call_connection_made=False)
        # Reading stops until the SSLProtocol has the transport, so no byte
        # of the handshake reaches it before connection_made().
        transport.pause_reading()
        transport.set_protocol(ssl_proto)
        made = self.call_soon(ssl_proto.connection_made, transport)  # type: ignore[attr-defined]
        resumed = self.call_soon(transport.resume_reading)  # type: ignore[attr-defined]
        try:
            await waiter
        except BaseException:
            transport.close()
            made.cancel()
            resumed.cancel()
            raise
        return ssl_proto._app_transport

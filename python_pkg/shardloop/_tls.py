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

The SSLProtocol is `NativeSSLProtocol`, or with SHARDLOOP_TLS=python
`PySSLProtocol` (asyncio's class with a shutdown that cannot outlast
ssl_shutdown_timeout). NativeSSLProtocol is PySSLProtocol whose steady-state
data path (bytes in -> SSLObject.read -> the app's data_received, app write
-> SSLObject.write -> the raw transport) runs in `_core.TlsProtocol`
(bindings/tls_protocol.cpp). Every state change recomputes which of the two
paths the native object may take (`_shardloop_sync`); everything else
(handshake, shutdown, timeouts, flow control, errors) stays asyncio's own
code.
"""

from __future__ import annotations

import functools
import os
import ssl as sslmod
from asyncio import sslproto
from typing import Any, Callable

from . import _core

# SHARDLOOP_TLS=python: the SSLProtocol in Python (PySSLProtocol), for comparison.
NATIVE = os.environ.get("SHARDLOOP_TLS", "native") != "python"

_WRAPPED = sslproto.SSLProtocolState.WRAPPED
_AGAIN = (sslmod.SSLWantReadError, sslmod.SSLWantWriteError)


def _synced(name: str) -> Callable[..., Any]:
    """An SSLProtocol method that may change what the native paths are
    allowed to do: asyncio's own, then _shardloop_sync()."""
    base = getattr(PySSLProtocol, name)

    @functools.wraps(base)
    def method(self: Any, *args: Any) -> Any:
        try:
            return base(self, *args)
        finally:
            self._shardloop_sync()
    return method


class PySSLProtocol(sslproto.SSLProtocol):
    """asyncio's SSLProtocol, with a shutdown that always ends within
    ssl_shutdown_timeout.

    asyncio's eof_received() moves a WRAPPED connection whose app has paused
    reading to FLUSHING without a shutdown timer (it waits for the app to
    read what is left). A close() from there finds the state past WRAPPED
    and starts nothing, so with the app still paused the connection waited
    forever. Here that close() starts the timer asyncio's close() would
    have started."""

    def _start_shutdown(self) -> None:
        if (self._state is sslproto.SSLProtocolState.FLUSHING
                and self._shutdown_timeout_handle is None and self._transport is not None):
            if self._app_transport is not None:
                self._app_transport._closed = True
            self._shutdown_timeout_handle = self._loop.call_later(
                self._ssl_shutdown_timeout, self._check_shutdown_timeout)
            return
        super()._start_shutdown()


class NativeSSLProtocol(PySSLProtocol):
    """asyncio's SSLProtocol with its data path in _core.TlsProtocol."""

    _shardloop_core: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        sslobj = self._sslobj
        # ssl.SSLObject's read/write/pending only forward to the _ssl object
        # inside it: calling that one directly saves a Python frame per call.
        # A context's own sslobject_class keeps its methods.
        inner = getattr(sslobj, "_sslobj", None) if type(sslobj) is sslmod.SSLObject else None
        # SSLProtocol.__init__ makes the app transport (3.11-3.13).
        app_transport = self._app_transport
        core = _core.TlsProtocol(self, app_transport, sslproto._SSLProtocolTransport.write,
                                 inner if inner is not None else sslobj, self._incoming,
                                 self._outgoing, self._write_backlog, _AGAIN)
        self._shardloop_core = core
        # The raw transport takes bytes from here instead of get_buffer/buffer_updated.
        self._shardloop_feed = core.feed
        app_transport.write = core.write
        self._shardloop_peers()

    def _shardloop_peers(self) -> None:
        core = self._shardloop_core
        if core is None:
            return
        app = self._app_protocol
        buffered = app is not None and self._app_protocol_is_buffer
        core.set_peers(None if app is None or buffered else app.data_received,
                       self._app_protocol_get_buffer if buffered else None,
                       self._app_protocol_buffer_updated if buffered else None,
                       None if self._transport is None else self._transport.write,
                       app)  # an asyncio.StreamReaderProtocol: plaintext straight into its reader
        self._shardloop_sync()

    def _shardloop_sync(self) -> None:
        core = self._shardloop_core
        if core is None:
            return
        live = self._state is _WRAPPED and self._transport is not None
        core.sync(live and not self._app_reading_paused and not self._ssl_reading_paused,
                  live and not self._ssl_writing_paused and not self._app_writing_paused
                  and self._outgoing_high_water > 0,
                  self._incoming_high_water)

    def _shardloop_feed_slow(self, data: Any) -> None:
        # What the raw transport would do for this BufferedProtocol.
        view = memoryview(data)
        while view:
            buf = self.get_buffer(len(view))
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            view = view[n:]
            self.buffer_updated(n)

    def _shardloop_read_later(self) -> None:
        # _do_read__buffered() filled the app's buffer: the rest next time.
        self._loop.call_soon(self._do_read)

    def _shardloop_close_notify(self) -> None:
        # _do_read__copied's answer to an empty read: the peer's close_notify.
        self._call_eof_received()
        self._start_shutdown()

    def _set_app_protocol(self, app_protocol: Any) -> None:
        super()._set_app_protocol(app_protocol)
        self._shardloop_peers()

    def connection_made(self, transport: Any) -> None:
        try:
            super().connection_made(transport)
        finally:
            self._shardloop_peers()

    def connection_lost(self, exc: Any) -> None:
        try:
            super().connection_lost(exc)
        finally:
            core = self._shardloop_core
            if core is not None:
                core.detach()

    _set_state = _synced("_set_state")
    _pause_reading = _synced("_pause_reading")
    _resume_reading = _synced("_resume_reading")
    pause_writing = _synced("pause_writing")
    resume_writing = _synced("resume_writing")
    _control_app_writing = _synced("_control_app_writing")
    _control_ssl_reading = _synced("_control_ssl_reading")
    _set_read_buffer_limits = _synced("_set_read_buffer_limits")
    _set_write_buffer_limits = _synced("_set_write_buffer_limits")


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
    cls = NativeSSLProtocol if NATIVE else PySSLProtocol
    return cls(loop, app_protocol, context, waiter, server_side, server_hostname,
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

"""Rules every shardloop transport shares with asyncio's: the base of every
transport (protocol, closing state, the unclosed-transport warning, writes
after the connection is lost), pausing reads, and what a fatal error does.
A transport using these provides _start_reading, _stop_reading,
_force_close, _owns_resource and _release, and the attributes _loop,
_protocol, _closing, _paused and _conn_lost."""

from __future__ import annotations

import asyncio
import logging
import warnings
from typing import Any

logger = logging.getLogger("asyncio")

# asyncio's constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES: writes after the
# connection was lost are dropped silently this many times, then logged.
LOG_THRESHOLD_FOR_CONNLOST_WRITES = 5


class TransportBase:
    """Listed first among a transport's bases: asyncio's transport ABCs
    define these methods to raise NotImplementedError."""

    def set_protocol(self: Any, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self: Any) -> asyncio.BaseProtocol:
        return self._protocol

    def is_closing(self: Any) -> bool:
        return self._closing

    def __del__(self: Any, _warn: Any = warnings.warn) -> None:
        if self._owns_resource():
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            self._release()

    def _drop_write_after_lost(self: Any, warning: str) -> None:
        """A write after the connection was lost (or the transport closed):
        dropped, and logged once asyncio's threshold is passed."""
        if self._conn_lost >= LOG_THRESHOLD_FOR_CONNLOST_WRITES:
            logger.warning(warning)
        self._conn_lost += 1


class PausableReads:
    def is_reading(self: Any) -> bool:
        return not self._paused and not self._closing

    def pause_reading(self: Any) -> None:
        if self._closing or self._paused:
            return
        self._paused = True
        self._stop_reading()
        if self._loop.get_debug():
            logger.debug("%r pauses reading", self)

    def resume_reading(self: Any) -> None:
        if self._closing or not self._paused:
            return
        self._paused = False
        self._start_reading()
        if self._loop.get_debug():
            logger.debug("%r resumes reading", self)


def fatal_error(transport: Any, exc: BaseException, message: str) -> None:
    """asyncio's _fatal_error: OSErrors are the peer's doing (logged in debug
    mode only), anything else reaches the exception handler; the transport
    is closed at once either way."""
    if isinstance(exc, OSError):
        if transport._loop.get_debug():
            logger.debug("%r: %s", transport, message, exc_info=True)
    else:
        transport._loop.call_exception_handler({
            "message": message,
            "exception": exc,
            "transport": transport,
            "protocol": transport._protocol,
        })
    transport._force_close(exc)

"""Rules every shardloop transport shares with asyncio's: pausing reads and
what a fatal error does. A transport using this provides _start_reading,
_stop_reading and _force_close, and the attributes _loop, _protocol,
_closing and _paused."""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger("asyncio")


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

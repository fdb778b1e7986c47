"""OS signals: add_signal_handler / remove_signal_handler.

As on asyncio's loop, a handled signal gets a Python-level handler that does
nothing but make CPython write the signal's number to the wakeup fd; the
native loop reads those numbers (Loop::take_signals) and calls
_handle_signal for each, which queues the callback. So, as on asyncio's loop,
a callback still hears its signal when other code has replaced the
Python-level handler with signal.signal() since (uvicorn's Server does, and
restores it afterwards), and the callback runs as an ordinary loop callback,
never in the signal handler."""

from __future__ import annotations

import errno
import logging
import signal
import sys
import warnings
from asyncio import coroutines, events
from typing import Any, Callable

logger = logging.getLogger("asyncio")


def _sighandler_noop(signum: int, frame: Any) -> None:
    """Only there so that CPython catches the signal and writes the wakeup fd."""


class SignalMixin:
    # run_forever's _SignalWakeup sets this while it holds the wakeup fd, so
    # removing the last handler does not take the fd from a running loop.
    _wakeup_held_by_run = False

    def _signal_handler_table(self) -> dict[int, events.Handle]:
        table = self.__dict__.get("_signal_handlers")
        if table is None:
            table = self.__dict__["_signal_handlers"] = {}
        return table

    def _has_signal_handlers(self) -> bool:
        return bool(self.__dict__.get("_signal_handlers"))

    def add_signal_handler(self, sig: int, callback: Callable[..., Any], *args: Any) -> None:
        if coroutines.iscoroutine(callback) or coroutines.iscoroutinefunction(callback):
            raise TypeError("coroutines cannot be used with add_signal_handler()")
        self._check_signal(sig)
        self._check_closed()
        try:
            # Raises ValueError outside the main thread: a loop running
            # elsewhere cannot take over the process's signals.
            signal.set_wakeup_fd(self._signal_wakeup_fd(), warn_on_full_buffer=False)
        except (ValueError, OSError) as exc:
            raise RuntimeError(str(exc))

        table = self._signal_handler_table()
        table[sig] = events.Handle(callback, args, self, None)
        try:
            signal.signal(sig, _sighandler_noop)
            # SA_RESTART, as asyncio sets: fewer EINTRs in blocking calls.
            signal.siginterrupt(sig, False)
        except OSError as exc:
            del table[sig]
            if not table:
                self._drop_signal_wakeup_fd()
            if exc.errno == errno.EINVAL:
                raise RuntimeError(f"sig {sig} cannot be caught")
            raise

    def remove_signal_handler(self, sig: int) -> bool:
        self._check_signal(sig)
        table = self._signal_handler_table()
        if table.pop(sig, None) is None:
            return False
        default = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
        try:
            signal.signal(sig, default)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                raise RuntimeError(f"sig {sig} cannot be caught")
            raise
        if not table:
            self._drop_signal_wakeup_fd()
        return True

    def _check_signal(self, sig: Any) -> None:
        if not isinstance(sig, int):
            raise TypeError(f"sig must be an int, not {sig!r}")
        if sig not in signal.valid_signals():
            raise ValueError(f"invalid signal number {sig}")

    def _drop_signal_wakeup_fd(self) -> None:
        if self._wakeup_held_by_run:
            return  # the running loop still wants Ctrl-C to wake it
        try:
            signal.set_wakeup_fd(-1)
        except (ValueError, OSError) as exc:
            logger.info("set_wakeup_fd(-1) failed: %s", exc)

    def _handle_signal(self, sig: int) -> None:
        # Called by the native loop for each signal number read from the
        # wakeup fd (bindings/loop_object.cpp, check_signals).
        handle = self.__dict__.get("_signal_handlers", {}).get(sig)
        if handle is None:
            return
        if handle._cancelled:
            self.remove_signal_handler(sig)
            return
        try:
            self.call_soon_threadsafe(handle._run)
        except RuntimeError:
            pass  # closed by another thread since: nothing left to run it

    def _remove_signal_handlers_on_close(self) -> None:
        table = self.__dict__.get("_signal_handlers")
        if not table:
            return
        if sys.is_finalizing():
            warnings.warn(f"Closing the loop {self!r} on interpreter shutdown stage, "
                          "skipping signal handlers removal", ResourceWarning, source=self)
            table.clear()
            return
        for sig in list(table):
            self.remove_signal_handler(sig)

"""OS signals: add_signal_handler / remove_signal_handler.

asyncio's loop reads signal numbers back from its wakeup fd. shardloop's
native loop only drains its wakeup fd and then runs the Python-level
handlers (PyErr_CheckSignals), so each handled signal gets a Python handler
that queues the callback with call_soon_threadsafe: that is safe wherever the
interpreter happens to run the handler, and the callback itself runs later as
an ordinary loop callback, never in the signal handler."""

from __future__ import annotations

import errno
import logging
import signal
import sys
import warnings
import weakref
from asyncio import coroutines, events
from typing import Any, Callable

logger = logging.getLogger("asyncio")


def _make_dispatcher(loop: Any) -> Callable[[int, Any], None]:
    # Weak: the signal module must not keep an unclosed loop alive; the
    # loop's __del__ closes it, and close() gives the signals back.
    ref = weakref.ref(loop)

    def dispatch(signum: int, frame: Any) -> None:
        target = ref()
        if target is not None:
            target._deliver_signal(signum)

    return dispatch


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

    def _signal_dispatcher(self) -> Callable[[int, Any], None]:
        dispatch = self.__dict__.get("_signal_dispatch")
        if dispatch is None:
            dispatch = self.__dict__["_signal_dispatch"] = _make_dispatcher(self)
        return dispatch

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
            signal.signal(sig, self._signal_dispatcher())
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

    def _deliver_signal(self, sig: int) -> None:
        # Runs as a Python-level signal handler, in the main thread, wherever
        # the interpreter was: it must only queue, and never raise.
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

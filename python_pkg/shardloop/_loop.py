"""shardloop.Loop: the native loop plus the parts of the contract that are
Python by nature (run_forever's bookkeeping, exception handler, executors,
async generator hooks)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import signal
import socket
import sys
import threading
import traceback
import warnings
import weakref
from asyncio import events, format_helpers, futures, tasks
from typing import Any, Callable

from . import _core
from ._fdio import FdIOMixin
from ._pipes import PipeMixin
from ._shards import ShardMixin
from ._signals import SignalMixin
from ._subprocess import SubprocessMixin
from ._tcp import TcpMixin
from ._tls import TlsMixin
from ._udp import DatagramMixin
from ._unix import UnixMixin

logger = logging.getLogger("asyncio")  # same logger as asyncio's own loop


def _debug_from_environment() -> bool:
    if sys.flags.dev_mode:
        return True
    return not sys.flags.ignore_environment and bool(os.environ.get("PYTHONASYNCIODEBUG"))


def _format_callback(callback: Any, args: Any) -> str:
    return format_helpers._format_callback_source(callback, args or ())


def _stop_when_done(fut: asyncio.Future) -> None:
    # KeyboardInterrupt/SystemExit already end run_forever(); stopping here
    # too would leave a stale stop for the next run.
    if not fut.cancelled() and isinstance(fut.exception(), (SystemExit, KeyboardInterrupt)):
        return
    futures._get_loop(fut).stop()


class Loop(_core.Loop, ShardMixin, FdIOMixin, TcpMixin, UnixMixin, DatagramMixin, PipeMixin, TlsMixin,
           SubprocessMixin, SignalMixin, asyncio.AbstractEventLoop):
    """An asyncio event loop on libuv."""

    def __init__(self) -> None:
        _all_loops.add(self)
        self._exception_handler: Callable[..., Any] | None = None
        self._default_executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._executor_shutdown_called = False
        self._asyncgens: weakref.WeakSet = weakref.WeakSet()
        self._asyncgens_shutdown_called = False
        self._origin_tracking_depth: int | None = None
        self.set_debug(_debug_from_environment())

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} running={self.is_running()} "
                f"closed={self.is_closed()} debug={self.get_debug()}>")

    def __del__(self, _warn: Callable[..., Any] = warnings.warn) -> None:
        if not self.is_closed():
            _warn(f"unclosed event loop {self!r}", ResourceWarning, source=self)
            if not self.is_running():
                self.close()

    # -- running ---------------------------------------------------------

    def _check_closed(self) -> None:
        if self.is_closed():
            raise RuntimeError("Event loop is closed")

    def _check_running(self) -> None:
        if self.is_running():
            raise RuntimeError("This event loop is already running")
        if events._get_running_loop() is not None:
            raise RuntimeError("Cannot run the event loop while another loop is running")

    def run_forever(self) -> None:
        self._check_closed()
        self._check_running()
        self._set_coroutine_origin_tracking(self.get_debug())
        old_hooks = sys.get_asyncgen_hooks()
        wakeup = _SignalWakeup(self)
        try:
            self._thread_id = threading.get_ident()
            sys.set_asyncgen_hooks(firstiter=self._asyncgen_firstiter_hook,
                                   finalizer=self._asyncgen_finalizer_hook)
            events._set_running_loop(self)
            wakeup.install()
            self._run()
        finally:
            wakeup.uninstall()
            self._thread_id = None
            events._set_running_loop(None)
            self._set_coroutine_origin_tracking(False)
            sys.set_asyncgen_hooks(*old_hooks)

    def run_until_complete(self, future: Any) -> Any:
        self._check_closed()
        self._check_running()
        new_task = not futures.isfuture(future)
        future = tasks.ensure_future(future, loop=self)
        if new_task:
            future._log_destroy_pending = False
        future.add_done_callback(_stop_when_done)
        try:
            self.run_forever()
        except BaseException:
            if new_task and future.done() and not future.cancelled():
                future.exception()  # the caller sees it raised: not "never retrieved"
            raise
        finally:
            future.remove_done_callback(_stop_when_done)
        if not future.done():
            raise RuntimeError("Event loop stopped before Future completed.")
        return future.result()

    def close(self) -> None:
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        if self.is_closed():
            return
        if self.get_debug():
            logger.debug("Close %r", self)
        self._stop_shards()
        self._remove_signal_handlers_on_close()
        self._close_child_watches()
        self._close_native()
        executor, self._default_executor = self._default_executor, None
        if executor is not None:
            executor.shutdown(wait=False)

    # -- debug -----------------------------------------------------------

    def set_debug(self, enabled: bool) -> None:
        super().set_debug(enabled)
        if self.is_running():
            self.call_soon_threadsafe(self._set_coroutine_origin_tracking, enabled)

    def _set_coroutine_origin_tracking(self, enabled: bool) -> None:
        if bool(enabled) == (self._origin_tracking_depth is not None):
            return
        if enabled:
            self._origin_tracking_depth = sys.get_coroutine_origin_tracking_depth()
            sys.set_coroutine_origin_tracking_depth(asyncio.coroutines._DEBUG_STACK_DEPTH
                                                    if hasattr(asyncio.coroutines, "_DEBUG_STACK_DEPTH")
                                                    else 10)
        else:
            sys.set_coroutine_origin_tracking_depth(self._origin_tracking_depth)
            self._origin_tracking_depth = None

    # Called by the native handles, off the fast path.
    def _extract_stack(self) -> Any:
        return format_helpers.extract_stack(sys._getframe(1))

    def _handle_repr(self, handle: Any) -> str:
        info = [type(handle).__name__]
        if handle.cancelled():
            info.append("cancelled")
        if isinstance(handle, _core.TimerHandle):
            info.append(f"when={handle.when()}")
        if handle._callback is not None:
            info.append(_format_callback(handle._callback, handle._args))
        if handle._source_traceback:
            frame = handle._source_traceback[-1]
            info.append(f"created at {frame[0]}:{frame[1]}")
        return "<{}>".format(" ".join(info))

    def _log_slow_callback(self, handle: Any, seconds: float) -> None:
        # A task's step names the task, as asyncio's _format_handle does:
        # its step wrapper alone says nothing about which coroutine was slow.
        owner = getattr(handle._callback, "__self__", None)
        what = repr(owner) if isinstance(owner, tasks.Task) else self._handle_repr(handle)
        logger.warning("Executing %s took %.3f seconds", what, seconds)

    def _callback_error(self, handle: Any, exc: BaseException) -> None:
        context = {
            "message": f"Exception in callback {_format_callback(handle._callback, handle._args)}",
            "exception": exc,
            "handle": handle,
        }
        if handle._source_traceback:
            context["source_traceback"] = handle._source_traceback
        self.call_exception_handler(context)

    # -- futures and tasks -------------------------------------------------

    # create_future() and create_task() are native; this is create_task's
    # path when a task factory is set or debug mode needs the bookkeeping.
    def _create_task_slow(self, coro: Any, name: str | None, context: Any) -> asyncio.Task:
        self._check_closed()
        if self._task_factory is None:
            task = tasks.Task(coro, loop=self, name=name, context=context)
            if task._source_traceback:
                del task._source_traceback[-1]
            return task
        if context is None:
            task = self._task_factory(self, coro)
        else:
            task = self._task_factory(self, coro, context=context)
        if name is not None:
            task.set_name(name)
        return task

    def set_task_factory(self, factory: Callable[..., Any] | None) -> None:
        if factory is not None and not callable(factory):
            raise TypeError("task factory must be a callable or None")
        self._task_factory = factory

    def get_task_factory(self) -> Callable[..., Any] | None:
        return self._task_factory

    # -- exception handling ----------------------------------------------

    def get_exception_handler(self) -> Callable[..., Any] | None:
        return self._exception_handler

    def set_exception_handler(self, handler: Callable[..., Any] | None) -> None:
        if handler is not None and not callable(handler):
            raise TypeError(f"A callable object or None is expected, got {handler!r}")
        self._exception_handler = handler

    def default_exception_handler(self, context: dict[str, Any]) -> None:
        message = context.get("message") or "Unhandled exception in event loop"
        exception = context.get("exception")
        exc_info: Any = (type(exception), exception, exception.__traceback__) if exception else False
        lines = [message]
        for key in sorted(context):
            if key in ("message", "exception"):
                continue
            value = context[key]
            if key in ("source_traceback", "handle_traceback"):
                stack = "".join(traceback.format_list(value)).rstrip()
                title = ("Object created at (most recent call last):" if key == "source_traceback"
                         else "Handle created at (most recent call last):")
                value = f"{title}\n{stack}"
            else:
                value = repr(value)
            lines.append(f"{key}: {value}")
        logger.error("\n".join(lines), exc_info=exc_info)

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        if self._exception_handler is None:
            try:
                self.default_exception_handler(context)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException:
                # The logging itself failed; there is nowhere better to go.
                logger.error("Exception in default exception handler", exc_info=True)
            return
        try:
            self._exception_handler(self, context)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            try:
                self.default_exception_handler({
                    "message": "Unhandled error in exception handler",
                    "exception": exc,
                    "context": context,
                })
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException:
                logger.error("Exception in default exception handler while handling an "
                             "unexpected error in custom exception handler", exc_info=True)

    # -- executors -------------------------------------------------------

    def run_in_executor(self, executor: Any, func: Callable[..., Any], *args: Any) -> asyncio.Future:
        self._check_closed()
        if self.get_debug():
            if asyncio.iscoroutine(func) or asyncio.iscoroutinefunction(func):
                raise TypeError("coroutines cannot be used with run_in_executor()")
            if not callable(func):
                raise TypeError(f"a callable object was expected by run_in_executor(), got {func!r}")
        if executor is None:
            if self._executor_shutdown_called:
                raise RuntimeError("Executor shutdown has been called")
            executor = self._default_executor
            if executor is None:
                executor = concurrent.futures.ThreadPoolExecutor(thread_name_prefix="asyncio")
                self._default_executor = executor
        return futures.wrap_future(executor.submit(func, *args), loop=self)

    def set_default_executor(self, executor: Any) -> None:
        if not isinstance(executor, concurrent.futures.ThreadPoolExecutor):
            raise TypeError("executor must be ThreadPoolExecutor instance")
        self._default_executor = executor

    async def shutdown_default_executor(self, timeout: float | None = None) -> None:
        self._executor_shutdown_called = True
        executor = self._default_executor
        if executor is None:
            return
        done = self.create_future()
        thread = threading.Thread(target=self._join_executor, args=(executor, done))
        thread.start()
        try:
            await asyncio.wait_for(asyncio.shield(done), timeout)
        except TimeoutError:
            warnings.warn("The executor did not finishing joining its threads within "
                          f"{timeout} seconds.", RuntimeWarning, stacklevel=2)
            executor.shutdown(wait=False)
        else:
            thread.join()

    def _join_executor(self, executor: Any, done: asyncio.Future) -> None:
        try:
            executor.shutdown(wait=True)
        except Exception as exc:
            if not self.is_closed():
                self.call_soon_threadsafe(_settle, done, exc)
        else:
            if not self.is_closed():
                self.call_soon_threadsafe(_settle, done, None)

    # -- async generators ------------------------------------------------

    def _asyncgen_firstiter_hook(self, agen: Any) -> None:
        if self._asyncgens_shutdown_called:
            warnings.warn(f"asynchronous generator {agen!r} was scheduled after "
                          "loop.shutdown_asyncgens() call", ResourceWarning, source=self)
        self._asyncgens.add(agen)

    def _asyncgen_finalizer_hook(self, agen: Any) -> None:
        self._asyncgens.discard(agen)
        if not self.is_closed():
            self.call_soon_threadsafe(self.create_task, agen.aclose())

    async def shutdown_asyncgens(self) -> None:
        self._asyncgens_shutdown_called = True
        if not len(self._asyncgens):
            return
        agens = list(self._asyncgens)
        self._asyncgens.clear()
        results = await asyncio.gather(*[ag.aclose() for ag in agens], return_exceptions=True)
        for result, agen in zip(results, agens):
            if isinstance(result, Exception):
                self.call_exception_handler({
                    "message": f"an error occurred during closing of asynchronous generator {agen!r}",
                    "exception": result,
                    "asyncgen": agen,
                })

    # -- DNS: numeric hosts inline, names in the default executor ----------

    async def getaddrinfo(self, host: Any, port: Any, *, family: int = 0, type: int = 0,
                          proto: int = 0, flags: int = 0) -> list:
        try:
            # A numeric host needs no lookup: answer without a thread hop.
            return socket.getaddrinfo(host, port, family, type, proto, flags | socket.AI_NUMERICHOST)
        except (socket.gaierror, UnicodeError):
            pass
        return await self.run_in_executor(None, socket.getaddrinfo, host, port, family, type, proto, flags)

    async def getnameinfo(self, sockaddr: Any, flags: int = 0) -> tuple:
        return await self.run_in_executor(None, socket.getnameinfo, sockaddr, flags)


def _settle(fut: asyncio.Future, exc: BaseException | None) -> None:
    if fut.cancelled():
        return
    if exc is None:
        fut.set_result(None)
    else:
        fut.set_exception(exc)


class _SignalWakeup:
    """Points signal.set_wakeup_fd at the loop while it runs in the main
    thread, so Ctrl-C wakes a loop blocked in libuv (which retries on EINTR)
    and Python's handlers run: KeyboardInterrupt or asyncio.Runner's cancel."""

    def __init__(self, loop: Loop) -> None:
        self._loop = loop
        self._installed = False
        self._displaced = -1

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        fd = self._loop._signal_wakeup_fd()
        try:
            previous = signal.set_wakeup_fd(fd, warn_on_full_buffer=False)
        except ValueError:
            return
        if previous not in (-1, fd):
            # Someone else's wakeup fd (asyncio's own signal handling, for
            # one). Leaving it in place would leave Ctrl-C unseen until the
            # next event, as libuv retries its poll on EINTR; so ours takes
            # its place while the loop runs, the loop passes every signal
            # byte on to it, and uninstall() gives it back.
            self._displaced = previous
            self._loop._forward_signals(previous)
        self._installed = True
        self._loop._wakeup_held_by_run = True

    def uninstall(self) -> None:
        if self._installed:
            self._installed = False
            self._loop._wakeup_held_by_run = False
            if self._displaced >= 0:
                self._loop._forward_signals(-1)
                signal.set_wakeup_fd(self._displaced)
                self._displaced = -1
            elif not self._loop._has_signal_handlers():
                signal.set_wakeup_fd(-1)


# Every loop not yet collected, for the fork hook.
_all_loops: weakref.WeakSet = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """What asyncio does in a fork child on 3.12+ (no running loop, the
    policy forgets its loop, no wakeup fd), plus what only shardloop needs:
    each loop inherited from the parent gets its own epoll instance, async
    eventfd and signal socketpair. The inherited ones are shared with the
    parent: closing the old loop here would epoll_ctl(DEL) the parent's
    registrations, and reading the signal socketpair would steal its bytes.
    Runs in subprocess's preexec_fn children too, so it only makes kernel
    objects (close-on-exec) and never raises."""
    for loop in list(_all_loops):
        try:
            loop._after_fork()
        except Exception:  # noqa: BLE001 - the child must go on regardless
            pass
    # A fork from a shard's thread: the child's copy of the thread may run a
    # new runtime.
    _core.Runtime._after_fork()
    if sys.version_info < (3, 12):
        # 3.12+ asyncio does this itself; 3.11's get_running_loop already
        # ignores a loop set in another process.
        events._set_running_loop(None)
        policy = events._event_loop_policy
        if policy is not None and hasattr(policy, "_local"):
            policy._local = type(policy._local)()
        if threading.current_thread() is threading.main_thread():
            try:
                signal.set_wakeup_fd(-1)
            except (ValueError, OSError):
                pass


os.register_at_fork(after_in_child=_after_fork_in_child)
_core._set_asyncio_types(futures.Future, tasks.Task)
# Reads for these feed the reader's buffer natively (stream_reader_feed.cpp).
_core._set_stream_types(asyncio.StreamReaderProtocol, asyncio.StreamReader)
try:
    import ssl
except ImportError:  # pragma: no cover - Python built without ssl
    ssl = None  # type: ignore[assignment]
_core._set_socket_types(socket.socket, getattr(ssl, "SSLSocket", None))

"""Thread-per-core mode: N full shardloop loops, one per thread.

Shard 0 is the loop the program runs on (its main thread); shards 1..N-1 run
their own loops in threads started with it and stopped when it closes. Loops
only ever touch their own objects: work crosses shards as a callback posted
through the engine's Runtime (`_core.Runtime`: a lock-free single-producer
ring per pair of shards, and a wake-up only when the target is about to
block), and results come back the same way.

Shutdown (shard 0's loop closing): shards 1..N-1 are stopped and cancel their
tasks, so remote callers get an answer; once every shard has finished that,
all of them detach together, and what is still queued is settled: a call
nobody ran answers its caller with ShardStopped, the rest is dropped.

The whole shutdown is bounded by `shutdown_timeout` (DEFAULT_SHUTDOWN_TIMEOUT
seconds unless run()/new_event_loop()/EventLoopPolicy say otherwise): a shard
that has not finished by then (stuck in a blocking callback) is named in a
RuntimeWarning with its stack and left behind; shard 0 leaves the runtime
without it (what the stuck shard sends afterwards is refused) and its loop
closes. Ctrl-C during the wait ends it the same way, raising
KeyboardInterrupt."""

from __future__ import annotations

import asyncio
import atexit
import functools
import inspect
import math
import os
import sys
import threading
import time
import traceback
import types
import warnings
import weakref
from typing import Any, Awaitable, Callable

from . import _core

# How long, by default, shard 0's close() waits for the other shards to
# finish before it leaves without them.
DEFAULT_SHUTDOWN_TIMEOUT = 30.0


# How often a waiting main thread looks for signals caught by other threads.
_WAIT_SLICE = 0.05


def check_shutdown_timeout(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"shutdown_timeout must be a number, got {type(value).__name__}")
    if math.isnan(value) or value < 0:
        raise ValueError(f"shutdown_timeout must be >= 0, got {value!r}")
    return float(value)


# Shard 0's loops of the runtimes started and not yet closed, for the exit
# hook below.
_open_runtimes: weakref.WeakSet = weakref.WeakSet()
_exit_hook_registered = False


def _close_at_exit() -> None:
    """Closes, at interpreter exit, the sharded loops nobody closed. Shard
    threads are daemon threads: left running into finalization, CPython
    ends each with a forced unwind the next time it takes the GIL, and one
    unwound through the engine's noexcept frames aborts the process, losing
    the exit status. atexit runs before that, on the main thread."""
    for loop in list(_open_runtimes):
        runtime = runtime_of(loop)
        # A runtime only shuts down from its home thread; any other one's
        # shards are left as they were.
        if (loop.is_closed() or loop.is_running() or runtime is None
                or runtime._home_thread != threading.get_ident()):
            continue
        try:
            loop.close()
        except Exception as exc:  # noqa: BLE001 - exit goes on regardless
            warnings.warn(f"closing {loop!r} at exit failed: {exc!r}", RuntimeWarning)


class ShardStopped(RuntimeError):
    """The target shard stopped before the submitted call finished."""


class ShardGroup:
    """The Python side of one sharded runtime: a loop per shard, the shard
    threads, and their shutdown. Messages between shards go through the
    engine's runtime (``self.native``, a ``_core.Runtime``): this class adds
    only what needs Python -- the asyncio loops, task clean-up, warnings."""

    def __init__(self, shards: int, *, pin: bool = False,
                 shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT) -> None:
        self.count = shards
        self.shutdown_timeout = check_shutdown_timeout(shutdown_timeout)
        self.loops: list[Any] = [None] * shards
        cpus = len(os.sched_getaffinity(0))
        if pin and shards > cpus:
            warnings.warn(f"{shards} shards but {cpus} usable CPUs: shards are not pinned",
                          RuntimeWarning, stacklevel=4)
            pin = False
        self.native = _core.Runtime(shards, pin=pin)
        self.post = self.native.post
        self.request = self.native.request
        self._threads: list[threading.Thread] = []
        self._errors: list[BaseException] = []
        # Set by each shard once its own tasks are finished; every shard
        # waits for all of them before detaching, since the first detach
        # stops every loop, which would cut another shard's clean-up short.
        self._finished = [threading.Event() for _ in range(shards)]
        self._closing = threading.Event()
        self._home_thread = 0
        # A fork child inherits the runtime but none of its shard threads.
        self._pid = os.getpid()

    def start(self, main_loop: Any, new_loop: Callable[[], Any]) -> None:
        """Make `main_loop` shard 0 and start the other shards' threads."""
        global _exit_hook_registered
        self._adopt(main_loop, 0)
        self.native.attach(0, main_loop)
        self._home_thread = threading.get_ident()
        if not _exit_hook_registered:
            atexit.register(_close_at_exit)
            _exit_hook_registered = True
        _open_runtimes.add(main_loop)
        started = []
        for index in range(1, self.count):
            ready = threading.Event()
            thread = threading.Thread(target=self._serve, args=(index, new_loop, ready),
                                      name=f"shardloop-shard-{index}", daemon=True)
            thread.start()
            started.append(ready)
            self._threads.append(thread)
        for ready in started:
            ready.wait()
        if self._errors:
            main_loop.close()  # stops the shards that did start
            raise self._errors[0]

    def _adopt(self, loop: Any, index: int) -> None:
        loop._shard_runtime = self
        loop._shard_index = index
        self.loops[index] = loop

    def _serve(self, index: int, new_loop: Callable[[], Any], ready: threading.Event) -> None:
        try:
            loop = new_loop()
            self._adopt(loop, index)
            self.native.attach(index, loop)
        except BaseException as exc:  # noqa: BLE001 - raised by start()
            self._errors.append(exc)
            self._finished[index].set()
            ready.set()
            return
        asyncio.set_event_loop(loop)
        ready.set()
        try:
            try:
                loop.run_forever()
            except BaseException as exc:  # noqa: BLE001 - KeyboardInterrupt, SystemExit
                # What ends a loop ends the program: shard 0 raises it from
                # its run_forever(), and its closing stops this shard.
                self.post(0, _raise, exc)
                self._closing.wait()
            _finish_tasks(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            self._finished[index].set()
            self._wait_finished(index)
            self.native.detach()
            asyncio.set_event_loop(None)
            loop.close()

    def _wait_finished(self, index: int) -> list[int]:
        """Waits (at most shutdown_timeout) for every shard to finish its
        tasks; returns the shards that did not. In slices: the kernel may
        deliver Ctrl-C to another thread (a stuck shard's, say), which only
        flags it for the main thread, so the main thread must come back to
        Python now and then to run the handler."""
        deadline = time.monotonic() + self.shutdown_timeout
        late = []
        for shard, finished in enumerate(self._finished):
            while not finished.wait(min(_WAIT_SLICE, max(0.0, deadline - time.monotonic()))):
                if time.monotonic() >= deadline:
                    late.append(shard)
                    break
        return late

    def _report_stuck(self, late: list[int]) -> None:
        frames = sys._current_frames()
        for shard in late:
            thread = self._threads[shard - 1] if 0 < shard <= len(self._threads) else None
            frame = frames.get(thread.ident) if thread is not None else None
            where = "".join(traceback.format_stack(frame)) if frame is not None else "(no stack)\n"
            warnings.warn(f"shard {shard} did not stop within shutdown_timeout={self.shutdown_timeout} s; "
                          f"leaving it behind. It is at (most recent call last):\n{where}",
                          RuntimeWarning, stacklevel=2)

    def stop(self) -> None:
        """Stop shards 1..N-1 (their pending tasks are cancelled, so callers
        waiting on them get an answer), settle the queues and join the
        threads. Shard 0's thread, once its loop has returned."""
        if self._closing.is_set():
            return
        if os.getpid() != self._pid:
            # A fork child: no shard thread is left to wait for, and the
            # native runtime's lock may have been held by one at the fork.
            # Shard 0's loop closes on its own; the rest stays as it was.
            self._closing.set()
            return
        if threading.get_ident() != self._home_thread:
            # Shard 0 is bound to the thread that made it; the runtime can
            # only shut down from there.
            raise RuntimeError("a sharded loop must be closed on the thread that created it")
        self._closing.set()
        for index in range(1, self.count):
            loop = self.loops[index]
            if loop is not None:
                self.post(index, loop.stop)
        self._finished[0].set()
        try:
            late = self._wait_finished(0)
        except BaseException:
            # Ctrl-C: shard 0 leaves without waiting any longer, so its loop
            # still closes on the way out.
            self.native.abandon()
            raise
        if late:
            self._report_stuck(late)
            # detach() would wait for the stuck shard as long as it blocks.
            self.native.abandon()
            return
        # Every shard is past its tasks and about to detach: the rounds
        # only settle queues now.
        self.native.detach()
        for thread in self._threads:
            thread.join()
        self._threads.clear()

    def check(self, shard: int) -> None:
        if not isinstance(shard, int) or isinstance(shard, bool):
            raise TypeError(f"shard must be an int, got {type(shard).__name__}")
        if not 0 <= shard < self.count:
            raise ValueError(f"shard {shard} out of range(0, {self.count})")

    def loop(self, shard: int) -> Any:
        self.check(shard)
        return self.loops[shard]


def _raise(exc: BaseException) -> None:
    raise exc


def _finish_tasks(loop: Any) -> None:
    pending = asyncio.all_tasks(loop)
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))


def runtime_of(loop: Any) -> ShardGroup | None:
    return getattr(loop, "_shard_runtime", None)


def _running_runtime() -> tuple[Any, ShardGroup | None]:
    loop = asyncio.get_running_loop()
    return loop, runtime_of(loop)


def current_shard() -> int:
    """The index of the shard whose loop runs the caller (0 in single-loop mode)."""
    return getattr(asyncio.get_running_loop(), "_shard_index", 0)


def shard_count() -> int:
    """How many shards the running loop's runtime has (1 in single-loop mode)."""
    _, runtime = _running_runtime()
    return runtime.count if runtime is not None else 1


def loop_of(shard: int) -> Any:
    """The loop of `shard` in the running loop's runtime. Use it only to hand
    work over (call_soon_threadsafe); its objects belong to its thread."""
    here, runtime = _running_runtime()
    if runtime is None:
        if shard != 0:
            raise ValueError(f"shard {shard} out of range(0, 1)")
        return here
    return runtime.loop(shard)


class _RemoteCall:
    """One submit_to: started on the target shard, settled on the caller's."""

    __slots__ = ("runtime", "caller", "shard", "fn", "args", "future", "task")

    def __init__(self, here: Any, runtime: ShardGroup, shard: int, fn: Callable[..., Any], args: tuple) -> None:
        self.runtime = runtime
        self.caller = here._shard_index
        self.shard = shard
        self.fn = fn
        self.args = args
        self.future = here.create_future()
        self.task: asyncio.Future | None = None
        self.future.add_done_callback(self._caller_done)

    def start(self) -> None:  # on the target shard
        if self.future.cancelled():
            return
        try:
            result = self.fn(*self.args)
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller
            self._reply(None, exc)
            return
        if not inspect.isawaitable(result):
            self._reply(result, None)
            return
        self.task = asyncio.ensure_future(result, loop=self.runtime.loops[self.shard])
        self.task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Future) -> None:  # on the target shard
        if task.cancelled():
            self._reply(None, ShardStopped("the call was cancelled on its shard"))
        else:
            exc = task.exception()
            self._reply(None if exc is not None else task.result(), exc)

    def _reply(self, result: Any, exc: BaseException | None) -> None:
        # Refused when the caller's shard has stopped: nobody is waiting.
        self.runtime.post(self.caller, self._settle, result, exc)

    def _settle(self, result: Any, exc: BaseException | None) -> None:  # on the caller
        if self.future.done():
            return
        if exc is not None:
            self.future.set_exception(exc)
        else:
            self.future.set_result(result)

    def stopped(self) -> None:  # on the caller: the target never ran start()
        self._settle(None, ShardStopped(f"shard {self.shard} stopped before running the call"))

    def _caller_done(self, future: asyncio.Future) -> None:  # on the caller
        if future.cancelled():
            self.runtime.post(self.shard, self._cancel_remote)

    def _cancel_remote(self) -> None:  # on the target shard
        if self.task is not None:
            self.task.cancel()


async def submit_to(shard: int, fn: Callable[..., Any], /, *args: Any) -> Any:
    """Run ``fn(*args)`` on `shard` and return its result (awaited there
    when it is awaitable); its exception is raised here. Cancelling the
    caller cancels the call on the target shard."""
    here, runtime = _running_runtime()
    if runtime is None:
        loop_of(shard)  # the same checks as in a runtime of one shard
    else:
        runtime.check(shard)
    if runtime is None or shard == here._shard_index:
        result = fn(*args)
        return await result if inspect.isawaitable(result) else result
    return await _send(here, runtime, shard, fn, args)


def _send(here: Any, runtime: ShardGroup, shard: int, fn: Callable[..., Any], args: tuple) -> asyncio.Future:
    """The future of ``fn(*args)`` run on another shard (failed with
    ShardStopped at once when that shard takes no more work). A plain
    function, not a coroutine: one frame less per call for gather()."""
    call = _RemoteCall(here, runtime, shard, fn, args)
    if not runtime.request(shard, call.stopped, call.start):
        call.future.remove_done_callback(call._caller_done)
        call.future.set_exception(ShardStopped(f"shard {shard} is not running"))
    return call.future


def for_loop(factory: Callable[..., Any], home: Any, loop: Any) -> Callable[..., Any]:
    """`factory` as made for shard `loop`: a closure that captured its home
    loop in a variable named ``loop`` (asyncio.start_server's protocol
    factory does) gets a copy bound to `loop` instead, so the streams it
    makes belong to the shard that accepted the connection."""
    code = getattr(factory, "__code__", None)
    cells = getattr(factory, "__closure__", None)
    if loop is home or code is None or not cells or "loop" not in code.co_freevars:
        return factory
    at = code.co_freevars.index("loop")
    try:
        if cells[at].cell_contents is not home:
            return factory
    except ValueError:  # empty cell
        return factory
    rebound = tuple(types.CellType(loop) if i == at else cell for i, cell in enumerate(cells))
    copy = types.FunctionType(code, factory.__globals__, factory.__name__, factory.__defaults__, rebound)
    copy.__kwdefaults__ = factory.__kwdefaults__
    return functools.update_wrapper(copy, factory)


class ShardedServer(asyncio.AbstractServer):
    """One asyncio Server per shard behind one object. Each shard's server is
    only touched on its own shard; this object hands calls over."""

    def __init__(self, home: Any, servers: list[Any]) -> None:
        self._home = home
        self._runtime = runtime_of(home)
        self._servers = servers  # servers[i] lives on servers[i].get_loop()

    def __repr__(self) -> str:
        return f"<ShardedServer shards={len(self._servers)} sockets={self.sockets!r}>"

    def _each(self, method: str) -> None:
        for server in self._servers:
            loop = server.get_loop()
            if loop is self._home:
                getattr(server, method)()
            else:
                # Refused once that shard has stopped, and its server with it.
                self._runtime.post(loop._shard_index, getattr(server, method))

    async def _gather(self, method: str) -> None:
        await asyncio.gather(*(getattr(s, method)() if s.get_loop() is self._home
                               else _send(self._home, self._runtime, s.get_loop()._shard_index,
                                          getattr(s, method), ())
                               for s in self._servers))

    def close(self) -> None:
        self._each("close")

    def close_clients(self) -> None:
        self._each("close_clients")

    def abort_clients(self) -> None:
        self._each("abort_clients")

    def get_loop(self) -> Any:
        return self._home

    def is_serving(self) -> bool:
        return any(server.is_serving() for server in self._servers)

    @property
    def sockets(self) -> tuple:
        return tuple(sock for server in self._servers for sock in server.sockets)

    @property
    def servers(self) -> tuple:
        """The per-shard asyncio Server objects, in shard order."""
        return tuple(self._servers)

    async def start_serving(self) -> None:
        await self._gather("start_serving")

    async def wait_closed(self) -> None:
        await self._gather("wait_closed")

    async def serve_forever(self) -> None:
        await self.start_serving()
        try:
            await self._home.create_future()
        except asyncio.CancelledError:
            self.close()
            await self.wait_closed()
            raise


async def create_sharded_server(home: Any, create_here: Callable[..., Awaitable[Any]],
                                protocol_factory: Callable[..., Any], host: Any, port: Any,
                                kwargs: dict) -> ShardedServer:
    """One SO_REUSEPORT listener per shard on the same address (port 0: the
    first listener picks the port, the others bind it)."""
    runtime = runtime_of(home)
    assert runtime is not None
    first = await create_here(home, protocol_factory, host, port, **kwargs)
    if not port:
        port = first.sockets[0].getsockname()[1]
    others = [loop for loop in runtime.loops if loop is not home]
    results = await asyncio.gather(*(
        _send(home, runtime, loop._shard_index,
                 functools.partial(create_here, loop, for_loop(protocol_factory, home, loop), host, port, **kwargs),
                 ())
        for loop in others), return_exceptions=True)
    servers = [first] + [r for r in results if not isinstance(r, BaseException)]
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        ShardedServer(home, servers).close()
        raise failed[0]
    servers.sort(key=lambda s: getattr(s.get_loop(), "_shard_index", 0))
    return ShardedServer(home, servers)


def _create_server_here(loop: Any, *args: Any, **kwargs: Any) -> Awaitable[Any]:
    return super(ShardMixin, loop).create_server(*args, **kwargs)  # type: ignore[misc]


class ShardMixin:
    """Mixed into shardloop.Loop, ahead of the TCP mixin: on a runtime with
    several shards, create_server(..., reuse_port=True) serves on every shard."""

    _shard_runtime: ShardGroup | None = None
    _shard_index = 0

    async def create_server(self, protocol_factory: Callable[..., Any], host: Any = None, port: Any = None,
                            **kwargs: Any) -> Any:
        runtime = self._shard_runtime
        if runtime is not None and runtime.count > 1 and kwargs.get("reuse_port"):
            return await create_sharded_server(self, _create_server_here, protocol_factory, host, port, kwargs)
        return await super().create_server(protocol_factory, host, port, **kwargs)  # type: ignore[misc]

    create_server.__signature__ = inspect.signature(  # type: ignore[attr-defined]
        asyncio.base_events.BaseEventLoop.create_server)

    def _stop_shards(self) -> None:
        if self._shard_runtime is not None and self._shard_index == 0:
            self._shard_runtime.stop()

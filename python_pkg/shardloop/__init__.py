"""shardloop: a drop-in asyncio event loop in C++ on libuv.

    asyncio.run(main(), loop_factory=shardloop.new_event_loop)
    shardloop.run(main())
    asyncio.set_event_loop_policy(shardloop.EventLoopPolicy())

Thread-per-core: ``shardloop.run(main(), shards=N)`` runs `main` on shard 0
and N-1 more loops in their own threads; ``create_server(...,
reuse_port=True)`` then listens on every shard (see ``_shards.py``).
"""

from __future__ import annotations

import asyncio as _asyncio
import functools as _functools
import logging as _logging
import os as _os
import sys as _sys
import warnings as _warnings
from typing import Any as _Any, Callable as _Callable, Coroutine as _Coroutine, TypeVar as _TypeVar

from ._core import engine_version as __version__
from ._loop import Loop
from ._shards import DEFAULT_SHUTDOWN_TIMEOUT, ShardedServer, ShardStopped, current_shard, loop_of, shard_count, submit_to
from ._shards import check_shutdown_timeout as _check_shutdown_timeout

__all__ = ("new_event_loop", "install", "run", "Loop", "EventLoopPolicy", "current_shard", "shard_count",
           "submit_to", "loop_of", "start_server", "create_server", "ShardedServer", "ShardStopped")

_T = _TypeVar("_T")


def _shard_count(shards: int | None) -> int:
    if shards is None:
        return len(_os.sched_getaffinity(0))
    if not isinstance(shards, int) or isinstance(shards, bool):
        raise TypeError(f"shards must be an int or None, got {type(shards).__name__}")
    if shards < 1:
        raise ValueError(f"shards must be at least 1, got {shards}")
    return shards


def _io_uring_mode(io_uring: bool | None) -> int:
    # 0: epoll; 1: io_uring or OSError; 2: io_uring where this process can
    # have a ring, else epoll.
    if io_uring is None:
        value = _os.environ.get("SHARDLOOP_IO_URING", "0").strip().lower()
        modes = {"0": 0, "": 0, "1": 1, "auto": 2}
        if value not in modes:
            raise ValueError(f"SHARDLOOP_IO_URING must be 0, 1 or auto, got {value!r}")
        return modes[value]
    if not isinstance(io_uring, bool):
        raise TypeError(f"io_uring must be a bool or None, got {type(io_uring).__name__}")
    return 1 if io_uring else 0


def _make_loop(mode: int) -> Loop:
    loop = Loop()
    if mode:
        try:
            reason = loop._set_io_backend(mode)
        except BaseException:
            loop.close()
            raise
        if reason is not None:
            _logging.getLogger("shardloop").debug("io_uring unavailable (%s): using epoll", reason)
    return loop


def new_event_loop(*, shards: int | None = 1, pin: bool = False, io_uring: bool | None = None,
                   shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT) -> Loop:
    """Return a new shardloop event loop. With shards > 1 (None: one per CPU
    this process may use) it is shard 0 of a thread-per-core runtime whose
    other shards run until it is closed; pin=True pins each shard's thread
    to one CPU. Closing it waits at most `shutdown_timeout` seconds for the
    other shards to stop; one that has not (stuck in a blocking callback)
    is named, with its stack, in a RuntimeWarning and left behind.

    io_uring selects the I/O backend of every loop made: False, epoll; True,
    io_uring or OSError naming why this process cannot have it; None, what
    the environment variable SHARDLOOP_IO_URING says (0, the default: epoll;
    1: as True; auto: io_uring where available, else epoll). The loop's
    io_backend attribute tells which it got."""
    count = _shard_count(shards)
    mode = _io_uring_mode(io_uring)
    shutdown_timeout = _check_shutdown_timeout(shutdown_timeout)
    loop = _make_loop(mode)
    if count > 1:
        from ._shards import ShardGroup
        try:
            ShardGroup(count, pin=pin, shutdown_timeout=shutdown_timeout).start(
                loop, _functools.partial(_make_loop, mode))
        except BaseException:
            loop.close()
            raise
    return loop


async def start_server(client_connected_cb: _Callable[..., _Any], host: _Any = None, port: _Any = None,
                       **kwargs: _Any) -> _asyncio.AbstractServer:
    """asyncio.start_server, on every shard of the running runtime."""
    if shard_count() > 1:
        kwargs["reuse_port"] = True
    return await _asyncio.start_server(client_connected_cb, host, port, **kwargs)


async def create_server(protocol_factory: _Callable[..., _Any], host: _Any = None, port: _Any = None,
                        **kwargs: _Any) -> _asyncio.AbstractServer:
    """loop.create_server, on every shard of the running runtime."""
    if shard_count() > 1:
        kwargs["reuse_port"] = True
    return await _asyncio.get_running_loop().create_server(protocol_factory, host, port, **kwargs)


if _sys.version_info >= (3, 14):
    _BasePolicy = _asyncio.events._BaseDefaultEventLoopPolicy  # type: ignore[attr-defined]
else:
    _BasePolicy = _asyncio.events.BaseDefaultEventLoopPolicy


class _EventLoopPolicy(_BasePolicy):  # type: ignore[misc, valid-type]
    """asyncio's default policy, making shardloop loops (shard 0 of a
    runtime of `shards` loops when shards > 1)."""

    def __init__(self, shards: int | None = 1, *, pin: bool = False, io_uring: bool | None = None,
                 shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT) -> None:
        super().__init__()
        self._shards = _shard_count(shards)
        self._pin = pin
        _io_uring_mode(io_uring)  # bad values fail here, not at the first loop
        self._io_uring = io_uring
        self._shutdown_timeout = _check_shutdown_timeout(shutdown_timeout)

    def _loop_factory(self) -> Loop:
        return new_event_loop(shards=self._shards, pin=self._pin, io_uring=self._io_uring,
                              shutdown_timeout=self._shutdown_timeout)

    def __repr__(self) -> str:
        return f"<shardloop.EventLoopPolicy at {id(self):#x}>"


_EventLoopPolicy.__name__ = _EventLoopPolicy.__qualname__ = "EventLoopPolicy"

if _sys.version_info < (3, 14):
    EventLoopPolicy = _EventLoopPolicy


def __getattr__(name: str) -> _Any:
    # Python 3.14 deprecates event loop policies; the name warns like
    # asyncio.DefaultEventLoopPolicy does there.
    if name == "EventLoopPolicy":
        _warnings.warn("shardloop.EventLoopPolicy is deprecated and slated for removal in "
                       "Python 3.16, like asyncio's policies; use shardloop.run() or "
                       "loop_factory=shardloop.new_event_loop", DeprecationWarning, stacklevel=2)
        return _EventLoopPolicy
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def install() -> None:
    """Make shardloop the loop that asyncio's policy creates."""
    if _sys.version_info >= (3, 12):
        _warnings.warn("shardloop.install() is deprecated in favor of shardloop.run() "
                       "starting with Python 3.12.", DeprecationWarning, stacklevel=1)
    with _warnings.catch_warnings():
        _warnings.simplefilter("ignore", DeprecationWarning)
        _asyncio.set_event_loop_policy(_EventLoopPolicy())


def run(main: _Coroutine[_Any, _Any, _T], *, loop_factory: _Callable[[], _asyncio.AbstractEventLoop] | None = None,
        debug: bool | None = None, shards: int | None = 1, pin: bool = False, io_uring: bool | None = None,
        shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT, **run_kwargs: _Any) -> _T:
    """Run a coroutine on a new shardloop loop, like asyncio.run(); with
    shards > 1 it runs on shard 0 of a thread-per-core runtime, whose
    shutdown waits at most `shutdown_timeout` seconds for a shard stuck in
    a blocking callback (see new_event_loop)."""
    if run_kwargs:
        raise TypeError(f"run() got unexpected keyword arguments: {', '.join(sorted(run_kwargs))}")
    count = _shard_count(shards)
    if loop_factory is not None and (count > 1 or io_uring is not None):
        raise ValueError("run() takes loop_factory or shards/io_uring, not both")
    factory = loop_factory or _functools.partial(new_event_loop, shards=count, pin=pin, io_uring=io_uring,
                                                 shutdown_timeout=shutdown_timeout)
    with _asyncio.Runner(debug=debug, loop_factory=factory) as runner:
        return runner.run(main)

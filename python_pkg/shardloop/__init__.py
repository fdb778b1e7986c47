"""shardloop: a drop-in asyncio event loop in C++ on libuv.

    asyncio.run(main(), loop_factory=shardloop.new_event_loop)
    shardloop.run(main())
    asyncio.set_event_loop_policy(shardloop.EventLoopPolicy())
"""

from __future__ import annotations

import asyncio as _asyncio
import sys as _sys
import warnings as _warnings
from typing import Any as _Any, Callable as _Callable, Coroutine as _Coroutine, TypeVar as _TypeVar

from ._loop import Loop

__version__ = "0.1.0"
__all__ = ("new_event_loop", "install", "run", "Loop", "EventLoopPolicy")

_T = _TypeVar("_T")


def new_event_loop() -> Loop:
    """Return a new shardloop event loop."""
    return Loop()


if _sys.version_info >= (3, 14):
    _BasePolicy = _asyncio.events._BaseDefaultEventLoopPolicy  # type: ignore[attr-defined]
else:
    _BasePolicy = _asyncio.events.BaseDefaultEventLoopPolicy


class _EventLoopPolicy(_BasePolicy):  # type: ignore[misc, valid-type]
    """asyncio's default policy, making shardloop loops."""

    def _loop_factory(self) -> Loop:
        return new_event_loop()

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
        debug: bool | None = None, **run_kwargs: _Any) -> _T:
    """Run a coroutine on a new shardloop loop, like asyncio.run()."""
    if run_kwargs:
        raise TypeError(f"run() got unexpected keyword arguments: {', '.join(sorted(run_kwargs))}")
    with _asyncio.Runner(debug=debug, loop_factory=loop_factory or new_event_loop) as runner:
        return runner.run(main)

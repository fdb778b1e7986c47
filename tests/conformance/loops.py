"""The event loops the conformance run compares, by name.

Each factory is imported lazily so that a loop which cannot be imported
(e.g. shardloop not built) only fails its own column.
"""

import asyncio

LOOP_NAMES = ("shardloop", "uvloop", "asyncio")


def factory(name):
    """Return a zero-argument callable creating a new loop called *name*."""
    if name == "asyncio":
        return asyncio.new_event_loop
    if name == "uvloop":
        import uvloop
        return uvloop.new_event_loop
    if name == "shardloop":
        import shardloop
        return shardloop.new_event_loop
    raise ValueError(f"unknown loop {name!r}; known: {', '.join(LOOP_NAMES)}")


def describe(name):
    """One line saying which implementation *name* resolves to."""
    if name == "asyncio":
        import sys
        return f"asyncio (CPython {sys.version.split()[0]}, {asyncio.__file__})"
    module = __import__(name)
    return f"{name} {getattr(module, '__version__', '?')} ({module.__file__})"

"""Helpers shared by the shardloop test modules (imported by conftest.py)."""

import asyncio
import socket
import sys

import pytest

try:
    import shardloop

    SHARDLOOP_IMPORT_ERROR = None
except Exception as exc:  # depends on whether the extension is built
    shardloop = None
    SHARDLOOP_IMPORT_ERROR = exc

HAVE_SHARDLOOP = shardloop is not None
SKIP_REASON = "shardloop is not importable: %r" % (SHARDLOOP_IMPORT_ERROR,)

PY311 = sys.version_info >= (3, 11)
PY312 = sys.version_info >= (3, 12)
PY313 = sys.version_info >= (3, 13)

requires_shardloop = pytest.mark.skipif(not HAVE_SHARDLOOP, reason=SKIP_REASON)


def shardloop_new_event_loop():
    return shardloop.new_event_loop()


def factory_params():
    """pytest params for the two loop factories (ids asyncio / shardloop)."""
    return [
        pytest.param(asyncio.new_event_loop, id="asyncio"),
        pytest.param(shardloop_new_event_loop, id="shardloop", marks=requires_shardloop),
    ]


def is_shardloop(loop):
    """True if *loop* is a shardloop loop (False for asyncio's own loop)."""
    return HAVE_SHARDLOOP and isinstance(loop, shardloop.Loop)


def run(loop, coro, timeout=5.0):
    """Run *coro* on *loop*, failing with TimeoutError after *timeout* s."""
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))


def run_forever_bounded(loop, timeout=5.0):
    """``loop.run_forever()`` that fails instead of hanging.

    A guard timer stops the loop after *timeout* seconds; if it fires, the
    test's own stop condition never happened and the test fails.
    """
    fired = []

    def guard():
        fired.append(True)
        loop.stop()

    h = loop.call_later(timeout, guard)
    try:
        loop.run_forever()
    finally:
        h.cancel()
    assert not fired, "run_forever() was only stopped by the %ss guard timer" % timeout


async def wait_until(predicate, timeout=5.0, interval=0.001):
    """Poll *predicate* from a coroutine until it is true (bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached within %ss" % timeout)
        await asyncio.sleep(interval)


def _ipv6_loopback_works():
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


# Shared by the network tests.
HAVE_IPV6 = _ipv6_loopback_works()
LOOPBACK = {socket.AF_INET: "127.0.0.1", socket.AF_INET6: "::1"}

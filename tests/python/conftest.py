"""Shared fixtures for the shardloop Python test-suite.

Most tests are parametrised over two loop factories so that each test shows
the same behaviour for asyncio's own event loop (the reference) and for
shardloop:

* ``loop_factory`` -- the factory itself (ids ``asyncio`` / ``shardloop``);
* ``loop``         -- a fresh loop made by ``loop_factory``, closed afterwards.

If ``import shardloop`` fails, the ``shardloop`` parameters are skipped with
the import error as the reason.  ``test_api.py::test_import_shardloop`` fails
in that case, so the suite can never pass silently without the
implementation.
"""

import asyncio

import pytest

from _support import HAVE_SHARDLOOP, SKIP_REASON, Sockets, factory_params, shardloop

def pytest_report_header(config):
    if HAVE_SHARDLOOP:
        return "shardloop: %s (%s)" % (
            getattr(shardloop, "__version__", "?"),
            getattr(shardloop, "__file__", "?"),
        )
    return "shardloop: NOT importable -> shardloop params skipped (%s)" % SKIP_REASON


@pytest.fixture(params=factory_params())
def loop_factory(request):
    """A callable returning a new, not yet running event loop."""
    return request.param


@pytest.fixture
def loop(loop_factory):
    """A fresh event loop made by ``loop_factory``; closed after the test."""
    lp = loop_factory()
    try:
        yield lp
    finally:
        if not lp.is_closed() and not lp.is_running():
            lp.close()
        asyncio.set_event_loop(None)


@pytest.fixture
def socks(loop):
    """A ``Sockets`` for raw sockets, closed after the loop."""
    s = Sockets()
    try:
        yield s
    finally:
        if not loop.is_closed() and not loop.is_running():
            loop.close()
        s.close()


@pytest.fixture
def sl():
    """The shardloop module; skips the test if it cannot be imported."""
    if not HAVE_SHARDLOOP:
        pytest.skip(SKIP_REASON)
    return shardloop


@pytest.fixture
def restore_policy():
    """Reset the global event loop policy (and current loop) after the test."""
    try:
        yield
    finally:
        try:
            asyncio.set_event_loop(None)
        finally:
            asyncio.set_event_loop_policy(None)

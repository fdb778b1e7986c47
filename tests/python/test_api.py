"""The public shardloop API and its integration with asyncio's entry points."""

import asyncio
import importlib
import importlib.machinery
import importlib.resources
import inspect
import socket
import sys
import warnings

import pytest

from _support import PY312, SHARDLOOP_IMPORT_ERROR, is_shardloop, run, sleep_until_cancelled, two_step_agen


def test_import_shardloop():
    """Fails (not skips) when the implementation cannot be imported, so the
    suite cannot pass with every shardloop test skipped."""
    if SHARDLOOP_IMPORT_ERROR is not None:
        pytest.fail("import shardloop failed: %r" % (SHARDLOOP_IMPORT_ERROR,))
    mod = importlib.import_module("shardloop")
    assert hasattr(mod, "new_event_loop")


def test_version(sl):
    assert isinstance(sl.__version__, str)
    assert sl.__version__


def test_py_typed(sl):
    assert importlib.resources.files("shardloop").joinpath("py.typed").is_file()


def test_public_names(sl):
    for name in ("new_event_loop", "Loop", "EventLoopPolicy", "install", "run", "__version__"):
        assert hasattr(sl, name), name


def _is_native_type(tp):
    """True for a type implemented in an extension module."""
    if not tp.__flags__ & (1 << 9):  # not Py_TPFLAGS_HEAPTYPE: static C type
        return True
    mod = sys.modules.get(tp.__module__)
    f = getattr(mod, "__file__", None) or ""
    return any(f.endswith(suf) for suf in importlib.machinery.EXTENSION_SUFFIXES)


def test_new_event_loop_type(sl):
    lp = sl.new_event_loop()
    try:
        assert isinstance(lp, sl.Loop)
        assert isinstance(lp, asyncio.AbstractEventLoop)
        assert issubclass(sl.Loop, asyncio.AbstractEventLoop)
        # ... and of a native (extension) type
        assert any(_is_native_type(b) for b in sl.Loop.__mro__[1:] if b is not object), sl.Loop.__mro__
    finally:
        lp.close()


def test_new_event_loop_returns_distinct_loops(sl):
    a = sl.new_event_loop()
    b = sl.new_event_loop()
    try:
        assert a is not b
    finally:
        a.close()
        b.close()


def test_loop_class_instantiable(sl):
    lp = sl.Loop()
    try:
        assert lp.run_until_complete(asyncio.sleep(0, "ok")) == "ok"
    finally:
        lp.close()


def test_loop_is_abstract_event_loop(loop):
    assert isinstance(loop, asyncio.AbstractEventLoop)


# ---------------------------------------------------------------------------
# asyncio entry points
# ---------------------------------------------------------------------------


async def _running_loop():
    await asyncio.sleep(0)
    return asyncio.get_running_loop()


@pytest.mark.skipif(not PY312, reason="asyncio.run(loop_factory=) is new in Python 3.12")
def test_asyncio_run_loop_factory(sl):
    result = asyncio.run(asyncio.wait_for(_running_loop(), 5), loop_factory=sl.new_event_loop)
    assert isinstance(result, sl.Loop)
    assert result.is_closed()


def test_asyncio_runner_loop_factory(sl):
    with asyncio.Runner(loop_factory=sl.new_event_loop) as runner:
        lp = runner.run(asyncio.wait_for(_running_loop(), 5))
        assert isinstance(lp, sl.Loop)
        assert runner.get_loop() is lp
        assert runner.run(asyncio.sleep(0, "second")) == "second"
    assert lp.is_closed()


def test_asyncio_runner_reference(loop_factory):
    """asyncio.Runner drives both loops the same way (incl. cleanup)."""
    finalized = []
    holder = []

    async def main():
        g = two_step_agen(finalized)
        holder.append(g)
        await g.__anext__()
        return "r"

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        assert runner.run(asyncio.wait_for(main(), 5)) == "r"
        lp = runner.get_loop()
    # Runner.close() ran shutdown_asyncgens and closed the loop
    assert finalized == [True]
    assert lp.is_closed()


def test_shardloop_run(sl):
    async def main():
        lp = asyncio.get_running_loop()
        assert isinstance(lp, sl.Loop)
        await asyncio.sleep(0.001)
        return "result", lp

    result, lp = sl.run(asyncio.wait_for(main(), 5))
    assert result == "result"
    assert lp.is_closed()


def test_shardloop_run_debug(sl):
    async def main():
        return asyncio.get_running_loop().get_debug()

    assert sl.run(main(), debug=True) is True
    assert sl.run(main(), debug=False) is False


def test_shardloop_run_propagates_exception(sl):
    async def main():
        await asyncio.sleep(0)
        raise ValueError("from main")

    with pytest.raises(ValueError, match="from main"):
        sl.run(main())


def test_shardloop_run_cancels_leftover_tasks(sl):
    cancelled = []

    async def main():
        asyncio.get_running_loop().create_task(sleep_until_cancelled(cancelled))
        await asyncio.sleep(0)

    sl.run(main())
    assert cancelled == [True]


def test_event_loop_policy(sl, restore_policy):
    asyncio.set_event_loop_policy(sl.EventLoopPolicy())
    assert isinstance(asyncio.get_event_loop_policy(), sl.EventLoopPolicy)
    lp = asyncio.new_event_loop()
    try:
        assert isinstance(lp, sl.Loop)
        assert lp.run_until_complete(asyncio.sleep(0, "p")) == "p"
    finally:
        lp.close()


def test_event_loop_policy_asyncio_run(sl, restore_policy):
    asyncio.set_event_loop_policy(sl.EventLoopPolicy())
    lp = asyncio.run(asyncio.wait_for(_running_loop(), 5))
    assert isinstance(lp, sl.Loop)


def test_set_event_loop(sl, restore_policy):
    lp = sl.new_event_loop()
    try:
        asyncio.set_event_loop(lp)
        assert asyncio.get_event_loop_policy().get_event_loop() is lp

        async def main():
            assert asyncio.get_running_loop() is lp
            assert asyncio.get_event_loop() is lp
            return 1

        assert lp.run_until_complete(main()) == 1
    finally:
        asyncio.set_event_loop(None)
        lp.close()


def test_install(sl, restore_policy):
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        sl.install()
    # uvloop-style install() may be deprecated on 3.12+; nothing else may warn
    assert all(issubclass(w.category, DeprecationWarning) for w in rec), [str(w.message) for w in rec]
    assert isinstance(asyncio.get_event_loop_policy(), sl.EventLoopPolicy)
    lp = asyncio.new_event_loop()
    try:
        assert isinstance(lp, sl.Loop)
    finally:
        lp.close()


def test_get_running_loop_outside(loop):
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()

    async def main():
        return asyncio.get_running_loop()

    assert run(loop, main()) is loop
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()


# ---------------------------------------------------------------------------
# AbstractEventLoop surface
# ---------------------------------------------------------------------------

PUBLIC_ABSTRACT_NAMES = sorted(n for n in dir(asyncio.AbstractEventLoop) if not n.startswith("_"))


def test_has_all_abstract_event_loop_methods(loop):
    # hasattr() alone would pass for every name: the loop inherits
    # AbstractEventLoop's methods, which only raise NotImplementedError.
    # Each one must be overridden by the loop's own classes.
    missing = [n for n in PUBLIC_ABSTRACT_NAMES
               if getattr(type(loop), n) is getattr(asyncio.AbstractEventLoop, n)]
    assert missing == []


def test_create_connection_is_coroutine_function(loop):
    assert inspect.iscoroutinefunction(loop.create_connection)


def test_create_connection_works(loop):
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    try:

        async def main():
            transport, protocol = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
            assert isinstance(protocol, asyncio.Protocol)
            transport.close()
            await asyncio.sleep(0)
            return "works"

        outcome = run(loop, main())
    finally:
        srv.close()
    assert outcome == "works"


def test_loop_repr(loop):
    # BaseEventLoop.__repr__ format: <Cls running=.. closed=.. debug=..>
    r = repr(loop)
    assert "running=False" in r and "closed=False" in r and "debug=False" in r

    async def main():
        return repr(loop)

    assert "running=True" in run(loop, main())
    loop.close()
    assert "closed=True" in repr(loop)


def test_handles_are_native_types(sl):
    # docs/differences.md: shardloop's handles have asyncio's methods but are
    # not asyncio.Handle/TimerHandle instances (as with uvloop). If that ever
    # changes, the page should say so.
    loop = sl.new_event_loop()
    try:
        soon, later = loop.call_soon(print), loop.call_later(3600, print)
        assert not isinstance(soon, asyncio.Handle)
        assert not isinstance(later, asyncio.TimerHandle)
        for h in (soon, later):
            assert not h.cancelled()
            h.cancel()
            assert h.cancelled()
        assert later.when() > loop.time()
    finally:
        loop.close()

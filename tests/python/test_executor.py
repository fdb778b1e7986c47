"""run_in_executor, set_default_executor, shutdown_default_executor."""

import asyncio
import concurrent.futures
import threading
import time

import pytest

from _support import PY312, run


def test_run_in_executor_default(loop):
    main_thread = threading.get_ident()

    def work(a, b):
        return a + b, threading.get_ident()

    async def main():
        return await loop.run_in_executor(None, work, 2, 3)

    result, tid = run(loop, main())
    assert result == 5
    assert tid != main_thread


def test_run_in_executor_returns_asyncio_future(loop):
    async def main():
        fut = loop.run_in_executor(None, lambda: "x")
        assert isinstance(fut, asyncio.Future)
        assert fut.get_loop() is loop
        return await fut

    assert run(loop, main()) == "x"


def test_run_in_executor_exception(loop):
    def work():
        raise ValueError("in executor")

    async def main():
        with pytest.raises(ValueError, match="in executor"):
            await loop.run_in_executor(None, work)

    run(loop, main())


def test_run_in_executor_many(loop):
    async def main():
        futs = [loop.run_in_executor(None, pow, i, 2) for i in range(100)]
        return await asyncio.gather(*futs)

    assert run(loop, main(), timeout=20) == [i * i for i in range(100)]


def test_run_in_executor_custom_executor(loop):
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="custom-exec") as ex:

        async def main():
            return await loop.run_in_executor(ex, lambda: threading.current_thread().name)

        name = run(loop, main())
    assert name.startswith("custom-exec")


def test_asyncio_to_thread(loop):
    async def main():
        return await asyncio.to_thread(lambda x: x * 3, 14)

    assert run(loop, main()) == 42


def test_set_default_executor(loop):
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="default-exec") as ex:
        loop.set_default_executor(ex)

        async def main():
            return await loop.run_in_executor(None, lambda: threading.current_thread().name)

        assert run(loop, main()).startswith("default-exec")


class _NotAThreadPool(concurrent.futures.Executor):
    def submit(self, fn, *args, **kwargs):
        f = concurrent.futures.Future()
        try:
            f.set_result(fn(*args, **kwargs))
        except BaseException as e:  # pragma: no cover
            f.set_exception(e)
        return f


def _set_default_executor_outcome(lp):
    """'TypeError' or 'accepted' for a non-ThreadPoolExecutor executor."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            lp.set_default_executor(_NotAThreadPool())
        except TypeError:
            return "TypeError"
    return "accepted"


def test_set_default_executor_non_threadpool_matches_asyncio(loop):
    """Compare with asyncio's loop on this Python rather than hard-coding
    (3.11-3.13 raise TypeError; older versions only warned)."""
    ref = asyncio.new_event_loop()
    try:
        expected = _set_default_executor_outcome(ref)
    finally:
        ref.close()
    assert _set_default_executor_outcome(loop) == expected


def test_shutdown_default_executor(loop):
    async def main():
        assert await loop.run_in_executor(None, lambda: 1) == 1
        await loop.shutdown_default_executor()
        with pytest.raises(RuntimeError):
            loop.run_in_executor(None, lambda: 2)

    run(loop, main())


def test_shutdown_default_executor_without_executor(loop):
    run(loop, loop.shutdown_default_executor())


def test_shutdown_default_executor_waits_for_work(loop):
    finished = []

    def slow():
        time.sleep(0.05)
        finished.append(True)
        return "slow"

    async def main():
        fut = loop.run_in_executor(None, slow)
        await asyncio.sleep(0)
        await loop.shutdown_default_executor()
        # executor.shutdown(wait=True) has joined the worker thread
        assert finished == [True]
        return await fut

    assert run(loop, main()) == "slow"


@pytest.mark.skipif(not PY312, reason="shutdown_default_executor(timeout) is new in 3.12")
def test_shutdown_default_executor_timeout_arg(loop):
    async def main():
        await loop.run_in_executor(None, lambda: None)
        await loop.shutdown_default_executor(timeout=5)

    run(loop, main())


def test_run_in_executor_debug_rejects_coroutine_function(loop):
    loop.set_debug(True)

    async def coro_fn():
        pass

    with pytest.raises(TypeError):
        loop.run_in_executor(None, coro_fn)

"""Bad input, closed/running-loop errors, exception handlers, and
KeyboardInterrupt / SystemExit propagation."""

import asyncio
import gc
import logging
import os
import sys
import threading
import time

import pytest

from _support import run, run_forever_bounded

NON_CALLABLES = [1, None, "not callable", object()]


async def _coro_func():
    pass


# ---------------------------------------------------------------------------
# bad callbacks
# ---------------------------------------------------------------------------


def _schedule(loop, method, cb):
    if method == "call_soon":
        return loop.call_soon(cb)
    if method == "call_later":
        return loop.call_later(0, cb)
    if method == "call_at":
        return loop.call_at(loop.time(), cb)
    if method == "call_soon_threadsafe":
        return loop.call_soon_threadsafe(cb)
    raise AssertionError(method)


METHODS = ["call_soon", "call_later", "call_at", "call_soon_threadsafe"]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("bad", NON_CALLABLES, ids=lambda v: type(v).__name__)
def test_non_callable_debug_mode_type_error(loop, method, bad):
    # asyncio validates callbacks only in debug mode (Python 3.11-3.13).
    loop.set_debug(True)
    with pytest.raises(TypeError):
        _schedule(loop, method, bad)


@pytest.mark.parametrize("method", METHODS)
def test_non_callable_without_debug_never_breaks_loop(loop, method):
    """Outside debug mode asyncio accepts a non-callable and reports the
    TypeError through the exception handler when the handle runs.  Raising
    TypeError eagerly is allowed too; silently dropping it or breaking the
    loop is not."""
    assert not loop.get_debug()
    errors = []
    loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))
    raised = False
    try:
        _schedule(loop, method, 1)
    except TypeError:
        raised = True
    after = []
    loop.call_later(0.001, after.append, "ran")
    loop.call_later(0.01, loop.stop)
    run_forever_bounded(loop)
    assert after == ["ran"]
    if raised:
        assert errors == []
    else:
        assert len(errors) == 1
        assert isinstance(errors[0].get("exception"), TypeError)


@pytest.mark.parametrize("method", METHODS)
def test_coroutine_function_rejected_in_debug(loop, method):
    loop.set_debug(True)
    with pytest.raises(TypeError):
        _schedule(loop, method, _coro_func)


def test_coroutine_object_rejected_in_debug(loop):
    loop.set_debug(True)
    coro = _coro_func()
    try:
        with pytest.raises(TypeError):
            loop.call_soon(coro)
    finally:
        coro.close()


def test_call_at_when_none(loop):
    with pytest.raises(TypeError):
        loop.call_at(None, lambda: None)


def test_run_until_complete_non_awaitable(loop):
    with pytest.raises(TypeError):
        loop.run_until_complete(42)
    assert not loop.is_running()


def test_run_until_complete_future_of_other_loop(loop, loop_factory):
    other = loop_factory()
    try:
        fut = other.create_future()
        with pytest.raises(ValueError):
            loop.run_until_complete(fut)
    finally:
        other.close()


# ---------------------------------------------------------------------------
# closed loop
# ---------------------------------------------------------------------------

CLOSED_MSG = "Event loop is closed"


@pytest.mark.parametrize("method", METHODS)
def test_schedule_on_closed_loop(loop, method):
    loop.close()
    with pytest.raises(RuntimeError, match=CLOSED_MSG):
        _schedule(loop, method, lambda: None)


def test_run_forever_on_closed_loop(loop):
    loop.close()
    with pytest.raises(RuntimeError, match=CLOSED_MSG):
        loop.run_forever()


def test_run_until_complete_on_closed_loop(loop):
    loop.close()
    coro = _coro_func()
    try:
        with pytest.raises(RuntimeError, match=CLOSED_MSG):
            loop.run_until_complete(coro)
    finally:
        coro.close()


def test_create_task_on_closed_loop(loop):
    loop.close()
    coro = _coro_func()
    try:
        with pytest.raises(RuntimeError, match=CLOSED_MSG):
            loop.create_task(coro)
    finally:
        coro.close()


def test_run_in_executor_on_closed_loop(loop):
    loop.close()
    with pytest.raises(RuntimeError, match=CLOSED_MSG):
        loop.run_in_executor(None, lambda: None)


def test_scheduled_callbacks_dropped_on_close(loop):
    out = []
    loop.call_soon(out.append, 1)
    loop.call_later(0.001, out.append, 2)
    loop.close()
    assert out == []


# ---------------------------------------------------------------------------
# running loop
# ---------------------------------------------------------------------------


def test_run_until_complete_while_running(loop):
    async def main():
        inner = _coro_func()
        try:
            with pytest.raises(RuntimeError, match="already running"):
                loop.run_until_complete(inner)
        finally:
            inner.close()
        return "ok"

    assert run(loop, main()) == "ok"


def test_run_forever_while_running(loop):
    async def main():
        with pytest.raises(RuntimeError, match="already running"):
            loop.run_forever()
        return "ok"

    assert run(loop, main()) == "ok"
    assert not loop.is_running()


def test_run_other_loop_while_running(loop, loop_factory):
    other = loop_factory()

    async def main():
        coro = _coro_func()
        try:
            with pytest.raises(RuntimeError, match="another loop is running"):
                other.run_until_complete(coro)
        finally:
            coro.close()
        with pytest.raises(RuntimeError, match="another loop is running"):
            other.run_forever()

    try:
        run(loop, main())
    finally:
        other.close()


def test_close_running_loop(loop):
    async def main():
        with pytest.raises(RuntimeError, match="Cannot close a running event loop"):
            loop.close()
        assert not loop.is_closed()

    run(loop, main())
    assert not loop.is_closed()


def test_call_soon_from_foreign_thread_in_debug_mode(loop):
    loop.set_debug(True)
    errors = []

    def worker():
        try:
            loop.call_soon(lambda: None)
        except BaseException as exc:  # collected for the main thread
            errors.append(exc)

    async def main():
        t = threading.Thread(target=worker)
        t.start()
        await loop.run_in_executor(None, t.join, 5)
        assert not t.is_alive()

    run(loop, main())
    assert len(errors) == 1
    assert isinstance(errors[0], RuntimeError)


def test_call_soon_threadsafe_from_foreign_thread_in_debug_mode_ok(loop):
    loop.set_debug(True)
    done = []

    async def main():
        fut = loop.create_future()

        def worker():
            loop.call_soon_threadsafe(fut.set_result, "from-thread")

        t = threading.Thread(target=worker)
        t.start()
        done.append(await fut)
        await loop.run_in_executor(None, t.join, 5)

    run(loop, main())
    assert done == ["from-thread"]


# ---------------------------------------------------------------------------
# exception handlers
# ---------------------------------------------------------------------------


class Boom(Exception):
    pass


def test_callback_exception_goes_to_custom_handler(loop):
    calls = []
    after = []
    exc = Boom("in callback")

    def bad():
        raise exc

    def handler(lp, context):
        calls.append((lp, context))

    loop.set_exception_handler(handler)
    assert loop.get_exception_handler() is handler
    h = loop.call_soon(bad)
    loop.call_soon(after.append, "same-batch")
    loop.call_later(0.001, after.append, "later")
    loop.call_later(0.01, loop.stop)
    run_forever_bounded(loop)

    assert after == ["same-batch", "later"]
    assert len(calls) == 1
    lp, context = calls[0]
    assert lp is loop
    assert isinstance(context, dict)
    assert isinstance(context["message"], str) and context["message"]
    assert context["exception"] is exc
    assert context["handle"] is h


def test_timer_callback_exception_goes_to_handler(loop):
    calls = []

    def bad():
        raise Boom("timer")

    loop.set_exception_handler(lambda lp, ctx: calls.append(ctx))
    h = loop.call_later(0.001, bad)
    loop.call_later(0.01, loop.stop)
    run_forever_bounded(loop)
    assert len(calls) == 1
    assert isinstance(calls[0]["exception"], Boom)
    assert calls[0]["handle"] is h


def test_default_exception_handler_logs(loop, caplog):
    exc = Boom("logged")

    def bad():
        raise exc

    caplog.set_level(logging.DEBUG, logger="asyncio")
    assert loop.get_exception_handler() is None
    after = []
    loop.call_soon(bad)
    loop.call_soon(after.append, 1)
    loop.call_soon(loop.stop)
    run_forever_bounded(loop)
    assert after == [1]
    records = [
        r for r in caplog.records
        if r.name == "asyncio" and r.levelno == logging.ERROR and r.exc_info and r.exc_info[1] is exc
    ]
    assert len(records) == 1
    assert "Exception in callback" in records[0].getMessage()


def test_set_exception_handler_none_restores_default(loop, caplog):
    calls = []
    loop.set_exception_handler(lambda lp, ctx: calls.append(ctx))
    loop.set_exception_handler(None)
    assert loop.get_exception_handler() is None
    caplog.set_level(logging.DEBUG, logger="asyncio")
    exc = Boom("x")

    def bad():
        raise exc

    loop.call_soon(bad)
    loop.call_soon(loop.stop)
    run_forever_bounded(loop)
    assert calls == []
    assert any(r.exc_info and r.exc_info[1] is exc for r in caplog.records)


def test_set_exception_handler_non_callable(loop):
    with pytest.raises(TypeError):
        loop.set_exception_handler(42)
    assert loop.get_exception_handler() is None


def test_call_exception_handler_custom(loop):
    calls = []
    loop.set_exception_handler(lambda lp, ctx: calls.append((lp, ctx)))
    ctx = {"message": "hello", "extra": 1}
    loop.call_exception_handler(ctx)
    assert len(calls) == 1
    assert calls[0][0] is loop
    assert calls[0][1]["message"] == "hello"
    assert calls[0][1]["extra"] == 1


def test_call_exception_handler_default_logs(loop, caplog):
    caplog.set_level(logging.DEBUG, logger="asyncio")
    loop.call_exception_handler({"message": "boom-message-xyz"})
    msgs = [r.getMessage() for r in caplog.records if r.name == "asyncio" and r.levelno == logging.ERROR]
    assert any("boom-message-xyz" in m for m in msgs)


def test_default_exception_handler_direct(loop, caplog):
    caplog.set_level(logging.DEBUG, logger="asyncio")
    exc = Boom("direct")
    loop.default_exception_handler({"message": "direct-msg-123", "exception": exc, "some_key": 4242})
    recs = [r for r in caplog.records if r.name == "asyncio" and r.levelno == logging.ERROR]
    assert len(recs) == 1
    msg = recs[0].getMessage()
    assert "direct-msg-123" in msg
    assert "some_key" in msg and "4242" in msg
    assert recs[0].exc_info and recs[0].exc_info[1] is exc


def test_default_exception_handler_from_custom_handler(loop, caplog):
    """A custom handler may delegate to loop.default_exception_handler."""
    caplog.set_level(logging.DEBUG, logger="asyncio")
    seen = []

    def handler(lp, ctx):
        seen.append(ctx)
        lp.default_exception_handler(ctx)

    loop.set_exception_handler(handler)
    exc = Boom("delegated")

    def bad():
        raise exc

    loop.call_soon(bad)
    loop.call_soon(loop.stop)
    run_forever_bounded(loop)
    assert len(seen) == 1
    assert any(r.exc_info and r.exc_info[1] is exc for r in caplog.records)


def test_exception_handler_that_raises_is_logged(loop, caplog):
    caplog.set_level(logging.DEBUG, logger="asyncio")
    handler_exc = RuntimeError("handler failed")
    cb_exc = Boom("callback failed")

    def handler(lp, ctx):
        raise handler_exc

    def bad():
        raise cb_exc

    loop.set_exception_handler(handler)
    after = []
    loop.call_soon(bad)
    loop.call_soon(after.append, 1)
    loop.call_later(0.001, after.append, 2)
    loop.call_later(0.01, loop.stop)
    run_forever_bounded(loop)
    assert after == [1, 2]
    assert any(
        r.name == "asyncio" and r.levelno >= logging.ERROR and r.exc_info and r.exc_info[1] is handler_exc
        for r in caplog.records
    )


def test_task_exception_never_retrieved_reaches_handler(loop):
    calls = []
    loop.set_exception_handler(lambda lp, ctx: calls.append(ctx))

    async def failing():
        raise Boom("unretrieved")

    async def main():
        loop.create_task(failing())
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    run(loop, main())
    gc.collect()
    assert any(isinstance(c.get("exception"), Boom) for c in calls)


# ---------------------------------------------------------------------------
# KeyboardInterrupt / SystemExit
# ---------------------------------------------------------------------------

BASE_EXCS = [KeyboardInterrupt, SystemExit]


@pytest.mark.parametrize("exc_type", BASE_EXCS, ids=lambda e: e.__name__)
def test_base_exception_in_callback_propagates_from_run_forever(loop, exc_type):
    after = []
    handler_calls = []
    loop.set_exception_handler(lambda lp, ctx: handler_calls.append(ctx))

    def bad():
        raise exc_type()

    loop.call_soon(bad)
    loop.call_soon(after.append, "after")
    guard = loop.call_later(5, loop.stop)
    with pytest.raises(exc_type):
        loop.run_forever()
    guard.cancel()
    assert not loop.is_running()
    assert handler_calls == []

    # the loop is usable again; the remaining callback runs exactly once
    loop.call_soon(loop.stop)
    run_forever_bounded(loop)
    assert after == ["after"]

    assert run(loop, asyncio.sleep(0, "again")) == "again"


@pytest.mark.parametrize("exc_type", BASE_EXCS, ids=lambda e: e.__name__)
def test_base_exception_in_callback_propagates_from_run_until_complete(loop, exc_type):
    def bad():
        raise exc_type()

    async def main():
        loop.call_soon(bad)
        await asyncio.sleep(0.05)
        return "finished"

    task = loop.create_task(main())
    with pytest.raises(exc_type):
        loop.run_until_complete(task)
    assert not loop.is_running()
    assert not task.done()
    # run again: the task continues
    assert loop.run_until_complete(asyncio.wait_for(task, 5)) == "finished"


@pytest.mark.parametrize("exc_type", BASE_EXCS, ids=lambda e: e.__name__)
def test_base_exception_in_coroutine_propagates(loop, exc_type):
    async def main():
        await asyncio.sleep(0)
        raise exc_type()

    with pytest.raises(exc_type):
        loop.run_until_complete(main())
    assert not loop.is_running()
    assert run(loop, asyncio.sleep(0.001, "again")) == "again"


@pytest.mark.parametrize("exc_type", BASE_EXCS, ids=lambda e: e.__name__)
def test_base_exception_in_timer_propagates(loop, exc_type):
    def bad():
        raise exc_type()

    loop.call_later(0.001, bad)
    guard = loop.call_later(5, loop.stop)
    with pytest.raises(exc_type):
        loop.run_forever()
    guard.cancel()
    assert not loop.is_running()
    loop.call_soon(loop.stop)
    run_forever_bounded(loop)


# ---------------------------------------------------------------------------
# debug mode
# ---------------------------------------------------------------------------


def test_debug_flag(loop):
    expected = bool(sys.flags.dev_mode or (not sys.flags.ignore_environment and os.environ.get("PYTHONASYNCIODEBUG")))
    assert loop.get_debug() is expected
    loop.set_debug(True)
    assert loop.get_debug() is True
    loop.set_debug(False)
    assert loop.get_debug() is False


def test_slow_callback_duration_attribute(loop):
    assert loop.slow_callback_duration == pytest.approx(0.1)
    loop.slow_callback_duration = 0.25
    assert loop.slow_callback_duration == pytest.approx(0.25)


def slow_callback_for_debug():
    time.sleep(0.05)


def test_debug_slow_callback_warning(loop, caplog):
    caplog.set_level(logging.DEBUG, logger="asyncio")
    loop.set_debug(True)
    loop.slow_callback_duration = 0.01
    loop.call_soon(slow_callback_for_debug)
    loop.call_soon(loop.stop)
    run_forever_bounded(loop)
    warnings = [
        r.getMessage() for r in caplog.records
        if r.name == "asyncio" and r.levelno == logging.WARNING and "Executing" in r.getMessage()
    ]
    assert any("slow_callback_for_debug" in m for m in warnings), warnings


async def slow_task_for_debug():
    time.sleep(0.05)


def test_debug_slow_callback_warning_names_the_task(loop, caplog):
    # asyncio names the Task whose step was slow, not the step's handle.
    caplog.set_level(logging.DEBUG, logger="asyncio")
    loop.set_debug(True)
    loop.slow_callback_duration = 0.01
    run(loop, loop.create_task(slow_task_for_debug(), name="slow-one"))
    warnings = [
        r.getMessage() for r in caplog.records
        if r.name == "asyncio" and r.levelno == logging.WARNING and "Executing" in r.getMessage()
    ]
    assert any(m.startswith("Executing <Task finished name='slow-one' coro=<slow_task_for_debug()")
               for m in warnings), warnings
    assert not any("TaskStepMethWrapper" in m for m in warnings), warnings


def test_no_slow_callback_warning_without_debug(loop, caplog):
    caplog.set_level(logging.DEBUG, logger="asyncio")
    loop.set_debug(False)
    loop.slow_callback_duration = 0.01
    loop.call_soon(slow_callback_for_debug)
    loop.call_soon(loop.stop)
    run_forever_bounded(loop)
    assert not [r for r in caplog.records if r.name == "asyncio" and "Executing" in r.getMessage()]

"""NaN and infinite delays and deadlines, side by side with asyncio's loop.

asyncio's heap compares NaN false with everything: a NaN timer is run as
soon as it reaches the top of the heap (the loop waits zero seconds for it),
so with nothing ahead of it it runs on the next iteration; +inf never runs,
-inf runs at once. shardloop runs a NaN timer as due at once; the scenarios
here are the ones where asyncio's answer does not depend on its heap's shape.
asyncio.sleep(nan) is asyncio's own code: it schedules call_later(nan) up to
3.12 and raises ValueError from 3.13 on; either way both loops must agree.
"""

import asyncio
import math
import threading

import pytest

from _support import is_shardloop

NAN = float("nan")
INF = float("inf")


def run_guarded(loop, coro, seconds=10.0):
    """run_until_complete without a timer of its own (a timer put on the
    heap first would sit above the scenario's NaN one in asyncio's heap and
    change its answer); a wedged loop is stopped from a thread instead, and
    the test fails."""
    done = threading.Event()
    fired = []

    def guard():
        if not done.wait(seconds):
            fired.append(True)
            loop.call_soon_threadsafe(loop.stop)

    watcher = threading.Thread(target=guard)
    watcher.start()
    try:
        return loop.run_until_complete(coro)
    except RuntimeError:
        if fired:
            pytest.fail("the loop wedged: nothing after the NaN/inf timer ran")
        raise
    finally:
        done.set()
        watcher.join()


def same_as_asyncio(loop, scenario):
    got = run_guarded(loop, scenario(loop))
    if is_shardloop(loop):
        ref = asyncio.new_event_loop()
        try:
            expected = run_guarded(ref, scenario(ref))
        finally:
            ref.close()
        assert got == expected, "shardloop gave %r, asyncio gives %r" % (got, expected)
    return got


def nan_then_timers(schedule_nan):
    async def scenario(loop):
        trace = []
        done = loop.create_future()

        def last():
            trace.append("later")
            done.set_result(None)

        handle = schedule_nan(loop, lambda: trace.append("nan"))
        loop.call_later(0, trace.append, "zero")
        loop.call_later(0.001, last)
        await done
        return trace, math.isnan(handle.when())

    return scenario


@pytest.mark.parametrize(
    "schedule_nan",
    [
        pytest.param(lambda loop, cb: loop.call_later(NAN, cb), id="call_later"),
        pytest.param(lambda loop, cb: loop.call_at(NAN, cb), id="call_at"),
    ],
)
def test_nan_timer_runs_and_later_timers_still_run(loop, schedule_nan):
    assert same_as_asyncio(loop, nan_then_timers(schedule_nan)) == (["nan", "zero", "later"], True)


def test_infinite_deadlines(loop):
    async def scenario(loop):
        trace = []
        done = loop.create_future()

        def last():
            trace.append("later")
            done.set_result(None)

        never = loop.call_later(INF, trace.append, "+inf")
        at_never = loop.call_at(INF, trace.append, "call_at +inf")
        loop.call_at(-INF, trace.append, "call_at -inf")
        loop.call_later(-INF, trace.append, "call_later -inf")
        loop.call_later(0.001, last)
        await done
        await asyncio.sleep(0)
        result = trace, never.when(), at_never.when(), never.cancelled()
        never.cancel()
        at_never.cancel()
        return result

    assert same_as_asyncio(loop, scenario) == (
        ["call_at -inf", "call_later -inf", "later"], INF, INF, False)


def test_sleep_nan(loop):
    async def scenario(loop):
        # The sleep's timer goes on the heap first, so in asyncio's heap
        # nothing sits above it.
        sleeper = asyncio.ensure_future(asyncio.sleep(NAN, "woke"))
        await asyncio.sleep(0)
        try:
            return await sleeper
        except ValueError as exc:  # 3.13+
            return "ValueError: %s" % exc

    same_as_asyncio(loop, scenario)


def test_sleep_infinite(loop):
    async def scenario(loop):
        past = await asyncio.sleep(-INF, "past")
        sleeper = asyncio.ensure_future(asyncio.sleep(INF))
        for _ in range(3):
            await asyncio.sleep(0)
        pending = not sleeper.done()
        sleeper.cancel()
        try:
            await sleeper
        except asyncio.CancelledError:
            return past, pending, "cancelled"
        return past, pending, "finished"

    assert same_as_asyncio(loop, scenario) == ("past", True, "cancelled")

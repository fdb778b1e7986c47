"""Futures, tasks, task factories and asyncio's high-level primitives running
on the loop under test."""

import asyncio
import contextvars
import gc
import sys

import pytest

from _support import PY312, run, sleep_until_cancelled, two_step_agen, wait_until

cvar = contextvars.ContextVar("tasks_cvar", default="default")


# ---------------------------------------------------------------------------
# create_future / create_task / task factories
# ---------------------------------------------------------------------------


def test_create_future(loop):
    fut = loop.create_future()
    assert isinstance(fut, asyncio.Future)
    assert fut.get_loop() is loop
    assert not fut.done()
    loop.call_soon(fut.set_result, 7)
    assert loop.run_until_complete(fut) == 7


def test_future_done_callbacks(loop):
    order = []
    fut = loop.create_future()

    def cb(tag):
        def inner(f):
            order.append((tag, f.result()))

        return inner

    fut.add_done_callback(cb("a"))
    removed = cb("removed")
    fut.add_done_callback(removed)
    fut.add_done_callback(cb("b"))
    assert fut.remove_done_callback(removed) == 1

    async def main():
        fut.set_result("R")
        # done callbacks are scheduled with call_soon, not run synchronously
        assert order == []
        await asyncio.sleep(0)
        assert order == [("a", "R"), ("b", "R")]
        # adding a callback to a done future schedules it
        fut.add_done_callback(cb("late"))
        await asyncio.sleep(0)
        assert order[-1] == ("late", "R")

    run(loop, main())


def test_future_callback_context(loop):
    seen = []
    ctx = contextvars.Context()
    ctx.run(cvar.set, "fut-ctx")

    async def main():
        fut = loop.create_future()
        fut.add_done_callback(lambda f: seen.append(cvar.get()), context=ctx)
        fut.set_result(None)
        await asyncio.sleep(0)

    run(loop, main())
    assert seen == ["fut-ctx"]


def test_create_task(loop):
    async def coro(x):
        await asyncio.sleep(0)
        return x * 2

    async def main():
        t = loop.create_task(coro(21))
        assert isinstance(t, asyncio.Task)
        assert t.get_loop() is loop
        return await t

    assert run(loop, main()) == 42


def test_create_task_name(loop):
    async def coro():
        return asyncio.current_task().get_name()

    async def main():
        t = loop.create_task(coro(), name="my-task")
        assert t.get_name() == "my-task"
        return await t

    assert run(loop, main()) == "my-task"


def test_create_task_context(loop):
    ctx = contextvars.Context()
    ctx.run(cvar.set, "task-ctx")

    async def coro():
        val = cvar.get()
        cvar.set("changed-in-task")
        return val

    async def main():
        t = loop.create_task(coro(), context=ctx)
        return await t

    assert run(loop, main()) == "task-ctx"
    assert ctx[cvar] == "changed-in-task"
    assert cvar.get() == "default"


def test_create_task_before_running(loop):
    out = []

    async def coro():
        out.append(asyncio.get_running_loop() is loop)

    t = loop.create_task(coro())
    assert not t.done()
    loop.run_until_complete(t)
    assert out == [True]


def test_task_factory(loop):
    calls = []

    def factory(lp, coro, **kwargs):
        calls.append((lp, kwargs))
        return asyncio.Task(coro, loop=lp, **kwargs)

    assert loop.get_task_factory() is None
    loop.set_task_factory(factory)
    assert loop.get_task_factory() is factory

    async def child():
        return "child"

    async def main():
        t = loop.create_task(child(), name="named")
        assert t.get_name() == "named"
        return await t

    # run_until_complete(coroutine) also goes through the factory
    assert run(loop, main()) == "child"
    assert len(calls) >= 2
    assert all(c[0] is loop for c in calls)

    loop.set_task_factory(None)
    assert loop.get_task_factory() is None
    n = len(calls)
    run(loop, main())
    assert len(calls) == n


def test_task_factory_used_by_asyncio_create_task(loop):
    calls = []

    def factory(lp, coro, **kwargs):
        calls.append(coro)
        return asyncio.Task(coro, loop=lp, **kwargs)

    async def child():
        return 5

    async def main():
        loop.set_task_factory(factory)
        try:
            return await asyncio.create_task(child())
        finally:
            loop.set_task_factory(None)

    assert run(loop, main()) == 5
    assert len(calls) == 1


def test_set_task_factory_non_callable(loop):
    with pytest.raises(TypeError):
        loop.set_task_factory(42)
    assert loop.get_task_factory() is None


@pytest.mark.skipif(not PY312, reason="asyncio.eager_task_factory is new in Python 3.12")
def test_eager_task_factory(loop):
    loop.set_task_factory(asyncio.eager_task_factory)
    steps = []

    async def no_await():
        steps.append("ran")
        return "eager"

    async def with_await():
        steps.append("start")
        await asyncio.sleep(0)
        steps.append("end")
        return "lazy"

    async def main():
        t = loop.create_task(no_await())
        # completed synchronously inside create_task
        assert t.done()
        assert t.result() == "eager"
        t2 = loop.create_task(with_await())
        assert steps == ["ran", "start"]
        assert not t2.done()
        assert await t2 == "lazy"
        return True

    assert run(loop, main()) is True


# ---------------------------------------------------------------------------
# sleep / gather / wait_for / timeout / TaskGroup
# ---------------------------------------------------------------------------


def test_sleep_result_and_order(loop):
    out = []

    async def sleeper(delay, tag):
        r = await asyncio.sleep(delay, tag)
        out.append(r)

    async def main():
        await asyncio.gather(sleeper(0.03, "c"), sleeper(0.01, "a"), sleeper(0.02, "b"))

    run(loop, main())
    assert out == ["a", "b", "c"]


def test_sleep_zero_yields(loop):
    out = []

    async def a():
        for i in range(3):
            out.append(("a", i))
            await asyncio.sleep(0)

    async def b():
        for i in range(3):
            out.append(("b", i))
            await asyncio.sleep(0)

    async def main():
        await asyncio.gather(a(), b())

    run(loop, main())
    assert out == [("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2), ("b", 2)]


def test_gather_results_and_exceptions(loop):
    async def ok(x):
        await asyncio.sleep(0.001)
        return x

    async def bad():
        await asyncio.sleep(0)
        raise ValueError("bad")

    async def main():
        res = await asyncio.gather(ok(1), ok(2), ok(3))
        assert res == [1, 2, 3]
        res = await asyncio.gather(ok(1), bad(), return_exceptions=True)
        assert res[0] == 1 and isinstance(res[1], ValueError)
        with pytest.raises(ValueError):
            await asyncio.gather(ok(1), bad())

    run(loop, main())


def test_wait_for_timeout(loop):
    async def main():
        t0 = loop.time()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.sleep(10), 0.02)
        assert loop.time() - t0 < 4
        # asyncio.TimeoutError is the builtin TimeoutError since 3.11
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.sleep(10), 0.01)
        assert await asyncio.wait_for(asyncio.sleep(0, "fast"), 1) == "fast"

    run(loop, main())


def test_wait_for_cancels_inner(loop):
    cancelled = []

    async def main():
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(sleep_until_cancelled(cancelled), 0.01)

    run(loop, main())
    assert cancelled == [True]


def test_timeout_context_manager(loop):
    async def main():
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.02):
                await asyncio.sleep(10)
        async with asyncio.timeout(1) as cm:
            await asyncio.sleep(0)
        assert not cm.expired()
        # timeout_at uses the loop clock
        with pytest.raises(TimeoutError):
            async with asyncio.timeout_at(loop.time() + 0.01) as cm2:
                await asyncio.sleep(10)
        assert cm2.expired()
        assert cm2.when() is not None

    run(loop, main())


def test_timeout_reschedule(loop):
    async def main():
        async with asyncio.timeout(None) as cm:
            assert cm.when() is None
            cm.reschedule(loop.time() + 5)
            await asyncio.sleep(0.01)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(5) as cm:
                cm.reschedule(loop.time() + 0.01)
                await asyncio.sleep(10)

    run(loop, main())


def test_task_group(loop):
    async def child(x):
        await asyncio.sleep(0.001 * x)
        return x

    async def failing():
        await asyncio.sleep(0.001)
        raise ValueError("tg")

    async def main():
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(child(i)) for i in range(5)]
        assert [t.result() for t in tasks] == list(range(5))

        sibling_cancelled = []
        with pytest.raises(ExceptionGroup) as ei:  # noqa: F821 (builtin since 3.11)
            async with asyncio.TaskGroup() as tg:
                tg.create_task(sleep_until_cancelled(sibling_cancelled))
                tg.create_task(failing())
        assert [type(e) for e in ei.value.exceptions] == [ValueError]
        assert sibling_cancelled == [True]

    run(loop, main())


# ---------------------------------------------------------------------------
# cancellation
# ---------------------------------------------------------------------------


def test_task_cancel(loop):
    state = []

    async def main():
        t = loop.create_task(sleep_until_cancelled(state, "cancelled"))
        await asyncio.sleep(0)
        assert t.cancel("reason") is True
        with pytest.raises(asyncio.CancelledError):
            await t
        assert t.cancelled()
        assert t.done()
        assert t.cancel() is False  # already done

    run(loop, main())
    assert state == ["cancelled"]


def test_cancel_pending_task_before_start(loop):
    started = []

    async def never():
        started.append(True)

    async def main():
        t = loop.create_task(never())
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t

    run(loop, main())
    assert started == []


def test_uncancel(loop):
    async def main():
        task = asyncio.current_task()
        assert task.cancelling() == 0
        loop.call_soon(task.cancel)
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            assert task.cancelling() == 1
            assert task.uncancel() == 0
        # the task continues normally after uncancel()
        await asyncio.sleep(0)
        assert task.cancelling() == 0
        return "survived"

    assert run(loop, main()) == "survived"


def test_cancelled_error_message(loop):
    async def victim():
        await asyncio.sleep(10)

    async def main():
        t = loop.create_task(victim())
        await asyncio.sleep(0)
        t.cancel("custom-msg")
        try:
            await t
        except asyncio.CancelledError as e:
            return e.args

    assert run(loop, main()) == ("custom-msg",)


def test_shield(loop):
    inner_done = []

    async def inner():
        await asyncio.sleep(0.02)
        inner_done.append(True)
        return "inner"

    async def main():
        inner_task = loop.create_task(inner())

        async def waiter():
            return await asyncio.shield(inner_task)

        outer = loop.create_task(waiter())
        await asyncio.sleep(0)
        outer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await outer
        assert not inner_task.cancelled()
        assert not inner_task.done()
        assert await inner_task == "inner"

    run(loop, main())
    assert inner_done == [True]


def test_cancel_sleeping_many(loop):
    async def main():
        tasks = [loop.create_task(asyncio.sleep(10)) for _ in range(200)]
        await asyncio.sleep(0)
        for t in tasks:
            t.cancel()
        res = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) for r in res)

    run(loop, main())


# ---------------------------------------------------------------------------
# synchronisation primitives
# ---------------------------------------------------------------------------


def test_queue_producer_consumer(loop):
    async def main():
        q = asyncio.Queue(maxsize=5)
        received = []

        async def producer():
            for i in range(100):
                await q.put(i)
            await q.put(None)

        async def consumer():
            while True:
                item = await q.get()
                q.task_done()
                if item is None:
                    return
                received.append(item)

        await asyncio.gather(producer(), consumer())
        await q.join()
        return received

    assert run(loop, main()) == list(range(100))


def test_queue_get_timeout(loop):
    async def main():
        q = asyncio.Queue()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(q.get(), 0.01)
        loop.call_later(0.01, q.put_nowait, "x")
        return await q.get()

    assert run(loop, main()) == "x"


def test_event(loop):
    async def main():
        ev = asyncio.Event()
        woke = []

        async def waiter(i):
            await ev.wait()
            woke.append(i)

        tasks = [loop.create_task(waiter(i)) for i in range(5)]
        await asyncio.sleep(0)
        assert woke == []
        loop.call_later(0.01, ev.set)
        await asyncio.gather(*tasks)
        assert sorted(woke) == list(range(5))
        assert ev.is_set()

    run(loop, main())


def test_lock(loop):
    async def main():
        lock = asyncio.Lock()
        inside = 0
        max_inside = 0
        order = []

        async def worker(i):
            nonlocal inside, max_inside
            async with lock:
                inside += 1
                max_inside = max(max_inside, inside)
                order.append(i)
                await asyncio.sleep(0.001)
                inside -= 1

        await asyncio.gather(*(worker(i) for i in range(10)))
        assert max_inside == 1
        assert order == list(range(10))  # asyncio.Lock is fair (FIFO)
        assert not lock.locked()

    run(loop, main())


def test_semaphore_and_condition(loop):
    async def main():
        sem = asyncio.Semaphore(2)
        active = 0
        peak = 0

        async def job():
            nonlocal active, peak
            async with sem:
                active += 1
                peak = max(peak, active)
                await asyncio.sleep(0.002)
                active -= 1

        await asyncio.gather(*(job() for _ in range(8)))
        assert peak == 2

        cond = asyncio.Condition()
        ready = []

        async def consumer():
            async with cond:
                await cond.wait_for(lambda: ready)
                return ready[0]

        t = loop.create_task(consumer())
        await asyncio.sleep(0)
        async with cond:
            ready.append("item")
            cond.notify_all()
        return await t

    assert run(loop, main()) == "item"


def test_current_task_and_all_tasks(loop):
    async def child():
        await asyncio.sleep(0.01)

    async def main():
        me = asyncio.current_task()
        assert me is not None
        assert me.get_loop() is loop
        t = loop.create_task(child())
        alltasks = asyncio.all_tasks()
        assert me in alltasks and t in alltasks
        await t
        return me

    task = run(loop, main())
    assert isinstance(task, asyncio.Task)
    assert asyncio.all_tasks(loop) == set()


def test_many_concurrent_tasks(loop):
    async def worker(i):
        for _ in range(5):
            await asyncio.sleep(0)
        return i

    async def main():
        res = await asyncio.gather(*(worker(i) for i in range(2000)))
        return sum(res)

    assert run(loop, main(), timeout=30) == sum(range(2000))


# ---------------------------------------------------------------------------
# async generators
# ---------------------------------------------------------------------------


def test_shutdown_asyncgens(loop):
    finalized = []
    holder = []

    async def agen():
        try:
            for i in range(10):
                yield i
                await asyncio.sleep(0)
        finally:
            finalized.append(True)

    async def main():
        g = agen()
        holder.append(g)  # keep it alive so GC does not finalize it
        assert await g.__anext__() == 0
        assert await g.__anext__() == 1

    run(loop, main())
    assert finalized == []
    run(loop, loop.shutdown_asyncgens())
    assert finalized == [True]


def test_asyncgen_hooks_installed_while_running(loop):
    before = sys.get_asyncgen_hooks()

    async def main():
        hooks = sys.get_asyncgen_hooks()
        return hooks.firstiter, hooks.finalizer

    firstiter, finalizer = run(loop, main())
    assert firstiter is not None
    assert finalizer is not None
    after = sys.get_asyncgen_hooks()
    assert after.firstiter is before.firstiter
    assert after.finalizer is before.finalizer


def test_asyncgen_finalizer_runs_on_gc(loop):
    finalized = []

    async def main():
        g = two_step_agen(finalized)
        assert await g.__anext__() == 1
        del g
        gc.collect()
        # the finalizer hook schedules aclose() on the loop
        await wait_until(lambda: finalized, timeout=5)

    run(loop, main())
    assert finalized == [True]

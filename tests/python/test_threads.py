"""Cross-thread behaviour: call_soon_threadsafe, wake-ups, loops in several
threads, and releasing the GIL while the loop waits."""

import asyncio
import sys
import threading
import time

from _support import run, run_forever_bounded, wait_until


def test_call_soon_threadsafe_many_threads(loop):
    n_threads = 4
    n_calls = 2000
    total = n_threads * n_calls
    received = {t: [] for t in range(n_threads)}
    count = [0]

    async def main():
        all_done = asyncio.Event()

        def cb(tid, i):
            received[tid].append(i)
            count[0] += 1
            if count[0] == total:
                all_done.set()

        start = threading.Barrier(n_threads)

        def producer(tid):
            start.wait(5)
            for i in range(n_calls):
                loop.call_soon_threadsafe(cb, tid, i)

        threads = [threading.Thread(target=producer, args=(t,)) for t in range(n_threads)]
        for t in threads:
            t.start()
        try:
            await asyncio.wait_for(all_done.wait(), 20)
        finally:
            for t in threads:
                t.join(10)
        # let anything that would be a duplicate run, too
        await asyncio.sleep(0.01)

    run(loop, main(), timeout=30)
    assert count[0] == total
    for tid in range(n_threads):
        # every call ran exactly once, in per-thread submission order
        assert received[tid] == list(range(n_calls))


def test_call_soon_threadsafe_from_threads_while_loop_not_running(loop):
    out = []

    def producer(k):
        for i in range(100):
            loop.call_soon_threadsafe(out.append, (k, i))

    threads = [threading.Thread(target=producer, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    loop.call_soon(loop.stop)
    run_forever_bounded(loop)
    assert sorted(out) == sorted((k, i) for k in range(3) for i in range(100))


def test_call_soon_threadsafe_handle_cancel(loop):
    out = []
    h = loop.call_soon_threadsafe(out.append, "cancelled")
    assert not h.cancelled()
    h.cancel()
    assert h.cancelled()
    loop.call_soon_threadsafe(out.append, "kept")
    loop.call_soon(loop.stop)
    run_forever_bounded(loop)
    assert out == ["kept"]


def test_call_soon_threadsafe_handle_cancel_from_other_thread(loop):
    out = []
    handles = []

    def worker():
        handles.append(loop.call_soon_threadsafe(out.append, "x"))
        handles[0].cancel()

    t = threading.Thread(target=worker)
    t.start()
    t.join(10)
    loop.call_soon(loop.stop)
    run_forever_bounded(loop)
    assert handles and handles[0].cancelled()
    assert out == []


def test_call_soon_threadsafe_wakes_idle_run_forever(loop):
    """A loop blocked with nothing to do is woken up by another thread."""
    woken = []

    def wake():
        time.sleep(0.1)
        loop.call_soon_threadsafe(woken.append, True)
        loop.call_soon_threadsafe(loop.stop)

    t = threading.Thread(target=wake)
    t0 = time.monotonic()
    t.start()
    try:
        # the guard timer (10 s) is the only other pending event
        run_forever_bounded(loop, timeout=10)
    finally:
        t.join(10)
    elapsed = time.monotonic() - t0
    assert woken == [True]
    assert elapsed < 5


def test_call_soon_threadsafe_wakes_loop_waiting_on_future(loop):
    async def main():
        fut = loop.create_future()

        def worker():
            time.sleep(0.05)
            loop.call_soon_threadsafe(fut.set_result, "woke")

        t = threading.Thread(target=worker)
        t.start()
        try:
            return await fut
        finally:
            await loop.run_in_executor(None, t.join, 10)

    assert run(loop, main()) == "woke"


def test_run_coroutine_threadsafe(loop):
    async def add(a, b):
        await asyncio.sleep(0.001)
        return a + b

    results = []

    async def main():
        def worker():
            futs = [asyncio.run_coroutine_threadsafe(add(i, i), loop) for i in range(20)]
            results.extend(f.result(10) for f in futs)

        await loop.run_in_executor(None, worker)

    run(loop, main(), timeout=20)
    assert results == [2 * i for i in range(20)]


def test_two_loops_in_two_threads_run_concurrently(loop_factory):
    """Two loops in two threads make progress at the same time.

    Deterministic part: each loop waits (asynchronously) until the other
    one is running too -- impossible if only one loop can run at a time.
    """
    n = 2
    running = [threading.Event() for _ in range(n)]
    errors = []
    durations = [None] * n

    async def work(idx):
        running[idx].set()
        await wait_until(lambda: all(e.is_set() for e in running), timeout=10)
        t0 = time.monotonic()
        for _ in range(5):
            await asyncio.sleep(0.1)
        durations[idx] = time.monotonic() - t0

    def thread_main(idx):
        lp = loop_factory()
        try:
            lp.run_until_complete(asyncio.wait_for(work(idx), 20))
        except BaseException as exc:
            errors.append(exc)
        finally:
            lp.close()

    threads = [threading.Thread(target=thread_main, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert all(d is not None and d >= 0.5 - 0.01 for d in durations), durations


def test_each_thread_has_its_own_running_loop(loop_factory):
    seen = {}
    errors = []

    def thread_main(idx):
        lp = loop_factory()
        try:
            async def main():
                await asyncio.sleep(0.01)
                return asyncio.get_running_loop()

            seen[idx] = (lp, lp.run_until_complete(main()))
        except BaseException as exc:
            errors.append(exc)
        finally:
            lp.close()

    threads = [threading.Thread(target=thread_main, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert errors == []
    assert len(seen) == 3
    loops = [v[0] for v in seen.values()]
    assert all(a is b for a, b in seen.values())
    assert len({id(lp) for lp in loops}) == 3


class Spinner:
    """A CPU-bound Python thread counting as fast as it can."""

    def __init__(self):
        self.count = 0
        self._stop = threading.Event()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self):
        self._started.set()
        n = 0
        while not self._stop.is_set():
            for _ in range(100):
                n += 1
            self.count = n

    def __enter__(self):
        self._old_interval = sys.getswitchinterval()
        # Small switch interval: if the loop held the GIL while waiting, the
        # spinner would only get a millisecond here and there.
        sys.setswitchinterval(0.001)
        self._thread.start()
        self._started.wait(5)
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)
        sys.setswitchinterval(self._old_interval)

    def rate(self, seconds=0.1):
        """Counts per second while the main thread blocks in time.sleep
        (which releases the GIL) -- the reference speed on this machine."""
        c0 = self.count
        t0 = time.monotonic()
        time.sleep(seconds)
        return (self.count - c0) / (time.monotonic() - t0)


def test_gil_released_while_waiting(loop):
    """A CPU-bound Python thread progresses while the loop sleeps."""
    with Spinner() as spinner:
        rate = spinner.rate()

        async def main():
            c0 = spinner.count
            await asyncio.sleep(0.2)
            return spinner.count - c0

        progress = run(loop, main())
    # With the GIL released the spinner runs for ~0.2 s worth of counting;
    # holding it during the wait would leave it a few milliseconds.
    assert rate > 0
    assert progress >= rate * 0.05, (progress, rate)


def test_gil_released_while_idle_in_run_forever(loop):
    with Spinner() as spinner:
        rate = spinner.rate()
        c = {}
        loop.call_soon(lambda: c.setdefault("start", spinner.count))
        loop.call_later(0.2, lambda: c.setdefault("end", spinner.count))
        loop.call_later(0.21, loop.stop)
        run_forever_bounded(loop)
    assert rate > 0
    assert c["end"] - c["start"] >= rate * 0.05, (c, rate)

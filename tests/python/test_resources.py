"""Resource usage: memory and file descriptors across many loop life cycles."""

import asyncio
import gc
import os
import threading
import time
import tracemalloc

import pytest

from _support import run

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

linux_only = pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc (Linux)")
# ASan's quarantine keeps freed memory mapped, so RSS says nothing there; the
# plain `make test-python` run measures it (the Makefile sets this variable).
rss_measurable = pytest.mark.skipif(bool(os.environ.get("SHARDLOOP_SANITIZED")),
                                    reason="RSS is not meaningful under ASan (quarantine)")


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE_SIZE


def _open_fds():
    return len(os.listdir("/proc/self/fd"))


def _cycle(factory, n):
    for _ in range(n):
        lp = factory()
        lp.close()


@linux_only
@rss_measurable
def test_create_close_cycles_no_rss_growth(loop_factory):
    """10,000 create/close cycles after a 1,000-cycle warm-up: RSS grows by
    less than max(5 %, 2 MiB)."""
    _cycle(loop_factory, 1000)
    gc.collect()
    baseline = _rss_bytes()
    _cycle(loop_factory, 10_000)
    gc.collect()
    grown = _rss_bytes() - baseline
    allowed = max(baseline * 0.05, 2 * 1024 * 1024)
    assert grown < allowed, "RSS grew by %d bytes (baseline %d, allowed %d)" % (grown, baseline, allowed)


@linux_only
def test_create_close_cycles_no_fd_leak(loop_factory):
    _cycle(loop_factory, 10)
    gc.collect()
    before = _open_fds()
    _cycle(loop_factory, 500)
    gc.collect()
    assert _open_fds() == before


@linux_only
def test_run_cycles_no_fd_or_rss_leak(loop_factory):
    """Loops that actually ran (timers, threadsafe calls, executor) free
    their resources on close."""

    def one():
        lp = loop_factory()
        try:

            async def main():
                lp.call_soon_threadsafe(lambda: None)
                lp.call_later(0.0, lambda: None)
                await asyncio.sleep(0)
                await asyncio.sleep(0.0001)

            run(lp, main())
        finally:
            lp.close()

    for _ in range(50):
        one()
    gc.collect()
    fds = _open_fds()
    rss = _rss_bytes()
    for _ in range(500):
        one()
    gc.collect()
    assert _open_fds() == fds
    if not os.environ.get("SHARDLOOP_SANITIZED"):
        assert _rss_bytes() - rss < max(rss * 0.05, 2 * 1024 * 1024)


@linux_only
def test_close_releases_fds(loop_factory):
    gc.collect()
    before = _open_fds()
    loops = [loop_factory() for _ in range(20)]
    for lp in loops:
        lp.close()
    del loops
    gc.collect()
    assert _open_fds() == before


@linux_only
@rss_measurable
def test_many_cancelled_timers_do_not_leak(loop):
    """Cancelled timers are released (no unbounded growth)."""

    def churn(n):
        for _ in range(n):
            loop.call_later(3600, lambda: None).cancel()
        loop.call_soon(loop.stop)
        loop.run_forever()

    # Warmed up at the full size: asyncio keeps its cancelled timers until
    # the next iteration, and free-threaded CPython's allocator (mimalloc)
    # keeps the pages of that peak, so a smaller warm-up reads as growth.
    churn(100_000)
    gc.collect()
    rss = _rss_bytes()
    churn(100_000)
    gc.collect()
    assert _rss_bytes() - rss < max(rss * 0.05, 4 * 1024 * 1024)


def test_threadsafe_burst_memory_is_returned_once_idle(loop):
    """The memory of a 50,000-handle call_soon_threadsafe burst is freed
    within a few seconds of sleeping: shardloop keeps dead handles for the
    next burst only while bursts keep coming."""

    def noop():
        pass

    def producer():
        for _ in range(50_000):
            loop.call_soon_threadsafe(noop)

    async def main():
        thread = threading.Thread(target=producer)
        thread.start()
        thread.join()  # the pushes need no help from the loop
        for _ in range(3):
            await asyncio.sleep(0)
        gc.collect()
        deadline = time.monotonic() + 8.0
        while tracemalloc.get_traced_memory()[0] - before > 1024 * 1024:
            assert time.monotonic() < deadline, "%d bytes still held" % (tracemalloc.get_traced_memory()[0] - before)
            await asyncio.sleep(0.1)

    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        run(loop, main(), timeout=15.0)
    finally:
        tracemalloc.stop()


def test_unclosed_loop_with_pending_callbacks_is_collected(loop_factory):
    """Pending handles reference their loop; the cycle must still be
    collectable, and collecting it warns like asyncio does."""
    import warnings
    import weakref

    lp = loop_factory()
    lp.call_soon(lambda: None)
    lp.call_later(60, lambda: None)
    ref = weakref.ref(lp)
    del lp
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.collect()
    assert ref() is None
    assert any(issubclass(w.category, ResourceWarning) and "unclosed event loop" in str(w.message)
               for w in caught)
